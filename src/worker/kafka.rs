//! The Kafka side of the shell: client configuration, librdkafka's callbacks (logs, statistics,
//! rebalances), topic checks at start, and how consumer and producer errors are classed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

pub use crate::kafka_logs::{forward_error, forward_log, ProducerLogs};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::Store;

use super::error::Error;

/// What the rebalance callback saw, applied by the loop after `recv()` returns.
pub enum Rebalance {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
    /// librdkafka refused an incremental assignment or revocation.
    Failed(String),
}

/// librdkafka callbacks: logs, statistics (lag), and assignment from the offsets in RocksDB.
pub struct KafkaContext {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub start_from: Offset,
    pub rebalances: Mutex<Vec<Rebalance>>,
    /// Wakes the processing loop when a rebalance is recorded (by the callback, which runs in
    /// the consumer's poll: the loop polls afresh every `REPOLL` for it) or a restore finishes,
    /// so that a thread waiting for messages applies the one and opens the other's partition
    /// without waiting for its batch to close (`processing.batch_max_wait`, 1 s by default).
    pub wake: Arc<tokio::sync::Notify>,
    /// Whether librdkafka's last statistics showed a broker connection up (none: all down).
    pub brokers_up: std::sync::atomic::AtomicBool,
    /// Newly assigned partitions start paused: the loop restores their state from the changelog
    /// first, then seeks them to the restored offsets and resumes them.
    pub pause_on_assign: bool,
    /// The topics of a partition number: the repartition topic first (the one the group
    /// assigns), then the input topics.
    pub topics: Vec<String>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.brokers_up
            .store(up, std::sync::atomic::Ordering::Relaxed);
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

pub fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl KafkaContext {
    /// Every topic of the partition numbers in `tpl`: the group assigns the repartition topic
    /// alone (its partitions stand for their numbers), and a member reads the same numbers of
    /// the input topics with them.
    fn topics_of(&self, tpl: &TopicPartitionList) -> Vec<(String, i32)> {
        let mut parts = Vec::new();
        for (topic, partition) in partitions(tpl) {
            if topic == self.topics[0] {
                for t in &self.topics {
                    parts.push((t.clone(), partition));
                }
            } else if !parts.contains(&(topic.clone(), partition)) {
                parts.push((topic, partition));
            }
        }
        parts
    }

    fn record(&self, rebalance: Rebalance) {
        self.rebalances
            .lock()
            .expect("not poisoned")
            .push(rebalance);
        self.wake.notify_one();
    }
}

/// One list of topic partitions.
fn list(parts: &[(String, i32)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in parts {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

/// The partition numbers of `parts`, each once.
pub fn numbers(parts: &[(String, i32)]) -> Vec<i32> {
    let mut numbers: Vec<i32> = parts.iter().map(|(_, p)| *p).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

/// Cooperative rebalancing (incremental): an assignment adds partition numbers and a
/// revocation takes some away; the others are not touched (their tasks keep their open batches).
impl ConsumerContext for KafkaContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = self.topics_of(tpl);
                let mut assigned = TopicPartitionList::new();
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
                    if let Err(e) = assigned.add_partition_offset(topic, *partition, offset) {
                        error!(topic, partition, error = %e, "cannot set the start offset");
                    }
                }
                if let Err(e) = consumer.incremental_assign(&assigned) {
                    // librdkafka takes the whole list or nothing, and keeps the assignment
                    // paused until it takes one: the worker stops (a restart rejoins).
                    self.record(Rebalance::Failed(format!("assigning {parts:?}: {e}")));
                    return;
                }
                if self.pause_on_assign {
                    if let Err(e) = consumer.pause(&assigned) {
                        error!(error = %e, "pausing newly assigned partitions failed");
                    }
                }
                self.record(Rebalance::Assigned(parts));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts = self.topics_of(tpl);
                let lost = consumer.assignment_lost();
                info!(partitions = ?numbers(&parts), lost, "partitions revoked");
                self.record(Rebalance::Revoked(parts.clone()));
                if let Err(e) = consumer.incremental_unassign(&list(&parts)) {
                    self.record(Rebalance::Failed(format!("unassigning {parts:?}: {e}")));
                }
            }
            // rdkafka calls this for assignments and revocations only.
            other => warn!(error = ?other, "unexpected rebalance event; ignored"),
        }
    }
}

pub fn client_config(settings: &Settings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (k, v) in &settings.config.kafka {
        cfg.set(k, v);
    }
    cfg
}

/// The producer's configuration: the `[kafka]` table, the processing guarantee (idempotent,
/// `acks=all`), and Tailor's defaults where the table says nothing.
pub fn producer_config(settings: &Settings) -> ClientConfig {
    let kafka = &settings.config.kafka;
    let mut cfg = client_config(settings);
    cfg.set("enable.idempotence", "true").set("acks", "all");
    for (k, v) in [
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        // Outputs keyed by profile key land where Java clients would put them.
        ("partitioner", "murmur2_random"),
        // A broker that does not acknowledge within this rolls the batch back to retry it,
        // instead of holding the loop for librdkafka's default 5 minutes.
        ("message.timeout.ms", DELIVERY_TIMEOUT_MS),
        ("queue.buffering.max.kbytes", "65536"),
    ] {
        let alias_set = k == "message.timeout.ms" && kafka.contains_key("delivery.timeout.ms");
        if !kafka.contains_key(k) && !alias_set {
            cfg.set(k, v);
        }
    }
    cfg
}

/// The consumer's configuration: the `[kafka]` table, the group, offsets stored by Tailor
/// after each commit, and cooperative rebalancing.
/// `slot`: the processing thread (each is a member of the group; static ids get `-{slot}`
/// after the first).
pub fn consumer_config(settings: &Settings, slot: usize) -> ClientConfig {
    let c = &settings.config;
    let mut cfg = client_config(settings);
    cfg.set("group.id", &c.consumer.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &c.consumer.start_from)
        // State is keyed by partition number across the co-partitioned topics. The group
        // assigns the repartition topic alone (see `KafkaContext::topics_of`), so any assignor
        // keeps a number whole; the cooperative one moves only the numbers that must move.
        .set("partition.assignment.strategy", "cooperative-sticky");
    if !c.kafka.contains_key("statistics.interval.ms") {
        cfg.set("statistics.interval.ms", "5000");
    }
    for (k, v) in CONSUMER_FETCH_DEFAULTS {
        if !c.kafka.contains_key(k) {
            cfg.set(k, v);
        }
    }
    if let Some(id) = instance_id(settings) {
        if slot == 0 {
            cfg.set("group.instance.id", id);
        } else {
            cfg.set("group.instance.id", format!("{id}-{slot}"));
        }
    }
    cfg
}

/// The consumer's fetch settings where the `[kafka]` table says nothing (the e2e bench's raw
/// consumer uses them too, so that its rate compares with the worker's):
/// - `fetch.wait.max.ms` 100 (librdkafka: 500). Apache Kafka answers a waiting fetch as soon as
///   data arrives, but some brokers (the development broker here) hold it for the whole wait,
///   which then adds to the latency of every event at a trickle. An idle consumer sends at most
///   ten fetches a second per broker at 100 ms.
/// - `fetch.queue.backoff.ms` 10 (librdkafka: 1000): a partition whose prefetched messages reach
///   `queued.min.messages` (100,000) or `queued.max.messages.kbytes` is not fetched again for
///   that long, however soon the thread has consumed them. On the deep bench both threads sat
///   idle for most of such seconds (1.1 of 2 cores busy; 1.2-1.8 with 10 ms).
pub const CONSUMER_FETCH_DEFAULTS: [(&str, &str); 2] = [
    ("fetch.wait.max.ms", "100"),
    ("fetch.queue.backoff.ms", "10"),
];

/// This worker's static group membership id: `TAILOR_INSTANCE_ID` (e.g. the pod name), else
/// `consumer.instance_id`.
pub fn instance_id(settings: &Settings) -> Option<String> {
    std::env::var("TAILOR_INSTANCE_ID")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| settings.config.consumer.instance_id.clone())
}

/// Builds the producer and the consumer `run` builds (nothing is connected) and returns what
/// librdkafka refuses: unknown or misspelt properties, values out of range, features this build
/// lacks (such as SASL GSSAPI or OIDC).
pub fn check_kafka_properties(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = producer_config(settings).create::<rdkafka::producer::BaseProducer>() {
        problems.push(format!("[kafka] refused by librdkafka for a producer: {e}"));
    }
    if let Err(e) = consumer_config(settings, 0).create::<BaseConsumer>() {
        let line = format!("[kafka] refused by librdkafka for a consumer: {e}");
        // The same refusal twice says nothing new.
        if !problems.iter().any(|p| p.ends_with(&e.to_string())) {
            problems.push(line);
        }
    }
    problems
}

/// How long the producer tries to deliver an output before the batch is rolled back and
/// retried (librdkafka's default is 5 minutes, during which nothing else would happen).
pub const DELIVERY_TIMEOUT_MS: &str = "60000";

/// The producer's largest record (librdkafka's `message.max.bytes`): outputs are kept below it.
pub fn producer_max_bytes(settings: &Settings) -> usize {
    settings
        .config
        .kafka
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// What a consumer error means for the worker.
pub fn class_of_consumer_error(e: &KafkaError) -> Class {
    let code = match e {
        KafkaError::MessageConsumption(code) | KafkaError::MessageConsumptionFatal(code) => *code,
        _ => return Class::Transient,
    };
    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
        return Class::Fatal;
    }
    match code {
        RDKafkaErrorCode::Fatal
        | RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::InvalidConfig => Class::Fatal,
        _ => Class::Transient,
    }
}

/// Whether a consumer error says the broker cannot be reached (shown on `/readyz`).
pub fn is_connectivity(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
        )
    )
}

/// What a failed delivery of an output means: retried (the batch is rolled back and processed
/// again), or fatal (retrying cannot succeed).
pub fn delivery_error(topic: &str, e: &KafkaError) -> Error {
    let code = match e {
        KafkaError::MessageProduction(code) => *code,
        other => return Error::transient("broker", format!("delivering to {topic}: {other}")),
    };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => {
            Error::fatal(format!("the broker refuses an output to {topic} as too large ({e}): its max.message.bytes is below Tailor's output bound (see the README, \"Bounded outputs\")"))
        }
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::InvalidConfig => {
            Error::fatal(format!("delivering to {topic}: {e}"))
        }
        // The producer instance cannot go on (fenced by a newer epoch, its sequence state lost
        // after timeouts): the batch is retried with a new producer.
        RDKafkaErrorCode::Fatal
        | RDKafkaErrorCode::ProducerFenced
        | RDKafkaErrorCode::InvalidProducerEpoch
        | RDKafkaErrorCode::OutOfOrderSequenceNumber
        | RDKafkaErrorCode::UnknownProducerId
        | RDKafkaErrorCode::InvalidProducerIdMapping => {
            Error::transient("producer", format!("delivering to {topic}: {e}"))
        }
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Error::fatal(
            format!("delivering to {topic}: {e} (create the topic, e.g. with `tailor topics --config ...`)"),
        ),
        _ => Error::transient("broker", format!("delivering to {topic}: {e}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Fatal,
}

/// Partition count of each input topic; they must be equal (co-partitioned).
pub fn input_partitions(
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

/// Settings of the changelog topic when Tailor creates it: compacted (the latest record of each
/// key is the state), and a record stays uncompacted for a day, so that the records of a batch
/// its worker never closed are still there to compensate when the partition is next restored.
pub const CHANGELOG_CONFIG: [(&str, &str); 2] = [
    ("cleanup.policy", "compact"),
    ("min.compaction.lag.ms", "86400000"),
];

/// Creates an internal topic (`what`: "repartition" or "changelog") with `partitions`
/// partitions and `configs` if it is missing; refuses one with another count (keys would land
/// on the wrong owner).
pub async fn ensure_internal_topic(
    settings: &Settings,
    consumer: &StreamConsumer<KafkaContext>,
    (topic, what): (&str, &str),
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
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
        Some(n) if n == partitions && what == "changelog" => {
            check_changelog_settings(settings, topic).await
        }
        Some(n) if n == partitions => Ok(()),
        Some(n) => bail!("{what} topic {topic} has {n} partitions but the inputs have {partitions}: it must have as many (delete it, or name another in topics.{what})"),
        None => {
            use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
            let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                client_config(settings)
                    .create()
                    .context("creating the Kafka admin client")?;
            let replication = settings.config.topics.repartition_replication;
            let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
            for (k, v) in configs {
                new = new.set(k, v);
            }
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
                    Err((t, e)) => bail!("creating the {what} topic {t}: {e}"),
                }
            }
            info!(topic = %topic, partitions, "created the {what} topic");
            Ok(())
        }
    }
}

/// Refuses a changelog topic that existed already (made by an operator, or by an older
/// version) and whose broker settings would lose state: `cleanup.policy` other than `compact`
/// (with `delete`, the broker removes a shopper's only record by age, and a restore would lack
/// the profile). Warns when `min.compaction.lag.ms` is below the day Tailor creates it with (a
/// batch its worker never closed must be compensated before compaction). A broker that does not
/// answer DescribeConfigs (no such API, or no permission) is logged and the topic used as is.
async fn check_changelog_settings(settings: &Settings, topic: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client_config(settings)
        .create()
        .context("creating the Kafka admin client")?;
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        )
        .await;
    let resource = match described.map(|mut r| r.pop()) {
        Ok(Some(Ok(resource))) => resource,
        Ok(Some(Err(code))) => {
            warn!(topic, error = %code, "could not read the changelog topic's settings; check by hand that it has cleanup.policy=compact");
            return Ok(());
        }
        Ok(None) => {
            warn!(topic, "the broker described no settings of the changelog topic; check by hand that it has cleanup.policy=compact");
            return Ok(());
        }
        Err(e) => {
            warn!(topic, error = %e, "could not read the changelog topic's settings; check by hand that it has cleanup.policy=compact");
            return Ok(());
        }
    };
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    if let Some(policy) = value("cleanup.policy") {
        // A list: `compact,delete` deletes by age too.
        if policy.split(',').map(str::trim).collect::<Vec<_>>() != ["compact"] {
            bail!("changelog topic {topic} has cleanup.policy={policy}: it must be compact (the broker would delete state records by age, and a restore would lose the profiles they hold); set it with `kafka-configs --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact`, or name a new topic in topics.changelog (the worker creates it)");
        }
    }
    let wanted = CHANGELOG_CONFIG
        .iter()
        .find(|(k, _)| *k == "min.compaction.lag.ms")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .expect("CHANGELOG_CONFIG sets min.compaction.lag.ms");
    if let Some(lag) = value("min.compaction.lag.ms").and_then(|v| v.parse::<i64>().ok()) {
        if lag < wanted {
            warn!(topic, min_compaction_lag_ms = lag, "the changelog topic's min.compaction.lag.ms is below a day: a batch a worker never closed must be compensated by a restore within it, or the restore may miss a record compacted away (Tailor creates the topic with 86400000)");
        }
    }
    Ok(())
}

/// Whether this worker has read everything in a partition (librdkafka's cached high
/// watermark from the last fetch; no network round trip). `next`: the next offset to read
/// (`None`: never read here; it starts at the low watermark, or with `start_from = latest` at
/// the end, where there is nothing to read yet).
pub fn caught_up(
    consumer: &StreamConsumer<KafkaContext>,
    topic: &str,
    partition: i32,
    next: Option<i64>,
) -> bool {
    if next.is_none() && consumer.context().start_from == Offset::End {
        return true;
    }
    let (lo, hi) = watermarks(consumer, topic, partition);
    if hi < 0 {
        return false; // no fetch response yet
    }
    next.unwrap_or(lo) >= hi
}

/// The low and high watermarks of a partition as librdkafka last learnt them from a fetch
/// response (no request); `(-1, -1)` before the first.
pub fn watermarks(
    consumer: &StreamConsumer<KafkaContext>,
    topic: &str,
    partition: i32,
) -> (i64, i64) {
    let Ok(name) = std::ffi::CString::new(topic) else {
        return (-1, -1);
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
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return (-1, -1);
    }
    (lo, hi)
}

/// How long [`send_now`]'s thread keeps `linger.ms` off at most, should the acknowledgements not
/// come (a broker gone: the await that follows reports it and gives up on its own terms).
const SEND_NOW_FOR: Duration = Duration::from_secs(2);

/// Sends what `producer` has queued without waiting out `linger.ms`, for a commit about to
/// await its acknowledgements: librdkafka treats the linger as over while a flush call lasts
/// (`rd_kafka_flush`). rust-rdkafka's own `flush` calls it with a zero timeout in a loop, which
/// keeps that flag up for microseconds only, so the call is made here with a real timeout, on a
/// blocking thread (this returns at once). The thread returns when every message the producer
/// holds is acknowledged (or failed), or after [`SEND_NOW_FOR`]. Delivery reports are still
/// served by the producer's own polling thread (rust-rdkafka asks librdkafka for them as events,
/// so the flush only waits for the count of messages in flight to reach zero).
///
/// Without it every await of a commit (the outputs, the changelog's records, its markers)
/// costs the linger (5 ms by default) on top of the round trip when batches are small.
pub fn send_now(producer: &super::acks::Producer) {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        // SAFETY: the client pointer is valid while `producer` (a clone, moved here) lives,
        // which is for the whole call.
        unsafe {
            rdkafka::bindings::rd_kafka_flush(
                producer.client().native_ptr(),
                SEND_NOW_FOR.as_millis() as i32,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with(kafka: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.yaml"), "segments: []\n").unwrap();
        let file = dir.path().join("tailor.toml");
        std::fs::write(
            &file,
            format!("[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:1\"\n{kafka}[segments]\nfile = \"s.yaml\"\n"),
        )
        .unwrap();
        crate::config::Config::from_file(&file)
            .unwrap()
            .validate()
            .unwrap()
    }

    /// Regression: `tailor check --config` accepted a misspelt librdkafka property and SASL
    /// mechanisms this build cannot use; `run` then failed.
    #[test]
    fn librdkafka_judges_the_kafka_properties_at_check_time() {
        assert_eq!(
            check_kafka_properties(&settings_with("")),
            Vec::<String>::new()
        );
        let typo = check_kafka_properties(&settings_with("\"socket.timeout.msx\" = \"1000\"\n"));
        assert_eq!(typo.len(), 1, "{typo:?}");
        assert!(typo[0].contains("socket.timeout.msx"), "{typo:?}");
        let gssapi = check_kafka_properties(&settings_with(
            "\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"GSSAPI\"\n",
        ));
        assert!(gssapi.iter().any(|p| p.contains("GSSAPI")), "{gssapi:?}");
    }

    #[test]
    fn consumer_errors_are_classed() {
        let transient = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(class_of_consumer_error(&transient), Class::Transient);
        let all_down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(class_of_consumer_error(&all_down), Class::Transient);
        // Regression: a fatal consumer error was warned about forever.
        let fatal = KafkaError::MessageConsumption(RDKafkaErrorCode::Fatal);
        assert_eq!(class_of_consumer_error(&fatal), Class::Fatal);
        let denied = KafkaError::MessageConsumption(RDKafkaErrorCode::GroupAuthorizationFailed);
        assert_eq!(class_of_consumer_error(&denied), Class::Fatal);
    }

    #[test]
    fn delivery_errors_are_classed() {
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(
            delivery_error("t", &timed_out),
            Error::Transient { .. }
        ));
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(delivery_error("t", &too_large), Error::Fatal(_)));
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert!(matches!(
            delivery_error("t", &fenced),
            Error::Transient {
                what: "producer",
                ..
            }
        ));
    }
}
