//! The async shell: Kafka in, the synchronous core, Kafka and RocksDB out.
//!
//! One task, one loop, per worker:
//!
//! 0. **Time**: each assigned partition's stream clock moves (wall clock if caught up) and the
//!    timers due by then are read from the store's index and fired ([`Core::advance`]).
//!    Then, if the segment definitions changed, a slice of the profiles not yet evaluated under
//!    them (`Worker::sweep`).
//! 1. **Consume** a batch (up to `batch_max_messages`, or `batch_max_wait`) from the three input
//!    topics and the repartition topic. Each message is decoded, validated, routed to its profile
//!    (the identity protocol of [`crate::identity`]: forwarded, merged, or applied here) and
//!    applied to it in the in-memory cache at once ([`Core::process`]); its outputs (audience
//!    changes, journey triggers, dead letters, repartition messages) are handed to the producer
//!    immediately.
//! 2. **Deliver**: wait until every output of the batch is acknowledged by the brokers
//!    (idempotent producer, `acks=all`).
//! 3. **Commit**: write the batch's changed and removed profiles, identity aliases, timer index
//!    entries, segment sizes, clocks, re-evaluation cursors and each partition's next offset to
//!    RocksDB in one atomic write batch (fsynced by default).
//! 4. **Store offsets** in the consumer group, for lag monitoring only.
//!
//! On (re)assignment a partition resumes at the offset in RocksDB, never the group's. A crash at
//! any point leaves RocksDB at the end of some whole batch; the messages after it are applied again
//! and their outputs sent again with the same deterministic ids (at-least-once output, exactly-once
//! state). A partition revoked mid-batch has its uncommitted profiles dropped from the cache.
//!
//! The rebalance callback runs inside `recv()` on this same task, so the loop never races it.
//!
//! A Confluent-framed message whose schema id the registry has not answered for is not applied:
//! its partition number is held (every topic of it paused and sought back to its next message)
//! while a background task asks the registry, and resumed when the answer arrives (`hold`,
//! `look_up`, `take_lookup`). A registry outage is a wait, never a dead letter.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use lru::LruCache;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};
use xxhash_rust::xxh3::Xxh3Builder;

use crate::audience::{Core, Outputs, Source};
use crate::clock::StreamClock;
use crate::codec::{self, encode, Family, SchemaCatalog};
use crate::config::Settings;
use crate::event::{Event, EventType};
use crate::http::{Api, Health};
use crate::identity::{
    self, ClaimOutcome, Id, Internal, KeyKind, Local, Message as ProtocolMessage, Plan, Position,
    RawEvent,
};
use crate::metrics::Metrics;
use crate::profile::{self, Profile};
use crate::registry::{Lookup, Registry};
use crate::store::{Commit, Store, Timer};
use crate::wire::DeadLetter;

/// Longest accepted message key (a shopper key).
const MAX_KEY_BYTES: usize = 512;

/// Meta record: the segment definitions (source) profiles were last evaluated under.
const DEFINITIONS_KEY: &[u8] = b"definitions";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

enum Rebalance {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// librdkafka callbacks: logs, statistics (lag), and assignment from the offsets in RocksDB.
struct KafkaContext {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    start_from: Offset,
    rebalances: Mutex<Vec<Rebalance>>,
}

/// Routes librdkafka's log lines into `tracing`.
fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    // The [kafka] table goes to the consumer and the producer alike; each warns about the
    // other's properties. That is expected, not a problem to report.
    let level = if fac == "CONFWARN" {
        RDKafkaLogLevel::Debug
    } else {
        level
    };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            error!(facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Warning => warn!(facility = fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => debug!(facility = fac, "librdkafka: {message}"),
    }
}

/// Producer callbacks: logs only.
pub struct ProducerLogs;

impl ClientContext for ProducerLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .partition_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for KafkaContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = partitions(tpl);
                for (topic, partition) in &parts {
                    // RocksDB holds the truth: resume exactly after the last committed batch.
                    let offset = match self.store.next_offset(topic, *partition) {
                        Ok(Some(next)) => {
                            self.metrics
                                .stored_offset
                                .with_label_values(&[topic.as_str(), &partition.to_string()])
                                .set(next);
                            Offset::Offset(next)
                        }
                        Ok(None) => self.start_from,
                        Err(e) => {
                            error!(topic, partition, error = %e, "cannot read the stored offset; starting from the configured position");
                            self.start_from
                        }
                    };
                    info!(topic, partition, ?offset, "partition assigned");
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                        error!(topic, partition, error = %e, "cannot set the start offset");
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    error!(error = %e, "assigning partitions failed");
                }
                self.rebalances
                    .lock()
                    .expect("not poisoned")
                    .push(Rebalance::Assigned(parts));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts = partitions(tpl);
                info!(count = parts.len(), "partitions revoked");
                self.rebalances
                    .lock()
                    .expect("not poisoned")
                    .push(Rebalance::Revoked(parts.clone()));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    error!(error = %e, "unassigning partitions failed");
                }
            }
            other => {
                error!(error = ?other, "rebalance failed; dropping the assignment");
                self.rebalances
                    .lock()
                    .expect("not poisoned")
                    .push(Rebalance::Revoked(partitions(tpl)));
                let _ = consumer.unassign();
            }
        }
    }
}

/// A profile held in memory, and whether it changed since the last commit.
struct Slot {
    profile: Profile,
    dirty: bool,
    /// The profile's entry in the store's timer index (its `next_timer` as last committed).
    committed_timer: Option<i64>,
}

/// What the open batch has done so far.
#[derive(Default)]
struct Batch {
    messages: usize,
    /// (topic, partition) → next offset; a handful of entries, scanned without allocating.
    offsets: Vec<((String, i32), i64)>,
    /// Profiles changed in this batch, in first-touch order.
    dirty: Vec<(i32, String)>,
    deliveries: Vec<DeliveryFuture>,
    /// (partition, segment) → change in members.
    segment_deltas: HashMap<(i32, String), i64>,
    /// Changed profiles pushed out of the cache before the commit (written with it), with their
    /// committed timer.
    spilled: HashMap<(i32, String), (Profile, Option<i64>)>,
    /// Timer index entries found that no profile owns (removed with the commit).
    stray_timers: Vec<Timer>,
    /// Timers fired in this batch.
    timers_fired: u64,
    /// Identity aliases written in this batch (`None`: removed), visible before the commit.
    aliases: HashMap<(i32, String), Option<String>>,
    /// Profiles removed in this batch (absorbed or deleted), with their committed timer.
    deleted: HashMap<(i32, String), Option<i64>>,
    /// Re-evaluation cursors moved in this batch.
    meta: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    started: Option<Instant>,
}

/// Counters for the periodic progress line.
#[derive(Default)]
struct Progress {
    events: u64,
    dead: u64,
    changes: u64,
    triggers: u64,
    last_log: Option<Instant>,
    last_events: u64,
}

struct Topics {
    storefront: String,
    backoffice: String,
    profile: String,
    audience: String,
    journeys: String,
    dead_letter: String,
    repartition: String,
}

impl Topics {
    fn family(&self, topic: &str) -> Option<Family> {
        if topic == self.storefront {
            Some(Family::Storefront)
        } else if topic == self.backoffice {
            Some(Family::Backoffice)
        } else if topic == self.profile {
            Some(Family::Profile)
        } else {
            None
        }
    }
}

#[derive(Clone, Copy)]
enum OutTopic {
    Audience,
    Journeys,
    DeadLetter,
    Repartition,
}

/// One outgoing record, owned until it is handed to the producer.
struct Outgoing {
    topic: OutTopic,
    key: Vec<u8>,
    /// `None`: a tombstone.
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
    /// Explicit partition (repartition messages: the target key's partition).
    partition: Option<i32>,
}

/// Where a profile re-evaluation after a definitions change has got to, per partition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sweep {
    /// Fingerprint of the definitions being applied.
    version: u64,
    /// Last profile key done (`None`: none yet).
    after: Option<String>,
    done: bool,
}

fn sweep_key(partition: i32) -> Vec<u8> {
    let mut k = b"sweep/".to_vec();
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// An input event as read, for forwarding it to another partition (copied only then).
struct Raw<'a> {
    family: Family,
    payload: &'a [u8],
    /// Where the event was first read: topic, partition, offset.
    origin: (&'a str, i32, i64),
}

impl Raw<'_> {
    /// The event's identity across hops: its input position, hashed.
    fn origin_hash(&self) -> u64 {
        let (topic, partition, offset) = self.origin;
        let mut b = Vec::with_capacity(topic.len() + 12);
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&partition.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        xxhash_rust::xxh3::xxh3_64(&b)
    }

    fn owned(&self) -> RawEvent {
        RawEvent {
            family: self.family as u8,
            payload: self.payload.to_vec(),
            origin: Position {
                topic: self.origin.0.to_owned(),
                partition: self.origin.1,
                offset: self.origin.2,
            },
        }
    }
}

/// Whether a profile is only a placeholder (never written).
fn is_new(p: &Profile) -> bool {
    p.events_total == 0 && identity::count(p) == 0 && p.segments.is_empty()
}

struct Worker {
    core: Core,
    /// Writer schemas: built in, from the schemas directory, and from the registry.
    catalog: SchemaCatalog,
    schemas_dir: Option<std::path::PathBuf>,
    registry: Option<Arc<Registry>>,
    /// Where the look-up tasks send the registry's answers (received in the main loop).
    lookups: LookupSender,
    /// Partition numbers held because a message needs a schema id the registry has not answered
    /// for yet: number → schema id. All the co-partitioned topics of that number are paused
    /// (and sought to their next message), so its stream clock and timers wait too.
    held: HashMap<i32, u32>,
    /// Registry ids of the output schemas (audience, journeys, dead letters) when outputs are
    /// Confluent-framed.
    output_ids: Option<[u32; 3]>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    producer: FutureProducer<ProducerLogs>,
    topics: Topics,
    /// Decoded profiles by (partition, key). xxh3, hashed on every event, is seeded at random per
    /// process: keys include browser ids, which outsiders can choose.
    cache: LruCache<(i32, String), Slot, Xxh3Builder>,
    batch: Batch,
    outgoing: Vec<Outgoing>,
    outputs: Outputs,
    progress: Progress,
    /// Stream clock per input partition number (loaded from the store on first use).
    clocks: HashMap<i32, StreamClock>,
    lateness: i64,
    /// Caught-up partitions follow the wall clock (`processing.wall_clock`).
    follow_wall: bool,
    /// Next offset to read per input partition, for "caught up" (known once assigned).
    positions: HashMap<(String, i32), i64>,
    /// Members per segment in this worker's store: loaded at start, kept with each commit.
    segment_sizes: std::collections::BTreeMap<String, i64>,
    /// `tailor_events_total` per event type, resolved once (no label hashing per event).
    event_counters: Vec<prometheus::IntCounter>,
    /// `tailor_input_framing_total` per [`codec::Framing`] (indexed by the enum, in `ALL` order),
    /// resolved once likewise.
    framing_counters: Vec<prometheus::IntCounter>,
    /// `tailor_schema_fingerprint_variant_total` per [`codec::Variant`], resolved once likewise.
    variant_counters: Vec<prometheus::IntCounter>,
    /// Wall clock at the start of the batch (validation of far-future event times only).
    wall: i64,
    /// Partitions of every input topic (and of the repartition topic).
    partitions: i32,
    /// The message being applied (sender position of the repartition messages it causes).
    current: Position,
    /// Fingerprint of the segment definitions in force.
    defs_version: u64,
    /// Re-evaluation progress per partition number (loaded from the store on first use).
    sweeps: HashMap<i32, Sweep>,
    /// Profiles re-evaluated since the last progress line.
    swept: u64,
    segments_file: std::path::PathBuf,
}

/// Registry answers, from the look-up tasks to the worker: (schema id, answer).
type LookupSender = tokio::sync::mpsc::UnboundedSender<(u32, Lookup)>;

/// An accepted input message: its profile key, family, event, and the portable copy of its
/// bytes when it has one of its own (see [`crate::codec::Origin::portable`]).
type Accepted = (String, Family, Event, Option<Vec<u8>>);

/// Why a message is dead-lettered: (reason code, detail).
type Rejection = (&'static str, String);

impl Worker {
    /// Decodes, validates and applies one message; queues its outputs.
    fn apply(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        ts: Option<i64>,
    ) -> anyhow::Result<()> {
        self.batch.messages += 1;
        self.positions
            .insert((topic.to_owned(), partition), offset + 1);
        match self
            .batch
            .offsets
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
        {
            Some((_, next)) => *next = offset + 1,
            None => self
                .batch
                .offsets
                .push(((topic.to_owned(), partition), offset + 1)),
        }
        // No allocation per message: the topic name changes only between topics.
        if self.current.topic != topic {
            self.current.topic = topic.to_owned();
        }
        self.current.partition = partition;
        self.current.offset = offset;
        let result: Result<(), Rejection> = if topic == self.topics.repartition {
            self.apply_internal(partition, payload.unwrap_or(&[]))?
        } else {
            match self.accept(topic, key, payload.unwrap_or(&[])) {
                Ok((profile_key, family, ev, portable)) => {
                    // What travels if the event is forwarded: bytes any worker can read.
                    let raw = Raw {
                        family,
                        payload: portable.as_deref().or(payload).unwrap_or(&[]),
                        origin: (topic, partition, offset),
                    };
                    self.route_event(partition, profile_key, ev, &raw, None)?;
                    Ok(())
                }
                Err(rejection) => Err(rejection),
            }
        };
        match result {
            Ok(()) => {}
            // Held before it was applied (see `awaited_schema`); never bad input.
            Err(("registry_unavailable", detail)) => {
                bail!("{topic}/{partition} at offset {offset}: {detail} (a message reached processing before its schema was known; stopping without committing it)")
            }
            Err((code, detail)) => {
                self.metrics.dead_letters.with_label_values(&[code]).inc();
                self.progress.dead += 1;
                debug!(
                    topic,
                    partition,
                    offset,
                    reason = code,
                    "message dead-lettered"
                );
                let record = DeadLetter {
                    source_topic: topic.to_owned(),
                    source_partition: partition,
                    source_offset: offset,
                    source_timestamp: ts,
                    reason_code: code.to_owned(),
                    reason: detail.clone(),
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.unwrap_or(&[]).to_vec(),
                };
                let headers = OwnedHeaders::new_with_capacity(5)
                    .insert(Header {
                        key: "tailor.reason",
                        value: Some(code),
                    })
                    .insert(Header {
                        key: "tailor.detail",
                        value: Some(&detail),
                    })
                    .insert(Header {
                        key: "tailor.source.topic",
                        value: Some(topic),
                    })
                    .insert(Header {
                        key: "tailor.source.partition",
                        value: Some(&partition.to_string()),
                    })
                    .insert(Header {
                        key: "tailor.source.offset",
                        value: Some(&offset.to_string()),
                    });
                let payload =
                    encode::dead_letter(&record).expect("DeadLetter matches avro/dead_letter.avsc");
                self.outgoing.push(Outgoing {
                    topic: OutTopic::DeadLetter,
                    key: key.map(<[u8]>::to_vec).unwrap_or_default(),
                    payload: Some(payload),
                    headers: Some(headers),
                    timestamp: None,
                    partition: None,
                });
            }
        }
        Ok(())
    }

    /// Decodes and validates an input message: its profile key, family, event, and (when its
    /// own bytes need the registry or the schemas directory) a portable copy to forward.
    fn accept(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<Accepted, Rejection> {
        let family = self
            .topics
            .family(topic)
            .ok_or(("unknown_topic", format!("no family for topic {topic}")))?;
        let (msg, origin) = self
            .catalog
            .decode_input(family, payload)
            .map_err(|e| (e.code(), e.to_string()))?;
        self.framing_counters[origin.framing as usize].inc();
        if let Some(v) = origin.variant {
            self.variant_counters[v as usize].inc();
        }
        let portable = if origin.portable() {
            None
        } else {
            Some(
                self.catalog
                    .portable_payload(payload, &origin, &msg)
                    .map_err(|e| ("bad_body", e.to_string()))?,
            )
        };
        let ev = Event::from_input(msg, self.wall).map_err(|e| (e.code(), e.to_string()))?;
        let key = match key {
            Some(k) if !k.is_empty() => {
                if k.len() > MAX_KEY_BYTES {
                    return Err((
                        "bad_key",
                        format!("message key of {} bytes (max {MAX_KEY_BYTES})", k.len()),
                    ));
                }
                std::str::from_utf8(k)
                    .map_err(|_| ("bad_key", "message key is not UTF-8".to_string()))?
                    .to_owned()
            }
            _ => ev
                .fallback_key()
                .ok_or((
                    "no_identity",
                    "no message key and no identity in the event".to_string(),
                ))?
                .to_owned(),
        };
        Ok((key, family, ev, portable))
    }

    /// Brings the profile of `key` into the cache (read from the store on a miss; a default
    /// placeholder if there is none). A profile that cannot be read is fatal: starting it afresh
    /// would overwrite the shopper's history at the next commit. Returns its cache key.
    fn fetch(&mut self, partition: i32, key: String) -> anyhow::Result<(i32, String)> {
        let cache_key = (partition, key);
        if !self.cache.contains(&cache_key) {
            let (profile, committed_timer) = if let Some(p) = self.batch.spilled.remove(&cache_key)
            {
                p
            } else if let Some(timer) = self.batch.deleted.remove(&cache_key) {
                // Removed earlier in this batch and now created again.
                (Profile::default(), timer)
            } else {
                self.metrics.state_reads.inc();
                let p = self
                    .store
                    .profile(partition, &cache_key.1)
                    .with_context(|| format!("reading a profile of partition {partition}"))?
                    .unwrap_or_default();
                let t = p.next_timer;
                (p, t)
            };
            let slot = Slot {
                profile,
                dirty: false,
                committed_timer,
            };
            if let Some((old_key, old)) = self.cache.push(cache_key.clone(), slot) {
                if old.dirty && old_key != cache_key {
                    self.batch
                        .spilled
                        .insert(old_key, (old.profile, old.committed_timer));
                }
            }
        }
        Ok(cache_key)
    }

    /// As [`Self::fetch`], and marks the profile dirty: the caller is about to change it.
    fn load(&mut self, partition: i32, key: String) -> anyhow::Result<(i32, String)> {
        let cache_key = self.fetch(partition, key)?;
        self.mark_dirty(&cache_key);
        Ok(cache_key)
    }

    /// The cached profile changed: it is written with the batch.
    fn mark_dirty(&mut self, cache_key: &(i32, String)) {
        let slot = self.cache.get_mut(cache_key).expect("fetched");
        if !slot.dirty {
            slot.dirty = true;
            self.batch.dirty.push(cache_key.clone());
        }
    }

    /// What this partition holds for an identity value: an alias, a profile, or nothing.
    fn local(&mut self, partition: i32, key: &str) -> anyhow::Result<Local> {
        let ck = (partition, key.to_owned());
        let alias = match self.batch.aliases.get(&ck) {
            Some(a) => a.clone(),
            None if self.cache.peek(&ck).is_some_and(|s| !is_new(&s.profile)) => None,
            None => self
                .store
                .alias(partition, key)
                .with_context(|| format!("reading an identity alias of partition {partition}"))?,
        };
        if let Some(owner) = alias {
            return Ok(Local::Alias(owner));
        }
        let ck = self.fetch(partition, key.to_owned())?;
        let slot = self.cache.peek(&ck).expect("fetched");
        Ok(if is_new(&slot.profile) {
            Local::Unknown
        } else {
            Local::Profile(slot.profile.identities.kind)
        })
    }

    /// The stream clock of a partition number, resumed from the store on first use.
    fn clock(&mut self, partition: i32) -> anyhow::Result<&mut StreamClock> {
        if !self.clocks.contains_key(&partition) {
            let stored = self
                .store
                .clock(partition)
                .with_context(|| format!("reading the stream clock of partition {partition}"))?;
            self.clocks
                .insert(partition, StreamClock::new(stored, self.lateness));
        }
        Ok(self.clocks.get_mut(&partition).expect("just inserted"))
    }

    /// Queues a message of the identity protocol for the owner of `target`.
    fn send_internal(&mut self, target: String, message: ProtocolMessage) {
        self.metrics
            .repartitioned
            .with_label_values(&[message.name()])
            .inc();
        let partition = identity::partition_for(target.as_bytes(), self.partitions);
        let payload = identity::encode(&Internal {
            target: target.clone(),
            via: self.current.clone(),
            message,
        });
        self.outgoing.push(Outgoing {
            topic: OutTopic::Repartition,
            key: target.into_bytes(),
            payload: Some(payload),
            headers: None,
            timestamp: None,
            partition: Some(partition),
        });
    }

    /// Step 1 of the identity protocol: an event for `key` read on `partition` goes to the profile
    /// it belongs to, here or through the repartition topic. `via`: the repartition message it
    /// came in (checked against the profile's positions: a sender's crash can repeat it).
    fn route_event(
        &mut self,
        partition: i32,
        key: String,
        ev: Event,
        raw: &Raw,
        via: Option<&Position>,
    ) -> anyhow::Result<()> {
        let home = identity::partition_for(key.as_bytes(), self.partitions);
        if home != partition {
            self.metrics.misrouted.inc();
            self.send_internal(key, ProtocolMessage::Event(raw.owned()));
            return Ok(());
        }
        match self.local(partition, &key)? {
            Local::Alias(owner) => {
                self.send_internal(owner, ProtocolMessage::Event(raw.owned()));
                return Ok(());
            }
            Local::Unknown if ev.kind == EventType::AccountDeleted => {
                // Nothing held under this key: the shopper may be known by the event's other
                // identities (a profile record keyed by customer id, a profile keyed by e-mail).
                for id in identity::event_ids(&ev) {
                    if id.value != key {
                        self.send_internal(
                            id.value,
                            ProtocolMessage::Delete {
                                source: "account_deleted".into(),
                                requested_at: ev.time,
                            },
                        );
                    }
                }
                return Ok(());
            }
            _ => {}
        }
        if ev.kind == EventType::AccountDeleted {
            return self.delete_profile(partition, key, &ev.id, ev.time, "account_deleted");
        }
        let ck = self.load(partition, key)?;
        let slot = self.cache.get_mut(&ck).expect("loaded");
        if let Some(v) = via {
            // A repeat from the same sender, or the same event by another path.
            let new_hop = slot.profile.record_hop(&v.topic, v.partition, v.offset);
            if !new_hop || !slot.profile.first_forward(raw.origin_hash()) {
                self.metrics.duplicates_skipped.inc();
                return Ok(());
            }
        }
        if is_new(&slot.profile) {
            let kind = identity::kind_of(&ck.1, &ev);
            slot.profile.identities.kind = kind;
            if kind == KeyKind::Key {
                slot.profile.identities.key = Some(ck.1.clone());
            }
        }
        match identity::plan(&ck.1, slot.profile.identities.kind, &ev) {
            Plan::Absorb(survivor) => {
                let cause = ev.id.clone();
                self.absorb(ck, survivor, Some(raw.owned()), &cause, ev.time)
            }
            Plan::Survive => self.apply_event(ck, ev, raw),
        }
    }

    /// Applies a valid event to its profile, which is in the cache.
    fn apply_event(&mut self, ck: (i32, String), ev: Event, raw: &Raw) -> anyhow::Result<()> {
        let partition = ck.0;
        let wall = self.wall;
        let clock = self.clock(partition)?;
        let late = clock.observe(ev.time, wall);
        let now = clock.now().unwrap_or(ev.time);
        if late {
            self.metrics.late_events.inc();
        }
        self.outputs.clear();
        let slot = self.cache.get_mut(&ck).expect("loaded");
        let source = Source {
            topic: raw.origin.0,
            partition: raw.origin.1,
            offset: raw.origin.2,
        };
        self.core.process(
            &ck.1,
            &mut slot.profile,
            &ev,
            source,
            now,
            &mut self.outputs,
        );
        self.event_counters[ev.kind.index()].inc();
        self.progress.events += 1;
        let claims = std::mem::take(&mut self.outputs.claims);
        for why in self.outputs.refused.drain(..) {
            self.metrics
                .identity_links
                .with_label_values(&[&format!("refused_{}", why.as_str())])
                .inc();
        }
        let owner_kind = slot.profile.identities.kind;
        self.emit(partition);
        for id in claims {
            self.metrics
                .identity_links
                .with_label_values(&["linked"])
                .inc();
            self.send_internal(
                id.value,
                ProtocolMessage::Claim {
                    kind: id.kind,
                    owner: ck.1.clone(),
                    owner_kind,
                },
            );
        }
        Ok(())
    }

    /// Step 2 of the protocol, for the absorbed side: the profile (in the cache) EXITs its
    /// segments, is removed, its key becomes an alias of the survivor, and the profile (and the
    /// linking event) travel to the survivor's owner.
    fn absorb(
        &mut self,
        ck: (i32, String),
        survivor: Id,
        event: Option<RawEvent>,
        cause: &str,
        at: i64,
    ) -> anyhow::Result<()> {
        let slot = self.cache.pop(&ck).expect("loaded");
        let mut profile = slot.profile;
        self.outputs.clear();
        let at = at.max(self.clock(ck.0)?.now().unwrap_or(at));
        self.core
            .exit_all(&ck.1, &mut profile, at, "merge", cause, &mut self.outputs);
        self.emit(ck.0);
        self.metrics
            .identity_links
            .with_label_values(&["merged"])
            .inc();
        self.batch.deleted.insert(ck.clone(), slot.committed_timer);
        self.batch
            .aliases
            .insert(ck.clone(), Some(survivor.value.clone()));
        let state = (!is_new(&profile)).then(|| profile::encode(&profile));
        self.send_internal(
            survivor.value,
            ProtocolMessage::Merge {
                from: ck.1,
                profile: state,
                kind: survivor.kind,
                event,
            },
        );
        Ok(())
    }

    /// Removes everything held about the profile `key` of `partition`: EXITs (cause
    /// `deletion`), the profile and its timer, its aliases on their partitions (by `Forget`),
    /// and tombstones on the output topics for each of its keys.
    fn delete_profile(
        &mut self,
        partition: i32,
        key: String,
        cause: &str,
        at: i64,
        source: &str,
    ) -> anyhow::Result<()> {
        let ck = self.load(partition, key)?;
        let slot = self.cache.pop(&ck).expect("loaded");
        let mut profile = slot.profile;
        if is_new(&profile) {
            return Ok(());
        }
        let at = at.max(self.clock(partition)?.now().unwrap_or(at));
        self.outputs.clear();
        self.core.exit_all(
            &ck.1,
            &mut profile,
            at,
            "deletion",
            cause,
            &mut self.outputs,
        );
        self.emit(partition);
        self.batch.deleted.insert(ck.clone(), slot.committed_timer);
        self.metrics.deletions.with_label_values(&[source]).inc();
        let mut keys = vec![ck.1.clone()];
        for id in identity::all_ids(&profile) {
            if id.value != ck.1 {
                self.send_internal(
                    id.value.clone(),
                    ProtocolMessage::Forget {
                        owner: ck.1.clone(),
                    },
                );
                keys.push(id.value);
            }
        }
        for k in keys {
            for topic in [OutTopic::Audience, OutTopic::Journeys] {
                self.outgoing.push(Outgoing {
                    topic,
                    key: k.clone().into_bytes(),
                    payload: None,
                    headers: Some(OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: "tailor.tombstone",
                        value: Some("deletion"),
                    })),
                    timestamp: Some(at),
                    partition: None,
                });
            }
        }
        Ok(())
    }

    /// Decodes and validates an event carried by a repartition message.
    fn decode_raw<'a>(&self, raw: &'a RawEvent) -> Result<(Event, Raw<'a>), Rejection> {
        let family = Family::ALL
            .get(raw.family as usize)
            .copied()
            .ok_or_else(|| {
                (
                    "bad_internal_message",
                    format!("unknown family {}", raw.family),
                )
            })?;
        let msg = self
            .catalog
            .decode(family, &raw.payload)
            .map_err(|e| (e.code(), e.to_string()))?;
        let ev = Event::from_input(msg, self.wall).map_err(|e| (e.code(), e.to_string()))?;
        let o = &raw.origin;
        let raw = Raw {
            family,
            payload: &raw.payload,
            origin: (&o.topic, o.partition, o.offset),
        };
        Ok((ev, raw))
    }

    /// Steps 1 to 5 of the protocol, for a message read from the repartition topic.
    fn apply_internal(
        &mut self,
        partition: i32,
        payload: &[u8],
    ) -> anyhow::Result<Result<(), Rejection>> {
        let msg = match identity::decode(payload) {
            Ok(m) => m,
            Err(e) => return Ok(Err(("bad_internal_message", e))),
        };
        let Internal {
            target,
            via,
            message,
        } = msg;
        match message {
            ProtocolMessage::Event(raw) => {
                let (ev, raw) = match self.decode_raw(&raw) {
                    Ok(decoded) => decoded,
                    Err(r) => return Ok(Err(r)),
                };
                self.route_event(partition, target, ev, &raw, Some(&via))?;
            }
            ProtocolMessage::Merge {
                from,
                profile,
                kind,
                event,
            } => {
                if let Local::Alias(owner) = self.local(partition, &target)? {
                    // The survivor was itself absorbed since: on to its survivor.
                    self.send_internal(
                        owner,
                        ProtocolMessage::Merge {
                            from,
                            profile,
                            kind,
                            event,
                        },
                    );
                    return Ok(Ok(()));
                }
                let other = match profile.as_deref().map(profile::decode).transpose() {
                    Ok(p) => p.unwrap_or_default(),
                    Err(e) => return Ok(Err(("bad_internal_message", e))),
                };
                let ck = self.load(partition, target)?;
                let slot = self.cache.get_mut(&ck).expect("loaded");
                if !slot
                    .profile
                    .record_hop(&via.topic, via.partition, via.offset)
                {
                    self.metrics.duplicates_skipped.inc();
                    return Ok(Ok(()));
                }
                if is_new(&slot.profile) {
                    slot.profile.identities.kind = kind;
                    let own = Id {
                        kind,
                        value: ck.1.clone(),
                    };
                    let _ = identity::link(&mut slot.profile, &own, usize::MAX);
                }
                let clock = self.clocks.get(&partition).and_then(StreamClock::now);
                let slot = self.cache.get_mut(&ck).expect("loaded");
                let now = clock
                    .unwrap_or(i64::MIN)
                    .max(slot.profile.last_seen.unwrap_or(i64::MIN))
                    .max(other.last_seen.unwrap_or(i64::MIN));
                if now > i64::MIN {
                    self.outputs.clear();
                    self.core.merge(
                        &ck.1,
                        &mut slot.profile,
                        &from,
                        other,
                        now,
                        &mut self.outputs,
                    );
                    self.emit(partition);
                } else {
                    slot.profile.merge(other, self.core.max_identities());
                }
                if let Some(raw) = event {
                    // It decoded at its origin; a failure now is left out with the rest.
                    if let Ok((ev, raw)) = self.decode_raw(&raw) {
                        let slot = self.cache.get_mut(&ck).expect("loaded");
                        if slot.profile.first_forward(raw.origin_hash()) {
                            // The merge itself was checked against the positions.
                            self.route_event(partition, ck.1, ev, &raw, None)?;
                        } else {
                            self.metrics.duplicates_skipped.inc();
                        }
                    }
                }
            }
            ProtocolMessage::Claim {
                kind,
                owner,
                owner_kind,
            } => {
                let id = Id {
                    kind,
                    value: target.clone(),
                };
                let local = self.local(partition, &target)?;
                match identity::on_claim(&id, &local, &owner, owner_kind) {
                    ClaimOutcome::Link | ClaimOutcome::Repoint => {
                        let result = if matches!(local, Local::Alias(_)) {
                            "repointed"
                        } else {
                            "linked_here"
                        };
                        self.metrics
                            .identity_links
                            .with_label_values(&[result])
                            .inc();
                        self.batch.aliases.insert((partition, target), Some(owner));
                    }
                    ClaimOutcome::Already => {}
                    ClaimOutcome::Absorb => {
                        let ck = self.load(partition, target)?;
                        let at = self
                            .cache
                            .peek(&ck)
                            .and_then(|s| s.profile.last_seen)
                            .unwrap_or(i64::MIN);
                        let cause = format!("claim@{}/{}/{}", via.topic, via.partition, via.offset);
                        self.absorb(
                            ck,
                            Id {
                                kind: owner_kind,
                                value: owner,
                            },
                            None,
                            &cause,
                            at,
                        )?;
                    }
                    ClaimOutcome::Refuse => {
                        self.metrics
                            .identity_links
                            .with_label_values(&["refused_conflict"])
                            .inc();
                    }
                }
            }
            ProtocolMessage::Forget { owner } => {
                if self.local(partition, &target)? == Local::Alias(owner) {
                    self.batch.aliases.insert((partition, target), None);
                }
            }
            ProtocolMessage::Delete {
                source,
                requested_at,
            } => match self.local(partition, &target)? {
                Local::Alias(owner) => {
                    self.batch.aliases.insert((partition, target), None);
                    self.send_internal(
                        owner,
                        ProtocolMessage::Delete {
                            source,
                            requested_at,
                        },
                    );
                }
                Local::Profile(_) => {
                    let cause = format!("{source}@{requested_at}");
                    let source = if source == "admin" {
                        "admin"
                    } else {
                        "account_deleted"
                    };
                    self.delete_profile(partition, target, &cause, requested_at, source)?;
                }
                Local::Unknown => {}
            },
        }
        Ok(Ok(()))
    }

    /// Fires the due timers of every assigned partition, after moving each partition's clock
    /// (wall clock when caught up). At most `limit` timers per call; the rest wait for the next
    /// batch, which starts at once.
    fn fire_timers(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        assigned: &[(String, i32)],
        limit: usize,
    ) -> anyhow::Result<()> {
        let mut numbers: Vec<i32> = assigned.iter().map(|(_, p)| *p).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let wall = now_ms();
        let mut budget = limit;
        for p in numbers {
            let caught_up = self.follow_wall
                && assigned
                    .iter()
                    .filter(|(_, q)| *q == p)
                    .all(|(t, _)| self.caught_up(consumer, t, p));
            let clock = self.clock(p)?;
            clock.tick(wall, caught_up);
            let Some(now) = clock.now() else { continue };
            self.metrics
                .stream_clock
                .with_label_values(&[&p.to_string()])
                .set(now.div_euclid(1000));
            if budget == 0 {
                continue;
            }
            let due = tokio::task::block_in_place(|| self.store.due_timers(p, now, budget))
                .with_context(|| format!("reading the due timers of partition {p}"))?;
            budget -= due.len();
            for (at, key) in due {
                self.outputs.clear();
                let cache_key = self.load(p, key)?;
                let slot = self.cache.get_mut(&cache_key).expect("loaded");
                if slot.committed_timer != Some(at) {
                    // An index entry no profile owns (not written by Tailor): drop it.
                    self.batch.stray_timers.push((p, at, cache_key.1.clone()));
                }
                self.core
                    .advance(&cache_key.1, &mut slot.profile, now, &mut self.outputs);
                self.emit(p);
            }
        }
        Ok(())
    }

    /// Re-evaluates, under the definitions in force, the profiles of assigned partitions that
    /// were last evaluated under other definitions: at most `limit` profiles per call, through
    /// the same core as live events, with a cursor committed with the batch (a crash resumes
    /// where the last commit left off; re-done profiles emit nothing twice: their memberships are
    /// already in state). Returns whether work remains.
    fn sweep(&mut self, assigned: &[(String, i32)], limit: usize) -> anyhow::Result<bool> {
        let mut numbers: Vec<i32> = assigned.iter().map(|(_, p)| *p).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let mut budget = limit;
        let mut pending = 0;
        for p in numbers {
            let sweep = match self.sweeps.get(&p) {
                Some(s) if s.version == self.defs_version => s.clone(),
                _ => {
                    let stored = self
                        .store
                        .meta(&sweep_key(p))
                        .with_context(|| {
                            format!("reading the re-evaluation cursor of partition {p}")
                        })?
                        .and_then(|b| postcard::from_bytes::<Sweep>(&b).ok())
                        .filter(|s| s.version == self.defs_version);
                    let s = stored.unwrap_or(Sweep {
                        version: self.defs_version,
                        after: None,
                        done: false,
                    });
                    self.sweeps.insert(p, s.clone());
                    s
                }
            };
            if sweep.done {
                continue;
            }
            if budget == 0 {
                pending += 1;
                continue;
            }
            let keys = tokio::task::block_in_place(|| {
                self.store
                    .profile_keys_after(p, sweep.after.as_deref(), budget)
            })
            .with_context(|| format!("listing the profiles of partition {p}"))?;
            let done = keys.len() < budget;
            budget -= keys.len();
            let now = self.clock(p)?.now().unwrap_or(i64::MIN);
            for key in &keys {
                let ck = self.fetch(p, key.clone())?;
                let slot = self.cache.get_mut(&ck).expect("fetched");
                let timer_before = slot.profile.next_timer;
                self.outputs.clear();
                self.core.reevaluate(
                    &ck.1,
                    &mut slot.profile,
                    now,
                    self.defs_version,
                    &mut self.outputs,
                );
                // Only profiles the new rules changed are written again.
                let o = &self.outputs;
                if !o.changes.is_empty()
                    || !o.triggers.is_empty()
                    || o.timers_fired > 0
                    || slot.profile.next_timer != timer_before
                {
                    self.mark_dirty(&ck);
                }
                self.emit(p);
                self.metrics.reevaluated.inc();
                self.swept += 1;
            }
            let next = Sweep {
                version: self.defs_version,
                after: keys.last().cloned().or(sweep.after),
                done,
            };
            if done {
                info!(
                    partition = p,
                    "re-evaluation under the new segment definitions finished"
                );
            } else {
                pending += 1;
            }
            self.batch.meta.push((
                sweep_key(p),
                Some(postcard::to_stdvec(&next).expect("cursor serialises")),
            ));
            self.sweeps.insert(p, next);
        }
        self.metrics.reevaluation_pending.set(pending);
        Ok(pending > 0)
    }

    /// Reads the schemas directory again (SIGHUP). Refused files are logged with the reason;
    /// the others, and every schema compiled in or from the registry, stay in force.
    fn reload_schemas(&mut self) {
        let Some(dir) = self.schemas_dir.clone() else {
            return;
        };
        let (loaded, refused) = crate::schemas::load(&mut self.catalog, &dir);
        for e in &refused {
            error!(error = %e, "writer schema refused");
        }
        let result = if refused.is_empty() { "ok" } else { "refused" };
        self.metrics
            .schema_reloads
            .with_label_values(&[result])
            .inc();
        info!(dir = %dir.display(), loaded = loaded.len(), refused = refused.len(), "schemas directory reloaded");
    }

    /// The registry id this message waits for: a Confluent-framed event (or one carried by a
    /// repartition message) whose writer schema the registry has not answered for yet.
    fn awaited_schema(&self, topic: &str, payload: &[u8]) -> Option<u32> {
        self.registry.as_ref()?;
        if topic != self.topics.repartition {
            return codec::confluent_id(payload).filter(|id| !self.catalog.id_settled(*id));
        }
        let raw = match identity::decode(payload).ok()?.message {
            ProtocolMessage::Event(raw) => raw,
            ProtocolMessage::Merge { event, .. } => event?,
            _ => return None,
        };
        codec::confluent_id(&raw.payload).filter(|id| !self.catalog.id_settled(*id))
    }

    /// Where a topic-partition resumes: after the last message applied, else its stored offset.
    fn next_offset(
        &self,
        consumer: &StreamConsumer<KafkaContext>,
        topic: &str,
        partition: i32,
    ) -> anyhow::Result<Offset> {
        if let Some(next) = self.positions.get(&(topic.to_owned(), partition)) {
            return Ok(Offset::Offset(*next));
        }
        Ok(self
            .store
            .next_offset(topic, partition)?
            .map_or(consumer.context().start_from, Offset::Offset))
    }

    /// Holds partition number `partition` at the message `topic`/`offset` until the registry
    /// answers for schema `id`: that message is not applied (nor dead-lettered); every assigned
    /// topic of that number is paused and sought back to its next message, so the partition's
    /// events and its clock wait together (events of one partition number share a clock and
    /// timers); the look-up retries in the background. Other partitions go on.
    fn hold(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        assigned: &[(String, i32)],
        (topic, partition, offset): (&str, i32, i64),
        id: u32,
    ) -> anyhow::Result<()> {
        for (t, _) in assigned.iter().filter(|(_, p)| *p == partition) {
            let to = if t == topic {
                Offset::Offset(offset)
            } else {
                self.next_offset(consumer, t, partition)?
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(t, partition);
            // Pause first: pausing moves the fetch position to after the last message handed
            // out; the seek then sets it back where it must be.
            consumer
                .pause(&tpl)
                .with_context(|| format!("pausing {t}/{partition}"))?;
            consumer
                .seek(t, partition, to, Duration::from_secs(10))
                .with_context(|| format!("seeking {t}/{partition} back to {to:?}"))?;
        }
        self.held.insert(partition, id);
        self.metrics.paused_partitions.set(self.held.len() as i64);
        info!(
            topic,
            partition,
            offset,
            schema_id = id,
            "partition paused until the schema registry answers for this schema id"
        );
        self.look_up(id);
        Ok(())
    }

    /// Starts a background look-up of schema `id` (once per id), retried with backoff while the
    /// registry cannot be reached.
    fn look_up(&mut self, id: u32) {
        let Some(registry) = self.registry.clone() else {
            return;
        };
        if !self.catalog.request_id(id) {
            return;
        }
        let tx = self.lookups.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut failures = 0u32;
            loop {
                let r = registry.clone();
                let answer = tokio::task::spawn_blocking(move || r.schema_by_id(id)).await;
                match answer {
                    Ok(Ok(lookup)) => {
                        let result = match lookup {
                            Lookup::Found(_) => "found",
                            Lookup::NotFound => "not_found",
                        };
                        metrics.registry_requests.with_label_values(&[result]).inc();
                        if failures > 0 {
                            info!(schema_id = id, failures, "schema registry answered again");
                        }
                        let _ = tx.send((id, lookup));
                        return;
                    }
                    Ok(Err(e)) => {
                        metrics
                            .registry_requests
                            .with_label_values(&["error"])
                            .inc();
                        failures += 1;
                        // At the first failure, then less often, and at least every 30 tries.
                        if failures.is_power_of_two() || failures % 30 == 0 {
                            if e.is_permanent() {
                                error!(schema_id = id, failures, error = %e, "the schema registry refuses Tailor's requests (check schema_registry credentials and URL); its partitions stay paused");
                            } else {
                                warn!(schema_id = id, failures, error = %e, retry_in = ?backoff, "schema registry look-up failed; its partitions stay paused");
                            }
                        }
                    }
                    Err(e) => {
                        metrics
                            .registry_requests
                            .with_label_values(&["error"])
                            .inc();
                        failures += 1;
                        warn!(schema_id = id, error = %e, "schema registry look-up task failed; retrying");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        });
    }

    /// Takes a registry answer in and resumes the partitions it held.
    fn take_lookup(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        assigned: &[(String, i32)],
        (id, lookup): (u32, Lookup),
    ) -> anyhow::Result<()> {
        match &lookup {
            Lookup::Found(json) => self.catalog.resolve_id(id, Some(json)),
            Lookup::NotFound => self.catalog.resolve_id(id, None),
        }
        let settled: Vec<i32> = self
            .held
            .iter()
            .filter(|(_, id)| self.catalog.id_settled(**id))
            .map(|(p, _)| *p)
            .collect();
        for partition in settled {
            self.release(consumer, assigned, partition)?;
        }
        Ok(())
    }

    /// Resumes every assigned topic of partition number `partition`.
    fn release(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        assigned: &[(String, i32)],
        partition: i32,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (t, _) in assigned.iter().filter(|(_, p)| *p == partition) {
            tpl.add_partition(t, partition);
        }
        if tpl.count() > 0 {
            consumer
                .resume(&tpl)
                .with_context(|| format!("resuming partition {partition}"))?;
        }
        if self.held.remove(&partition).is_some() {
            info!(partition, "partition resumed");
        }
        self.metrics.paused_partitions.set(self.held.len() as i64);
        Ok(())
    }

    /// Reads the segments file again (SIGHUP). Invalid definitions are logged with their
    /// line:column and the ones in force stay.
    fn reload_definitions(&mut self) {
        let path = self.segments_file.clone();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|src| {
                crate::segments::SegmentSet::parse(&src)
                    .map(|set| (set, src))
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Err(e) => {
                self.metrics
                    .definition_reloads
                    .with_label_values(&["invalid"])
                    .inc();
                error!(file = %path.display(), error = %e, "segment definitions not reloaded: the ones in force stay");
            }
            Ok((set, src)) => {
                if set.fingerprint() == self.defs_version {
                    self.metrics
                        .definition_reloads
                        .with_label_values(&["unchanged"])
                        .inc();
                    info!("segment definitions reloaded: no rule changed");
                    self.core.set_segments(Arc::new(set));
                    return;
                }
                self.metrics
                    .definition_reloads
                    .with_label_values(&["applied"])
                    .inc();
                self.start_definitions(set, &src);
            }
        }
    }

    /// Puts definitions in force; every profile is re-evaluated under them (see [`Self::sweep`]).
    fn start_definitions(&mut self, set: crate::segments::SegmentSet, src: &str) {
        let old = self
            .store
            .meta(DEFINITIONS_KEY)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| crate::segments::SegmentSet::parse(&s).ok())
            .unwrap_or_else(|| self.core.segments().clone());
        let (added, changed, removed) = set.diff(&old);
        info!(
            ?added,
            ?changed,
            ?removed,
            "segment definitions changed: re-evaluating every profile"
        );
        self.defs_version = set.fingerprint();
        self.core.set_segments(Arc::new(set));
        self.batch
            .meta
            .push((DEFINITIONS_KEY.to_vec(), Some(src.as_bytes().to_vec())));
    }

    /// Whether this worker has read everything in a partition (librdkafka's cached high
    /// watermark from the last fetch; no network round trip).
    fn caught_up(
        &self,
        consumer: &StreamConsumer<KafkaContext>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let Ok(name) = std::ffi::CString::new(topic) else {
            return false;
        };
        let (mut lo, mut hi) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid while `consumer` lives, `name` outlives the call,
        // and librdkafka only writes the two offsets.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
                &mut lo,
                &mut hi,
            )
        };
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || hi < 0 {
            return false; // no fetch response yet
        }
        let next = self
            .positions
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(lo);
        next >= hi
    }

    /// Counts and queues what the core produced for a profile of `partition`.
    fn emit(&mut self, partition: i32) {
        self.batch.timers_fired += self.outputs.timers_fired;
        self.metrics.timers_fired.inc_by(self.outputs.timers_fired);
        for change in self.outputs.changes.drain(..) {
            let delta = if change.direction == crate::wire::Direction::Entered {
                1
            } else {
                -1
            };
            *self
                .batch
                .segment_deltas
                .entry((partition, change.segment_id.clone()))
                .or_default() += delta;
            self.metrics
                .audience_changes
                .with_label_values(&[&change.segment_id, change.direction.as_str()])
                .inc();
            self.progress.changes += 1;
            let payload = encode::audience_change(&change)
                .expect("AudienceChange matches avro/audience_change.avsc");
            self.outgoing.push(Outgoing {
                topic: OutTopic::Audience,
                key: change.profile_key.into_bytes(),
                payload: Some(payload),
                headers: None,
                timestamp: Some(change.event_time),
                partition: None,
            });
        }
        for trigger in self.outputs.triggers.drain(..) {
            self.metrics
                .journey_triggers
                .with_label_values(&[&trigger.journey_id])
                .inc();
            self.progress.triggers += 1;
            let payload = encode::journey_trigger(&trigger)
                .expect("JourneyTrigger matches avro/journey_trigger.avsc");
            self.outgoing.push(Outgoing {
                topic: OutTopic::Journeys,
                key: trigger.profile_key.into_bytes(),
                payload: Some(payload),
                headers: None,
                timestamp: Some(trigger.triggered_at),
                partition: None,
            });
        }
        for (journey, why) in self.outputs.suppressed.drain(..) {
            self.metrics
                .journey_suppressed
                .with_label_values(&[&journey, why.as_str()])
                .inc();
        }
    }

    /// Hands queued outputs to the producer, waiting while its queue is full.
    async fn send_outgoing(&mut self) -> anyhow::Result<()> {
        for out in self.outgoing.drain(..) {
            let topic = match out.topic {
                OutTopic::Audience => &self.topics.audience,
                OutTopic::Journeys => &self.topics.journeys,
                OutTopic::DeadLetter => &self.topics.dead_letter,
                OutTopic::Repartition => &self.topics.repartition,
            };
            let reframed = match (self.output_ids, &out.payload, &out.topic) {
                (Some(ids), Some(p), OutTopic::Audience) => Some(codec::to_confluent(p, ids[0])),
                (Some(ids), Some(p), OutTopic::Journeys) => Some(codec::to_confluent(p, ids[1])),
                (Some(ids), Some(p), OutTopic::DeadLetter) => Some(codec::to_confluent(p, ids[2])),
                _ => None,
            };
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).key(&out.key[..]);
            if let Some(p) = reframed.as_ref().or(out.payload.as_ref()) {
                record = record.payload(&p[..]);
            }
            if let Some(h) = out.headers {
                record = record.headers(h);
            }
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            if let Some(ts) = out.timestamp {
                record = record.timestamp(ts);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        self.batch.deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => bail!("producing to {topic} failed: {e}"),
                }
            }
        }
        Ok(())
    }

    /// A rebalance revoked partitions: roll the whole open batch back. Its profiles may mix
    /// effects of revoked and kept partitions (profiles are keyed by partition *number* across the
    /// co-partitioned topics), so committing part of it could apply a message twice later. Kept
    /// partitions are sought back to their stored offsets and their messages applied again (with
    /// the same output ids); profiles of partitions no longer assigned at all leave the cache.
    fn rollback(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        still_assigned: &[(String, i32)],
        start_from: Offset,
    ) -> anyhow::Result<Vec<(String, i32)>> {
        for key in self.batch.dirty.drain(..) {
            self.cache.pop(&key);
        }
        self.batch.spilled.clear();
        // Keys absorbed or deleted in the batch may sit in the cache as placeholders.
        for key in self.batch.deleted.keys().chain(self.batch.aliases.keys()) {
            self.cache.pop(key);
        }
        self.batch.deleted.clear();
        self.batch.aliases.clear();
        self.batch.meta.clear();
        self.sweeps.clear();
        self.batch.stray_timers.clear();
        self.batch.timers_fired = 0;
        self.batch.segment_deltas.clear();
        // Clocks and positions moved with the dropped messages: resume them from the store.
        self.clocks.clear();
        self.positions.clear();
        self.batch.deliveries.clear();
        self.batch.messages = 0;
        self.batch.started = None;
        let mut sought = Vec::new();
        for ((topic, partition), _) in self.batch.offsets.drain(..) {
            if still_assigned
                .iter()
                .any(|(t, p)| *t == topic && *p == partition)
            {
                let to = self
                    .store
                    .next_offset(&topic, partition)?
                    .map_or(start_from, Offset::Offset);
                consumer
                    .seek(&topic, partition, to, Duration::from_secs(10))
                    .with_context(|| {
                        format!("seeking {topic}/{partition} back to {to:?} after a rebalance")
                    })?;
                sought.push((topic, partition));
            }
        }
        let gone: Vec<(i32, String)> = self
            .cache
            .iter()
            .filter(|((p, _), _)| !still_assigned.iter().any(|(_, q)| q == p))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.cache.pop(&k);
        }
        Ok(sought)
    }

    /// Applies the assignments and revocations the rebalance callback recorded. Returns the
    /// partitions sought back to their stored offsets.
    fn apply_rebalances(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        assigned: &mut Vec<(String, i32)>,
    ) -> anyhow::Result<Vec<(String, i32)>> {
        let events =
            std::mem::take(&mut *consumer.context().rebalances.lock().expect("not poisoned"));
        let mut sought = Vec::new();
        for ev in events {
            match ev {
                Rebalance::Assigned(p) => {
                    // A partition held when it was revoked must not come back paused (whether an
                    // application's pause survives unassign and assign depends on librdkafka's
                    // version and the assignor), with nothing left here to resume it. Resume
                    // what is assigned (a no-op when not paused); a message still waiting for the
                    // registry is met again and holds its partition again.
                    let mut tpl = TopicPartitionList::new();
                    for (topic, partition) in &p {
                        tpl.add_partition(topic, *partition);
                        self.held.remove(partition);
                    }
                    consumer
                        .resume(&tpl)
                        .context("resuming newly assigned partitions")?;
                    self.metrics.paused_partitions.set(self.held.len() as i64);
                    for (topic, partition) in &p {
                        if let Some(next) = self.store.next_offset(topic, *partition)? {
                            self.positions.insert((topic.clone(), *partition), next);
                        }
                    }
                    assigned.extend(p)
                }
                Rebalance::Revoked(p) => {
                    for (_, partition) in &p {
                        self.held.remove(partition);
                    }
                    self.metrics.paused_partitions.set(self.held.len() as i64);
                    assigned.retain(|x| !p.contains(x));
                    let start_from = consumer.context().start_from;
                    sought.extend(self.rollback(consumer, assigned, start_from)?);
                }
            }
        }
        self.metrics.assigned_partitions.set(assigned.len() as i64);
        Ok(sought)
    }

    /// Waits for the batch's outputs, then commits its state and offsets atomically.
    async fn flush(&mut self, consumer: &StreamConsumer<KafkaContext>) -> anyhow::Result<()> {
        let started = self.batch.started.take().unwrap_or_else(Instant::now);
        let t_deliver = Instant::now();
        for delivery in self.batch.deliveries.drain(..) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => bail!("output delivery failed: {e}; stopping without committing (the batch will be processed again)"),
                Err(_) => bail!("producer closed while outputs were in flight; stopping without committing"),
            }
        }
        self.metrics
            .phase_seconds
            .with_label_values(&["deliver"])
            .observe(t_deliver.elapsed().as_secs_f64());

        let t_commit = Instant::now();
        let mut commit = Commit::default();
        // The timer index follows each profile's `next_timer`, in the same write batch.
        let mut timer_moved = |partition: i32, key: &str, from: Option<i64>, to: Option<i64>| {
            if from != to {
                if let Some(t) = from {
                    commit.timers_removed.push((partition, t, key.to_owned()));
                }
                if let Some(t) = to {
                    commit.timers_added.push((partition, t, key.to_owned()));
                }
            }
        };
        let mut profiles: Vec<(i32, String, Vec<u8>)> = Vec::with_capacity(self.batch.dirty.len());
        for key in self.batch.dirty.drain(..) {
            // A dirty profile pushed out of the cache is in `spilled` instead.
            if let Some(slot) = self.cache.peek_mut(&key).filter(|s| s.dirty) {
                timer_moved(key.0, &key.1, slot.committed_timer, slot.profile.next_timer);
                slot.committed_timer = slot.profile.next_timer;
                let bytes = profile::encode(&slot.profile);
                profiles.push((key.0, key.1, bytes));
                slot.dirty = false;
            }
        }
        for ((partition, key), (p, committed)) in self.batch.spilled.drain() {
            timer_moved(partition, &key, committed, p.next_timer);
            profiles.push((partition, key, profile::encode(&p)));
        }
        let mut deleted = Vec::with_capacity(self.batch.deleted.len());
        for ((partition, key), committed) in self.batch.deleted.drain() {
            timer_moved(partition, &key, committed, None);
            deleted.push((partition, key));
        }
        commit.profiles_deleted = deleted;
        commit.profiles = profiles;
        commit.aliases = self
            .batch
            .aliases
            .drain()
            .map(|((p, id), owner)| (p, id, owner))
            .collect();
        commit.meta = std::mem::take(&mut self.batch.meta);
        commit.timers_removed.append(&mut self.batch.stray_timers);
        commit.clocks = self
            .clocks
            .iter()
            .filter_map(|(p, c)| c.now().map(|t| (*p, t)))
            .collect();
        commit.offsets = self
            .batch
            .offsets
            .drain(..)
            .map(|((t, p), o)| (t, p, o))
            .collect();
        commit.segment_deltas = self
            .batch
            .segment_deltas
            .drain()
            .map(|((p, s), d)| (p, s, d))
            .filter(|x| x.2 != 0)
            .collect();
        let store = self.store.clone();
        tokio::task::block_in_place(|| store.commit(&commit))
            .context("committing state and offsets")?;
        self.metrics
            .phase_seconds
            .with_label_values(&["commit"])
            .observe(t_commit.elapsed().as_secs_f64());

        for (_, segment, delta) in &commit.segment_deltas {
            let n = self.segment_sizes.entry(segment.clone()).or_default();
            *n += delta;
            self.metrics
                .segment_members
                .with_label_values(&[segment])
                .set(*n);
        }
        for (topic, partition, next) in &commit.offsets {
            self.metrics
                .stored_offset
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(*next);
            // For lag monitoring only; store_offset stores offset + 1 itself.
            if let Err(e) = consumer.store_offset(topic, *partition, next - 1) {
                debug!(topic, partition, error = %e, "could not store the offset in the group (partition moved?)");
            }
        }
        self.metrics
            .batch_messages
            .observe(self.batch.messages as f64);
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.profiles_cached.set(self.cache.len() as i64);
        self.batch.messages = 0;
        self.batch.timers_fired = 0;
        Ok(())
    }

    fn log_progress(&mut self, force: bool) {
        let now = Instant::now();
        let last = *self.progress.last_log.get_or_insert(now);
        let elapsed = now.duration_since(last);
        if !force && elapsed < Duration::from_secs(5) {
            return;
        }
        let rate = (self.progress.events - self.progress.last_events) as f64
            / elapsed.as_secs_f64().max(1e-3);
        self.metrics
            .state_bytes
            .set(self.store.estimated_bytes() as i64);
        self.metrics
            .timers_pending
            .set(self.store.estimated_timers() as i64);
        let profiles = self.store.estimated_profiles();
        self.metrics.state_profiles.set(profiles as i64);
        let sizes: Vec<String> = self
            .segment_sizes
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        info!(
            events = self.progress.events,
            events_per_sec = rate.round(),
            dead_lettered = self.progress.dead,
            audience_changes = self.progress.changes,
            journey_triggers = self.progress.triggers,
            profiles,
            segments = %sizes.join(" "),
            "progress"
        );
        self.progress.last_log = Some(now);
        self.progress.last_events = self.progress.events;
    }
}

fn client_config(settings: &Settings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (k, v) in &settings.config.kafka {
        cfg.set(k, v);
    }
    cfg
}

/// Partition count of each input topic; they must be equal (co-partitioned).
fn input_partitions(
    consumer: &StreamConsumer<KafkaContext>,
    inputs: &[&str],
) -> anyhow::Result<i32> {
    let mut counts = Vec::new();
    for topic in inputs {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("reading the metadata of input topic {topic}"))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == *topic)
            .with_context(|| format!("input topic {topic} not in the broker's metadata"))?;
        if t.error().is_some() || t.partitions().is_empty() {
            bail!("input topic {topic} does not exist (create it, e.g. with `tailor topics --config ...`)");
        }
        counts.push((topic.to_string(), t.partitions().len() as i32));
    }
    let n = counts[0].1;
    if counts.iter().any(|(_, c)| *c != n) {
        bail!("the input topics must have the same number of partitions (they are co-partitioned by shopper key): {counts:?}");
    }
    Ok(n)
}

/// Creates the repartition topic with `partitions` partitions if it is missing; refuses one with
/// another count (keys would land on the wrong owner).
async fn ensure_repartition_topic(
    settings: &Settings,
    consumer: &StreamConsumer<KafkaContext>,
    partitions: i32,
) -> anyhow::Result<()> {
    let topic = &settings.config.topics.repartition;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let existing = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32);
    match existing {
        Some(n) if n == partitions => Ok(()),
        Some(n) => bail!("repartition topic {topic} has {n} partitions but the inputs have {partitions}: it must have as many (delete it, or name another in topics.repartition)"),
        None => {
            use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
            let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                client_config(settings)
                    .create()
                    .context("creating the Kafka admin client")?;
            let replication = settings.config.topics.repartition_replication;
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
            let results = admin
                .create_topics(
                    &[new],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                )
                .await
                .with_context(|| format!("creating {topic}"))?;
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, e)) => bail!("creating the repartition topic {t}: {e}"),
                }
            }
            info!(topic = %topic, partitions, "created the repartition topic");
            Ok(())
        }
    }
}

/// The writer schemas (built in and from the schemas directory), the registry client, and the
/// registry ids of the output schemas when outputs are Confluent-framed (registered now).
async fn schemas_and_registry(
    settings: &Settings,
) -> anyhow::Result<(SchemaCatalog, Option<Arc<Registry>>, Option<[u32; 3]>)> {
    let c = &settings.config;
    let mut catalog = SchemaCatalog::builtin().clone();
    if let Some(dir) = &c.schemas.dir {
        let (loaded, refused) = crate::schemas::load(&mut catalog, dir);
        if !refused.is_empty() {
            bail!("schemas.dir {}: {}", dir.display(), refused.join("; "));
        }
        info!(dir = %dir.display(), schemas = loaded.len(), "writer schemas loaded");
    }
    let registry =
        Registry::from_config(&c.schema_registry, settings.registry_timeout)?.map(Arc::new);
    let Some(reg) = registry.clone() else {
        return Ok((catalog, None, None));
    };
    catalog.enable_registry();
    if c.output.framing != "confluent" {
        return Ok((catalog, registry, None));
    }
    let topics = [
        (&c.topics.audience_changes, codec::AUDIENCE_CHANGE),
        (&c.topics.journey_triggers, codec::JOURNEY_TRIGGER),
        (&c.topics.dead_letter, codec::DEAD_LETTER),
    ];
    let mut ids = [0u32; 3];
    for (i, (topic, record)) in topics.into_iter().enumerate() {
        let subject = format!("{topic}-value");
        let schema = SchemaCatalog::builtin()
            .reader_json(record)
            .expect("output schemas are built in");
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        ids[i] = loop {
            let r = reg.clone();
            let s = subject.clone();
            match tokio::task::spawn_blocking(move || r.register(&s, schema)).await? {
                Ok(id) => break id,
                Err(e) if attempt < 8 && !e.is_permanent() => {
                    warn!(subject = %subject, error = %e, retry_in = ?backoff, "registering an output schema failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => bail!("registering the output schema {record} under {subject}: {e}"),
            }
        };
        info!(subject = %subject, schema_id = ids[i], "output schema registered");
    }
    Ok((catalog, registry, Some(ids)))
}

/// Runs the worker until `shutdown` resolves or a fatal error occurs. `reload` is raised on
/// SIGHUP: the schemas directory and the segments file are read again between batches.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    api: Arc<Api>,
    reload: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let c = &settings.config;
    std::fs::create_dir_all(&c.state.path)
        .with_context(|| format!("creating state directory {}", c.state.path.display()))?;
    let store = Arc::new(Store::open(&c.state.path, &settings.store)?);
    let segment_sizes: std::collections::BTreeMap<String, i64> =
        store.segment_sizes()?.into_iter().collect();
    for (segment, n) in &segment_sizes {
        metrics
            .segment_members
            .with_label_values(&[segment])
            .set(*n);
    }

    // Schemas and the registry first: a configuration they refuse stops the worker before it
    // joins the group.
    let (catalog, registry, output_ids) = schemas_and_registry(&settings).await?;
    let mut pcfg = client_config(&settings);
    pcfg.set("enable.idempotence", "true").set("acks", "all");
    for (k, v) in [
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        // Outputs keyed by profile key land where Java clients would put them.
        ("partitioner", "murmur2_random"),
    ] {
        if !c.kafka.contains_key(k) {
            pcfg.set(k, v);
        }
    }
    let producer: FutureProducer<ProducerLogs> = pcfg
        .create_with_context(ProducerLogs)
        .context("creating the Kafka producer")?;

    let context = KafkaContext {
        store: store.clone(),
        metrics: metrics.clone(),
        start_from: if c.consumer.start_from == "latest" {
            Offset::End
        } else {
            Offset::Beginning
        },
        rebalances: Mutex::new(Vec::new()),
    };
    let mut ccfg = client_config(&settings);
    ccfg.set("group.id", &c.consumer.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &c.consumer.start_from);
    if !c.kafka.contains_key("statistics.interval.ms") {
        ccfg.set("statistics.interval.ms", "5000");
    }
    let consumer: StreamConsumer<KafkaContext> = ccfg
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    let inputs = [
        c.topics.storefront.as_str(),
        c.topics.backoffice.as_str(),
        c.topics.profile.as_str(),
    ];
    let partitions = tokio::task::block_in_place(|| input_partitions(&consumer, &inputs))?;
    ensure_repartition_topic(&settings, &consumer, partitions).await?;
    let mut subscribed = inputs.to_vec();
    subscribed.push(c.topics.repartition.as_str());
    consumer
        .subscribe(&subscribed)
        .context("subscribing to the input and repartition topics")?;
    api.attach(crate::http::Attached {
        store: store.clone(),
        partitions,
        producer: producer.clone(),
        repartition: c.topics.repartition.clone(),
        group: c.consumer.group_id.clone(),
        kafka: client_config(&settings),
    });
    info!(topics = ?inputs, group = %c.consumer.group_id, segments = settings.segments.len(), "worker started");

    let (lookups_tx, mut lookups) = tokio::sync::mpsc::unbounded_channel();
    let mut w = Worker {
        core: Core::new(Arc::new(settings.segments.clone())),
        catalog,
        schemas_dir: c.schemas.dir.clone(),
        registry,
        lookups: lookups_tx,
        held: HashMap::new(),
        output_ids,
        store: store.clone(),
        metrics: metrics.clone(),
        producer,
        topics: Topics {
            storefront: c.topics.storefront.clone(),
            backoffice: c.topics.backoffice.clone(),
            profile: c.topics.profile.clone(),
            audience: c.topics.audience_changes.clone(),
            journeys: c.topics.journey_triggers.clone(),
            dead_letter: c.topics.dead_letter.clone(),
            repartition: c.topics.repartition.clone(),
        },
        cache: LruCache::with_hasher(
            NonZeroUsize::new(c.state.cache_profiles)
                .context("state.cache_profiles must be > 0")?,
            Xxh3Builder::new().with_seed({
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0u64)
            }),
        ),
        batch: Batch::default(),
        outgoing: Vec::new(),
        outputs: Outputs::default(),
        progress: Progress::default(),
        clocks: HashMap::new(),
        lateness: settings.allowed_lateness.as_millis() as i64,
        follow_wall: c.processing.wall_clock,
        positions: HashMap::new(),
        segment_sizes,
        event_counters: crate::event::EventType::ALL
            .iter()
            .map(|t| {
                metrics
                    .events
                    .with_label_values(&[t.family().as_str(), t.name()])
            })
            .collect(),
        framing_counters: codec::Framing::ALL
            .iter()
            .map(|f| metrics.input_framing.with_label_values(&[f.as_str()]))
            .collect(),
        variant_counters: codec::Variant::ALL
            .iter()
            .map(|v| {
                metrics
                    .fingerprint_variants
                    .with_label_values(&[v.as_str()])
            })
            .collect(),
        wall: now_ms(),
        partitions,
        current: Position {
            topic: String::new(),
            partition: -1,
            offset: -1,
        },
        defs_version: settings.segments.fingerprint(),
        sweeps: HashMap::new(),
        swept: 0,
        segments_file: c.segments.file.clone(),
    };
    // Definitions changed since profiles were last evaluated: re-evaluate them all.
    let stored_defs = store
        .meta(DEFINITIONS_KEY)?
        .and_then(|b| String::from_utf8(b).ok());
    let stored_version = stored_defs
        .as_deref()
        .and_then(|s| crate::segments::SegmentSet::parse(s).ok())
        .map(|s| s.fingerprint());
    if stored_version != Some(w.defs_version) {
        let src = std::fs::read_to_string(&c.segments.file)
            .with_context(|| format!("reading {}", c.segments.file.display()))?;
        w.start_definitions(settings.segments.clone(), &src);
    }
    let max_messages = c.processing.batch_max_messages;
    let max_wait = settings.batch_max_wait;
    let mut assigned: Vec<(String, i32)> = Vec::new();
    tokio::pin!(shutdown);
    let mut stopping = false;

    let result: anyhow::Result<()> = async {
        while !stopping {
            // One deadline per batch (a timer per message showed in profiles).
            let deadline = tokio::time::sleep(max_wait);
            tokio::pin!(deadline);
            w.wall = now_ms();
            if reload.swap(false, Ordering::Relaxed) {
                w.reload_schemas();
                w.reload_definitions();
            }
            // "No such id" answers are asked again after a while (a registry replica may have
            // lagged; garbage ids must not pile up).
            w.catalog.expire_unknown_ids(Duration::from_secs(60));
            // Time first: the partitions' clocks move and the timers due by then fire.
            w.fire_timers(&consumer, &assigned, max_messages)?;
            // Then profiles not yet evaluated under the definitions in force, a slice per batch.
            if w.sweep(&assigned, max_messages)? {
                deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(5));
            }
            if !w.outgoing.is_empty() {
                if w.batch.started.is_none() {
                    w.batch.started = Some(Instant::now());
                }
                w.send_outgoing().await?;
            }
            loop {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => { stopping = true; break; }
                    _ = &mut deadline => break,
                    Some(answer) = lookups.recv() => {
                        w.take_lookup(&consumer, &assigned, answer)?;
                        health.ready.store(!assigned.is_empty() && w.held.is_empty(), Ordering::Relaxed);
                    }
                    r = consumer.recv() => {
                        let msg = match r {
                            Err(e) => { warn!(error = %e, "consumer error"); continue; }
                            Ok(m) => m,
                        };
                        let sought = w.apply_rebalances(&consumer, &mut assigned)?;
                        health.ready.store(!assigned.is_empty() && w.held.is_empty(), Ordering::Relaxed);
                        api.set_assigned(&assigned);
                        // A partition just sought back delivers this message again.
                        if sought.iter().any(|(t, p)| t == msg.topic() && *p == msg.partition()) {
                            continue;
                        }
                        // A message of a held partition number handed out before its pause (every
                        // topic of it was sought to its next message: it comes again).
                        if !w.held.is_empty() && w.held.contains_key(&msg.partition()) {
                            continue;
                        }
                        if let Some(id) = w.awaited_schema(msg.topic(), msg.payload().unwrap_or(&[])) {
                            w.hold(&consumer, &assigned, (msg.topic(), msg.partition(), msg.offset()), id)?;
                            health.ready.store(false, Ordering::Relaxed);
                            continue;
                        }
                        if w.batch.started.is_none() {
                            w.batch.started = Some(Instant::now());
                        }
                        w.apply(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.payload(), msg.timestamp().to_millis())?;
                        drop(msg);
                        w.send_outgoing().await?;
                        if w.batch.messages >= max_messages {
                            break;
                        }
                    }
                }
            }
            // Rebalances can also arrive while no message does.
            w.apply_rebalances(&consumer, &mut assigned)?;
            api.set_assigned(&assigned);
            health.ready.store(!assigned.is_empty() && !stopping && w.held.is_empty(), Ordering::Relaxed);
            if w.batch.messages > 0 || !w.batch.dirty.is_empty() || !w.batch.meta.is_empty() {
                w.flush(&consumer).await?;
            }
            w.log_progress(false);
        }
        Ok(())
    }
    .await;

    health.ready.store(false, Ordering::Relaxed);
    if let Err(e) = &result {
        error!(error = %format!("{e:#}"), "worker stopped on a fatal error; nothing after the last commit is acknowledged");
    }
    w.log_progress(true);
    consumer.unsubscribe();
    if let Err(e) = w.producer.flush(Duration::from_secs(10)) {
        warn!(error = %e, "producer flush at shutdown");
    }
    info!("worker stopped");
    result
}
