//! One message through the core: decode and validate it, route it by the identity protocol
//! ([`crate::identity`]'s pure decisions over what the task holds), apply it to its profile, and
//! hand the outputs to the collector. Also the two time-driven steps of a task: due timers, and
//! the re-evaluation of stored profiles after a definitions change.
//!
//! Everything here works on one [`Task`] at a time; nothing is awaited.

use std::sync::Arc;

use tracing::{debug, info};

use crate::audience::{Core, Outputs, Source};
use crate::codec::{self, Family, SchemaCatalog};
use crate::event::Event;
use crate::identity::{
    self, ClaimOutcome, DeleteRoute, EventRoute, Id, Internal, KeyKind, Local, MergeRoute,
    Message as ProtocolMessage, Plan, Position, RawEvent, Refused,
};
use crate::metrics::Metrics;
use crate::profile;
use crate::store::Store;

use super::collector::{self, Collector};
use super::error::{Error, Outcome, Rejection, Step};
use super::overlay::is_new;
use super::task::{Sweep, Task};

/// Longest accepted message key (a shopper key).
pub const MAX_KEY_BYTES: usize = 512;
pub use crate::event::MAX_EVENT_BYTES;

/// Profiles read from the store in one batched read ([`Task::prefetch`]) when a run of due timers
/// or of the re-evaluation sweep is about to touch them.
const PREFETCH: usize = 256;

/// One input message, as read.
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub timestamp: Option<i64>,
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

/// An accepted input message.
struct Accepted {
    key: String,
    family: Family,
    event: Event,
    /// A portable copy of its bytes when its own need the registry or the schemas directory
    /// (see [`crate::codec::Origin::portable`]).
    portable: Option<Vec<u8>>,
}

/// The input topics, to tell a message's family (or the repartition topic).
pub struct InputTopics {
    pub storefront: String,
    pub backoffice: String,
    pub profile: String,
    pub repartition: String,
}

impl InputTopics {
    /// The topic's place among the inputs, for event-time ties: storefront, back office,
    /// profile, then the repartition topic.
    pub fn rank(&self, topic: &str) -> u8 {
        self.family(topic)
            .map_or(Family::ALL.len() as u8, |f| f as u8)
    }

    /// The family of an input topic (`None`: the repartition topic, or another).
    pub fn family(&self, topic: &str) -> Option<Family> {
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

/// Counters for the periodic progress line.
#[derive(Default)]
pub struct Progress {
    pub events: u64,
    pub dead: u64,
    pub changes: u64,
    pub triggers: u64,
    pub swept: u64,
}

/// The synchronous core and what it needs to read messages; shared by every task.
pub struct Processor {
    pub core: Core,
    /// Writer schemas: built in, from the schemas directory, and from the registry.
    pub catalog: SchemaCatalog,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub topics: InputTopics,
    /// Partitions of every input topic (and of the repartition topic).
    pub partitions: i32,
    /// Wall clock at the start of the batch (validation of far-future event times only).
    pub wall: i64,
    /// Fingerprint of the segment definitions in force.
    pub defs_version: u64,
    pub progress: Progress,
    outputs: Outputs,
    /// The message being applied (sender position of the repartition messages it causes).
    current: Position,
    /// Its record timestamp: the repartition messages it causes carry it, so that their
    /// receiver orders them among its inputs as it would the original.
    current_time: Option<i64>,
    /// `tailor_events_total` per event type, resolved once (no label hashing per event).
    event_counters: Vec<prometheus::IntCounter>,
    /// `tailor_input_framing_total` per [`codec::Framing`], resolved once likewise.
    framing_counters: Vec<prometheus::IntCounter>,
    /// `tailor_schema_fingerprint_variant_total` per [`codec::Variant`], likewise.
    variant_counters: Vec<prometheus::IntCounter>,
}

impl Processor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Core,
        catalog: SchemaCatalog,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        topics: InputTopics,
        partitions: i32,
        defs_version: u64,
    ) -> Processor {
        let event_counters = crate::event::EventType::ALL
            .iter()
            .map(|t| {
                metrics
                    .events
                    .with_label_values(&[t.family().as_str(), t.name()])
            })
            .collect();
        let framing_counters = codec::Framing::ALL
            .iter()
            .map(|f| metrics.input_framing.with_label_values(&[f.as_str()]))
            .collect();
        let variant_counters = codec::Variant::ALL
            .iter()
            .map(|v| {
                metrics
                    .fingerprint_variants
                    .with_label_values(&[v.as_str()])
            })
            .collect();
        Processor {
            core,
            catalog,
            store,
            metrics,
            topics,
            partitions,
            wall: 0,
            defs_version,
            progress: Progress::default(),
            outputs: Outputs::default(),
            current: Position {
                topic: String::new(),
                partition: -1,
                offset: -1,
            },
            current_time: None,
            event_counters,
            framing_counters,
            variant_counters,
        }
    }

    /// Decodes, validates and applies one message; queues its outputs. Bad input is
    /// dead-lettered here; what is returned is a transient or fatal failure.
    pub fn apply(
        &mut self,
        task: &mut Task,
        out: &mut Collector,
        msg: &Incoming,
    ) -> Result<(), Error> {
        task.applied(msg.topic, msg.offset);
        // No allocation per message: the topic name changes only between topics.
        if self.current.topic != msg.topic {
            self.current.topic = msg.topic.to_owned();
        }
        self.current.partition = msg.partition;
        self.current.offset = msg.offset;
        self.current_time = msg.timestamp;
        let step = if msg.topic == self.topics.repartition {
            self.apply_internal(task, out, msg.payload)
        } else {
            // The profile's lists on their way into the CPU's caches while the event decodes
            // (a profile held in memory; one read from the store is warm from its decoding).
            if let Some(p) = msg
                .key
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| task.profiles.get(k))
            {
                p.prefetch();
            }
            match self.accept(msg) {
                Ok(a) => {
                    // What travels if the event is forwarded: bytes any worker can read.
                    let raw = Raw {
                        family: a.family,
                        payload: a.portable.as_deref().unwrap_or(msg.payload),
                        origin: (msg.topic, msg.partition, msg.offset),
                    };
                    self.route_event(task, out, a.key, a.event, &raw, None)
                }
                Err(step) => Err(step),
            }
        };
        match step {
            Ok(()) => Ok(()),
            Err(Step::Failed(e)) => Err(e),
            Err(Step::Rejected(r)) => {
                self.metrics.dead_letters.with_label_values(&[r.code]).inc();
                self.progress.dead += 1;
                debug!(
                    topic = msg.topic,
                    partition = msg.partition,
                    offset = msg.offset,
                    reason = r.code,
                    "message dead-lettered"
                );
                out.dead_letter(
                    &collector::Source {
                        topic: msg.topic,
                        partition: msg.partition,
                        offset: msg.offset,
                        timestamp: msg.timestamp,
                        key: msg.key,
                        payload: msg.payload,
                    },
                    &r,
                );
                Ok(())
            }
        }
    }

    /// Decodes and validates an input message: its profile key, family, event, and (when its
    /// own bytes need the registry or the schemas directory) a portable copy to forward.
    fn accept(&self, msg: &Incoming) -> Result<Accepted, Step> {
        let family = self.topics.family(msg.topic).ok_or_else(|| {
            Rejection::new(
                "unknown_topic",
                format!("no family for topic {}", msg.topic),
            )
        })?;
        if msg.payload.len() > MAX_EVENT_BYTES {
            return Err(Rejection::new(
                "too_large",
                format!(
                    "message value of {} bytes (max {MAX_EVENT_BYTES})",
                    msg.payload.len()
                ),
            )
            .into());
        }
        let (decoded, origin) = self
            .catalog
            .decode_for_event(family, msg.payload)
            .map_err(decode_failure)?;
        self.framing_counters[origin.framing as usize].inc();
        if let Some(v) = origin.variant {
            self.variant_counters[v as usize].inc();
        }
        let portable = if origin.portable() {
            None
        } else {
            Some(
                self.catalog
                    .portable_payload(msg.payload, &origin, &decoded)
                    .map_err(|e| Rejection::new("bad_body", e.to_string()))?,
            )
        };
        let event = Event::from_input(decoded, self.wall)
            .map_err(|e| Rejection::new(e.code(), e.to_string()))?;
        let key = match msg.key {
            Some(k) if !k.is_empty() => {
                if k.len() > MAX_KEY_BYTES {
                    return Err(Rejection::new(
                        "bad_key",
                        format!("message key of {} bytes (max {MAX_KEY_BYTES})", k.len()),
                    )
                    .into());
                }
                std::str::from_utf8(k)
                    .map_err(|_| Rejection::new("bad_key", "message key is not UTF-8"))?
                    .to_owned()
            }
            _ => event
                .fallback_key()
                .ok_or_else(|| {
                    Rejection::new("no_identity", "no message key and no identity in the event")
                })?
                .to_owned(),
        };
        Ok(Accepted {
            key,
            family,
            event,
            portable,
        })
    }

    /// Queues a message of the identity protocol for the owner of `target`.
    fn send_internal(&mut self, out: &mut Collector, target: String, message: ProtocolMessage) {
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
        out.internal(target, partition, payload, self.current_time);
    }

    /// Step 1 of the identity protocol: an event for `key` read on the task's partition goes to
    /// the profile it belongs to, here or through the repartition topic. `via`: the repartition
    /// message it came in (checked against the profile's positions: a sender's crash can repeat
    /// it).
    fn route_event(
        &mut self,
        task: &mut Task,
        out: &mut Collector,
        key: String,
        ev: Event,
        raw: &Raw,
        via: Option<&Position>,
    ) -> Outcome {
        let store = self.store.clone();
        // Before any evaluation: the re-evaluation cursor of the definitions in force, written
        // with the commit if it starts now (see `Task::sweep`).
        task.load_sweep(self.defs_version, &store)?;
        let route = identity::route_event(&key, task.partition, self.partitions, &ev, || {
            task.local(&key, &store)
        })?;
        match route {
            EventRoute::Forward(target) => {
                self.metrics.misrouted.inc();
                self.send_internal(out, target, ProtocolMessage::Event(raw.owned()));
                Ok(())
            }
            EventRoute::ToOwner(owner) => {
                self.send_internal(out, owner, ProtocolMessage::Event(raw.owned()));
                Ok(())
            }
            EventRoute::DeleteElsewhere(ids) => {
                for id in ids {
                    self.send_internal(
                        out,
                        id,
                        ProtocolMessage::Delete {
                            source: "account_deleted".into(),
                            requested_at: ev.time,
                        },
                    );
                }
                Ok(())
            }
            EventRoute::Delete => {
                self.delete_profile(task, out, key, &ev.id, ev.time, "account_deleted")
            }
            EventRoute::Apply => {
                let profile = task.load(&key, &store)?;
                if let Some(v) = via {
                    // A repeat from the same sender, or the same event by another path.
                    let new_hop = profile.record_hop(&v.topic, v.partition, v.offset);
                    if !new_hop || !profile.first_forward(raw.origin_hash()) {
                        self.metrics.duplicates_skipped.inc();
                        return Ok(());
                    }
                }
                if is_new(profile) {
                    let kind = identity::kind_of(&key, &ev);
                    profile.identities.kind = kind;
                    if kind == KeyKind::Key {
                        profile.identities.key = Some(key.clone());
                    }
                }
                match identity::plan(&key, profile.identities.kind, &ev) {
                    Plan::Absorb(survivor) => {
                        let cause = ev.id.clone();
                        self.absorb(task, out, key, survivor, Some(raw.owned()), &cause, ev.time)
                    }
                    Plan::Survive => {
                        // An exact repeat of a message applied lately (a producer's retry, or
                        // the same record produced twice): applied once. (An event that makes
                        // its profile absorbed is remembered where it is applied, the survivor.)
                        if !profile.first_message(profile::message_hash(&ev.id, raw.payload)) {
                            self.metrics.repeats_skipped.inc();
                            return Ok(());
                        }
                        self.apply_event(task, out, &key, ev, raw);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Applies a valid event to its profile, which is in the task's cache.
    fn apply_event(
        &mut self,
        task: &mut Task,
        out: &mut Collector,
        key: &str,
        ev: Event,
        raw: &Raw,
    ) {
        let late = task.clock().observe(ev.time, self.wall);
        let now = task.now().unwrap_or(ev.time);
        if late {
            self.metrics.late_events.inc();
        }
        self.outputs.clear();
        // Only the segments whose rules read what the event changed are evaluated, once every
        // profile of the partition was evaluated under the definitions in force.
        self.core.set_incremental(task.swept(self.defs_version));
        let profile = task.profiles.get_mut(key).expect("loaded");
        let source = Source {
            topic: raw.origin.0,
            partition: raw.origin.1,
            offset: raw.origin.2,
        };
        self.core
            .process(key, profile, &ev, source, now, &mut self.outputs);
        self.event_counters[ev.kind.index()].inc();
        self.progress.events += 1;
        let claims = std::mem::take(&mut self.outputs.claims);
        for why in self.outputs.refused.drain(..) {
            self.metrics
                .identity_links
                .with_label_values(&[why.label()])
                .inc();
        }
        let owner_kind = profile.identities.kind;
        self.emit(task, out);
        for id in claims {
            self.metrics
                .identity_links
                .with_label_values(&["linked"])
                .inc();
            self.send_internal(
                out,
                id.value,
                ProtocolMessage::Claim {
                    kind: id.kind,
                    owner: key.to_owned(),
                    owner_kind,
                },
            );
        }
    }

    /// Step 2 of the protocol, for the absorbed side: the profile (in the cache) EXITs its
    /// segments, is removed, its key becomes an alias of the survivor, and the profile (and the
    /// linking event) travel to the survivor's owner.
    #[allow(clippy::too_many_arguments)]
    fn absorb(
        &mut self,
        task: &mut Task,
        out: &mut Collector,
        key: String,
        survivor: Id,
        event: Option<RawEvent>,
        cause: &str,
        at: i64,
    ) -> Outcome {
        let mut profile = task.profiles.remove(&key).expect("loaded");
        self.outputs.clear();
        let at = at.max(task.now().unwrap_or(at));
        self.core
            .exit_all(&key, &mut profile, at, "merge", cause, &mut self.outputs);
        self.emit(task, out);
        self.metrics
            .identity_links
            .with_label_values(&["merged"])
            .inc();
        task.set_alias(key.clone(), Some(survivor.value.clone()));
        let state = (!is_new(&profile)).then(|| profile::encode(&profile));
        self.send_internal(
            out,
            survivor.value,
            ProtocolMessage::Merge {
                from: key,
                profile: state,
                kind: survivor.kind,
                event,
            },
        );
        Ok(())
    }

    /// Removes everything held about the profile `key`: EXITs (cause `deletion`), the profile
    /// and its timer, its aliases on their partitions (by `Forget`), and tombstones on the output
    /// topics for each of its keys.
    fn delete_profile(
        &mut self,
        task: &mut Task,
        out: &mut Collector,
        key: String,
        cause: &str,
        at: i64,
        source: &str,
    ) -> Outcome {
        task.load(&key, &self.store)?;
        let mut profile = task.profiles.remove(&key).expect("loaded");
        if is_new(&profile) {
            // Nothing stored (or removed earlier in this batch: that removal stands).
            return Ok(());
        }
        let at = at.max(task.now().unwrap_or(at));
        self.outputs.clear();
        self.core
            .exit_all(&key, &mut profile, at, "deletion", cause, &mut self.outputs);
        self.emit(task, out);
        self.metrics.deletions.with_label_values(&[source]).inc();
        out.tombstones(&key, at);
        for id in identity::all_ids(&profile) {
            if id.value != key {
                self.send_internal(
                    out,
                    id.value.clone(),
                    ProtocolMessage::Forget { owner: key.clone() },
                );
                out.tombstones(&id.value, at);
            }
        }
        Ok(())
    }

    /// Decodes and validates an event carried by a repartition message.
    fn decode_raw<'a>(&self, raw: &'a RawEvent) -> Result<(Event, Raw<'a>), Step> {
        let family = Family::ALL
            .get(raw.family as usize)
            .copied()
            .ok_or_else(|| {
                Rejection::new(
                    "bad_internal_message",
                    format!("unknown family {}", raw.family),
                )
            })?;
        let msg = self
            .catalog
            .decode(family, &raw.payload)
            .map_err(decode_failure)?;
        let ev = Event::from_input(msg, self.wall)
            .map_err(|e| Rejection::new(e.code(), e.to_string()))?;
        let o = &raw.origin;
        let raw = Raw {
            family,
            payload: &raw.payload,
            origin: (&o.topic, o.partition, o.offset),
        };
        Ok((ev, raw))
    }

    /// Steps 1 to 5 of the protocol, for a message read from the repartition topic.
    fn apply_internal(&mut self, task: &mut Task, out: &mut Collector, payload: &[u8]) -> Outcome {
        let Internal {
            target,
            via,
            message,
        } = identity::decode(payload).map_err(|e| Rejection::new("bad_internal_message", e))?;
        let store = self.store.clone();
        task.load_sweep(self.defs_version, &store)?;
        match message {
            ProtocolMessage::Event(raw) => {
                let (ev, raw) = self.decode_raw(&raw)?;
                self.route_event(task, out, target, ev, &raw, Some(&via))
            }
            ProtocolMessage::Merge {
                from,
                profile,
                kind,
                event,
            } => {
                if let MergeRoute::ToOwner(owner) =
                    identity::on_merge(&task.local(&target, &store)?)
                {
                    // The survivor was itself absorbed since: on to its survivor.
                    let forward = ProtocolMessage::Merge {
                        from,
                        profile,
                        kind,
                        event,
                    };
                    self.send_internal(out, owner, forward);
                    return Ok(());
                }
                let other = profile
                    .as_deref()
                    .map(profile::decode)
                    .transpose()
                    .map_err(|e| Rejection::new("bad_internal_message", e))?
                    .unwrap_or_default();
                let now_clock = task.now();
                let mine = task.load(&target, &store)?;
                if !mine.record_hop(&via.topic, via.partition, via.offset) {
                    self.metrics.duplicates_skipped.inc();
                    return Ok(());
                }
                if is_new(mine) {
                    mine.identities.kind = kind;
                    let own = Id {
                        kind,
                        value: target.clone(),
                    };
                    let _ = identity::link(mine, &own, usize::MAX);
                }
                let now = now_clock
                    .unwrap_or(i64::MIN)
                    .max(mine.last_seen.unwrap_or(i64::MIN))
                    .max(other.last_seen.unwrap_or(i64::MIN));
                if now > i64::MIN {
                    self.outputs.clear();
                    self.core
                        .merge(&target, mine, &from, other, now, &mut self.outputs);
                    self.emit(task, out);
                } else {
                    mine.merge(other, self.core.max_identities());
                }
                if let Some(raw) = event {
                    // It decoded at its origin; a failure now is left out with the rest.
                    if let Ok((ev, raw)) = self.decode_raw(&raw) {
                        let mine = task.profiles.get_mut(&target).expect("loaded");
                        if mine.first_forward(raw.origin_hash()) {
                            // The merge itself was checked against the positions.
                            self.route_event(task, out, target, ev, &raw, None)?;
                        } else {
                            self.metrics.duplicates_skipped.inc();
                        }
                    }
                }
                Ok(())
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
                let local = task.local(&target, &store)?;
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
                        task.set_alias(target, Some(owner));
                    }
                    ClaimOutcome::Already => {}
                    ClaimOutcome::Absorb => {
                        let at = task.load(&target, &store)?.last_seen.unwrap_or(i64::MIN);
                        let cause = format!("claim@{}/{}/{}", via.topic, via.partition, via.offset);
                        let survivor = Id {
                            kind: owner_kind,
                            value: owner,
                        };
                        self.absorb(task, out, target, survivor, None, &cause, at)?;
                    }
                    ClaimOutcome::Refuse => {
                        self.metrics
                            .identity_links
                            .with_label_values(&[Refused::Conflict.label()])
                            .inc();
                    }
                }
                Ok(())
            }
            ProtocolMessage::Forget { owner } => {
                if identity::on_forget(&task.local(&target, &store)?, &owner) {
                    task.set_alias(target, None);
                }
                Ok(())
            }
            ProtocolMessage::Delete {
                source,
                requested_at,
            } => match identity::on_delete(&task.local(&target, &store)?) {
                DeleteRoute::Unalias(owner) => {
                    task.set_alias(target, None);
                    let forward = ProtocolMessage::Delete {
                        source,
                        requested_at,
                    };
                    self.send_internal(out, owner, forward);
                    Ok(())
                }
                DeleteRoute::Profile => {
                    let cause = format!("{source}@{requested_at}");
                    let source = if source == "admin" {
                        "admin"
                    } else {
                        "account_deleted"
                    };
                    self.delete_profile(task, out, target, &cause, requested_at, source)
                }
                DeleteRoute::Nothing => Ok(()),
            },
        }
    }

    /// Moves the task's clock (to the wall clock when `caught_up`) and fires the timers due by
    /// then, at most `budget` of them (the rest wait for the next batch, which starts at once).
    /// `follows_from`: from when (wall ms) the clock follows the wall clock if nothing more
    /// arrives (now when caught up; None while the partition catches up). Returns when, on the
    /// wall clock, the task's next timer fires if that is within `horizon` ms: the batch need
    /// not wait longer.
    pub fn fire_timers(
        &mut self,
        task: &mut Task,
        out: &mut Collector,
        wall: i64,
        (caught_up, follows_from): (bool, Option<i64>),
        budget: &mut usize,
        horizon: i64,
    ) -> Result<Option<i64>, Error> {
        task.clock().tick(wall, caught_up);
        let Some(now) = task.now() else {
            return Ok(None);
        };
        self.metrics
            .stream_clock
            .with_label_values(&[&task.partition.to_string()])
            .set(now.div_euclid(1000));
        if *budget == 0 {
            return Ok(None);
        }
        let store = self.store.clone();
        // Timers evaluate under the definitions in force: their re-evaluation cursor goes with
        // the commit if it starts now (see `Task::sweep`).
        task.load_sweep(self.defs_version, &store)?;
        let limit = *budget;
        let floor = task.timer_floor;
        // Once the clock follows the wall clock, `lateness` behind, the next timer fires that
        // much after its due time; it is looked for only `horizon` ahead.
        let peek = match follows_from {
            Some(_) => wall.saturating_sub(task.lateness()).saturating_add(horizon),
            None => now,
        };
        let (due, next) = super::blocking(|| {
            store.due_timers_and_next(task.partition, (floor, now), limit, peek)
        })?;
        *budget -= due.len();
        // Every timer due by `now` is taken (or, at the limit, every one before the last taken):
        // the next scan starts after them.
        task.timer_floor = match due.last() {
            Some((at, _)) if due.len() == limit => floor.max(*at),
            _ => floor.max(now.saturating_add(1)),
        };
        for (i, (at, key)) in due.iter().enumerate() {
            if i % PREFETCH == 0 {
                let next = due[i..].iter().take(PREFETCH);
                task.prefetch(next.map(|(_, k)| k.as_str()), &store)?;
            }
            let (at, key) = (*at, key.as_str());
            if task.reached_end {
                // A live partition (read to its end since it was assigned): the outputs carry
                // the due time, and this is how much later the wall clock is.
                self.metrics
                    .timer_lateness
                    .observe(wall.saturating_sub(at).max(0) as f64 / 1000.0);
            }
            self.outputs.clear();
            task.load(key, &store)?;
            if task.profiles.committed_timer(key) != Some(Some(at)) {
                // An index entry no profile owns (not written by Tailor): drop it.
                task.stray_timer(at, key.to_owned());
            }
            let profile = task.profiles.get_mut(key).expect("loaded");
            self.core.advance(key, profile, now, &mut self.outputs);
            self.emit(task, out);
        }
        Ok(next
            .zip(follows_from)
            .map(|(due, from)| due.saturating_add(task.lateness()).max(from)))
    }

    /// Re-evaluates, under the definitions in force, the task's profiles last evaluated under
    /// other definitions: at most `budget` profiles, through the same core as live events, with
    /// a cursor committed with the batch (a crash resumes where the last commit left off;
    /// re-done profiles emit nothing twice: their memberships are already in state). Returns
    /// whether work remains.
    pub fn sweep(
        &mut self,
        task: &mut Task,
        out: &mut Collector,
        budget: &mut usize,
    ) -> Result<bool, Error> {
        let store = self.store.clone();
        let sweep = task.sweep(self.defs_version, &store)?;
        if sweep.done {
            return Ok(false);
        }
        if *budget == 0 {
            return Ok(true);
        }
        let keys = super::blocking(|| {
            store.profile_keys_after(task.partition, sweep.after.as_deref(), *budget)
        })?;
        let done = keys.len() < *budget;
        *budget -= keys.len();
        let now = task.now().unwrap_or(i64::MIN);
        for (i, key) in keys.iter().enumerate() {
            if i % PREFETCH == 0 {
                let next = keys[i..].iter().take(PREFETCH);
                task.prefetch(next.map(String::as_str), &store)?;
            }
            task.fetch(key, &store)?;
            let profile = task.profiles.get_mut(key).expect("fetched");
            let timer_before = profile.next_timer;
            self.outputs.clear();
            self.core
                .reevaluate(key, profile, now, self.defs_version, &mut self.outputs);
            // Only profiles the new rules changed are written again.
            let o = &self.outputs;
            if !o.changes.is_empty()
                || !o.triggers.is_empty()
                || o.timers_fired > 0
                || profile.next_timer != timer_before
            {
                task.profiles.mark_dirty(key);
            }
            self.emit(task, out);
            self.metrics.reevaluated.inc();
            self.progress.swept += 1;
        }
        if done {
            info!(
                partition = task.partition,
                "re-evaluation under the new segment definitions finished"
            );
        }
        task.move_sweep(Sweep {
            version: self.defs_version,
            after: keys.last().cloned().or(sweep.after),
            done,
        });
        Ok(!done)
    }

    /// Counts what the core produced for a profile of the task and hands it to the collector.
    fn emit(&mut self, task: &mut Task, out: &mut Collector) {
        self.metrics.timers_fired.inc_by(self.outputs.timers_fired);
        for change in self.outputs.changes.drain(..) {
            let delta = if change.direction == crate::wire::Direction::Entered {
                1
            } else {
                -1
            };
            task.segment_delta(&change.segment_id, delta);
            self.metrics
                .audience_changes
                .with_label_values(&[&change.segment_id, change.direction.as_str()])
                .inc();
            self.progress.changes += 1;
            out.audience_change(change);
        }
        for trigger in self.outputs.triggers.drain(..) {
            self.metrics
                .journey_triggers
                .with_label_values(&[&trigger.journey_id])
                .inc();
            self.progress.triggers += 1;
            out.journey_trigger(trigger);
        }
        for (journey, why) in self.outputs.suppressed.drain(..) {
            self.metrics
                .journey_suppressed
                .with_label_values(&[&journey, why.as_str()])
                .inc();
        }
    }

    /// The registry id a message waits for: a Confluent-framed event (or one carried by a
    /// repartition message) whose writer schema the registry has not answered for yet.
    pub fn awaited_schema(&self, topic: &str, payload: &[u8]) -> Option<u32> {
        if !self.catalog.registry_enabled() {
            return None;
        }
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
}

/// A decoding failure: bad input, except the registry not answering (transient: the message
/// reached processing before its schema was known; the batch is retried).
fn decode_failure(e: codec::DecodeError) -> Step {
    if matches!(e, codec::DecodeError::SchemaIdPending(_)) {
        Step::Failed(Error::transient("schema_registry", e))
    } else {
        Step::Rejected(Rejection::new(e.code(), e.to_string()))
    }
}
