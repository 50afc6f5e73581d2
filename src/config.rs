//! Worker configuration: a TOML file over built-in defaults, validated at start with every problem
//! named by its field path and value.
//!
//! ```toml
//! [kafka]                       # passed to librdkafka as-is
//! "bootstrap.servers" = "127.0.0.1:9092"
//! [segments]
//! file = "examples/segments.yaml"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::segments::SegmentSet;
use crate::store::StoreOptions;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// librdkafka properties for the consumer and the producer (e.g. security settings).
    pub kafka: BTreeMap<String, String>,
    pub topics: Topics,
    pub consumer: Consumer,
    pub processing: Processing,
    pub state: State,
    pub segments: Segments,
    pub identity: IdentityConfig,
    pub http: Http,
    pub log: Log,
    pub schemas: Schemas,
    pub schema_registry: SchemaRegistry,
    pub output: Output,
}

/// Writer schemas read at run time, beside the ones compiled in from `avro/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schemas {
    /// A directory of `.avsc` files: producers' other versions of the input records, loaded at
    /// start and on SIGHUP, each checked against the current reader schema.
    pub dir: Option<PathBuf>,
}

/// A Confluent-compatible schema registry, for messages with Confluent framing and, with
/// `output.framing = "confluent"`, for the outputs' schemas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistry {
    /// Base URL, e.g. `http://registry:8081`. Empty: no registry.
    pub url: String,
    /// Basic authentication (`TAILOR_REGISTRY_PASSWORD` overrides the password).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Bearer token (`TAILOR_REGISTRY_TOKEN` overrides it).
    pub bearer_token: Option<String>,
    /// PEM file of the CA that signed the registry's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request.
    pub timeout: String,
}

impl Default for SchemaRegistry {
    fn default() -> Self {
        SchemaRegistry {
            url: String::new(),
            username: None,
            password: None,
            bearer_token: None,
            ca_file: None,
            timeout: "5s".into(),
        }
    }
}

/// How output records are framed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Output {
    /// `single-object` (Avro single-object encoding, the default) or `confluent` (magic byte 0 +
    /// registry id; the output schemas are registered under `<topic>-value` at start).
    pub framing: String,
    /// Name on each audience change the condition of the rule that flipped it (`explanation`).
    /// Costs recording, before each event, what it changes of what rules read (`core::undo`),
    /// and a copy of the rule inputs when a membership flips; `false` leaves the field null.
    pub explain: bool,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            framing: "single-object".into(),
            explain: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Most identities (ECIDs, e-mails, customer id) linked to one profile; links beyond are
    /// refused and counted (`tailor_identity_links_total{result="refused_limit"}`).
    pub max_identities: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            max_identities: crate::audience::MAX_IDENTITIES,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub storefront: String,
    pub backoffice: String,
    pub profile: String,
    pub audience_changes: String,
    pub journey_triggers: String,
    pub dead_letter: String,
    /// Internal topic that moves events and state to the owner of the surviving profile (identity
    /// merges, deletions). Created by the worker when missing, with the inputs' partition count.
    pub repartition: String,
    /// Replication factor when the worker creates the repartition topic (-1: broker default).
    pub repartition_replication: i32,
    /// Internal compacted topic mirroring the state writes (the timer index aside: it follows
    /// from the profiles), partitioned like the inputs: a partition's next owner restores its
    /// state from it. Created by the worker when missing (replication as
    /// `repartition_replication`).
    pub changelog: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Consumer {
    pub group_id: String,
    /// Where to start a partition this worker's state has never seen: `earliest` or `latest`.
    pub start_from: String,
    /// Static group membership (`group.instance.id`): a worker that restarts under the same id
    /// within the session timeout gets its partitions back without a rebalance. Unique per
    /// worker, e.g. the StatefulSet pod name; `TAILOR_INSTANCE_ID` overrides it. Unset: dynamic
    /// membership.
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Processing {
    /// Most messages a batch takes from the consumer before state and offsets are committed
    /// (about what a crash has to process again, at most: messages left buffered by
    /// `batch_max_profiles` are applied in the next batch).
    pub batch_max_messages: usize,
    /// Most profiles a thread's batch of messages changes before it is committed: the changed
    /// profiles of the open batch are held in memory (the profile cache) until the commit
    /// writes them, so this, times the threads, must fit in `state.cache_profiles` and, at
    /// [`CACHED_PROFILE_BYTES`] each at the least, in `state.cache_memory`. A shopper's
    /// events in one batch are one profile write (one RocksDB put, one changelog record), so
    /// batches of shoppers with many events each are bounded by this less often than by the
    /// messages. The timers a batch fires and the profiles it re-evaluates have budgets of
    /// their own of this size. Also the length of a topic's order queue that pauses its
    /// fetching (at least 1,000, at most 100,000 messages).
    pub batch_max_profiles: usize,
    /// Longest a batch stays open waiting for messages, e.g. "100ms".
    pub batch_max_wait: String,
    /// How long a batch stays open after it first catches up (no message waiting) before it
    /// commits, e.g. "20ms" (at most `batch_max_wait`). `0ms`: it commits at once, so the
    /// committed state (the profile served, the stored offsets) follows the stream closely;
    /// more: fewer commits (fsyncs, changelog markers) at a trickle.
    pub batch_linger: String,
    /// How far out of order events may arrive and still count before a timer fires: the
    /// stream clock trails the latest event time by this much, e.g. "5s".
    pub allowed_lateness: String,
    /// When a partition is caught up, its clock follows the wall clock (timers fire on time
    /// without new events). `false`: event time only, e.g. to backfill history without every
    /// pending timer firing at "now" at the end.
    pub wall_clock: bool,
    /// Longest a partition waits for one of its topics that has nothing buffered but messages
    /// still to come, before applying the others' without it (event-time order across topics),
    /// e.g. "2s".
    pub max_idle: String,
    /// Processing threads (Kafka Streams' `num.stream.threads`): each is a member of the
    /// consumer group with its own partitions, consumer, producer and share of the profile
    /// cache; they share the RocksDB store. More than the cores, or than partitions divided by
    /// workers, only adds idle members. `0` (the default): one per core the process may use
    /// ([`auto_threads`]).
    pub threads: usize,
    /// Let the kernel back the process's memory with transparent huge pages (Linux). `false`
    /// (the default): turned off for the process at start ([`crate::heap`]'s
    /// `disable_transparent_huge_pages`); the system's setting otherwise.
    pub transparent_huge_pages: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct State {
    pub path: PathBuf,
    /// Most profiles kept decoded in memory (write-merging cache).
    pub cache_profiles: usize,
    /// Most memory the decoded profiles take, e.g. "512MiB": the bound that holds more small
    /// profiles than large ones (each counted by the heap blocks it owns; see the README).
    pub cache_memory: String,
    /// RocksDB block cache, e.g. "256MiB".
    pub block_cache: String,
    /// RocksDB memtable size, e.g. "64MiB".
    pub write_buffer: String,
    /// RocksDB's write-ahead log. Unset (the default): off with the changelog, on without. Off,
    /// a commit's state is durable in the changelog (acknowledged by the brokers before the
    /// commit) and reaches the disk with RocksDB's next flush of its memtables (at most
    /// `flush_interval` later); a worker killed meanwhile restores the rest from the changelog
    /// when it restarts. Needs `changelog` when off.
    pub write_ahead_log: Option<bool>,
    /// fsync the write-ahead log on every commit (with the write-ahead log on).
    pub sync_writes: bool,
    /// With the write-ahead log off: the longest the state written stays in memory only before
    /// RocksDB flushes it to disk (what a restart after a crash restores from the changelog,
    /// and how far behind a running worker `tailor profile`, `explain` and `preview` read),
    /// e.g. "1min"; at most "1h".
    pub flush_interval: String,
    /// LZ4 for the files RocksDB's flushes write (level 0) too. Off (the default): they are
    /// written uncompressed, and the next compaction compresses them into the levels below
    /// (the state on disk past level 0 is LZ4 either way); less CPU per event, more bytes
    /// written to disk and more disk until that compaction.
    pub compress_flushes: bool,
    /// Mirror the state writes (the timer index aside) to `topics.changelog` and restore a
    /// partition from it when it moves here. Off: a partition's state lives only on the disk of
    /// the worker that had it.
    pub changelog: bool,
    /// Keep a copy of every partition held by another worker, following the changelog, so that
    /// taking one over is a short catch-up rather than a whole restore (needs `changelog`).
    pub standby: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Segments {
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address of /metrics, /healthz, /readyz and /profiles. Loopback by default.
    pub listen: String,
    /// Bearer token required by /profiles (lookups and deletes). The environment variable
    /// `TAILOR_HTTP_TOKEN` overrides it (keep secrets out of files).
    pub token: Option<String>,
    /// Host names (besides localhost, 127.0.0.1 and ::1) requests may name in their `Host`
    /// header when `listen` is a loopback address: a browser tricked into calling the port
    /// through another name (DNS rebinding) is refused.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `human` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `tailor=debug,rdkafka=warn`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        let mut kafka = BTreeMap::new();
        kafka.insert("bootstrap.servers".into(), "127.0.0.1:9092".into());
        Config {
            kafka,
            topics: Topics::default(),
            consumer: Consumer::default(),
            processing: Processing::default(),
            state: State::default(),
            segments: Segments::default(),
            identity: IdentityConfig::default(),
            http: Http::default(),
            log: Log::default(),
            schemas: Schemas::default(),
            schema_registry: SchemaRegistry::default(),
            output: Output::default(),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            storefront: "commerce.storefront".into(),
            backoffice: "commerce.backoffice".into(),
            profile: "commerce.profile".into(),
            audience_changes: "audience.changes".into(),
            journey_triggers: "journey.triggers".into(),
            dead_letter: "tailor.deadletter".into(),
            repartition: "tailor.repartition".into(),
            repartition_replication: -1,
            changelog: "tailor.changelog".into(),
        }
    }
}

impl Default for Consumer {
    fn default() -> Self {
        Consumer {
            group_id: "tailor".into(),
            start_from: "earliest".into(),
            instance_id: None,
        }
    }
}

impl Default for Processing {
    fn default() -> Self {
        Processing {
            batch_max_messages: 100_000,
            batch_max_profiles: 10_000,
            batch_max_wait: "1s".into(),
            batch_linger: "0ms".into(),
            allowed_lateness: "5s".into(),
            wall_clock: true,
            max_idle: "2s".into(),
            threads: 0,
            transparent_huge_pages: false,
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            path: PathBuf::from(".tailor/state"),
            cache_profiles: 1_000_000,
            cache_memory: "768MiB".into(),
            block_cache: "256MiB".into(),
            write_buffer: "64MiB".into(),
            write_ahead_log: None,
            sync_writes: true,
            flush_interval: "1min".into(),
            compress_flushes: false,
            changelog: true,
            standby: false,
        }
    }
}

impl State {
    /// Whether RocksDB keeps its write-ahead log: the setting, else off with the changelog and
    /// on without it (what the worker opens the store with and what the read-only commands
    /// assume of a worker running beside them).
    pub fn write_ahead_log(&self) -> bool {
        self.write_ahead_log.unwrap_or(!self.changelog)
    }
}

impl Default for Segments {
    fn default() -> Self {
        Segments {
            file: PathBuf::from("examples/segments.yaml"),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:9464".into(),
            token: None,
            hosts: Vec::new(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

/// librdkafka properties the worker owns: setting them would break the processing guarantee.
const RESERVED_KAFKA: &[&str] = &[
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
    "transactional.id",
    // A commit waits for every record's delivery report: with reports of failures only, it
    // would wait for ever.
    "delivery.report.only.error",
    // State is keyed by partition *number* across the co-partitioned topics: the group assigns
    // the repartition topic alone, with the cooperative-sticky assignor, and each member reads
    // the same numbers of the input topics. Tailor sets it.
    "partition.assignment.strategy",
    // The next-generation group protocol (KIP-848) assigns on the broker, by topic partition.
    "group.protocol",
];

/// The validated, ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    /// Processing threads: `processing.threads`, or when it is 0 one per core ([`auto_threads`]).
    pub threads: usize,
    /// `state.cache_memory` in bytes.
    pub cache_memory_bytes: usize,
    pub batch_max_wait: Duration,
    pub batch_linger: Duration,
    pub allowed_lateness: Duration,
    pub max_idle: Duration,
    pub store: StoreOptions,
    pub listen: SocketAddr,
    pub segments: SegmentSet,
    pub registry_timeout: Duration,
}

/// Every problem found in a configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The memory a cached profile is counted for before its lists and strings: the `Profile` in
/// its box, the cache's entry, a short key and the hash table's share, at the allocator's sizes
/// (880 bytes; the profile cache adds every heap block the profile owns, see the README's
/// memory paragraph). The overlay's tests check it against the count the cache makes.
pub const CACHED_PROFILE_BYTES: usize = 880;

/// Most processing threads `processing.threads = 0` starts: beyond this, more members than a
/// worker's share of the partitions is the likelier case, and each holds connections and buffers.
pub const AUTO_THREADS_MAX: usize = 8;

/// The processing threads for `processing.threads = 0`: one per core the process may use
/// (`cores`: Rust's `available_parallelism`, which follows the CPU affinity and a cgroup CPU
/// quota, such as a Kubernetes CPU limit, but not a CPU request), at most [`AUTO_THREADS_MAX`],
/// and no more than leave each thread's cache share (`cache_profiles` profiles, `cache_memory`
/// bytes) a whole batch's changed profiles.
pub fn auto_threads(
    cores: usize,
    (cache_profiles, cache_memory): (usize, usize),
    batch_max_profiles: usize,
) -> usize {
    let batch = batch_max_profiles.max(1);
    cores
        .min(AUTO_THREADS_MAX)
        .min(cache_profiles / batch)
        .min(cache_memory / batch.saturating_mul(CACHED_PROFILE_BYTES))
        .max(1)
}

/// Parses a size such as `256MiB`, `1GiB`, `512KiB` or a plain byte count.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Config {
    /// Reads a config file; unknown keys and wrong types are errors naming the field.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            ConfigErrors(vec![format!(
                "{}: {}",
                path.display(),
                e.to_string().trim()
            )])
        })?;
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.state.path, &mut config.segments.file]
            .into_iter()
            .chain(config.schemas.dir.as_mut())
            .chain(config.schema_registry.ca_file.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.kafka_from_env(std::env::vars());
        Ok(config)
    }

    /// librdkafka properties from the environment, over the file's (secrets stay out of files):
    /// `TAILOR_KAFKA_SASL_PASSWORD` sets `sasl.password` (the rest of the name lower-cased,
    /// `_` read as `.`). Properties Tailor owns are refused by [`Config::validate`] either way.
    pub fn kafka_from_env(&mut self, vars: impl Iterator<Item = (String, String)>) {
        for (name, value) in vars {
            if let Some(prop) = name.strip_prefix("TAILOR_KAFKA_") {
                if !prop.is_empty() {
                    self.kafka
                        .insert(prop.to_ascii_lowercase().replace('_', "."), value);
                }
            }
        }
    }

    /// Checks everything and builds the runtime settings, or lists every problem.
    pub fn validate(self) -> Result<Settings, ConfigErrors> {
        let mut problems = Vec::new();
        let c = &self;
        if c.kafka
            .get("bootstrap.servers")
            .is_none_or(|s| s.trim().is_empty())
        {
            problems.push("kafka.\"bootstrap.servers\" is required".to_string());
        }
        for key in c.kafka.keys() {
            if RESERVED_KAFKA.contains(&key.as_str()) {
                problems.push(format!(
                    "kafka.{key:?} = {:?}: set by Tailor itself to keep its processing guarantee; remove it",
                    c.kafka[key]
                ));
            }
        }
        let topics = [
            ("topics.storefront", &c.topics.storefront),
            ("topics.backoffice", &c.topics.backoffice),
            ("topics.profile", &c.topics.profile),
            ("topics.audience_changes", &c.topics.audience_changes),
            ("topics.journey_triggers", &c.topics.journey_triggers),
            ("topics.dead_letter", &c.topics.dead_letter),
            ("topics.repartition", &c.topics.repartition),
            ("topics.changelog", &c.topics.changelog),
        ];
        for (i, (field, name)) in topics.iter().enumerate() {
            let valid = !name.is_empty()
                && name.len() <= 249
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
            if !valid {
                problems.push(format!("{field} = {name:?}: a topic name is 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'"));
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, n)| n == name) {
                problems.push(format!("{field} = {name:?}: same topic as {other}"));
            }
        }
        if !(2..=crate::audience::MAX_IDENTITIES_LIMIT).contains(&c.identity.max_identities) {
            problems.push(format!(
                "identity.max_identities = {}: at least 2 (a browser and a known identity), at most {} (a profile, which travels whole in a merge, must stay below the broker's record size)",
                c.identity.max_identities,
                crate::audience::MAX_IDENTITIES_LIMIT
            ));
        }
        if c.topics.repartition_replication == 0 || c.topics.repartition_replication < -1 {
            problems.push(format!(
                "topics.repartition_replication = {}: -1 (broker default) or at least 1",
                c.topics.repartition_replication
            ));
        }
        if c.consumer.group_id.trim().is_empty() {
            problems.push("consumer.group_id = \"\": must not be empty".into());
        }
        if !matches!(c.consumer.start_from.as_str(), "earliest" | "latest") {
            problems.push(format!(
                "consumer.start_from = {:?}: expected \"earliest\" or \"latest\"",
                c.consumer.start_from
            ));
        }
        if c.processing.batch_max_messages == 0 {
            problems.push("processing.batch_max_messages = 0: must be at least 1".into());
        }
        if c.processing.batch_max_profiles == 0 {
            problems.push("processing.batch_max_profiles = 0: must be at least 1".into());
        }
        let wait = humantime::parse_duration(&c.processing.batch_max_wait);
        if let Err(e) = &wait {
            problems.push(format!(
                "processing.batch_max_wait = {:?}: {e} (e.g. \"100ms\")",
                c.processing.batch_max_wait
            ));
        }
        // Longer than `batch_max_wait` is harmless: the batch closes at its maximum wait.
        let linger = humantime::parse_duration(&c.processing.batch_linger);
        if let Err(e) = &linger {
            problems.push(format!(
                "processing.batch_linger = {:?}: {e} (e.g. \"0ms\" or \"20ms\")",
                c.processing.batch_linger
            ));
        }
        if c.state.write_ahead_log == Some(false) && !c.state.changelog {
            problems.push(
                "state.write_ahead_log = false needs state.changelog = true (without either, a crash loses the state written since RocksDB's last flush)"
                    .into(),
            );
        }
        let flush_interval = humantime::parse_duration(&c.state.flush_interval);
        match &flush_interval {
            Err(e) => problems.push(format!(
                "state.flush_interval = {:?}: {e} (e.g. \"1min\")",
                c.state.flush_interval
            )),
            Ok(d) if d.is_zero() || *d > Duration::from_secs(3600) => problems.push(format!(
                "state.flush_interval = {:?}: expected more than zero and at most \"1h\" (what a restart after a crash reads from the changelog; e.g. \"1min\")",
                c.state.flush_interval
            )),
            Ok(_) => {}
        }
        if c.state.standby && !c.state.changelog {
            problems.push(
                "state.standby = true needs state.changelog = true (standby copies follow the changelog)"
                    .into(),
            );
        }
        if c.processing.threads > 64 {
            problems.push(format!(
                "processing.threads = {}: expected 1 to 64, or 0 for one per core",
                c.processing.threads
            ));
        }
        let cache_memory = parse_size(&c.state.cache_memory);
        if cache_memory.is_none_or(|b| b < 1 << 20) {
            problems.push(format!(
                "state.cache_memory = {:?}: expected a size of at least \"1MiB\", such as \"512MiB\"",
                c.state.cache_memory
            ));
        }
        let threads = match c.processing.threads {
            0 => auto_threads(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                (c.state.cache_profiles, cache_memory.unwrap_or(usize::MAX)),
                c.processing.batch_max_profiles,
            ),
            n => n,
        };
        let max_idle = humantime::parse_duration(&c.processing.max_idle);
        match &max_idle {
            Err(e) => problems.push(format!(
                "processing.max_idle = {:?}: {e} (e.g. \"2s\")",
                c.processing.max_idle
            )),
            Ok(d) if *d > Duration::from_secs(600) => problems.push(format!(
                "processing.max_idle = {:?}: at most 10 minutes (a partition would stall that long)",
                c.processing.max_idle
            )),
            Ok(_) => {}
        }
        if c.consumer
            .instance_id
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            problems.push(
                "consumer.instance_id = \"\": give each worker its own id, or leave it out".into(),
            );
        }
        let lateness = humantime::parse_duration(&c.processing.allowed_lateness);
        match &lateness {
            Err(e) => problems.push(format!(
                "processing.allowed_lateness = {:?}: {e} (e.g. \"5s\")",
                c.processing.allowed_lateness
            )),
            Ok(d) if *d > Duration::from_secs(86_400) => problems.push(format!(
                "processing.allowed_lateness = {:?}: at most 1 day (timers would wait that long)",
                c.processing.allowed_lateness
            )),
            Ok(_) => {}
        }
        if c.state.cache_profiles < c.processing.batch_max_profiles.saturating_mul(threads) {
            problems.push(format!(
                "state.cache_profiles = {}: must be at least processing.batch_max_profiles ({}) times processing.threads ({threads}{}) so each thread's batch fits in its share",
                c.state.cache_profiles,
                c.processing.batch_max_profiles,
                if c.processing.threads == 0 { ", one per core" } else { "" }
            ));
        }
        let batch_bytes = c
            .processing
            .batch_max_profiles
            .saturating_mul(CACHED_PROFILE_BYTES)
            .saturating_mul(threads);
        if cache_memory.is_some_and(|b| b >= 1 << 20 && b < batch_bytes) {
            problems.push(format!(
                "state.cache_memory = {:?}: must hold processing.batch_max_profiles ({}) profiles of at least {CACHED_PROFILE_BYTES} bytes per processing thread ({threads}{}), at least {:.1} MiB, so each thread's batch fits in its share",
                c.state.cache_memory,
                c.processing.batch_max_profiles,
                if c.processing.threads == 0 { ", one per core" } else { "" },
                batch_bytes as f64 / 1048576.0
            ));
        }
        let block_cache = parse_size(&c.state.block_cache);
        if block_cache.is_none_or(|b| b < 1 << 20) {
            problems.push(format!(
                "state.block_cache = {:?}: expected a size of at least \"1MiB\", such as \"256MiB\"",
                c.state.block_cache
            ));
        }
        let write_buffer = parse_size(&c.state.write_buffer);
        if write_buffer.is_none_or(|b| b < 1 << 20) {
            problems.push(format!(
                "state.write_buffer = {:?}: expected a size of at least \"1MiB\"",
                c.state.write_buffer
            ));
        }
        if c.http.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push(
                "http.token = \"\": an empty token would leave /profiles open; remove the line or give a token".into(),
            );
        }
        let listen = c.http.listen.parse::<SocketAddr>();
        if let Err(e) = &listen {
            problems.push(format!(
                "http.listen = {:?}: {e} (e.g. \"127.0.0.1:9464\")",
                c.http.listen
            ));
        }
        if !matches!(c.log.format.as_str(), "human" | "json") {
            problems.push(format!(
                "log.format = {:?}: expected \"human\" or \"json\"",
                c.log.format
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
            problems.push(format!("log.level = {:?}: {e}", c.log.level));
        }
        let segments = match std::fs::read_to_string(&c.segments.file) {
            Err(e) => {
                problems.push(format!(
                    "segments.file = {:?}: {e}",
                    c.segments.file.display().to_string()
                ));
                None
            }
            Ok(src) => match SegmentSet::parse(&src) {
                Ok(s) => Some(s),
                Err(errs) => {
                    for e in errs.0 {
                        problems.push(format!("segments.file {}:{e}", c.segments.file.display()));
                    }
                    None
                }
            },
        };
        let registry_timeout = humantime::parse_duration(&c.schema_registry.timeout);
        if let Err(e) = &registry_timeout {
            problems.push(format!(
                "schema_registry.timeout = {:?}: {e} (e.g. \"5s\")",
                c.schema_registry.timeout
            ));
        }
        let url = c.schema_registry.url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            problems.push(format!(
                "schema_registry.url = {url:?}: expected http://HOST:PORT or https://HOST:PORT"
            ));
        }
        if c.schema_registry.bearer_token.is_some() && c.schema_registry.username.is_some() {
            problems.push(
                "schema_registry: set either username/password or bearer_token, not both".into(),
            );
        }
        if let Some(ca) = &c.schema_registry.ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                problems.push(format!(
                    "schema_registry.ca_file = {:?}: {e}",
                    ca.display().to_string()
                ));
            }
        }
        if let Some(dir) = &c.schemas.dir {
            let mut catalog = crate::codec::SchemaCatalog::builtin().clone();
            let (_, refused) = crate::schemas::load(&mut catalog, dir);
            for e in refused {
                problems.push(format!("schemas.dir: {e}"));
            }
        }
        match c.output.framing.as_str() {
            "single-object" => {}
            "confluent" if !url.is_empty() => {}
            "confluent" => problems.push(
                "output.framing = \"confluent\": needs schema_registry.url to register the output schemas".into(),
            ),
            other => problems.push(format!(
                "output.framing = {other:?}: expected \"single-object\" or \"confluent\""
            )),
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let wait_checked = wait.expect("checked");
        Ok(Settings {
            registry_timeout: registry_timeout.expect("checked"),
            batch_max_wait: wait_checked,
            batch_linger: linger.expect("checked").min(wait_checked),
            threads,
            cache_memory_bytes: cache_memory.expect("checked"),
            max_idle: max_idle.expect("checked"),
            allowed_lateness: lateness.expect("checked"),
            store: StoreOptions {
                block_cache_bytes: block_cache.expect("checked"),
                write_buffer_bytes: write_buffer.expect("checked"),
                sync_writes: self.state.sync_writes,
                write_ahead_log: self.state.write_ahead_log(),
                flush_interval: flush_interval.expect("checked"),
                compress_flushes: self.state.compress_flushes,
            },
            listen: listen.expect("checked"),
            segments: segments.expect("checked"),
            config: self,
        })
    }
}

impl Settings {
    /// The synchronous core with the configured segments and identity limit.
    pub fn core(&self) -> crate::audience::Core {
        crate::audience::Core::new(std::sync::Arc::new(self.segments.clone()))
            .with_max_identities(self.config.identity.max_identities)
            .with_explanations(self.config.output.explain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates a configuration made of `kafka` lines (after the broker's), `rest`, and an
    /// empty segments file.
    fn validate_with(kafka: &str, rest: &str) -> Result<Settings, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tailor.toml");
        std::fs::write(dir.path().join("s.yaml"), "segments: []\n").unwrap();
        let text = format!(
            "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n{kafka}{rest}\n[segments]\nfile = \"s.yaml\"\n"
        );
        std::fs::write(&file, text).unwrap();
        Config::from_file(&file)
            .unwrap()
            .validate()
            .map_err(|e| e.0)
    }

    #[test]
    fn the_profile_cache_is_bounded_by_memory() {
        let memory = |text: &str| validate_with("", text).map(|s| s.cache_memory_bytes);
        assert_eq!(memory(""), Ok(768 << 20));
        assert_eq!(memory("[state]\ncache_memory = \"2GiB\""), Ok(2 << 30));
        for bad in ["0", "100KiB", "half"] {
            let errs = memory(&format!("[state]\ncache_memory = \"{bad}\"")).unwrap_err();
            assert_eq!(
                errs,
                [format!(
                    "state.cache_memory = \"{bad}\": expected a size of at least \"1MiB\", such as \"512MiB\""
                )]
            );
        }
    }

    #[test]
    fn the_block_cache_is_at_least_a_mebibyte() {
        // RocksDB's clock cache aborts the process when made with no room at all.
        let cache = |size: &str| {
            validate_with("", &format!("[state]\nblock_cache = \"{size}\""))
                .map(|s| s.store.block_cache_bytes)
        };
        assert_eq!(cache("1MiB"), Ok(1 << 20));
        for bad in ["0", "512KiB", "lots"] {
            let errs = cache(bad).unwrap_err();
            assert!(
                errs[0].starts_with(&format!(
                    "state.block_cache = \"{bad}\": expected a size of at least \"1MiB\""
                )),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn flushes_are_written_uncompressed_unless_asked_for() {
        let lz4 = |rest: &str| validate_with("", rest).map(|s| s.store.compress_flushes);
        assert_eq!(lz4(""), Ok(false));
        assert_eq!(lz4("[state]\ncompress_flushes = true"), Ok(true));
    }

    #[test]
    fn the_write_ahead_log_is_off_with_the_changelog_unless_asked_for() {
        let wal = |rest: &str| validate_with("", rest).map(|s| s.store.write_ahead_log);
        assert_eq!(
            wal(""),
            Ok(false),
            "the changelog holds what is not flushed"
        );
        assert_eq!(wal("[state]\nchangelog = false"), Ok(true));
        assert_eq!(wal("[state]\nwrite_ahead_log = true"), Ok(true));
        let errs = wal("[state]\nwrite_ahead_log = false\nchangelog = false").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("state.write_ahead_log = false needs state.changelog = true"),
            "{errs:?}"
        );
        let every = |rest: &str| validate_with("", rest).map(|s| s.store.flush_interval);
        assert_eq!(every(""), Ok(std::time::Duration::from_secs(60)));
        assert_eq!(
            every("[state]\nflush_interval = \"10s\""),
            Ok(std::time::Duration::from_secs(10))
        );
        for bad in ["0s", "soon", "2h"] {
            let errs = every(&format!("[state]\nflush_interval = \"{bad}\"")).unwrap_err();
            assert!(
                errs[0].starts_with(&format!("state.flush_interval = \"{bad}\"")),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn standby_copies_need_the_changelog() {
        let errs = validate_with("", "[state]\nstandby = true\nchangelog = false").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("state.standby = true needs"),
            "{errs:?}"
        );
        assert!(
            validate_with("", "[state]\nstandby = true")
                .unwrap()
                .config
                .state
                .standby
        );
    }

    #[test]
    fn processing_threads_default_to_the_cores_within_the_cache_and_a_cap() {
        // One per core, capped; a cache too small for a batch per thread gets fewer threads.
        // The README states the bytes a cached profile is counted for at the least.
        assert_eq!(CACHED_PROFILE_BYTES, 880, "update the README's 880 bytes");
        let mib = 1 << 20;
        assert_eq!(auto_threads(2, (100_000, 512 * mib), 10_000), 2);
        assert_eq!(
            auto_threads(64, (1_000_000, 1 << 40), 10_000),
            AUTO_THREADS_MAX
        );
        assert_eq!(auto_threads(4, (25_000, 512 * mib), 10_000), 2);
        assert_eq!(auto_threads(4, (5_000, 512 * mib), 10_000), 1);
        // The memory likewise: 10,000 profiles of at least CACHED_PROFILE_BYTES per thread.
        let batch = 10_000 * CACHED_PROFILE_BYTES;
        assert_eq!(auto_threads(4, (1_000_000, 3 * batch), 10_000), 3);
        assert_eq!(auto_threads(4, (1_000_000, batch - 1), 10_000), 1);
        // The default resolves to this machine's cores (at least one); a number given is kept.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            validate_with("", "").unwrap().threads,
            auto_threads(cores, (1_000_000, 768 * mib), 10_000)
        );
        assert_eq!(
            validate_with("", "[processing]\nthreads = 3")
                .unwrap()
                .threads,
            3
        );
        let errs = validate_with("", "[processing]\nbatch_max_profiles = 0").unwrap_err();
        assert!(
            errs[0].starts_with("processing.batch_max_profiles = 0"),
            "{errs:?}"
        );
        let errs = validate_with("", "[processing]\nthreads = 65").unwrap_err();
        assert!(errs[0].starts_with("processing.threads = 65"), "{errs:?}");
        let errs = validate_with(
            "",
            "[processing]\nthreads = 4\n[state]\ncache_profiles = 20000",
        )
        .unwrap_err();
        assert!(errs[0].contains("times processing.threads (4)"), "{errs:?}");
        let errs = validate_with(
            "",
            "[processing]\nthreads = 2\n[state]\ncache_memory = \"8MiB\"",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [format!(
                "state.cache_memory = \"8MiB\": must hold processing.batch_max_profiles (10000) profiles of at least {CACHED_PROFILE_BYTES} bytes per processing thread (2), at least {:.1} MiB, so each thread's batch fits in its share",
                (2 * 10_000 * CACHED_PROFILE_BYTES) as f64 / 1048576.0
            )]
        );
    }

    /// Regression: `identity.max_identities` was documented but never applied (always 32).
    #[test]
    fn the_core_gets_the_configured_identity_limit() {
        let settings = validate_with("", "[identity]\nmax_identities = 3").unwrap();
        assert_eq!(settings.core().max_identities(), 3);
        let errs = validate_with("", "[identity]\nmax_identities = 101").unwrap_err();
        assert!(errs[0].contains("at most 100"), "{errs:?}");
    }

    #[test]
    fn every_problem_is_named_with_its_field_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tailor.toml");
        std::fs::write(
            &file,
            r#"
[kafka]
"bootstrap.servers" = "b:9092"
"enable.auto.commit" = "true"
"delivery.report.only.error" = "true"
[topics]
dead_letter = "audience.changes"
[consumer]
start_from = "middle"
[processing]
batch_max_wait = "soon"
batch_linger = "briefly"
[state]
block_cache = "lots"
[http]
listen = "nowhere"
[segments]
file = "missing.yaml"
"#,
        )
        .unwrap();
        let errs = Config::from_file(&file).unwrap().validate().unwrap_err().0;
        let all = errs.join("\n");
        for needle in [
            "kafka.\"enable.auto.commit\"",
            "kafka.\"delivery.report.only.error\" = \"true\": set by Tailor itself",
            "topics.dead_letter = \"audience.changes\": same topic as topics.audience_changes",
            "consumer.start_from = \"middle\"",
            "processing.batch_max_wait = \"soon\"",
            "processing.batch_linger = \"briefly\"",
            "state.block_cache = \"lots\"",
            "http.listen = \"nowhere\"",
            "segments.file",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 9, "{all}");
    }

    /// Regression: `partition.assignment.strategy` could be set, although state is keyed by
    /// partition number across the co-partitioned topics (Tailor sets the assignor).
    #[test]
    fn partition_assignment_strategy_cannot_be_set() {
        let errs =
            validate_with("\"partition.assignment.strategy\" = \"roundrobin\"\n", "").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("kafka.\"partition.assignment.strategy\" = \"roundrobin\""),
            "{errs:?}"
        );
    }

    /// Secrets stay out of the file: `TAILOR_KAFKA_*` variables set librdkafka properties,
    /// over the file's, and the ones Tailor owns are refused from there too.
    #[test]
    fn kafka_properties_come_from_the_environment_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tailor.toml");
        std::fs::write(dir.path().join("s.yaml"), "segments: []\n").unwrap();
        std::fs::write(
            &file,
            "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n\"sasl.username\" = \"file\"\n[segments]\nfile = \"s.yaml\"\n",
        )
        .unwrap();
        let mut c = Config::from_file(&file).unwrap();
        let vars = [
            ("TAILOR_KAFKA_SASL_PASSWORD", "s3cret"),
            ("TAILOR_KAFKA_SASL_USERNAME", "env"),
            ("TAILOR_HTTP_TOKEN", "not kafka"),
            ("TAILOR_KAFKA_", "no name"),
        ];
        c.kafka_from_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(c.kafka["sasl.password"], "s3cret");
        assert_eq!(c.kafka["sasl.username"], "env", "over the file's");
        assert_eq!(c.kafka.len(), 3, "{:?}", c.kafka);
        c.kafka_from_env([("TAILOR_KAFKA_GROUP_ID".to_string(), "x".to_string())].into_iter());
        let errs = c.validate().unwrap_err().0;
        assert!(errs[0].contains("kafka.\"group.id\""), "{errs:?}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tailor.toml");
        std::fs::write(&file, "[state]\npaht = \"/tmp\"\n").unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("paht"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("big"), None);
    }
}
