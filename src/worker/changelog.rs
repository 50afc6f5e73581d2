//! The changelog: the state writes mirrored to a compacted topic partitioned like the inputs,
//! and a partition's state restored from it when the partition is assigned here.
//!
//! ## Records
//!
//! One record per RocksDB write of a partition ([`Op`]) but the timer index's: key = the column
//! family's id (one byte) and the store key; value = the new value, or none (a tombstone) for a
//! deletion. Compaction keeps the latest of each key, which is the state. The timer index is
//! left out: each profile's `next_timer` is its entry, so a replay writes the index from the
//! profiles it applies ([`Store::derived_timers`]). That is a record or two fewer per event and
//! per fired timer (an entry removed, one added). Timer records an earlier version wrote are
//! skipped, and a restore writes a tombstone for each it read, so compaction drops them.
//!
//! After a batch's records of a partition are acknowledged — and every output of the batch
//! before them — a **marker** (key [`MARKER_KEY`]) closes the batch; its offset + 1 is
//! committed to RocksDB with the batch (the store's *changelog position*).
//!
//! ## Restore (in the rebalance callback, before the partition's offsets are read)
//!
//! - The store's position is the changelog's end: nothing to do (the usual restart).
//! - It is behind: the records after it are applied (a crash between the changelog and the
//!   RocksDB commit, or a partition coming back after a while elsewhere).
//! - No position, or one the changelog no longer holds: the partition's local state is dropped
//!   and restored from the changelog's start (scale-out, a lost volume).
//! - Local state and an empty changelog, or a changelog shorter than the position (created
//!   after the state, or recreated): the local state is written to it (**seed**).
//!
//! Records are applied a batch at a time: those before a marker, in log order. Records after
//! the last marker belong to a batch whose worker died (or failed) before its marker: they are
//! not applied, and the restorer writes each of their keys again with the value it restored,
//! then a marker (**compensation**), so that no later reader applies them either. The state
//! restored is that of a whole committed batch, with the input offsets of that batch: its
//! outputs were delivered before its marker, and what follows is processed again (with the same
//! output ids).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::http::HealthPart;
use crate::metrics::Metrics;
use crate::store::{Op, Snapshot, Store, StoreError};

use super::acks::{self, Round};
use super::collector::Collector;
use super::error::Error;
use super::kafka::{self, ProducerLogs};

/// Key of the record that closes a batch (no column family has this id).
pub const MARKER_KEY: &[u8] = &[0xFF];

/// Records of a restore applied to RocksDB per write (at a marker).
const RESTORE_WRITE_OPS: usize = 20_000;
/// How long the changelog phase of a commit retries before the worker gives up (its batch's
/// outputs are delivered and its state is not committed: it is processed again after the
/// restart, and the next restore compensates what was written).
const MIRROR_GIVE_UP: Duration = Duration::from_secs(120);

/// A state record's key: the column family's id, then the store key.
pub fn record_key(cf: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    record_key_into(&mut k, cf, key);
    k
}

/// [`record_key`] into `out` (cleared first): one buffer for a batch's records.
pub fn record_key_into(out: &mut Vec<u8>, cf: u8, key: &[u8]) {
    out.clear();
    out.push(cf);
    out.extend_from_slice(key);
}

/// A changelog record: a state write, or a batch's marker.
#[derive(Debug, PartialEq)]
pub enum Entry {
    Op(Op),
    Marker,
}

/// Reads a changelog record (`None`: not one Tailor writes).
pub fn parse(key: &[u8], value: Option<&[u8]>) -> Option<Entry> {
    if key == MARKER_KEY {
        return Some(Entry::Marker);
    }
    let (&cf, rest) = key.split_first()?;
    if cf as usize >= crate::store::COLUMN_FAMILIES {
        return None;
    }
    Some(Entry::Op(Op {
        cf,
        key: rest.to_vec(),
        value: value.map(<[u8]>::to_vec),
    }))
}

/// A record's column family and store key.
pub type RecordKey = (u8, Vec<u8>);

/// Applies a changelog partition's records to the store in log order, a batch at a time: the
/// records up to a marker are written together, with the position after it, once enough have
/// come. Compaction leaves few markers, so a batch can be the whole partition: past
/// [`RESTORE_WRITE_OPS`] queued records the open batch (since the last marker) is written too,
/// without a position, after a snapshot of the store at its last marker: should no marker close
/// it, the partition goes back to that snapshot. Memory holds a write's worth of records,
/// however long the batch (but for the keys of one never closed, which the restore sends to the
/// changelog again).
pub struct Replay<'a> {
    store: &'a Store,
    partition: i32,
    /// Records read and not yet written; the first `closed` of them closed by a marker.
    queue: Vec<Op>,
    closed: usize,
    /// The store at the last marker, once the open batch has written to it.
    open: Option<Snapshot<'a>>,
    /// The offset after the last marker read.
    pub position: i64,
    /// Where the replay started.
    start: i64,
    pub records: u64,
    /// Store keys of the timer records an earlier version wrote that are still in the
    /// changelog as read (a later tombstone of one removes it): the restore retires them.
    pub stale_timers: std::collections::HashSet<Vec<u8>>,
}

impl<'a> Replay<'a> {
    pub fn new(store: &'a Store, partition: i32, position: i64) -> Replay<'a> {
        Replay {
            store,
            partition,
            queue: Vec::new(),
            closed: 0,
            open: None,
            position,
            start: position,
            records: 0,
            stale_timers: Default::default(),
        }
    }

    /// Takes the record at `offset`.
    pub fn take(&mut self, offset: i64, entry: Entry) -> Result<(), StoreError> {
        self.records += 1;
        match entry {
            // Written by an earlier version: the index follows from the profiles instead.
            Entry::Op(op) if op.is_derived() => {
                if op.value.is_some() {
                    self.stale_timers.insert(op.key);
                } else {
                    self.stale_timers.remove(&op.key);
                }
            }
            Entry::Op(op) => {
                self.queue.push(op);
                if self.queue.len() >= RESTORE_WRITE_OPS {
                    self.write_open()?;
                }
            }
            Entry::Marker => {
                self.position = offset + 1;
                self.open = None;
                self.closed = self.queue.len();
                if self.queue.len() >= RESTORE_WRITE_OPS / 4 {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Writes what is queued up to the last marker, with the position; returns the keys of
    /// records after it (a batch never closed), which keep or get back their values before.
    pub fn finish(self) -> Result<(i64, Vec<RecordKey>), StoreError> {
        let mut unclosed = Vec::new();
        let position = self.close(|k| unclosed.push(k))?;
        unclosed.sort_unstable();
        unclosed.dedup();
        Ok((position, unclosed))
    }

    /// Stops early: the batches read whole are kept, as [`Self::finish`] keeps them (an open
    /// batch already written is undone); with none, nothing is written (the store's position,
    /// and the time it was written, which bounds how late it may be caught up, stay as they
    /// were; but an open batch written meanwhile has removed the position, as a crash there
    /// would: the next restore starts over).
    pub fn abandon(self) -> Result<(), StoreError> {
        if self.position > self.start {
            self.close(|_| ())?;
        }
        Ok(())
    }

    /// [`Self::finish`], telling `unclosed` each key of the batch never closed (some twice).
    fn close(mut self, mut unclosed: impl FnMut(RecordKey)) -> Result<i64, StoreError> {
        // The open batch's records still queued are dropped; what it wrote is undone, a write's
        // worth at a time (without the position: the store has none meanwhile).
        for o in self.queue.drain(self.closed..) {
            unclosed((o.cf, o.key));
        }
        if let Some(then) = self.open.take() {
            let (store, partition) = (self.store, self.partition);
            let mut undo = Vec::new();
            store.changed_since(&then, partition, |op| {
                unclosed((op.cf, op.key.clone()));
                undo.push(op);
                if undo.len() >= RESTORE_WRITE_OPS {
                    let mut ops = std::mem::take(&mut undo);
                    ops.extend(store.derived_timers(&ops)?);
                    store.write_unpositioned(partition, &ops)?;
                }
                Ok(())
            })?;
            self.queue.extend(undo);
        }
        self.flush()?;
        Ok(self.position)
    }

    /// Writes what is queued, with the timer index entries of the profiles in it.
    fn flush(&mut self) -> Result<(), StoreError> {
        let mut ops = std::mem::take(&mut self.queue);
        self.closed = 0;
        ops.extend(self.store.derived_timers(&ops)?);
        self.store
            .write(&ops, &[], &[(self.partition, self.position)])
    }

    /// Writes what is queued once it is a write's worth and the open batch's marker has not
    /// come: the partition's position goes until the next marker. The first time, the closed
    /// records still queued are written with the position, and a snapshot of the store as they
    /// leave it is kept: should no marker close the batch, the partition goes back to it.
    fn write_open(&mut self) -> Result<(), StoreError> {
        if self.open.is_none() {
            if self.closed > 0 {
                let open = self.queue.split_off(self.closed);
                self.flush()?;
                self.queue = open;
            }
            self.open = Some(self.store.snapshot());
        }
        // (Nothing queued is closed now: the flush above, or a write since the last marker.)
        let mut ops = std::mem::take(&mut self.queue);
        ops.extend(self.store.derived_timers(&ops)?);
        self.store.write_unpositioned(self.partition, &ops)
    }
}

/// A changelog record (`value` none: a tombstone).
fn record<'a>(
    topic: &'a str,
    partition: i32,
    key: &'a [u8],
    value: Option<&'a [u8]>,
) -> FutureRecord<'a, [u8], [u8]> {
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .key(key);
    match value {
        Some(v) => record.payload(v),
        None => record,
    }
}

/// Sends one record to the changelog, waiting while the producer's queue is full.
fn send_record(
    producer: &FutureProducer<ProducerLogs>,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record = record(topic, partition, key, value);
    loop {
        match producer.send_result(record) {
            Ok(d) => return Ok(d),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Sends one record of `round` to the changelog from the async thread (a full queue is waited
/// for without blocking it). `slot`: see [`Round::opaque`].
async fn send_async(
    producer: &acks::Producer,
    topic: &str,
    partition: i32,
    (key, value): (&[u8], Option<&[u8]>),
    (round, slot): (Round, usize),
) -> Result<(), Error> {
    let record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, round.opaque(slot))
        .partition(partition)
        .key(key);
    let mut record = match value {
        Some(v) => record.payload(v),
        None => record,
    };
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(kafka::delivery_error(topic, &e)),
        }
    }
}

/// Awaits the `sent` records of `round`: the offsets of its slotted ones, by slot.
async fn acknowledged(
    producer: &acks::Producer,
    round: Round,
    sent: usize,
) -> Result<Vec<i64>, Error> {
    producer
        .context()
        .acknowledged(round, sent)
        .await
        .map_err(|f| kafka::delivery_error(&f.topic, &f.error))
}

/// The offset a delivery was written at.
async fn delivered(topic: &str, d: DeliveryFuture) -> Result<i64, Error> {
    match d.await {
        Ok(Ok(delivery)) => Ok(delivery.offset),
        Ok(Err((e, _))) => Err(kafka::delivery_error(topic, &e)),
        Err(_) => Err(Error::fatal(
            "the producer closed while changelog records were in flight",
        )),
    }
}

/// Writes a commit's records and each partition's marker; returns each partition's next
/// changelog offset. Transient faults are retried (the outputs of the batch are delivered; its
/// state must follow) until [`MIRROR_GIVE_UP`]; `Ok(None)`: a stop was requested meanwhile
/// (nothing is committed).
pub async fn mirror(
    topic: &str,
    out: &mut Collector,
    ops: &[(i32, Vec<Op>)],
    metrics: &Metrics,
    (health, fault): (&HealthPart, &mut Option<String>),
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Vec<(i32, i64)>>, Error> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        // Acknowledgements slow to come (a broker gone mid-batch: librdkafka gives up on a
        // record after `message.timeout.ms`) are said on `/readyz`; a stop waits a grace
        // period for them, then leaves the batch uncommitted.
        let attempt = mirror_once(topic, out.producer(), ops, metrics);
        let acks = super::commit::await_acks(attempt, stop, false, || {
            if fault.is_none() {
                warn!("the changelog's acknowledgements are slow to come; the batch is not committed until they do");
                let why = "broker: waiting for the changelog to acknowledge the batch's state"
                    .to_string();
                health.set(Err(why.clone()));
                *fault = Some(why);
            }
        })
        .await;
        let Some(result) = acks.result else {
            return Ok(None);
        };
        match result {
            Ok(positions) => return Ok(Some(positions)),
            Err(Error::Transient { what, detail }) => {
                if started.elapsed() >= MIRROR_GIVE_UP {
                    return Err(Error::fatal(format!(
                        "the changelog {topic} could not be written for {MIRROR_GIVE_UP:?}: {detail} (the batch is processed again after the restart)"
                    )));
                }
                metrics.transient_faults.with_label_values(&[what]).inc();
                warn!(what, error = %detail, retry_in = ?backoff, "writing the changelog failed; retrying (the batch's outputs are delivered, its state waits for the changelog)");
                // Cleared by the commit that follows.
                let why = format!("{what}: writing the changelog: {detail}");
                health.set(Err(why.clone()));
                *fault = Some(why);
                if what == "producer" {
                    out.renew_producer()?;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = super::stopped(stop) => return Ok(None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(fatal) => return Err(fatal),
        }
    }
}

async fn mirror_once(
    topic: &str,
    producer: &acks::Producer,
    ops: &[(i32, Vec<Op>)],
    metrics: &Metrics,
) -> Result<Vec<(i32, i64)>, Error> {
    let round = Round::new();
    let mut records = 0;
    // Each record's key built in one buffer (librdkafka copies it).
    let mut key = Vec::new();
    for (p, ops) in ops {
        for op in ops.iter().filter(|o| !o.is_derived()) {
            record_key_into(&mut key, op.cf, &op.key);
            let sent = send_async(producer, topic, *p, (&key, op.value.as_deref()), (round, 0));
            if let Err(e) = sent.await {
                // The attempt is given up: the reports of what it sent are dropped as they come.
                producer.context().abandon(round, records);
                return Err(e);
            }
            records += 1;
        }
    }
    if records > 0 {
        kafka::send_now(producer);
    }
    acknowledged(producer, round, records).await?;
    metrics
        .changelog_records
        .with_label_values(&["state"])
        .inc_by(records as u64);
    // Every record and every output of the batch is acknowledged: close the batch. Each
    // partition's marker has a slot: its offset is the partition's position.
    let markers = Round::new();
    for (i, (p, _)) in ops.iter().enumerate() {
        let sent = send_async(
            producer,
            topic,
            *p,
            (MARKER_KEY, Some(&[])),
            (markers, i + 1),
        );
        if let Err(e) = sent.await {
            producer.context().abandon(markers, i);
            return Err(e);
        }
    }
    if !ops.is_empty() {
        kafka::send_now(producer);
    }
    let offsets = acknowledged(producer, markers, ops.len()).await?;
    if offsets.len() != ops.len() || offsets.iter().any(|o| *o < 0) {
        // Never seen: librdkafka reports each acknowledged record's offset.
        return Err(Error::transient(
            "broker",
            format!("the changelog {topic} acknowledged the batch's markers without their offsets"),
        ));
    }
    let positions: Vec<(i32, i64)> = ops
        .iter()
        .zip(offsets)
        .map(|((p, _), offset)| (*p, offset + 1))
        .collect();
    metrics
        .changelog_records
        .with_label_values(&["marker"])
        .inc_by(positions.len() as u64);
    Ok(positions)
}

/// What a restore of one partition does, decided from the store and the changelog's extent.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Apply the records from this offset on the local state.
    CatchUp(i64),
    /// Drop the local state (if any) and apply the records from the changelog's start.
    Full { wipe: bool },
    /// Write the local state to the changelog.
    Seed,
}

/// How long a store's position may be behind the changelog's end and still be caught up: a
/// deletion's tombstone leaves a compacted topic after `delete.retention.ms` (1 day by default),
/// and a store that missed it would keep what was deleted.
pub const CATCH_UP_WITHIN_MS: i64 = 20 * 3600 * 1000;

/// `position`: the store's changelog position and when it was written; `local`: whether the
/// store holds anything of the partition; `seeding`: a seed of it started and did not finish;
/// `lo`, `hi`: the changelog partition's watermarks; `now`: the wall clock.
pub fn plan(
    position: Option<(i64, i64)>,
    local: bool,
    seeding: bool,
    (lo, hi): (i64, i64),
    now: i64,
) -> Plan {
    if seeding {
        return Plan::Seed;
    }
    match position {
        Some((n, _)) if n > hi => Plan::Seed,
        Some((n, _)) if n == hi => Plan::CatchUp(n),
        Some((n, at)) if n >= lo && now - at < CATCH_UP_WITHIN_MS => Plan::CatchUp(n),
        Some(_) => Plan::Full { wipe: true },
        None if local && hi <= lo => Plan::Seed,
        None => Plan::Full { wipe: local },
    }
}

/// Before a restore from the changelog's start: the partition's records here go, whether the
/// plan found it held (`held`: said in the log) or not. Without a position nothing here is the
/// changelog's, and a restore stopped or cut short after writing an open batch may have left
/// records of the partition without its offsets, which the plan does not see (a range deletion
/// each: nothing to walk).
fn clear_for_full(store: &Store, p: i32, held: bool) -> Result<(), StoreError> {
    if held {
        info!(partition = p, "the state held here is not the changelog's (or too old to catch up): dropped before the restore");
    }
    store.wipe_partition(p)
}

/// Restores assigned partitions from the changelog (blocking: on a blocking thread, while the
/// partition's topics are paused; they open at the restored offsets).
pub struct Restorer {
    pub topic: String,
    consumer: ClientConfig,
    producer: ClientConfig,
    metrics: Arc<Metrics>,
}

impl Restorer {
    pub fn new(
        topic: String,
        client: ClientConfig,
        producer: ClientConfig,
        group: &str,
        metrics: Arc<Metrics>,
    ) -> Restorer {
        let mut consumer = client;
        consumer
            .set("group.id", format!("{group}.restore"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        Restorer {
            topic,
            consumer,
            producer,
            metrics,
        }
    }

    /// Brings partition `p`'s state level with the changelog. `cancel`: the partition was
    /// revoked meanwhile; the restore stops, and writes nothing to the changelog after.
    pub fn restore(&self, store: &Store, p: i32, cancel: &AtomicBool) -> Result<(), String> {
        let consumer: BaseConsumer = self
            .consumer
            .create()
            .map_err(|e| format!("creating the changelog consumer: {e}"))?;
        let mut producer: Option<FutureProducer<ProducerLogs>> = None;
        let started = Instant::now();
        let r = self.restore_one(store, &consumer, &mut producer, p, cancel, Mode::Restore);
        self.metrics
            .restore_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Some(producer) = producer {
            let _ = producer.flush(Duration::from_secs(10));
        }
        r.map_err(|e| {
            format!(
                "restoring partition {p} from the changelog {}: {e}",
                self.topic
            )
        })
    }

    /// Brings the local copy of partition `p`, held by another worker, level with the
    /// changelog's last marker (a standby; see `worker::standby`): whole batches only, and
    /// nothing written to the changelog (no seed, no compensation: an unclosed batch there is
    /// its owner's, still open). `cancel`: the partition is being assigned here.
    pub fn follow(
        &self,
        consumer: &BaseConsumer,
        store: &Store,
        p: i32,
        cancel: &AtomicBool,
    ) -> Result<(), String> {
        self.restore_one(store, consumer, &mut None, p, cancel, Mode::Follow)
            .map_err(|e| {
                format!(
                    "following partition {p} of the changelog {}: {e}",
                    self.topic
                )
            })
    }

    /// A consumer of the changelog (assigned one partition at a time).
    pub fn consumer(&self) -> Result<BaseConsumer, String> {
        self.consumer
            .create()
            .map_err(|e| format!("creating the changelog consumer: {e}"))
    }

    fn restore_one(
        &self,
        store: &Store,
        consumer: &BaseConsumer,
        producer: &mut Option<FutureProducer<ProducerLogs>>,
        p: i32,
        cancel: &AtomicBool,
        mode: Mode,
    ) -> Result<(), String> {
        let follow = mode == Mode::Follow;
        // Revoked (or claimed) before it began: nothing of the partition is touched.
        if cancel.load(Ordering::Relaxed) {
            return Err(CANCELLED.into());
        }
        let e = |e: StoreError| e.to_string();
        let topic = self.topic.as_str();
        let (lo, hi) = if follow {
            // Once, briefly: a claim of the partition waits for the follow to let go.
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(2))
                .map_err(|e| format!("reading the changelog's watermarks: {e}"))?
        } else {
            retry("reading the changelog's watermarks", || {
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
            })?
        };
        let position = store.changelog_position(p).map_err(e)?;
        let local = store.has_partition(p).map_err(e)?;
        let seeding = store.seeding(p).map_err(e)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let plan = plan(position, local, seeding, (lo, hi), now);
        let started = Instant::now();
        let start = match plan {
            // The owner seeds it (or has): a follower writes nothing to the changelog.
            Plan::Seed if follow => return Ok(()),
            Plan::Seed => {
                match position {
                    Some((n, _)) if !seeding => warn!(partition = p, position = n, end = hi, "the changelog holds less than this worker's state (recreated or truncated?): writing the partition's state to it"),
                    _ => info!(partition = p, "writing the state held here to the changelog (it has none of it yet)"),
                }
                // Marked first: a seed cut short is done again, never taken for the changelog's
                // state (a restore would drop the state held here).
                store.set_seeding(p, true).map_err(e)?;
                // On disk before the first record goes out (without the write-ahead log it would
                // be in memory only, and a crash mid-seed would take the partial seed for the
                // changelog's state and drop the state held here).
                store.flush(true).map_err(e)?;
                let producer = self.producer(producer)?;
                let (records, next) = self.seed(store, producer, p, cancel)?;
                store.write(&[], &[], &[(p, next)]).map_err(e)?;
                store.set_seeding(p, false).map_err(e)?;
                info!(
                    partition = p,
                    records,
                    seconds = started.elapsed().as_secs_f64(),
                    "changelog seeded"
                );
                return Ok(());
            }
            Plan::CatchUp(n) => n,
            Plan::Full { wipe } => {
                clear_for_full(store, p, wipe).map_err(e)?;
                lo
            }
        };
        if follow {
            if start >= hi {
                // Level with the changelog now: the position's time says so (a copy idle for
                // longer than a catch-up allows would otherwise be copied whole again).
                if position.is_some() {
                    store.write(&[], &[], &[(p, start)]).map_err(e)?;
                }
                return Ok(());
            }
            if matches!(plan, Plan::Full { .. }) {
                info!(
                    partition = p,
                    from = start,
                    to = hi,
                    "standby: copying the partition from the changelog"
                );
            }
        } else if matches!(plan, Plan::Full { .. }) || start < hi {
            info!(
                partition = p,
                from = start,
                to = hi,
                "restoring from the changelog"
            );
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut replay = Replay::new(store, p, start);
        let mut next = start;
        let mut idle_since = Instant::now();
        let mut last_log = Instant::now();
        loop {
            // A follow stops at the end it was started for (the owner keeps writing).
            if follow && next >= hi {
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                // The records since the last marker are undone: the store holds whole batches,
                // at its position, for whoever writes the partition next (or no position, when
                // an open batch was written before any marker was read: a restore from the
                // start).
                replay.abandon().map_err(e)?;
                return Err(CANCELLED.into());
            }
            match consumer.poll(Duration::from_millis(100)) {
                // The follower's consumer was assigned another partition before this one: a
                // message of it still queued is not this partition's.
                Some(Ok(m)) if m.partition() != p || m.topic() != topic => {}
                Some(Ok(m)) => {
                    idle_since = Instant::now();
                    next = m.offset() + 1;
                    let Some(entry) = parse(m.key().unwrap_or_default(), m.payload()) else {
                        warn!(
                            partition = p,
                            offset = m.offset(),
                            "a record Tailor does not write in the changelog topic; skipped"
                        );
                        continue;
                    };
                    if follow {
                        self.metrics.standby_records.inc();
                    } else {
                        self.metrics.restored_records.inc();
                    }
                    replay.take(m.offset(), entry).map_err(e)?;
                    if !follow && last_log.elapsed() >= Duration::from_secs(5) {
                        last_log = Instant::now();
                        let secs = started.elapsed().as_secs_f64();
                        info!(
                            partition = p,
                            records = replay.records,
                            at = next,
                            end = hi,
                            per_second = (replay.records as f64 / secs) as u64,
                            "restoring from the changelog"
                        );
                    }
                }
                Some(Err(err)) => {
                    if idle_since.elapsed() >= Duration::from_secs(60) {
                        return Err(format!("reading the changelog: {err}"));
                    }
                    warn!(partition = p, error = %err, "reading the changelog; retrying");
                }
                // The end as read (a broker's high watermark can lag behind what it serves).
                None if next >= hi && idle_since.elapsed() >= Duration::from_millis(500) => break,
                None => {
                    if idle_since.elapsed() >= Duration::from_secs(60) {
                        return Err(format!("nothing read for 60 s at offset {next} (end {hi})"));
                    }
                }
            }
        }
        let records = replay.records;
        let stale: Vec<Vec<u8>> = std::mem::take(&mut replay.stale_timers)
            .into_iter()
            .collect();
        let (_, unclosed) = replay.finish().map_err(e)?;
        if follow {
            debug!(partition = p, records, "standby: partition followed");
            return Ok(());
        }
        if !unclosed.is_empty() || !stale.is_empty() {
            // A batch written after the last marker and never closed: its keys get the values
            // restored, so no reader applies it. Timer records of an earlier version: a
            // tombstone each, so compaction drops them.
            let producer = self.producer(producer)?;
            let next = self.compensate(store, producer, p, &unclosed, &stale, cancel)?;
            store.write(&[], &[], &[(p, next)]).map_err(e)?;
            if !unclosed.is_empty() {
                info!(
                    partition = p,
                    keys = unclosed.len(),
                    "records of a batch never committed overwritten with the restored values"
                );
            }
            if !stale.is_empty() {
                info!(
                    partition = p,
                    records = stale.len(),
                    "timer records an earlier version wrote to the changelog retired (the timer index follows from the profiles)"
                );
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if records > 0 {
            info!(
                partition = p,
                records,
                seconds = secs,
                per_second = (records as f64 / secs.max(1e-9)) as u64,
                "partition restored from the changelog"
            );
        }
        Ok(())
    }

    fn producer<'a>(
        &self,
        slot: &'a mut Option<FutureProducer<ProducerLogs>>,
    ) -> Result<&'a FutureProducer<ProducerLogs>, String> {
        if slot.is_none() {
            let p: FutureProducer<ProducerLogs> =
                self.producer
                    .create_with_context(ProducerLogs)
                    .map_err(|e| format!("creating the changelog producer: {e}"))?;
            *slot = Some(p);
        }
        Ok(slot.as_ref().expect("just set"))
    }

    /// Writes every record of the partition, then a marker; returns the offset after it.
    fn seed(
        &self,
        store: &Store,
        producer: &FutureProducer<ProducerLogs>,
        p: i32,
        cancel: &AtomicBool,
    ) -> Result<(u64, i64), String> {
        let mut deliveries = Vec::new();
        store
            .each_record(p, |op| -> Result<(), SeedError> {
                if cancel.load(Ordering::Relaxed) {
                    return Err(SeedError(CANCELLED.into()));
                }
                let d = send_record(
                    producer,
                    &self.topic,
                    p,
                    &record_key(op.cf, &op.key),
                    op.value.as_deref(),
                )
                .map_err(|e| SeedError(e.to_string()))?;
                deliveries.push(d);
                Ok(())
            })
            .map_err(|e| e.0)?;
        let n = deliveries.len() as u64;
        let next = self.close(producer, p, deliveries, cancel)?;
        self.metrics
            .changelog_records
            .with_label_values(&["seed"])
            .inc_by(n);
        Ok((n, next))
    }

    /// Writes each key's value in the store (none: a tombstone) and a tombstone for each stale
    /// timer record (store keys of the timer index), then a marker.
    fn compensate(
        &self,
        store: &Store,
        producer: &FutureProducer<ProducerLogs>,
        p: i32,
        keys: &[RecordKey],
        stale_timers: &[Vec<u8>],
        cancel: &AtomicBool,
    ) -> Result<i64, String> {
        let mut deliveries = Vec::new();
        let mut send = |cf: u8, key: &[u8], value: Option<&[u8]>| -> Result<(), String> {
            if cancel.load(Ordering::Relaxed) {
                return Err(CANCELLED.into());
            }
            deliveries.push(
                send_record(producer, &self.topic, p, &record_key(cf, key), value)
                    .map_err(|e| e.to_string())?,
            );
            Ok(())
        };
        for (cf, key) in keys {
            let value = store.get_raw(*cf, key).map_err(|e| e.to_string())?;
            send(*cf, key, value.as_deref())?;
        }
        for key in stale_timers {
            send(crate::store::TIMERS_CF, key, None)?;
        }
        self.metrics
            .changelog_records
            .with_label_values(&["compensation"])
            .inc_by((keys.len() + stale_timers.len()) as u64);
        self.close(producer, p, deliveries, cancel)
    }

    /// Awaits `deliveries`, then writes a marker (unless the partition was revoked meanwhile);
    /// returns the offset after it.
    fn close(
        &self,
        producer: &FutureProducer<ProducerLogs>,
        p: i32,
        deliveries: Vec<DeliveryFuture>,
        cancel: &AtomicBool,
    ) -> Result<i64, String> {
        let rt = tokio::runtime::Handle::current();
        let topic = self.topic.as_str();
        rt.block_on(async {
            for d in deliveries {
                delivered(topic, d).await.map_err(|e| e.to_string())?;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(CANCELLED.to_string());
            }
            let marker = send_record(producer, topic, p, MARKER_KEY, Some(&[]))
                .map_err(|e| e.to_string())?;
            self.metrics
                .changelog_records
                .with_label_values(&["marker"])
                .inc();
            Ok(delivered(topic, marker).await.map_err(|e| e.to_string())? + 1)
        })
    }
}

/// What [`Restorer::restore_one`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A partition assigned here.
    Restore,
    /// A standby copy of a partition held elsewhere.
    Follow,
}

/// A restore stopped because its partition was revoked (or the worker stops).
pub const CANCELLED: &str = "the partition was revoked during its restore";

struct SeedError(String);

impl From<StoreError> for SeedError {
    fn from(e: StoreError) -> Self {
        SeedError(e.to_string())
    }
}

/// Retries a broker request for up to a minute.
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, KafkaError>) -> Result<T, String> {
    let started = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                warn!(error = %e, "{what}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile's store key in partition 1, as the changelog carries them.
    fn pkey(key: &str) -> Vec<u8> {
        let mut k = 1u32.to_be_bytes().to_vec();
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn op(key: &str, value: Option<&str>) -> Entry {
        Entry::Op(Op {
            cf: 0,
            key: pkey(key),
            value: value.map(|v| v.as_bytes().to_vec()),
        })
    }

    #[test]
    fn records_round_trip_and_foreign_ones_are_refused() {
        let o = Op {
            cf: 3,
            key: b"\0\0\0\x01k".to_vec(),
            value: None,
        };
        assert_eq!(parse(&record_key(o.cf, &o.key), None), Some(Entry::Op(o)));
        assert_eq!(parse(MARKER_KEY, Some(b"")), Some(Entry::Marker));
        assert_eq!(parse(b"", None), None);
        assert_eq!(parse(&[200, 1], None), None, "no such column family");
    }

    fn value(store: &Store, key: &str) -> Option<String> {
        store
            .get_raw(0, &pkey(key))
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn a_replay_stopped_early_keeps_its_whole_batches_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        store.write(&[], &[], &[(1, 5)]).unwrap();
        let before = store.changelog_position(1).unwrap();
        // Stopped before any marker: nothing written, the position and its time as they were.
        let mut r = Replay::new(&store, 1, 5);
        r.take(5, op("a", Some("1"))).unwrap();
        r.abandon().unwrap();
        assert_eq!(value(&store, "a"), None);
        assert_eq!(store.changelog_position(1).unwrap(), before);
        // Stopped after one: that batch kept, the records after it undone.
        let mut r = Replay::new(&store, 1, 5);
        r.take(5, op("a", Some("1"))).unwrap();
        r.take(6, Entry::Marker).unwrap();
        r.take(7, op("a", Some("2"))).unwrap();
        r.take(8, op("b", Some("2"))).unwrap();
        r.abandon().unwrap();
        assert_eq!(value(&store, "a").as_deref(), Some("1"));
        assert_eq!(value(&store, "b"), None);
        assert_eq!(store.changelog_position(1).unwrap().map(|p| p.0), Some(7));
    }

    #[test]
    fn only_closed_batches_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        store
            .write(
                &[Op {
                    cf: 0,
                    key: pkey("c"),
                    value: Some(b"0".to_vec()),
                }],
                &[],
                &[],
            )
            .unwrap();
        let mut r = Replay::new(&store, 1, 0);
        r.take(0, op("a", Some("1"))).unwrap();
        r.take(1, op("b", Some("0"))).unwrap();
        r.take(2, op("b", Some("1"))).unwrap();
        r.take(3, op("e", Some("1"))).unwrap();
        r.take(4, Entry::Marker).unwrap();
        r.take(5, op("a", Some("2"))).unwrap();
        r.take(6, op("c", None)).unwrap();
        r.take(7, op("d", Some("1"))).unwrap();
        r.take(8, op("b", Some("2"))).unwrap();
        let (position, mut unclosed) = r.finish().unwrap();
        unclosed.sort();
        assert_eq!(position, 5, "after the last marker");
        assert_eq!(
            unclosed,
            [
                (0u8, pkey("a")),
                (0, pkey("b")),
                (0, pkey("c")),
                (0, pkey("d"))
            ],
            "the second batch was never closed"
        );
        // The first batch's records are still queued when the second begins: each key keeps
        // the first batch's latest record.
        assert_eq!(
            value(&store, "a").as_deref(),
            Some("1"),
            "as the first batch left it"
        );
        assert_eq!(
            value(&store, "b").as_deref(),
            Some("1"),
            "as the first batch left it, its latest record"
        );
        assert_eq!(value(&store, "e").as_deref(), Some("1"));
        assert_eq!(
            value(&store, "c").as_deref(),
            Some("0"),
            "its deletion undone"
        );
        assert_eq!(value(&store, "d"), None, "its creation undone");
        assert_eq!(store.changelog_position(1).unwrap().map(|p| p.0), Some(5));

        // More than a write's worth of records in one batch (compaction leaves one marker):
        // written once a write's worth is queued, the position removed meanwhile, and all of
        // them undone when no marker closes them. Before it, a closed batch still queued
        // (shorter than a write) writes `a` and `b`, which the open one writes again: they go
        // back to the closed batch's values, not to the store's older ones.
        let mut r = Replay::new(&store, 1, 5);
        r.take(5, op("a", Some("3"))).unwrap();
        r.take(6, op("b", Some("3"))).unwrap();
        r.take(7, op("b", Some("4"))).unwrap();
        r.take(8, Entry::Marker).unwrap();
        r.take(9, op("a", Some("5"))).unwrap();
        r.take(10, op("b", Some("5"))).unwrap();
        r.take(11, op("c", Some("5"))).unwrap();
        for i in 0..RESTORE_WRITE_OPS + 10 {
            r.take(12 + i as i64, op(&format!("k{i}"), Some("x")))
                .unwrap();
        }
        // Written with the open batch, and queued again after.
        r.take(RESTORE_WRITE_OPS as i64 + 30, op("a", Some("6")))
            .unwrap();
        assert_eq!(store.changelog_position(1).unwrap(), None, "mid-batch");
        assert_eq!(
            value(&store, "k0").as_deref(),
            Some("x"),
            "written a write's worth at a time"
        );
        assert_eq!(value(&store, "a").as_deref(), Some("5"));
        let (position, unclosed) = r.finish().unwrap();
        assert_eq!((position, unclosed.len()), (9, RESTORE_WRITE_OPS + 13));
        assert_eq!(value(&store, "k0"), None);
        assert_eq!(
            value(&store, "a").as_deref(),
            Some("3"),
            "as the closed batch left it"
        );
        assert_eq!(
            value(&store, "b").as_deref(),
            Some("4"),
            "its latest record"
        );
        assert_eq!(
            value(&store, "c").as_deref(),
            Some("0"),
            "as the store held it"
        );
        assert_eq!(store.changelog_position(1).unwrap().map(|p| p.0), Some(9));

        // The same, closed: everything stays.
        let mut r = Replay::new(&store, 1, 9);
        for i in 0..RESTORE_WRITE_OPS + 10 {
            r.take(10 + i as i64, op(&format!("k{i}"), Some("y")))
                .unwrap();
        }
        r.take(100_000, Entry::Marker).unwrap();
        let (position, unclosed) = r.finish().unwrap();
        assert_eq!((position, unclosed.len()), (100_001, 0));
        assert_eq!(value(&store, "k0").as_deref(), Some("y"));
        assert_eq!(
            value(&store, &format!("k{}", RESTORE_WRITE_OPS + 9)).as_deref(),
            Some("y")
        );

        // Stopped (the partition revoked) once an open batch was written: the batch closed
        // before it is kept, at its position, and the open one undone.
        let mut r = Replay::new(&store, 1, 100_001);
        r.take(100_001, op("z", Some("1"))).unwrap();
        r.take(100_002, Entry::Marker).unwrap();
        for i in 0..RESTORE_WRITE_OPS {
            r.take(100_003 + i as i64, op(&format!("k{i}"), Some("z")))
                .unwrap();
        }
        assert_eq!(value(&store, "k0").as_deref(), Some("z"));
        assert_eq!(store.changelog_position(1).unwrap(), None);
        r.abandon().unwrap();
        assert_eq!(
            store.changelog_position(1).unwrap().map(|p| p.0),
            Some(100_003)
        );
        assert_eq!(value(&store, "z").as_deref(), Some("1"));
        assert_eq!(value(&store, "k0").as_deref(), Some("y"), "undone");

        // The same with no marker read: nothing to keep, so the position, removed when the
        // open batch was written, stays so, and the next restore starts over.
        let mut r = Replay::new(&store, 1, 100_003);
        for i in 0..RESTORE_WRITE_OPS {
            r.take(100_003 + i as i64, op(&format!("k{i}"), Some("w")))
                .unwrap();
        }
        r.abandon().unwrap();
        assert_eq!(store.changelog_position(1).unwrap(), None);
    }

    /// A profile record of partition 1 whose `next_timer` is `due` (`None` for none; a tombstone
    /// with `deleted`).
    fn profile_op(key: &str, due: Option<i64>, deleted: bool) -> Entry {
        let mut k = 1u32.to_be_bytes().to_vec();
        k.extend_from_slice(key.as_bytes());
        let p = crate::profile::Profile {
            next_timer: due,
            ..Default::default()
        };
        Entry::Op(Op {
            cf: 0,
            key: k,
            value: (!deleted).then(|| crate::profile::encode(&p)),
        })
    }

    #[test]
    fn a_replay_writes_the_timer_index_from_the_profiles_it_applies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let timers = || store.due_timers(1, (i64::MIN, i64::MAX), 100).unwrap();
        let t = |due: i64, key: &str| (due, key.to_string());
        let mut r = Replay::new(&store, 1, 0);
        r.take(0, profile_op("ann", Some(500), false)).unwrap();
        r.take(1, profile_op("bob", Some(700), false)).unwrap();
        r.take(2, profile_op("cy", None, false)).unwrap();
        // A timer record as an earlier version wrote it: skipped, the profiles say it all.
        let mut old = 1u32.to_be_bytes().to_vec();
        old.extend_from_slice(&((100u64) ^ (1 << 63)).to_be_bytes());
        old.extend_from_slice(b"zed");
        let timer_record = |key: &[u8], value: Option<Vec<u8>>| {
            Entry::Op(Op {
                cf: crate::store::TIMERS_CF,
                key: key.to_vec(),
                value,
            })
        };
        r.take(3, timer_record(&old, Some(Vec::new()))).unwrap();
        r.take(4, Entry::Marker).unwrap();
        // To be retired by a tombstone; one already removed (a tombstone read) is not.
        let mut gone = old.clone();
        gone.push(b'2');
        r.take(5, timer_record(&gone, Some(Vec::new()))).unwrap();
        r.take(6, timer_record(&gone, None)).unwrap();
        r.take(7, Entry::Marker).unwrap();
        assert_eq!(r.stale_timers.iter().collect::<Vec<_>>(), [&old]);
        r.finish().unwrap();
        assert_eq!(timers(), [t(500, "ann"), t(700, "bob")]);

        // Ann's timer moves (twice in a batch: the last one counts), Bob is deleted, Cy gets
        // one; then a batch never closed moves Ann's again and is undone.
        let mut r = Replay::new(&store, 1, 8);
        r.take(8, profile_op("ann", Some(800), false)).unwrap();
        r.take(9, profile_op("ann", Some(900), false)).unwrap();
        r.take(10, profile_op("bob", None, true)).unwrap();
        r.take(11, profile_op("cy", Some(50), false)).unwrap();
        r.take(12, Entry::Marker).unwrap();
        r.take(13, profile_op("ann", Some(1_000), false)).unwrap();
        r.take(14, profile_op("cy", None, false)).unwrap();
        let (position, unclosed) = r.finish().unwrap();
        assert_eq!((position, unclosed.len()), (13, 2));
        assert_eq!(timers(), [t(50, "cy"), t(900, "ann")]);

        // An open batch longer than a write, never closed: written, then undone from the
        // store as it was at the last marker, its timers with it.
        let mut r = Replay::new(&store, 1, 13);
        r.take(13, profile_op("ann", Some(2_000), false)).unwrap();
        r.take(14, profile_op("cy", None, true)).unwrap();
        for i in 0..RESTORE_WRITE_OPS {
            r.take(
                15 + i as i64,
                profile_op(&format!("p{i}"), Some(3_000), false),
            )
            .unwrap();
        }
        assert_eq!(
            store.changelog_position(1).unwrap(),
            None,
            "written unclosed"
        );
        assert_eq!(timers()[0], t(2_000, "ann"), "ann's moved, cy's gone");
        let (position, unclosed) = r.finish().unwrap();
        assert_eq!((position, unclosed.len()), (13, RESTORE_WRITE_OPS + 2));
        assert_eq!(timers(), [t(50, "cy"), t(900, "ann")]);
    }

    #[test]
    fn a_full_restore_starts_from_nothing_even_where_the_plan_saw_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        // What a restore cut short once its open batch was written leaves: a profile of the
        // partition, no offsets, no position.
        let mut r = Replay::new(&store, 1, 0);
        for i in 0..RESTORE_WRITE_OPS {
            r.take(i as i64, op(&format!("k{i}"), Some("x"))).unwrap();
        }
        drop(r);
        assert_eq!(value(&store, "k0").as_deref(), Some("x"));
        let held = store.has_partition(1).unwrap();
        let plan = plan(None, held, false, (0, 100), 0);
        assert_eq!(plan, Plan::Full { wipe: false });
        clear_for_full(&store, 1, held).unwrap();
        assert_eq!(value(&store, "k0"), None);
    }

    #[test]
    fn the_plan_follows_the_store_and_the_changelog() {
        let now = 1_000 * CATCH_UP_WITHIN_MS;
        let recent = Some((10, now - 1000));
        let plan = |position: Option<(i64, i64)>, local, seeding, lo, hi| {
            plan(position, local, seeding, (lo, hi), now)
        };
        // The usual restart: level.
        assert_eq!(plan(recent, true, false, 0, 10), Plan::CatchUp(10));
        // Level, however long the worker was away: nothing was written meanwhile.
        assert_eq!(plan(Some((10, 0)), true, false, 0, 10), Plan::CatchUp(10));
        // Crashed after the changelog, before RocksDB; or back after a while elsewhere.
        assert_eq!(
            plan(Some((7, now - 1000)), true, false, 0, 10),
            Plan::CatchUp(7)
        );
        // Back after longer than a deletion's tombstone is kept: restored whole.
        assert_eq!(
            plan(Some((7, now - CATCH_UP_WITHIN_MS)), true, false, 0, 10),
            Plan::Full { wipe: true }
        );
        // New here (scale-out, lost volume).
        assert_eq!(plan(None, false, false, 0, 10), Plan::Full { wipe: false });
        // Held here before the changelog existed, and another worker wrote it since.
        assert_eq!(plan(None, true, false, 0, 10), Plan::Full { wipe: true });
        // Held here before the changelog existed; nobody wrote it: seeded from here.
        assert_eq!(plan(None, true, false, 0, 0), Plan::Seed);
        // A seed cut short: seeded again, never taken for the changelog's state.
        assert_eq!(plan(None, true, true, 0, 10), Plan::Seed);
        // The changelog recreated (shorter than what was written).
        assert_eq!(plan(recent, true, false, 0, 3), Plan::Seed);
        // The records after the position are gone (retention): restored whole.
        assert_eq!(
            plan(Some((2, now)), true, false, 5, 10),
            Plan::Full { wipe: true }
        );
        // Nothing anywhere.
        assert_eq!(plan(None, false, false, 0, 0), Plan::Full { wipe: false });
    }
}
