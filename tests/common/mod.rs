//! Helpers shared by the integration tests: a real broker (started by `scripts/test.sh`), topics of
//! their own per test, the real `tailor` binary as a child process, and readers of its outputs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("TAILOR_TEST_BROKERS")
        .expect("TAILOR_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts a local broker")
}

/// Topic names of one test, unique per run.
#[derive(Clone, Debug)]
pub struct Topics {
    pub storefront: String,
    pub backoffice: String,
    pub profile: String,
    pub audience: String,
    pub journeys: String,
    pub dead_letter: String,
    /// Created by the worker itself.
    pub repartition: String,
    /// Created by the worker itself.
    pub changelog: String,
}

impl Topics {
    pub fn new(test: &str) -> Topics {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = format!("t-{test}-{}-{nanos}", std::process::id());
        Topics {
            storefront: format!("{p}.storefront"),
            backoffice: format!("{p}.backoffice"),
            profile: format!("{p}.profile"),
            audience: format!("{p}.audience"),
            journeys: format!("{p}.journeys"),
            dead_letter: format!("{p}.deadletter"),
            repartition: format!("{p}.repartition"),
            changelog: format!("{p}.changelog"),
        }
    }

    pub fn all(&self) -> [&String; 6] {
        [
            &self.storefront,
            &self.backoffice,
            &self.profile,
            &self.audience,
            &self.journeys,
            &self.dead_letter,
        ]
    }

    pub fn create(&self, partitions: i32) {
        create_topics(&self.all(), partitions);
    }

    /// The same input topics, with output topics of its own (for a second worker).
    pub fn same_inputs(&self, test: &str) -> Topics {
        Topics {
            storefront: self.storefront.clone(),
            backoffice: self.backoffice.clone(),
            profile: self.profile.clone(),
            ..Topics::new(test)
        }
    }
}

pub fn create_topics(names: &[&String], partitions: i32) {
    create_topics_with(names, partitions, &[]);
}

/// [`create_topics`] with topic settings (`configs`: name, value).
pub fn create_topics_with(names: &[&String], partitions: i32, configs: &[(&str, &str)]) {
    {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("admin client");
        let topics: Vec<_> = names
            .iter()
            .map(|t| {
                configs.iter().fold(
                    NewTopic::new(t, partitions, TopicReplication::Fixed(1)),
                    |topic, (k, v)| topic.set(k, v),
                )
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = rt
            .block_on(admin.create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            ))
            .expect("create topics");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
        }
    }
}

pub fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Kafka's default partitioner, as the platform's producers (and Tailor) use.
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

/// Produces and waits for delivery (messages of one key keep their order).
pub fn produce_all(producer: &BaseProducer, msgs: &[(&str, &str, Vec<u8>)]) {
    for (topic, key, payload) in msgs {
        send(producer, BaseRecord::to(topic).key(*key).payload(payload));
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Sends one record, waiting while the producer's queue is full.
fn send(producer: &BaseProducer, mut rec: BaseRecord<'_, str, Vec<u8>>) {
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

/// As [`produce_all`], each record stamped with its event time (as a producer that sets the
/// record timestamp to the event time does).
pub fn produce_stamped(producer: &BaseProducer, msgs: &[(&str, &str, Vec<u8>, i64)]) {
    for (topic, key, payload, time) in msgs {
        let rec = BaseRecord::to(topic).key(*key).payload(payload);
        send(producer, rec.timestamp(*time));
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Produces one message to an explicit partition (for ordering tests on one partition).
pub fn produce_to(
    producer: &BaseProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    payload: &[u8],
) {
    let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    producer.send(rec).map_err(|(e, _)| e).expect("send");
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A consumer of every partition of `topic`, from the beginning, outside any group's commits.
fn from_beginning(topic: &str, partitions: i32) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Reads a topic from the beginning until `expected` messages arrived or `timeout` passed.
pub fn read_topic(
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer = from_beginning(topic, partitions);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// Reads a topic until it has been quiet for `quiet` (to prove nothing more arrives).
pub fn read_topic_until_quiet(topic: &str, partitions: i32, quiet: Duration) -> Vec<OwnedMessage> {
    let consumer = from_beginning(topic, partitions);
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
            last = Instant::now();
        }
    }
    out
}

/// Sum over partitions of where each partition's messages end: the offset after the last one
/// read, and at least the high watermark. (The test broker's high watermark lags behind the
/// messages it serves when producers batch: it is the last batch's first offset + 1.)
pub fn read_end_offsets(topic: &str, partitions: i32) -> i64 {
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    let mut end: Vec<i64> = (0..partitions)
        .map(|p| {
            watermarks
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, hi)| hi.max(0))
        })
        .collect();
    if end.iter().all(|e| *e == 0) {
        return 0; // nothing was ever written
    }
    let consumer = from_beginning(topic, partitions);
    let (mut last, mut any) = (Instant::now(), false);
    // Up to 10 s for the first message (assignment and first fetch), then until 500 ms quiet.
    while last.elapsed()
        < if any {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        }
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let e = &mut end[m.partition() as usize];
            *e = (*e).max(m.offset() + 1);
            (last, any) = (Instant::now(), true);
        }
    }
    end.iter().sum()
}

/// Sum over partitions of a topic's high watermarks (0 for a topic not created yet).
pub fn end_offsets(topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, hi)| hi)
        })
        .sum()
}

pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `tailor` binary running as a child process with its own config, state and log.
pub struct Worker {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub http: String,
    pub log: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tailor")
}

/// Writes a worker config into `dir` (state under `dir/state`).
pub fn write_config(
    dir: &Path,
    topics: &Topics,
    segments: &Path,
    batch: usize,
    http_port: u16,
) -> PathBuf {
    let config = dir.join("tailor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
"bootstrap.servers" = "{brokers}"
"topic.metadata.refresh.interval.ms" = "1000"
"client.id" = "tailor-{http_port}"
# A killed worker's group membership must expire quickly for the restart tests.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"max.poll.interval.ms" = "10000"
[topics]
storefront = "{sf}"
backoffice = "{bo}"
profile = "{pr}"
audience_changes = "{au}"
journey_triggers = "{jt}"
dead_letter = "{dl}"
repartition = "{rp}"
changelog = "{cl}"
[consumer]
group_id = "{au}-group"
[processing]
# One thread (the default is one per core): a test's partitions and group membership do not
# depend on the machine, and several members leaving at once trips the development broker.
threads = 1
batch_max_messages = {batch}
batch_max_wait = "50ms"
[state]
path = "state"
[segments]
file = "{seg}"
[http]
listen = "127.0.0.1:{http_port}"
[log]
level = "info,librdkafka=warn"
"#,
            brokers = brokers(),
            sf = topics.storefront,
            bo = topics.backoffice,
            pr = topics.profile,
            au = topics.audience,
            jt = topics.journeys,
            dl = topics.dead_letter,
            rp = topics.repartition,
            cl = topics.changelog,
            seg = segments.display(),
        ),
    )
    .unwrap();
    config
}

impl Worker {
    pub fn start(dir: &Path, config: &Path, http_port: u16, run: usize) -> Worker {
        let log = dir.join(format!("worker-{run}.log"));
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tailor");
        let w = Worker {
            child: Some(child),
            dir: dir.to_owned(),
            config: config.to_owned(),
            http: format!("127.0.0.1:{http_port}"),
            log,
        };
        w.wait_for(Duration::from_secs(60), "the worker to be ready", |w| {
            w.get("/readyz").is_some_and(|(s, _)| s == 200)
        });
        w
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, "")
    }

    /// An HTTP request with extra header lines (each ending in CRLF).
    pub fn request(&self, method: &str, path: &str, headers: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(&self.http).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\n{headers}\r\n",
            self.http
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let status = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    /// Sum of a metric's samples whose label set contains `label` (all samples if empty).
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return -1.0;
        };
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| label.is_empty() || l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn wait_for(&self, timeout: Duration, what: &str, ok: impl Fn(&Worker) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; worker log:\n{}",
            self.log_text()
        );
    }

    /// Waits until the state store holds the next offsets of `total` input messages (the
    /// worker's own repartition topic aside).
    pub fn wait_caught_up(&self, total: u64) {
        self.wait_for(
            Duration::from_secs(120),
            &format!("{total} messages committed"),
            |w| w.input_offsets() >= total,
        );
    }

    /// Sum of the stored next offsets of the input topics.
    pub fn input_offsets(&self) -> u64 {
        let all = self.metric("tailor_stored_offset", "");
        let internal = self.metric("tailor_stored_offset", ".repartition\"");
        (all - internal).max(0.0) as u64
    }

    /// Waits until the repartition topic is drained: everything sent through it is committed.
    /// The end is where its messages end, as read: the test broker's high watermark can lag
    /// behind the messages it serves.
    pub fn wait_repartition_idle(&self, topic: &str, partitions: i32) {
        self.wait_for(
            Duration::from_secs(60),
            "the repartition topic drained",
            |w| {
                let end = read_end_offsets(topic, partitions);
                w.metric("tailor_stored_offset", &format!("topic=\"{topic}\"")) as i64 >= end
            },
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the worker with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "worker exited with {status}; log:\n{}",
                    self.log_text()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not stop; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (e.g. "HUP") to the worker.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
    }

    /// Whether the kernel may give the worker transparent huge pages (`THP_enabled` of its
    /// `/proc/<pid>/status`); `None` off Linux or on a kernel that does not say.
    pub fn transparent_huge_pages(&self) -> Option<bool> {
        let child = self.child.as_ref().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
        tailor::heap::thp_enabled(&status)
    }

    /// Kills the worker with SIGKILL: no shutdown code runs.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test's own topics, state directory and config (with the test segments), ready to start.
pub struct Setup {
    pub topics: Topics,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
}

impl Setup {
    pub fn new(test: &str, partitions: i32, batch: usize) -> Setup {
        Self::with_segments(test, partitions, batch, "tests/fixtures/segments.yaml")
    }

    /// `segments` is relative to the crate root.
    pub fn with_segments(test: &str, partitions: i32, batch: usize, segments: &str) -> Setup {
        let topics = Topics::new(test);
        topics.create(partitions);
        Self::for_topics(topics, batch, segments)
    }

    /// A state directory, port and config for `topics` (which exist).
    fn for_topics(topics: Topics, batch: usize, segments: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let seg = Path::new(env!("CARGO_MANIFEST_DIR")).join(segments);
        let config = write_config(dir.path(), &topics, &seg, batch, port);
        Setup {
            topics,
            dir,
            config,
            port,
        }
    }

    /// Another worker of the same deployment: same topics and consumer group, its own state
    /// directory and port (the group splits the partitions between them).
    pub fn peer(&self, batch: usize, segments: &str) -> Setup {
        Self::for_topics(self.topics.clone(), batch, segments)
    }

    /// A second worker reading this setup's input topics into its own outputs, with its own
    /// group, state and port. `segments` is relative to the crate root (or absolute).
    pub fn sibling(&self, test: &str, partitions: i32, batch: usize, segments: &str) -> Setup {
        let topics = self.topics.same_inputs(test);
        create_topics(
            &[&topics.audience, &topics.journeys, &topics.dead_letter],
            partitions,
        );
        Self::for_topics(topics, batch, segments)
    }

    /// Rewrites the configuration file with `edit`; panics if `edit` changed nothing (a
    /// replacement that no longer matches the generated config would leave the test untested).
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let edited = edit(&text);
        assert_ne!(edited, text, "the config edit matched nothing in {text}");
        std::fs::write(&self.config, edited).unwrap();
    }

    /// Adds `line` (`key = value`) to section `[section]` of the configuration.
    pub fn add_setting(&self, section: &str, line: &str) {
        let header = format!("[{section}]\n");
        self.edit_config(|text| text.replacen(&header, &format!("{header}{line}\n"), 1));
    }

    /// Starts the worker (run number `run`, for its log file name) and waits until it is ready.
    pub fn start(&self, run: usize) -> Worker {
        Worker::start(self.dir.path(), &self.config, self.port, run)
    }
}

/// `tailor profile KEY` against a worker's state, as JSON (None if the profile does not exist).
pub fn profile(config: &Path, key: &str) -> Option<serde_json::Value> {
    let out = Command::new(bin())
        .args(["profile", "--config"])
        .arg(config)
        .arg(key)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Some(serde_json::from_slice(&out.stdout).expect("profile JSON")),
        Some(2) => None,
        _ => panic!(
            "tailor profile failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A broker of a test's own on a free port (for tests that take it away under a worker), stopped
/// when dropped (resumed first, if it was paused). Such a test is alone in its test binary and
/// points the helpers at it with [`OwnBroker::use_for_helpers`].
pub struct OwnBroker(pub u16);

impl OwnBroker {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh")
    }

    pub fn start() -> OwnBroker {
        let port = free_port();
        let ok = Command::new(Self::script())
            .args(["start", &port.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "starting a broker on port {port}");
        OwnBroker(port)
    }

    /// Makes [`brokers`] answer this broker (the test binary must hold this one test).
    pub fn use_for_helpers(&self) {
        std::env::set_var("TAILOR_TEST_BROKERS", format!("127.0.0.1:{}", self.0));
    }

    pub fn stop(&self) {
        Command::new(Self::script())
            .args(["stop", &self.0.to_string()])
            .status()
            .unwrap();
    }

    /// Sends a signal (`-STOP`, `-CONT`) to the broker process.
    pub fn signal(&self, sig: &str) {
        let cache = std::env::var("TAILOR_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/tailor", std::env::var("HOME").unwrap()));
        let Ok(pid) = std::fs::read_to_string(format!("{cache}/broker-{}.pid", self.0)) else {
            return; // stopped already
        };
        Command::new("kill")
            .args([sig, pid.trim()])
            .status()
            .unwrap();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.stop();
    }
}

/// Produces one `addToCart` per shopper `k0` … `k{n-1}` (keyed by shopper) to `topic`.
pub fn produce_shoppers(topic: &str, n: usize, t0: i64) {
    let msgs: Vec<(&str, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let key = format!("k{i}");
            let ev =
                tailor::samples::storefront("addToCart", &format!("e{i}"), t0 + i as i64, &key);
            (topic, key, tailor::codec::encode::storefront(&ev).unwrap())
        })
        .collect();
    let refs: Vec<(&str, &str, Vec<u8>)> = msgs
        .iter()
        .map(|(t, k, v)| (*t, k.as_str(), v.clone()))
        .collect();
    produce_all(&producer(), &refs);
}

/// `per_shopper` product views for each of `shoppers` shoppers (`shopper-{s}`, browser
/// `ecid-{s}`), round-robin, view `i` at `t0 + i` s, starting at view `from` (so a second call
/// continues the first).
pub fn produce_views(topic: &str, shoppers: usize, from: usize, per_shopper: usize, t0: i64) {
    let mut msgs = Vec::with_capacity(shoppers * per_shopper);
    for i in from..from + per_shopper {
        for s in 0..shoppers {
            let ev = tailor::samples::storefront(
                "productPageView",
                &format!("pv-{s}-{i}"),
                t0 + (i as i64) * 1000,
                &format!("ecid-{s}"),
            );
            msgs.push((
                format!("shopper-{s}"),
                tailor::codec::encode::storefront(&ev).unwrap(),
            ));
        }
    }
    let refs: Vec<(&str, &str, Vec<u8>)> = msgs
        .iter()
        .map(|(k, v)| (topic, k.as_str(), v.clone()))
        .collect();
    produce_all(&producer(), &refs);
}
