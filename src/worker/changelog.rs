//! The changelog: every state write mirrored to a compacted topic partitioned like the inputs,
//! and a partition's state restored from it when the partition is assigned here.
//!
//! ## Records
//!
//! One record per RocksDB write of a partition ([`Op`]): key = the column family's id (one byte)
//! and the store key; value = the new value, or none (a tombstone) for a deletion. Compaction
//! keeps the latest of each key, which is the state. After a batch's records of a partition
//! are acknowledged — and every output of the batch before them — a **marker** (key
//! [`MARKER_KEY`]) closes the batch; its offset + 1 is committed to RocksDB with the batch
//! (the store's *changelog position*).
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

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::http::Health;
use crate::metrics::Metrics;
use crate::store::{Op, Store, StoreError};

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

pub fn record_key(op: &Op) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + op.key.len());
    k.push(op.cf);
    k.extend_from_slice(&op.key);
    k
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

/// Applies a changelog partition's records in order: a batch's records when its marker comes.
#[derive(Default)]
pub struct Replay {
    /// Records since the last marker.
    pending: Vec<Op>,
    /// Records of closed batches not yet written to RocksDB.
    ready: Vec<Op>,
    /// The offset after the last marker read.
    pub position: Option<i64>,
    pub records: u64,
}

impl Replay {
    /// Takes the record at `offset`; returns whether enough is ready to be written.
    pub fn take(&mut self, offset: i64, entry: Entry) -> bool {
        self.records += 1;
        match entry {
            Entry::Op(op) => self.pending.push(op),
            Entry::Marker => {
                self.ready.append(&mut self.pending);
                self.position = Some(offset + 1);
                return self.ready.len() >= RESTORE_WRITE_OPS;
            }
        }
        false
    }

    /// Records of closed batches, to write with [`Self::position`].
    pub fn take_ready(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ready)
    }

    /// The keys written after the last marker (a batch never closed).
    pub fn unclosed(&self) -> BTreeSet<(u8, Vec<u8>)> {
        self.pending
            .iter()
            .map(|op| (op.cf, op.key.clone()))
            .collect()
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
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
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
    health: &Health,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Vec<(i32, i64)>>, Error> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        match mirror_once(topic, out.producer(), ops, metrics).await {
            Ok(positions) => return Ok(Some(positions)),
            Err(Error::Transient { what, detail }) => {
                if started.elapsed() >= MIRROR_GIVE_UP {
                    return Err(Error::fatal(format!(
                        "the changelog {topic} could not be written for {MIRROR_GIVE_UP:?}: {detail} (the batch is processed again after the restart)"
                    )));
                }
                warn!(what, error = %detail, retry_in = ?backoff, "writing the changelog failed; retrying (the batch's outputs are delivered, its state waits for the changelog)");
                health.set(Err(format!("{what}: writing the changelog: {detail}")));
                if what == "producer" {
                    out.renew_producer()?;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(fatal) => return Err(fatal),
        }
    }
}

async fn mirror_once(
    topic: &str,
    producer: &FutureProducer<ProducerLogs>,
    ops: &[(i32, Vec<Op>)],
    metrics: &Metrics,
) -> Result<Vec<(i32, i64)>, Error> {
    let mut deliveries = Vec::new();
    for (p, ops) in ops {
        for op in ops {
            let d = send_record(producer, topic, *p, &record_key(op), op.value.as_deref())
                .map_err(|e| kafka::delivery_error(topic, &e))?;
            deliveries.push(d);
        }
    }
    let records = deliveries.len() as u64;
    for d in deliveries {
        delivered(topic, d).await?;
    }
    metrics
        .changelog_records
        .with_label_values(&["state"])
        .inc_by(records);
    // Every record and every output of the batch is acknowledged: close the batch.
    let mut markers = Vec::with_capacity(ops.len());
    for (p, _) in ops {
        let d = send_record(producer, topic, *p, MARKER_KEY, Some(&[]))
            .map_err(|e| kafka::delivery_error(topic, &e))?;
        markers.push((*p, d));
    }
    let mut positions = Vec::with_capacity(markers.len());
    for (p, d) in markers {
        positions.push((p, delivered(topic, d).await? + 1));
    }
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

/// `position`: the store's changelog position; `local`: whether the store holds anything of
/// the partition; `lo`, `hi`: the changelog partition's watermarks.
pub fn plan(position: Option<i64>, local: bool, lo: i64, hi: i64) -> Plan {
    match position {
        Some(n) if n > hi => Plan::Seed,
        Some(n) if n >= lo => Plan::CatchUp(n),
        Some(_) => Plan::Full { wipe: true },
        None if local && hi <= lo => Plan::Seed,
        None => Plan::Full { wipe: local },
    }
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
        let r = self.restore_one(store, &consumer, &mut producer, p, cancel);
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

    fn restore_one(
        &self,
        store: &Store,
        consumer: &BaseConsumer,
        producer: &mut Option<FutureProducer<ProducerLogs>>,
        p: i32,
        cancel: &AtomicBool,
    ) -> Result<(), String> {
        let cancelled = || {
            cancel
                .load(Ordering::Relaxed)
                .then(|| "the partition was revoked during its restore".to_string())
        };
        let topic = self.topic.as_str();
        let (lo, hi) = retry("reading the changelog's watermarks", || {
            consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
        })?;
        let position = store.changelog_position(p).map_err(|e| e.to_string())?;
        let local = store.has_partition(p).map_err(|e| e.to_string())?;
        let plan = plan(position, local, lo, hi);
        let started = Instant::now();
        let start = match plan {
            Plan::Seed => {
                if let Some(e) = cancelled() {
                    return Err(e);
                }
                if position.is_some() {
                    warn!(partition = p, position, end = hi, "the changelog holds less than this worker's state (recreated or truncated?): writing the partition's state to it");
                } else {
                    info!(partition = p, "no changelog for the state held here yet: writing the partition's state to it");
                }
                let producer = self.producer(producer)?;
                let (records, next) = self.seed(store, producer, p)?;
                info!(
                    partition = p,
                    records,
                    seconds = started.elapsed().as_secs_f64(),
                    "changelog seeded"
                );
                store
                    .write(&[], &[], &[(p, next)])
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            Plan::CatchUp(n) => n,
            Plan::Full { wipe } => {
                if wipe {
                    info!(
                        partition = p,
                        "state held here is not the changelog's: dropped before the restore"
                    );
                    store.wipe_partition(p).map_err(|e| e.to_string())?;
                }
                lo
            }
        };
        if matches!(plan, Plan::Full { .. }) || start < hi {
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
        let mut replay = Replay {
            position: Some(start),
            ..Replay::default()
        };
        let mut next = start;
        let mut idle_since = Instant::now();
        let mut last_log = Instant::now();
        loop {
            if let Some(e) = cancelled() {
                return Err(e);
            }
            match consumer.poll(Duration::from_millis(100)) {
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
                    self.metrics.restored_records.inc();
                    if replay.take(m.offset(), entry) {
                        let ops = replay.take_ready();
                        let at = replay.position.expect("a marker was read");
                        store
                            .write(&ops, &[], &[(p, at)])
                            .map_err(|e| e.to_string())?;
                    }
                    if last_log.elapsed() >= Duration::from_secs(5) {
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
                Some(Err(e)) => {
                    if idle_since.elapsed() >= Duration::from_secs(60) {
                        return Err(format!("reading the changelog: {e}"));
                    }
                    warn!(partition = p, error = %e, "reading the changelog; retrying");
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
        let ops = replay.take_ready();
        let at = replay.position.unwrap_or(start);
        store
            .write(&ops, &[], &[(p, at)])
            .map_err(|e| e.to_string())?;
        let unclosed = replay.unclosed();
        if let Some(e) = cancelled().filter(|_| !unclosed.is_empty()) {
            return Err(e);
        }
        if !unclosed.is_empty() {
            // A batch written after the last marker and never closed: its keys get the values
            // restored, so no reader applies it.
            let producer = self.producer(producer)?;
            let next = self.compensate(store, producer, p, &unclosed)?;
            store
                .write(&[], &[], &[(p, next)])
                .map_err(|e| e.to_string())?;
            info!(
                partition = p,
                keys = unclosed.len(),
                "records of a batch never committed overwritten with the restored values"
            );
        }
        let secs = started.elapsed().as_secs_f64();
        if replay.records > 0 {
            info!(
                partition = p,
                records = replay.records,
                seconds = secs,
                per_second = (replay.records as f64 / secs.max(1e-9)) as u64,
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
    ) -> Result<(u64, i64), String> {
        let mut deliveries = Vec::new();
        store
            .each_record(p, |op| -> Result<(), SeedError> {
                let d = send_record(
                    producer,
                    &self.topic,
                    p,
                    &record_key(&op),
                    op.value.as_deref(),
                )
                .map_err(|e| SeedError(e.to_string()))?;
                deliveries.push(d);
                Ok(())
            })
            .map_err(|e| e.0)?;
        let n = deliveries.len() as u64;
        let next = self.close(producer, p, deliveries)?;
        self.metrics
            .changelog_records
            .with_label_values(&["seed"])
            .inc_by(n);
        Ok((n, next))
    }

    /// Writes each key's value in the store (none: a tombstone), then a marker.
    fn compensate(
        &self,
        store: &Store,
        producer: &FutureProducer<ProducerLogs>,
        p: i32,
        keys: &BTreeSet<(u8, Vec<u8>)>,
    ) -> Result<i64, String> {
        let mut deliveries = Vec::new();
        for (cf, key) in keys {
            let value = store.get_raw(*cf, key).map_err(|e| e.to_string())?;
            let op = Op {
                cf: *cf,
                key: key.clone(),
                value,
            };
            deliveries.push(
                send_record(
                    producer,
                    &self.topic,
                    p,
                    &record_key(&op),
                    op.value.as_deref(),
                )
                .map_err(|e| e.to_string())?,
            );
        }
        self.metrics
            .changelog_records
            .with_label_values(&["compensation"])
            .inc_by(keys.len() as u64);
        self.close(producer, p, deliveries)
    }

    /// Awaits `deliveries`, then writes a marker; returns the offset after it.
    fn close(
        &self,
        producer: &FutureProducer<ProducerLogs>,
        p: i32,
        deliveries: Vec<DeliveryFuture>,
    ) -> Result<i64, String> {
        let rt = tokio::runtime::Handle::current();
        let topic = self.topic.as_str();
        rt.block_on(async {
            for d in deliveries {
                delivered(topic, d).await.map_err(|e| e.to_string())?;
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

    fn op(key: &str, value: Option<&str>) -> Entry {
        Entry::Op(Op {
            cf: 0,
            key: key.as_bytes().to_vec(),
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
        assert_eq!(parse(&record_key(&o), None), Some(Entry::Op(o)));
        assert_eq!(parse(MARKER_KEY, Some(b"")), Some(Entry::Marker));
        assert_eq!(parse(b"", None), None);
        assert_eq!(parse(&[200, 1], None), None, "no such column family");
    }

    #[test]
    fn only_closed_batches_are_applied() {
        let mut r = Replay::default();
        r.take(0, op("a", Some("1")));
        r.take(1, op("b", Some("1")));
        r.take(2, Entry::Marker);
        r.take(3, op("a", Some("2")));
        assert_eq!(r.position, Some(3));
        let ready = r.take_ready();
        assert_eq!(ready.len(), 2, "the first batch");
        assert_eq!(
            r.unclosed(),
            BTreeSet::from([(0u8, b"a".to_vec())]),
            "the second was never closed"
        );
        // A batch never closed, then the compensation and a batch closed after it: all applied,
        // in log order (the compensation overwrites the unclosed record).
        r.take(4, op("a", Some("1")));
        r.take(5, Entry::Marker);
        let ready = r.take_ready();
        assert_eq!(ready.len(), 2);
        assert_eq!(ready[1].value.as_deref(), Some(&b"1"[..]));
        assert!(r.unclosed().is_empty());
        assert_eq!(r.position, Some(6));
    }

    #[test]
    fn the_plan_follows_the_store_and_the_changelog() {
        // The usual restart: level.
        assert_eq!(plan(Some(10), true, 0, 10), Plan::CatchUp(10));
        // Crashed after the changelog, before RocksDB.
        assert_eq!(plan(Some(7), true, 0, 10), Plan::CatchUp(7));
        // New here (scale-out, lost volume).
        assert_eq!(plan(None, false, 0, 10), Plan::Full { wipe: false });
        // Held here before the changelog existed, and another worker wrote it since.
        assert_eq!(plan(None, true, 0, 10), Plan::Full { wipe: true });
        // Held here before the changelog existed; nobody wrote it: seeded from here.
        assert_eq!(plan(None, true, 0, 0), Plan::Seed);
        // The changelog recreated (shorter than what was written).
        assert_eq!(plan(Some(10), true, 0, 3), Plan::Seed);
        // The records after the position are gone (retention): restored whole.
        assert_eq!(plan(Some(2), true, 5, 10), Plan::Full { wipe: true });
        // Nothing anywhere.
        assert_eq!(plan(None, false, 0, 0), Plan::Full { wipe: false });
    }
}
