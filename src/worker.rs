//! The async shell: Kafka in, the synchronous core, Kafka and RocksDB out.
//!
//! One task, one loop, per worker:
//!
//! 0. **Time**: each assigned partition's stream clock moves (wall clock if caught up) and the
//!    timers due by then are read from the store's index and fired ([`Core::advance`]).
//! 1. **Consume** a batch (up to `batch_max_messages`, or `batch_max_wait`) from the three input
//!    topics. Each message is decoded, validated and applied to its profile in the in-memory
//!    cache at once ([`Core::process`]); its outputs (audience changes, journey triggers, dead
//!    letters) are handed to the producer immediately.
//! 2. **Deliver**: wait until every output of the batch is acknowledged by the brokers
//!    (idempotent producer, `acks=all`).
//! 3. **Commit**: write the batch's changed profiles, their timer index entries, segment sizes,
//!    clocks and each partition's next offset to RocksDB in one atomic write batch (fsynced by
//!    default).
//! 4. **Store offsets** in the consumer group, for lag monitoring only.
//!
//! On (re)assignment a partition resumes at the offset in RocksDB, never the group's. A crash at
//! any point leaves RocksDB at the end of some whole batch; the messages after it are applied again
//! and their outputs sent again with the same deterministic ids (at-least-once output, exactly-once
//! state). A partition revoked mid-batch has its uncommitted profiles dropped from the cache.
//!
//! The rebalance callback runs inside `recv()` on this same task, so the loop never races it.

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
use crate::codec::{encode, Decoder, Family, SingleObjectDecoder};
use crate::config::Settings;
use crate::event::Event;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::profile::{self, Profile};
use crate::store::{Commit, Store, Timer};
use crate::wire::DeadLetter;

/// Longest accepted message key (a shopper key).
const MAX_KEY_BYTES: usize = 512;

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
struct ProducerLogs;

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
}

/// One outgoing record, owned until it is handed to the producer.
struct Outgoing {
    topic: OutTopic,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
}

struct Worker {
    core: Core,
    decoder: Box<dyn Decoder>,
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
    /// Wall clock at the start of the batch (validation of far-future event times only).
    wall: i64,
}

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
        match self.accept(topic, key, payload.unwrap_or(&[])) {
            Ok((profile_key, ev)) => self.apply_event(topic, partition, offset, profile_key, ev)?,
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
                    payload,
                    headers: Some(headers),
                    timestamp: None,
                });
            }
        }
        Ok(())
    }

    fn accept(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(String, Event), Rejection> {
        let family = self
            .topics
            .family(topic)
            .ok_or(("unknown_topic", format!("no family for topic {topic}")))?;
        let msg = self
            .decoder
            .decode(family, payload)
            .map_err(|e| (e.code(), e.to_string()))?;
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
        Ok((key, ev))
    }

    /// The cached profile of `key`, read from the store on a miss. A profile that cannot be read
    /// is fatal: starting it afresh would overwrite the shopper's history at the next commit.
    /// Marks it dirty: the caller is about to change it. Returns its cache key.
    fn load(&mut self, partition: i32, key: String) -> anyhow::Result<(i32, String)> {
        let cache_key = (partition, key);
        if !self.cache.contains(&cache_key) {
            let (profile, committed_timer) = match self.batch.spilled.remove(&cache_key) {
                Some(p) => p,
                None => {
                    self.metrics.state_reads.inc();
                    let p = self
                        .store
                        .profile(partition, &cache_key.1)
                        .with_context(|| format!("reading a profile of partition {partition}"))?
                        .unwrap_or_default();
                    let t = p.next_timer;
                    (p, t)
                }
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
        let slot = self.cache.get_mut(&cache_key).expect("just inserted");
        if !slot.dirty {
            slot.dirty = true;
            self.batch.dirty.push(cache_key.clone());
        }
        Ok(cache_key)
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

    /// Applies a valid event to its profile.
    fn apply_event(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: String,
        ev: Event,
    ) -> anyhow::Result<()> {
        let wall = self.wall;
        let clock = self.clock(partition)?;
        let late = clock.observe(ev.time, wall);
        let now = clock.now().unwrap_or(ev.time);
        if late {
            self.metrics.late_events.inc();
        }
        self.outputs.clear();
        let cache_key = self.load(partition, key)?;
        let slot = self.cache.get_mut(&cache_key).expect("loaded");
        let source = Source {
            topic,
            partition,
            offset,
        };
        self.core.process(
            &cache_key.1,
            &mut slot.profile,
            &ev,
            source,
            now,
            &mut self.outputs,
        );
        self.event_counters[ev.kind.index()].inc();
        self.progress.events += 1;
        self.emit(partition);
        Ok(())
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
                payload,
                headers: None,
                timestamp: Some(change.event_time),
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
                payload,
                headers: None,
                timestamp: Some(trigger.triggered_at),
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
            };
            let mut record = FutureRecord::to(topic).key(&out.key).payload(&out.payload);
            if let Some(h) = out.headers {
                record = record.headers(h);
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
                    for (topic, partition) in &p {
                        if let Some(next) = self.store.next_offset(topic, *partition)? {
                            self.positions.insert((topic.clone(), *partition), next);
                        }
                    }
                    assigned.extend(p)
                }
                Rebalance::Revoked(p) => {
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
        commit.profiles = profiles;
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

/// Runs the worker until `shutdown` resolves or a fatal error occurs.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
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

    let mut pcfg = client_config(&settings);
    pcfg.set("enable.idempotence", "true").set("acks", "all");
    for (k, v) in [("linger.ms", "5"), ("compression.type", "lz4")] {
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
    consumer
        .subscribe(&inputs)
        .context("subscribing to the input topics")?;
    info!(topics = ?inputs, group = %c.consumer.group_id, segments = settings.segments.len(), "worker started");

    let mut w = Worker {
        core: Core::new(Arc::new(settings.segments.clone())),
        decoder: Box::new(SingleObjectDecoder::default()),
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
        wall: now_ms(),
    };
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
            // Time first: the partitions' clocks move and the timers due by then fire.
            w.fire_timers(&consumer, &assigned, max_messages)?;
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
                    r = consumer.recv() => {
                        let msg = match r {
                            Err(e) => { warn!(error = %e, "consumer error"); continue; }
                            Ok(m) => m,
                        };
                        let sought = w.apply_rebalances(&consumer, &mut assigned)?;
                        health.ready.store(!assigned.is_empty(), Ordering::Relaxed);
                        // A partition just sought back delivers this message again.
                        if sought.iter().any(|(t, p)| t == msg.topic() && *p == msg.partition()) {
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
            health.ready.store(!assigned.is_empty() && !stopping, Ordering::Relaxed);
            if w.batch.messages > 0 || !w.batch.dirty.is_empty() {
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
