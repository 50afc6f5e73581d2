//! End-to-end benchmark: the real `tailor` binary against a real broker on pre-filled topics.
//!
//! `scripts/bench-e2e.sh` starts a broker and runs this with `cargo bench --bench e2e`. Two
//! workloads, one after the other, each on topics of its own filled with events made from the
//! shipped real samples (REES46 clicks, UCI orders):
//! - **wide**: `TAILOR_BENCH_EVENTS` events over `TAILOR_BENCH_PROFILES` shoppers (1–2 each;
//!   0 events skips it; `TAILOR_BENCH_WIDE_PHASES=first` stops it after the first pass and its
//!   latency, as deep does);
//! - **deep**: `TAILOR_BENCH_DEEP_EVENTS` events over `TAILOR_BENCH_DEEP_PROFILES` shoppers
//!   (about 100 each; 0 events skips it).
//!
//! For each: the raw consume rate of its topics (a plain librdkafka consumer), the worker's rate
//! with the default configuration (`TAILOR_BENCH_THREADS`, `TAILOR_BENCH_BATCH_MESSAGES`,
//! `TAILOR_BENCH_BATCH_PROFILES`, `TAILOR_BENCH_BATCH_WAIT`, `TAILOR_BENCH_BATCH_LINGER`,
//! `TAILOR_BENCH_ALLOWED_LATENESS` and `TAILOR_BENCH_HUGE_PAGES` set `processing.*`,
//! `TAILOR_BENCH_CACHE_PROFILES` and `TAILOR_BENCH_CACHE_MEMORY` `state.cache_profiles` and
//! `state.cache_memory`) and their ratio, the worker's CPU time
//! per event, time per batch phase, peak memory (VmHWM), disk per shopper and latency with a live
//! producer at half the measured rate (`TAILOR_BENCH_LATENCY_SHARE`), beside the broker's own
//! at that rate and the worker's own measure (`tailor_event_latency_seconds`: record timestamp
//! to its batch's outputs acknowledged), and timer lateness (live carts whose hour ends a few seconds after they are
//! sent, timed from the due time to the audience change read back). The wide workload goes on with timers firing at catch-up, profile lookups, a
//! re-evaluation of every profile, a restore from the changelog, the latency at a trickle and a
//! failover to a second worker with standby copies (`TAILOR_BENCH_FAILOVER=0` skips it).
//! While the worker consumes, a line at every tenth of the run (at least 100 K events) gives
//! that slice's events/s, timer fires/s and minor page faults/s and the resident memory with
//! the worker's heaps (`tailor_heap_bytes`) (the scale check: does the rate hold as the store
//! grows?), then the median rate of the slices after the first (the warm-up) in which few timers
//! fired (under a twentieth of the events' rate: the catch-up of timers left out). After the
//! catch-up, the worker's CPU for the pass and the catch-up together per event or timer fired:
//! how the timers split between the two moves from run to run, their sum does not, so this
//! figure compares two builds more closely than the pass's own.
//! `TAILOR_BENCH_CHANGELOG=false` runs without the changelog (with
//! `TAILOR_BENCH_WIDE_PHASES=first`), `TAILOR_BENCH_DEADLINE_SECS` bounds the first pass (1800),
//! `TAILOR_BENCH_LOG=file` appends the worker's log (at info) to a file, `TAILOR_BENCH_WAL=true`
//! turns RocksDB's write-ahead log on (`state.write_ahead_log`), `TAILOR_BENCH_PERF=PREFIX`
//! records a `perf` profile of each workload's first pass (`PREFIX-wide.data`,
//! `PREFIX-deep.data`; the pass's figures are then taken under perf), of the CPU clock or of
//! `TAILOR_BENCH_PERF_EVENT` (e.g. `page-faults`: a sample per 20); `TAILOR_BENCH_WORKER=path`
//! runs another build's worker binary on the same harness (to compare two builds),
//! `TAILOR_BENCH_KAFKA` adds TOML lines to its `[kafka]` table (librdkafka properties). The worker's
//! CPU in the pass is also split by thread (processing, librdkafka's, RocksDB's, the others),
//! and given beside the broker's when `TAILOR_BENCH_BROKER_PID` names it (the script sets it).
//! Figures only; nothing is asserted about time. Under `cargo test` it does nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tailor::codec::{encode, Family, InputMessage, SchemaCatalog};
use tailor::replay::{shipped_samples, Produced};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// TOML lines `key = value` for each (key, environment variable, quoted) whose variable is set.
fn settings_from_env(settings: &[(&str, &str, bool)]) -> String {
    settings
        .iter()
        .filter_map(|&(key, var, quoted)| {
            let v = std::env::var(var).ok()?;
            Some(if quoted {
                format!("{key} = \"{v}\"\n")
            } else {
                format!("{key} = {v}\n")
            })
        })
        .collect()
}

fn metric(port: u16, name: &str) -> f64 {
    metrics(port, [name]).map_or(-1.0, |[v]| v)
}

/// One `GET /metrics`: the sum of the samples of each metric whose lines start with `names[i]`;
/// None if the worker did not answer (a worker killed or stopped after it accepted the
/// connection: not zero).
fn metrics<const N: usize>(port: u16, names: [&str; N]) -> Option<[f64; N]> {
    let body = metrics_page(port)?;
    let mut sums = [0.0; N];
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some(i) = names.iter().position(|n| l.starts_with(n)) {
            sums[i] += l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        }
    }
    Some(sums)
}

/// One `GET /metrics`: the page (status line and headers included); None if the worker did
/// not answer it with 200.
fn metrics_page(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .next()
        .is_some_and(|l| l.contains(" 200 "))
        .then_some(body)
}

/// The worker's `tailor_event_latency_seconds` histogram, from one `GET /metrics`, its input
/// families together: each bucket's upper bound (seconds; +Inf last) and cumulative count. None
/// if the worker did not answer.
fn event_latency_buckets(port: u16) -> Option<Vec<(f64, f64)>> {
    let body = metrics_page(port)?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for l in body
        .lines()
        .filter(|l| l.starts_with("tailor_event_latency_seconds_bucket{"))
    {
        let Some((le, rest)) = l.split_once("le=\"").and_then(|(_, r)| r.split_once('"')) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            let Ok(le) = le.parse() else { continue };
            le
        };
        let Some(n) = rest.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, sum)) => *sum += n,
            None => buckets.push((le, n)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!buckets.is_empty()).then_some(buckets)
}

/// What the worker's own histogram says of the events it applied between two snapshots of
/// [`event_latency_buckets`]: "N events, p50 ≤ a ms, p99 ≤ b ms" (the upper bound of the bucket
/// each falls in).
fn worker_latency(before: Option<&[(f64, f64)]>, after: Option<&[(f64, f64)]>) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return "not read (no answer, or no tailor_event_latency_seconds in it)".into();
    };
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, n)| *n);
            (le, n - was)
        })
        .collect();
    let total = counts.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return "no event counted".into();
    }
    let bound = |q: f64| {
        let le = counts
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::INFINITY, |(le, _)| *le);
        if le.is_finite() {
            format!("≤ {:.0} ms", le * 1e3)
        } else {
            "over the largest bucket".into()
        }
    };
    format!("{total:.0} events, p50 {}, p99 {}", bound(0.5), bound(0.99))
}

/// `GET /profiles/{key}` for existing shoppers over one keep-alive connection: latency
/// percentiles as a client sees them (HTTP, RocksDB read, JSON).
fn lookups(port: u16, total: u64, profiles: u64) {
    use std::io::{BufRead, BufReader, Read, Write};
    let n = env("TAILOR_BENCH_LOOKUPS", 20_000);
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut times = Vec::with_capacity(n as usize);
    let mut found = 0;
    for j in 0..n {
        // Keys the fill used, spread over all of them.
        let i = (j * 104_729) % total.min(profiles);
        let key = format!("shopper-{}", (i * 7919) % profiles);
        let t = Instant::now();
        write!(
            writer,
            "GET /profiles/{key} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if status.contains(" 200 ") {
            found += 1;
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "lookups: {n} GET /profiles/{{id}} ({found} found) p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        times[times.len() - 1]
    );
}

/// Latency with a live producer at `rate` events/s (a share of the measured rate,
/// [`latency_share`]): each event is a new shopper's add to cart (it ENTERs cart-holders), timed
/// from its send to its first audience change read back from the output topic, for 10 s.
///
/// Then the same producer and reader on `floor`, a topic no worker reads (each record read back is
/// timed): what the broker alone adds at that rate.
fn latency(
    port: u16,
    brokers: &str,
    (names, floor): (&[String], &str),
    partitions: i32,
    base: &[Produced],
    rate: f64,
    keys: &str,
) {
    let phases = Phases::read(port);
    let own = event_latency_buckets(port);
    let worker = round_trips(
        brokers,
        (&names[0], &names[3]),
        partitions,
        base,
        rate,
        keys,
    );
    print_latency(
        &format!("latency (a live producer at {rate:.0} events/s; produced -> audience change read back)"),
        &worker,
        rate,
    );
    Phases::read(port).since(&phases);
    // The worker's own measure: from each record's timestamp (the bench's producer stamps the
    // send) to its batch's outputs acknowledged; without the reader's fetch of the change. The
    // worker counts a batch's events once it has committed it, after its changelog and RocksDB
    // write: the last ones are waited for (up to 5 s).
    let counted =
        |b: &Option<Vec<(f64, f64)>>| b.as_ref().and_then(|b| b.last()).map_or(0.0, |l| l.1);
    let (sent, settle) = ((rate * 10.0).floor(), Instant::now());
    let mut after = event_latency_buckets(port);
    while counted(&after) - counted(&own) < sent && settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        after = event_latency_buckets(port);
    }
    println!(
        "  the worker's tailor_event_latency_seconds meanwhile (record timestamp -> its batch's outputs acknowledged): {}",
        worker_latency(own.as_deref(), after.as_deref())
    );
    let floor = round_trips(
        brokers,
        (floor, floor),
        partitions,
        base,
        rate,
        &format!("{keys}-floor"),
    );
    print_latency(
        "  the broker alone (produced -> the same record read back, no worker)",
        &floor,
        rate,
    );
}

fn print_latency(what: &str, times: &[f64], rate: f64) {
    let n = (rate * 10.0) as usize;
    if times.is_empty() {
        println!("{what}: nothing read back");
        return;
    }
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{what}: {} events, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} not read back in time",
        times.len(),
        pct(0.5),
        pct(0.99),
        times[times.len() - 1],
        n.saturating_sub(times.len())
    );
}

/// The live phases' clients: a reader of every partition of `read` from its end (polled for 2 s,
/// so that it is in place before anything is sent) and a producer that sends at once.
fn live_clients(
    brokers: &str,
    read: &str,
    partitions: i32,
    group: &str,
) -> (BaseConsumer, BaseProducer) {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(read, p, Offset::End).unwrap();
    }
    reader.assign(&tpl).unwrap();
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        let _ = reader.poll(Duration::from_millis(50));
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        // Kafka's default partitioner, as the platform's producers and Tailor use: each event
        // lands on its shopper's partition (another would forward it through the repartition
        // topic, one more hop).
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    (reader, producer)
}

/// Sends `rate` adds to cart a second for 10 s to `write`, each keyed `{keys}-{i}`, and times each
/// from its send to the first record of its key read back from `read`; sorted.
fn round_trips(
    brokers: &str,
    (write, read): (&str, &str),
    partitions: i32,
    base: &[Produced],
    rate: f64,
    keys: &str,
) -> Vec<f64> {
    let cart = base
        .iter()
        .find(|e| e.event_type == "addToCart")
        .expect("an add to cart in the samples");
    let n = (rate * 10.0) as usize;
    let (reader, producer) = live_clients(brokers, read, partitions, &format!("{write}-{keys}"));
    let mut sent: std::collections::HashMap<String, Instant> = Default::default();
    let mut times = Vec::with_capacity(n);
    let t0 = Instant::now();
    let mut i = 0;
    while times.len() < n && t0.elapsed() < Duration::from_secs(40) {
        let due = ((t0.elapsed().as_secs_f64() * rate) as usize).min(n);
        while i < due {
            let key = format!("{keys}-{i}");
            if producer
                .send(BaseRecord::to(write).key(&key).payload(&cart.payload))
                .is_err()
            {
                break;
            }
            sent.insert(key, Instant::now());
            i += 1;
        }
        producer.poll(Duration::ZERO);
        while let Some(Ok(m)) = reader.poll(Duration::from_millis(1)) {
            use rdkafka::Message;
            let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
            if let Some(t) = key.and_then(|k| sent.remove(k)) {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    times
}

/// Timer lateness as a subscriber sees it: `n` new shoppers add to cart in one burst, each event
/// stamped so that the shipped rule `cart-abandoners` (an add to cart, then no checkout for 1 h)
/// comes due between 5 and 15 s after the burst, spread evenly; then the partitions are idle, as
/// between a live stream's events. Each is timed from its due time to its ENTERED
/// cart-abandoners read back from the output topic; beside it, the worker's own
/// `tailor_timer_lateness_seconds` over the phase. (A steady flow of events stamped an hour
/// back would hold the stream clock, which then follows event time, and the timers with it.)
fn timer_lateness(
    port: u16,
    brokers: &str,
    (write, read): (&str, &str),
    partitions: i32,
    base: &[Produced],
    n: usize,
    keys: &str,
) {
    const HOUR: i64 = 3_600_000;
    let (lead, spread) = (5_000, 10_000);
    let cart = base
        .iter()
        .find(|e| e.event_type == "addToCart")
        .expect("an add to cart in the samples");
    let InputMessage::Storefront(mut event) = SchemaCatalog::builtin()
        .decode(Family::Storefront, &cart.payload)
        .unwrap()
    else {
        panic!("an add to cart is a storefront event");
    };
    let (count_before, sum_before) = (
        metric(port, "tailor_timer_lateness_seconds_count "),
        metric(port, "tailor_timer_lateness_seconds_sum "),
    );
    let (reader, producer) = live_clients(brokers, read, partitions, &format!("{read}-{keys}"));
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // Key -> due time (ms since the epoch).
    let mut due: std::collections::HashMap<String, i64> = Default::default();
    let burst = wall();
    for i in 0..n {
        let key = format!("{keys}-{i}");
        let at = burst + lead + spread * i as i64 / n.max(1) as i64;
        event.timestamp = at - HOUR;
        let payload = encode::storefront(&event).unwrap();
        let mut record = BaseRecord::to(write).key(&key).payload(&payload);
        while let Err((_, r)) = producer.send(record) {
            record = r;
            producer.poll(Duration::from_millis(1));
        }
        due.insert(key, at);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let last_due = burst + lead + spread;
    let mut late = Vec::with_capacity(n);
    while !due.is_empty() && wall() < last_due + 60_000 {
        producer.poll(Duration::ZERO);
        while let Some(Ok(m)) = reader.poll(Duration::from_millis(1)) {
            use rdkafka::Message;
            let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if !due.contains_key(key) {
                continue;
            }
            let Ok(change) = tailor::codec::decode::audience_change(m.payload().unwrap_or(&[]))
            else {
                continue;
            };
            if change.segment_id == "cart-abandoners"
                && change.direction == tailor::wire::Direction::Entered
            {
                let at = due.remove(key).expect("checked");
                late.push((wall() - at) as f64 / 1000.0);
            }
        }
    }
    late.sort_by(f64::total_cmp);
    let count = metric(port, "tailor_timer_lateness_seconds_count ") - count_before;
    let sum = metric(port, "tailor_timer_lateness_seconds_sum ") - sum_before;
    if late.is_empty() {
        println!("timer lateness: nothing read back ({n} carts left in one burst)");
        return;
    }
    let pct = |p: f64| late[((late.len() as f64 * p) as usize).min(late.len() - 1)] * 1e3;
    println!(
        "timer lateness ({n} carts left in one burst, due {}-{} s after it; due time -> ENTERED cart-abandoners read back): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} not read back; the worker's tailor_timer_lateness_seconds: {count:.0} timers, mean {:.0} ms",
        lead / 1000,
        (lead + spread) / 1000,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        n - late.len(),
        sum / count.max(1.0) * 1e3
    );
}

/// TAILOR_BENCH_CHANGELOG=false: no changelog (the development broker keeps every record in
/// memory, which bounds how many profiles a run can mirror).
fn changelog() -> bool {
    std::env::var("TAILOR_BENCH_CHANGELOG").map_or(true, |v| v != "false")
}

/// TAILOR_BENCH_LOG=file: the worker's log, at info, appended to that file.
fn log_file() -> Option<String> {
    std::env::var("TAILOR_BENCH_LOG")
        .ok()
        .filter(|v| !v.is_empty())
}

/// The live producer's rate in the latency phase, as a share of the measured rate:
/// `TAILOR_BENCH_LATENCY_SHARE`, 0.5 by default (the broker shares the two cores, and the live
/// producer's and the reader's load on it is not in the measured rate).
fn latency_share() -> f64 {
    std::env::var("TAILOR_BENCH_LATENCY_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0 && *s <= 1.0)
        .unwrap_or(0.5)
}

/// Waits until the timers due at catch-up have fired (the count has not moved for 5 s); returns
/// how many fired, in how long, the worker's CPU time (all its threads) when the last did, and
/// the worker's count of timers fired then (since its start).
fn timers_settle(port: u16, pid: u32) -> (f64, f64, f64, f64) {
    let fired_before = metric(port, "tailor_timers_fired_total ");
    let t_timers = Instant::now();
    let (mut last, mut last_change) = (fired_before, Instant::now());
    let mut cpu = proc_stat(pid).cpu;
    while last_change.elapsed() < Duration::from_secs(5)
        && t_timers.elapsed() < Duration::from_secs(1800)
    {
        std::thread::sleep(Duration::from_millis(100));
        let now = metric(port, "tailor_timers_fired_total ");
        // (A poll that failed answers -1: not a change.)
        if now >= 0.0 && now != last {
            (last, last_change) = (now, Instant::now());
            cpu = proc_stat(pid).cpu;
        }
    }
    let secs = last_change.duration_since(t_timers).as_secs_f64().max(1e-3);
    (last - fired_before, secs, cpu, last)
}

/// The first pass and the catch-up after it together: how many timers fire within the pass and
/// how many after it moves from run to run (41 K to 423 K of about 0.62 M within the wide
/// 500 K-event pass in one session's runs), their sum does not; nor does the work, which this
/// divides by.
fn report_pass_and_catch_up(cpu: f64, events: f64, timers: f64) {
    println!(
        "the pass and its catch-up together: {cpu:.1}s of worker CPU for {events:.0} events and {timers:.0} timers fired = {:.2} µs per event or timer fired",
        cpu / (events + timers).max(1.0) * 1e6
    );
}

/// The worker's batch metrics at one time, to report a phase's batches.
struct Phases {
    batches: f64,
    messages: f64,
    seconds: f64,
    timers: f64,
    deliver: f64,
    changelog: f64,
    commit: f64,
    misrouted: f64,
}

impl Phases {
    /// One snapshot, from one `GET /metrics` (each figure -1 if the worker did not answer).
    fn read(port: u16) -> Phases {
        let [batches, messages, seconds, timers, deliver, changelog, commit, misrouted] = metrics(
            port,
            [
                "tailor_batch_duration_seconds_count",
                "tailor_batch_messages_sum",
                "tailor_batch_duration_seconds_sum",
                "tailor_batch_phase_duration_seconds_sum{phase=\"timers\"}",
                "tailor_batch_phase_duration_seconds_sum{phase=\"deliver\"}",
                "tailor_batch_phase_duration_seconds_sum{phase=\"changelog\"}",
                "tailor_batch_phase_duration_seconds_sum{phase=\"commit\"}",
                "tailor_misrouted_events_total ",
            ],
        )
        .unwrap_or([-1.0; 8]);
        Phases {
            batches,
            messages,
            seconds,
            timers,
            deliver,
            changelog,
            commit,
            misrouted,
        }
    }

    /// The batches' time since `before` by phase (their time summed over the processing
    /// threads, waiting for a core included), each divided by `per`, in `unit`s of a second:
    /// "timers …, consume+apply …, deliveries …, changelog …, RocksDB commit …" and the whole.
    fn split(&self, before: &Phases, per: f64, unit: f64) -> (String, f64) {
        let d = |a: f64, b: f64| (a - b) * unit / per;
        let (timers, deliver) = (
            d(self.timers, before.timers),
            d(self.deliver, before.deliver),
        );
        let (changelog, commit) = (
            d(self.changelog, before.changelog),
            d(self.commit, before.commit),
        );
        let batch = d(self.seconds, before.seconds);
        let apply = batch - timers - deliver - changelog - commit;
        (
            format!("timers {timers:.1}, consume+apply {apply:.1}, deliveries {deliver:.1}, changelog {changelog:.1}, RocksDB commit {commit:.1}"),
            batch,
        )
    }

    /// Prints the batches committed since `before`: how many, their size and time per phase.
    fn since(&self, before: &Phases) {
        let n = (self.batches - before.batches).max(1.0);
        let (phases, batch) = self.split(before, n, 1e3);
        println!(
            "  meanwhile: {:.0} batches of {:.0} messages on average, each {batch:.1} ms = {phases}; {:.0} events forwarded to their shopper's partition",
            self.batches - before.batches,
            (self.messages - before.messages) / n,
            self.misrouted - before.misrouted,
        );
    }
}

/// The state directory's size after a full compaction (the worker stopped): old versions of
/// profiles and fired timers' deletions dropped, as RocksDB's own compactions eventually do.
/// RocksDB's info logs are left out (they are not state).
fn compacted_bytes(state: &Path) -> u64 {
    let store = tailor::store::Store::open(state, &tailor::store::StoreOptions::default()).unwrap();
    store.compact().unwrap();
    drop(store);
    let logs = files_bytes(state, |name| name.starts_with("LOG"));
    dir_bytes(state) - logs
}

/// The state directory's size at the end of the pass (the worker still running), and how much
/// of it is write-ahead log.
fn report_disk(state: &Path, shoppers: u64) {
    let disk = dir_bytes(state);
    let wal = files_bytes(state, |name| name.ends_with(".log"));
    println!(
        "state on disk: {:.0} MiB for {shoppers} shoppers = {:.0} bytes per shopper (RocksDB files, timers and offsets included, uncompacted; {:.0} MiB of it write-ahead log)",
        disk as f64 / 1048576.0,
        disk as f64 / shoppers.max(1) as f64,
        wal as f64 / 1048576.0
    );
}

/// What RocksDB wrote into each column family's files so far, from the events its info log
/// (`LOG`) records: the flushes' files (level 0, uncompressed by default), and the compactions'
/// files by the level they went to, what the compactions read (every file they merged) and
/// their CPU. What compactions read per byte flushed grows with the store (each merge into a
/// level rewrites the part of it the new keys fall in: with shopper keys in no order, nearly
/// all of it), and their CPU comes from the same two cores as the processing threads'.
fn report_rocksdb_writes(state: &Path) {
    let Ok(log) = std::fs::read(state.join("LOG")) else {
        return;
    };
    let log = String::from_utf8_lossy(&log);
    // A job's kind (a flush or a compaction), the files it wrote (each with its column
    // family), and a compaction's column family, input, and (once finished) output level,
    // entries read and CPU, by its job number (flushes and compactions share the numbering).
    #[derive(Default)]
    struct Job {
        flush: bool,
        family: Option<String>,
        read: u64,
        finished: Option<(u64, u64, u64)>,
        files: Vec<(String, u64)>,
    }
    let mut jobs: std::collections::BTreeMap<u64, Job> = Default::default();
    let (mut slowed, mut stopped) = (0, 0);
    for line in log.lines() {
        // RocksDB logs each write it delays or stops for too many level-0 files, memtables or
        // bytes pending compaction.
        slowed += usize::from(line.contains("Stalling writes"));
        stopped += usize::from(line.contains("Stopping writes"));
        let Some(json) = line.split_once("EVENT_LOG_v1 ").map(|(_, j)| j) else {
            continue;
        };
        let Ok(e) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        let (Some(event), Some(job)) = (e["event"].as_str(), e["job"].as_u64()) else {
            continue;
        };
        let j = jobs.entry(job).or_default();
        match event {
            "flush_started" => j.flush = true,
            "compaction_started" => {
                j.family = e["cf_name"].as_str().map(str::to_string);
                j.read = e["input_data_size"].as_u64().unwrap_or(0);
            }
            "compaction_finished" => {
                let n = |f: &str| e[f].as_u64().unwrap_or(0);
                j.finished = Some((
                    n("output_level"),
                    n("num_input_records"),
                    n("compaction_time_cpu_micros"),
                ));
            }
            "table_file_creation" => {
                if let (Some(cf), Some(size)) = (e["cf_name"].as_str(), e["file_size"].as_u64()) {
                    j.files.push((cf.to_string(), size));
                }
            }
            _ => {}
        }
    }
    #[derive(Default)]
    struct Family {
        flushed: u64,
        /// Bytes written by compactions, by output level.
        into: std::collections::BTreeMap<u64, u64>,
        read: u64,
        entries: u64,
        cpu_micros: u64,
    }
    let mut families: std::collections::BTreeMap<String, Family> = Default::default();
    for j in jobs.values() {
        if j.flush {
            // An atomic flush writes a file in each family it flushed.
            for (cf, size) in &j.files {
                families.entry(cf.clone()).or_default().flushed += size;
            }
            continue;
        }
        // Compactions still running when the log was read are left out.
        let Some((level, entries, cpu_micros)) = j.finished else {
            continue;
        };
        // (A compaction is of one family; one that wrote no file still read and took CPU.)
        let Some(cf) = j.family.as_ref().or(j.files.first().map(|(cf, _)| cf)) else {
            continue;
        };
        let f = families.entry(cf.clone()).or_default();
        *f.into.entry(level).or_default() += j.files.iter().map(|(_, size)| size).sum::<u64>();
        f.read += j.read;
        f.entries += entries;
        f.cpu_micros += cpu_micros;
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    for (cf, f) in families {
        let compacted: u64 = f.into.values().sum();
        // The offsets, clocks and such: a few KiB.
        if f.flushed + compacted < 1 << 20 {
            continue;
        }
        let into: Vec<String> = f
            .into
            .iter()
            .map(|(l, b)| format!("L{l} {:.0}", mib(*b)))
            .collect();
        println!(
            "  RocksDB {cf}: {:.0} MiB flushed; compactions read {:.0} MiB ({:.1} M entries; {:.1} per byte flushed) and wrote {:.0} MiB ({}) in {:.1}s of CPU",
            mib(f.flushed),
            mib(f.read),
            f.entries as f64 / 1e6,
            f.read as f64 / f.flushed.max(1) as f64,
            mib(compacted),
            if into.is_empty() { "none".to_string() } else { into.join(", ") },
            f.cpu_micros as f64 / 1e6
        );
    }
    println!("  RocksDB's writes delayed {slowed} times and stopped {stopped} times (its info log's stall lines)");
}

/// Bytes of the files directly in `dir` whose name passes `keep`.
fn files_bytes(dir: &Path, keep: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| keep(&e.file_name().to_string_lossy()))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// What a process has used so far, from one read of `/proc/{pid}/stat` (zeros when it is gone).
#[derive(Clone, Copy, Default)]
struct ProcStat {
    /// CPU time, all its threads, user and system, in seconds (in clock ticks: finer than
    /// `process_cpu_seconds_total`, which counts whole seconds).
    cpu: f64,
    /// Of it, in the kernel on its behalf (system calls, page faults).
    system: f64,
    /// Minor page faults: each a page touched for the first time since it was mapped (or
    /// given back), which the kernel zeroed.
    minor_faults: f64,
}

/// A `/proc/.../stat` text (a process's or a thread's): the command name, in parentheses (it may
/// hold spaces), and the numbers after it, counted from the state (0): minflt 7, utime 11,
/// stime 12 (the state, not a number, reads as 0).
struct Stat {
    name: String,
    fields: Vec<f64>,
}

impl Stat {
    fn read(path: &str) -> Option<Stat> {
        let text = std::fs::read_to_string(path).ok()?;
        let (open, close) = (text.find('(')?, text.rfind(')')?);
        Some(Stat {
            name: text[open + 1..close].to_string(),
            fields: text[close + 1..]
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect(),
        })
    }

    fn field(&self, i: usize) -> f64 {
        self.fields.get(i).copied().unwrap_or(0.0)
    }

    /// User and system CPU seconds.
    fn cpu(&self) -> f64 {
        (self.field(11) + self.field(12)) / ticks_per_second()
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

fn proc_stat(pid: u32) -> ProcStat {
    let Some(stat) = Stat::read(&format!("/proc/{pid}/stat")) else {
        return ProcStat::default();
    };
    ProcStat {
        cpu: stat.cpu(),
        system: stat.field(12) / ticks_per_second(),
        minor_faults: stat.field(7),
    }
}

/// The CPU seconds of a process's threads, by who runs them: Tailor's processing threads,
/// librdkafka's, RocksDB's, the rest (the HTTP server, the runtime, the main thread, and threads
/// that ended meanwhile: a restore's consumer, an idle blocking thread).
#[derive(Clone, Copy, Default)]
struct ThreadCpu {
    processing: f64,
    librdkafka: f64,
    rocksdb: f64,
    other: f64,
}

/// Each live thread of a process: its id, its name and its CPU seconds so far.
fn threads(pid: u32) -> Vec<(u64, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let stat = Stat::read(task.path().join("stat").to_str()?)?;
            let cpu = stat.cpu();
            Some((tid, stat.name, cpu))
        })
        .collect()
}

impl ThreadCpu {
    /// What the process's threads used between two of its [`threads`] lists, `before` and
    /// `now`, of `total` (the whole process's CPU over the same time, threads ended meanwhile
    /// included: what no live thread accounts for counts as the others').
    fn between(before: &[(u64, String, f64)], now: &[(u64, String, f64)], total: f64) -> ThreadCpu {
        let mut t = ThreadCpu::default();
        for (tid, name, cpu) in now {
            let then = before.iter().find(|b| b.0 == *tid).map_or(0.0, |b| b.2);
            let used = cpu - then;
            if name.starts_with("tailor-proc") {
                t.processing += used;
            } else if name.starts_with("rdk:") {
                t.librdkafka += used;
            } else if name.starts_with("rocksdb:") {
                t.rocksdb += used;
            }
        }
        t.other = (total - t.processing - t.librdkafka - t.rocksdb).max(0.0);
        t
    }
}

/// The broker's process, when the bench started it (`TAILOR_BENCH_BROKER_PID`, which
/// `scripts/bench-e2e.sh` sets): it shares the machine's cores with the worker.
fn broker_pid() -> Option<u32> {
    std::env::var("TAILOR_BENCH_BROKER_PID")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Bytes a process caused to be written to storage so far (`write_bytes:` of `/proc/{pid}/io`:
/// RocksDB's write-ahead log, flushes and compactions).
fn disk_written(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    rss_mib(pid, "VmHWM:")
}

/// The worker's heaps as `tailor_heap_bytes` last reported them (every 5 s).
fn heaps(port: u16) -> String {
    let mib =
        |part: &str| metric(port, &format!("tailor_heap_bytes{{part=\"{part}\"}}")) / 1048576.0;
    format!(
        "heaps: Rust {:.0} MiB, C {:.0} MiB in use + {:.0} MiB free",
        mib("rust_committed"),
        mib("c_in_use"),
        mib("c_free")
    )
}

/// A memory line of `/proc/{pid}/status` in MiB: `VmHWM:` (peak resident) or `VmRSS:` (now).
fn rss_mib(pid: u32, line: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(line))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e benchmark: run scripts/bench-e2e.sh (cargo bench --bench e2e)");
        return;
    }
    let brokers = std::env::var("TAILOR_BENCH_BROKERS")
        .expect("TAILOR_BENCH_BROKERS: run scripts/bench-e2e.sh");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut base = shipped_samples(root).unwrap();
    // The message key is the shopper here: the events' own identities are dropped, so a key's
    // events never link identities of other keys (the platform keys by the event's identity).
    let decoder = SchemaCatalog::builtin();
    for e in &mut base {
        e.payload = match decoder.decode(e.family, &e.payload).unwrap() {
            InputMessage::Storefront(mut m) => {
                m.identity = Default::default();
                m.account_context = None;
                encode::storefront(&m).unwrap()
            }
            InputMessage::Backoffice(mut m) => {
                m.identity = Default::default();
                m.personal_email = None;
                encode::backoffice(&m).unwrap()
            }
            InputMessage::Profile(mut m) => {
                m.identity = Default::default();
                m.personal_email = None;
                encode::profile(&m).unwrap()
            }
        };
    }

    let wide = (
        env("TAILOR_BENCH_EVENTS", 500_000),
        env("TAILOR_BENCH_PROFILES", 330_000),
    );
    let deep = (
        env("TAILOR_BENCH_DEEP_EVENTS", 400_000),
        env("TAILOR_BENCH_DEEP_PROFILES", 4_000),
    );
    if wide.0 > 0 {
        // TAILOR_BENCH_WIDE_PHASES=first: the first pass and its latency only, as for deep.
        let all = std::env::var("TAILOR_BENCH_WIDE_PHASES").map_or(true, |v| v != "first");
        assert!(
            changelog() || !all,
            "TAILOR_BENCH_CHANGELOG=false needs TAILOR_BENCH_WIDE_PHASES=first (the restore and the failover read the changelog)"
        );
        workload(&brokers, &base, "wide", wide, all);
    }
    if deep.0 > 0 {
        workload(&brokers, &base, "deep", deep, false);
    }
}

/// One workload on topics of its own: `total` events over `profiles` shopper keys. `all`: the
/// phases after the first pass too (timers, lookups, re-evaluation, restore, trickle latency).
fn workload(
    brokers: &str,
    base: &[Produced],
    name: &str,
    (total, profiles): (u64, u64),
    all: bool,
) {
    let brokers = brokers.to_owned();
    let partitions = env("TAILOR_BENCH_PARTITIONS", 4) as i32;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!(
        "== {name}: {total} events over {} shoppers",
        total.min(profiles)
    );
    let prefix = format!("bench-{}-{name}", std::process::id());
    let topic = |f: &str| format!("{prefix}.{f}");
    let names = [
        "storefront",
        "backoffice",
        "profile",
        "audience",
        "journeys",
        "deadletter",
        "repartition",
        "changelog",
        // No worker reads them: the broker's own latency at the same rate, one topic per
        // latency phase (the trickle's read nothing back from the topic the half-rate phase had
        // just filled).
        "floor",
        "floor-trickle",
    ]
    .map(topic);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new: Vec<_> = names[..6]
        .iter()
        .chain(&names[8..])
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "50")
        .set("partitioner", "murmur2_random")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let started = Instant::now();
    for i in 0..total {
        let e = &base[(i as usize) % base.len()];
        let key = format!("shopper-{}", (i * 7919) % profiles);
        let t = match e.family {
            Family::Storefront => &names[0],
            Family::Backoffice => &names[1],
            Family::Profile => &names[2],
        };
        let mut rec = BaseRecord::to(t).key(&key).payload(&e.payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let fill = started.elapsed().as_secs_f64();
    println!("pre-filled {total} events over {profiles} shopper keys, {partitions} partitions, in {fill:.1}s");

    // TAILOR_BENCH_FETCH_WAIT_MS: the worker's and the raw consumer's `fetch.wait.max.ms` (the
    // worker's default, 100, when unset): how long the broker may hold a fetch that finds
    // nothing new.
    let fetch_wait_ms = std::env::var("TAILOR_BENCH_FETCH_WAIT_MS").ok();
    // The raw consume rate of the same topics in the same run: a plain librdkafka consumer (the
    // worker's client library, every partition assigned, the fetch settings the worker's
    // consumer defaults to), no processing.
    let raw_rate = {
        let mut cfg = ClientConfig::new();
        for (k, v) in tailor::worker::CONSUMER_FETCH_DEFAULTS {
            cfg.set(k, v);
        }
        if let Some(ms) = &fetch_wait_ms {
            cfg.set("fetch.wait.max.ms", ms);
        }
        let c: BaseConsumer = cfg
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{prefix}-raw"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for n in &names[..3] {
            for p in 0..partitions {
                tpl.add_partition_offset(n, p, Offset::Beginning).unwrap();
            }
        }
        c.assign(&tpl).unwrap();
        let t = Instant::now();
        let (mut n, mut bytes, mut idle) = (0u64, 0usize, Instant::now());
        while n < total && idle.elapsed() < Duration::from_secs(10) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                n += 1;
                bytes += m.payload_len();
                idle = Instant::now();
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "raw consume (librdkafka, no processing, the same topics): {n} messages ({:.0} MiB) in {secs:.1}s = {:.0} messages/s",
            bytes as f64 / 1048576.0,
            n as f64 / secs
        );
        n as f64 / secs
    };

    // TAILOR_BENCH_SYNC=false measures without the per-commit fsync (the default keeps it);
    // TAILOR_BENCH_EXPLAIN=false without explanations on audience changes.
    let sync = std::env::var("TAILOR_BENCH_SYNC").map_or(true, |v| v != "false");
    // TAILOR_BENCH_WAL=true: RocksDB's write-ahead log on (off by default with the changelog).
    let wal = std::env::var("TAILOR_BENCH_WAL")
        .map(|v| format!("write_ahead_log = {}\n", v == "true"))
        .unwrap_or_default();
    let explain = std::env::var("TAILOR_BENCH_EXPLAIN").map_or(true, |v| v != "false");
    let changelog = changelog();
    let mut fetch_wait = fetch_wait_ms
        .map(|v| format!("\"fetch.wait.max.ms\" = \"{v}\"\n"))
        .unwrap_or_default();
    // TAILOR_BENCH_KAFKA: more of the worker's `[kafka]` table, as TOML lines (e.g.
    // `"linger.ms" = "20"` or `"compression.type" = "none"`), for its clients alone.
    if let Ok(extra) = std::env::var("TAILOR_BENCH_KAFKA") {
        fetch_wait.push_str(extra.trim_end());
        fetch_wait.push('\n');
    }
    // TAILOR_BENCH_THREADS, TAILOR_BENCH_BATCH_MESSAGES, TAILOR_BENCH_BATCH_PROFILES,
    // TAILOR_BENCH_BATCH_WAIT, TAILOR_BENCH_BATCH_LINGER, TAILOR_BENCH_ALLOWED_LATENESS,
    // TAILOR_BENCH_HUGE_PAGES: the worker's `processing.threads`, `batch_max_messages`,
    // `batch_max_profiles`, `batch_max_wait`, `batch_linger`, `allowed_lateness` and
    // `transparent_huge_pages` (its defaults when unset);
    // TAILOR_BENCH_CACHE_PROFILES and TAILOR_BENCH_CACHE_MEMORY its `state.cache_profiles` and
    // `state.cache_memory`.
    let cache_profiles = settings_from_env(&[
        ("cache_profiles", "TAILOR_BENCH_CACHE_PROFILES", false),
        ("cache_memory", "TAILOR_BENCH_CACHE_MEMORY", true),
    ]);
    let processing = settings_from_env(&[
        ("threads", "TAILOR_BENCH_THREADS", false),
        ("batch_max_messages", "TAILOR_BENCH_BATCH_MESSAGES", false),
        ("batch_max_profiles", "TAILOR_BENCH_BATCH_PROFILES", false),
        ("batch_max_wait", "TAILOR_BENCH_BATCH_WAIT", true),
        ("batch_linger", "TAILOR_BENCH_BATCH_LINGER", true),
        ("allowed_lateness", "TAILOR_BENCH_ALLOWED_LATENESS", true),
        ("transparent_huge_pages", "TAILOR_BENCH_HUGE_PAGES", false),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A copy of the example definitions, changed later to time a re-evaluation.
    let segments = dir.path().join("segments.yaml");
    let examples = std::fs::read_to_string(root.join("examples/segments.yaml")).unwrap();
    std::fs::write(&segments, &examples).unwrap();
    let config = dir.path().join("tailor.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\n\"bootstrap.servers\" = \"{brokers}\"\n{fetch_wait}[topics]\nstorefront = \"{}\"\nbackoffice = \"{}\"\nprofile = \"{}\"\naudience_changes = \"{}\"\njourney_triggers = \"{}\"\ndead_letter = \"{}\"\nrepartition = \"{}\"\nchangelog = \"{}\"\n[consumer]\ngroup_id = \"{prefix}\"\n[processing]\n{processing}[state]\npath = \"state\"\n{wal}sync_writes = {sync}\nchangelog = {changelog}\n{cache_profiles}[segments]\nfile = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[output]\nexplain = {explain}\n[log]\nlevel = \"{level}\"\n",
            names[0], names[1], names[2], names[3], names[4], names[5], names[6], names[7],
            segments.display(),
            level = if log_file().is_some() { "info" } else { "warn" },
        ),
    )
    .unwrap();
    let log = log_file();
    let start = || {
        let stderr = match &log {
            Some(file) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .unwrap(),
            ),
            None => Stdio::null(),
        };
        Command::new(worker_binary())
            .args(["run", "--config"])
            .arg(&config)
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let spawned = Instant::now();
    let mut child = start();
    let pid = child.id();
    // Time from the first committed batch (after the group join) to the last.
    let mut first: Option<(Instant, f64)> = None;
    // Progress at every tenth of the run (at least 100 K events): that slice's rate, the timers
    // fired so far and the resident memory, so that a slowdown as the store grows shows.
    let slice = (total / 10).max(100_000) as f64;
    let (mut next_report, mut slice_start) = (slice.min(total as f64), None);
    let (mut slice_rates, mut fired_before, mut faults_before) = (Vec::new(), 0.0, 0.0);
    // The worker's CPU (the process's and by thread) and disk writes at the slice's start.
    let (mut cpu_before, mut threads_before, mut written_before) = (0.0, Vec::new(), 0.0);
    let mut phases_before: Option<Phases> = None;
    let deadline = Instant::now() + Duration::from_secs(env("TAILOR_BENCH_DEADLINE_SECS", 1800));
    let mut done = 0.0;
    // The worker's CPU time (all its threads) and page faults at the first commit.
    let mut stat_at_first = ProcStat::default();
    let mut threads_at_first = Vec::new();
    let mut broker_at_first = ProcStat::default();
    let mut written_at_first = 0.0;
    let mut fired_at_first = 0.0;
    // How long the progress polls of /metrics took during the pass: what a Prometheus scrape
    // or a probe waits for while the worker is busy. A poll starts 100 ms after the last one
    // ended, so a long stall is one sample: the maximum says more than the p99.
    let mut scrapes: Vec<f64> = Vec::new();
    // TAILOR_BENCH_PERF=PREFIX: `perf record` of the worker for the first pass alone (from its
    // first commit to its last) into PREFIX-wide.data and PREFIX-deep.data, with DWARF call
    // stacks (Rust's release code keeps no frame pointers, so a frame-pointer profile names the
    // leaf functions but not their callers).
    let perf_file = std::env::var("TAILOR_BENCH_PERF")
        .ok()
        .map(|prefix| format!("{prefix}-{name}.data"));
    let mut perf: Option<std::process::Child> = None;
    // At each poll: the input partitions the worker's threads hold and those still restoring.
    // A thread given its partitions later than the others (the development broker sometimes
    // answers the second member's SyncGroup a second late) leaves them running alone meanwhile.
    // And the events committed by then.
    struct Held {
        at: Instant,
        assigned: f64,
        restoring: f64,
        committed: f64,
    }
    let mut held: Vec<Held> = Vec::new();
    while Instant::now() < deadline {
        let asked = Instant::now();
        // A poll that could not connect answered nothing: not a fast answer, and not a count
        // (the last one stands).
        let Some([polled, assigned, restoring]) = metrics(
            port,
            [
                "tailor_stored_offset{",
                "tailor_assigned_partitions ",
                "tailor_changelog_restoring_partitions ",
            ],
        ) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        held.push(Held {
            at: Instant::now(),
            assigned,
            restoring,
            committed: polled,
        });
        done = polled;
        if first.is_some() {
            scrapes.push(asked.elapsed().as_secs_f64() * 1e3);
        }
        if first.is_none() && done > 0.0 {
            first = Some((Instant::now(), done));
            stat_at_first = proc_stat(pid);
            threads_at_first = threads(pid);
            broker_at_first = broker_pid().map(proc_stat).unwrap_or_default();
            written_at_first = disk_written(pid);
            slice_start = first;
            fired_before = metric(port, "tailor_timers_fired_total ").max(0.0);
            fired_at_first = fired_before;
            faults_before = stat_at_first.minor_faults;
            cpu_before = stat_at_first.cpu;
            threads_before = threads_at_first.clone();
            written_before = written_at_first;
            phases_before = Some(Phases::read(port));
            if let Some(file) = &perf_file {
                perf = start_perf(pid, file);
            }
        }
        if let Some((t, n)) = slice_start.filter(|&(_, n)| done >= next_report && done > n) {
            let secs = t.elapsed().as_secs_f64().max(1e-3);
            let rate = (done - n) / secs;
            let fired = metric(port, "tailor_timers_fired_total ");
            let stat = proc_stat(pid);
            let faults = stat.minor_faults;
            let threads_now = threads(pid);
            let by_thread =
                ThreadCpu::between(&threads_before, &threads_now, stat.cpu - cpu_before);
            let written = disk_written(pid);
            let phases = Phases::read(port);
            // (A poll that failed answers -1: the slice counts no timers, and the next one
            // counts from the last count that was answered.)
            let answered = fired >= 0.0 && fired_before >= 0.0;
            let fired_since = if answered { fired - fired_before } else { 0.0 };
            // A slice in which timers fired at under a twentieth of the events' rate (and both
            // polls answered).
            let fires = fired_since / secs;
            slice_rates.push((rate, answered && fires < rate / 20.0));
            println!(
                "  {done:.0} events committed ({:.0} shoppers): {rate:.0} events/s, {:.0} timer fires/s and {:.1} K minor page faults/s since the last line ({fired:.0} timers fired in all); RSS {:.0} MiB ({})",
                done.min(profiles as f64),
                fires,
                (faults - faults_before) / secs / 1e3,
                rss_mib(pid, "VmRSS:"),
                heaps(port)
            );
            // Whether a slice is slower because each event costs the processing threads more,
            // or because RocksDB's background threads (flushes, compactions: more of them as
            // the store grows) or librdkafka's take more of the two cores.
            let work = (done - n + fired_since).max(1.0);
            println!(
                "    that slice's CPU: processing {:.1} µs per event or timer fired (batches' phases, summed over the threads: {}); cores busy: processing {:.2}, RocksDB {:.2}, librdkafka {:.2}, other {:.2}; {:.0} MiB/s written",
                by_thread.processing * 1e6 / work,
                phases_before
                    .as_ref()
                    .map_or(String::new(), |b| phases.split(b, work, 1e6).0),
                by_thread.processing / secs,
                by_thread.rocksdb / secs,
                by_thread.librdkafka / secs,
                by_thread.other / secs,
                (written - written_before) / secs / 1048576.0
            );
            // RocksDB's backlog now (the worker reads it at each scrape): whether its
            // compactions keep up with the store's growth.
            if let Some([pending_p, pending_t, l0_p, l0_t, running, stall]) = metrics(
                port,
                [
                    "tailor_state_compaction_pending_bytes{family=\"profiles\"}",
                    "tailor_state_compaction_pending_bytes{family=\"timers\"}",
                    "tailor_state_level0_files{family=\"profiles\"}",
                    "tailor_state_level0_files{family=\"timers\"}",
                    "tailor_state_compactions_running ",
                    "tailor_state_write_stall ",
                ],
            ) {
                println!(
                    "    RocksDB then: pending compaction {:.0} MiB (profiles) and {:.0} MiB (timers), level-0 files {l0_p:.0} and {l0_t:.0}, {running:.0} compactions running, write stall {stall:.0}",
                    pending_p / 1048576.0,
                    pending_t / 1048576.0,
                );
            }
            if fired >= 0.0 {
                fired_before = fired;
            }
            faults_before = faults;
            cpu_before = stat.cpu;
            threads_before = threads_now;
            written_before = written;
            phases_before = Some(phases);
            slice_start = Some((Instant::now(), done));
            next_report = (next_report + slice).min(total as f64);
        }
        if done >= total as f64 {
            break;
        }
        // Rendering the metrics costs the worker CPU (a few % at 50 polls a second).
        std::thread::sleep(Duration::from_millis(100));
    }
    if let [(first_slice, _), .., (last_slice, _)] = slice_rates[..] {
        println!(
            "rate in the last slice / the first: {:.2} ({last_slice:.0} / {first_slice:.0} events/s; a slice where a partition read to its end fired its timers is slower)",
            last_slice / first_slice
        );
    }
    // The rate without the warm-up (the first slice: caches, memtables and heaps filling) and
    // without the catch-up of timers (pre-filled topics are history: a partition read to its
    // end brings its clock to the wall clock, and its pending timers fire at once), before or
    // after it. With an even count, the upper of the middle two.
    let mut steady: Vec<f64> = slice_rates
        .iter()
        .skip(1)
        .filter(|(_, quiet)| *quiet)
        .map(|(r, _)| *r)
        .collect();
    steady.sort_by(f64::total_cmp);
    if let (Some(low), Some(high)) = (steady.first(), steady.last()) {
        println!(
            "steady rate (the slices after the first in which timers fired at under a twentieth of the events' rate): median {:.0} events/s over {} slices ({low:.0} to {high:.0})",
            steady[steady.len() / 2],
            steady.len()
        );
    }
    // Figures from a worker that no longer answers would be made of the -1s of failed polls.
    assert!(
        metric(port, "tailor_processing_threads ") >= 0.0,
        "the worker's /metrics did not answer at the end of the pass (the process died or \
         stalls; {done:.0} of {total} events were committed when it last answered): no figures"
    );
    if done < total as f64 {
        println!(
            "the pass did not finish before its deadline: {done:.0} of {total} events committed; the figures below are for those"
        );
    }
    let end = Instant::now();
    let stat = proc_stat(pid);
    let broker_cpu = broker_pid().map(|b| proc_stat(b).cpu - broker_at_first.cpu);
    let cpu = stat.cpu - stat_at_first.cpu;
    let by_thread = ThreadCpu::between(&threads_at_first, &threads(pid), cpu);
    let system = stat.system - stat_at_first.system;
    let faults = stat.minor_faults - stat_at_first.minor_faults;
    let written = disk_written(pid) - written_at_first;
    let fired = (metric(port, "tailor_timers_fired_total ") - fired_at_first).max(0.0);
    let changes = metric(port, "tailor_audience_changes_total{");
    let p = Phases::read(port);
    let rss = peak_rss_mib(pid);
    // Stopped after the pass's figures are taken: perf takes a while to finish its file, and the
    // worker goes on (firing timers) meanwhile.
    if let (Some(child), Some(file)) = (perf.take(), &perf_file) {
        stop_perf(child, file);
    }
    let (t0, n0) = first.expect("the worker committed nothing");
    let secs = end.duration_since(t0).as_secs_f64();
    let rate = (done - n0) / secs;
    println!(
        "start to first commit: {:.1}s (process start, topic checks, group join, changelog check)",
        t0.duration_since(spawned).as_secs_f64()
    );
    // The first poll at which the threads held as many partitions as they ever did in the
    // pass, none of them restoring.
    let most = held.iter().map(|h| h.assigned).fold(0.0, f64::max);
    if let Some(h) = held
        .iter()
        .find(|h| h.assigned >= most && h.restoring == 0.0)
    {
        println!(
            "every partition held and restored: {:.1}s after the first commit ({most:.0} input partitions; polled every 0.1 s)",
            h.at.saturating_duration_since(t0).as_secs_f64()
        );
        // The pass's rate (below) leaves out what the first poll to find a commit saw committed
        // (one batch or more: the clock starts there): in a short pass of a few large batches that
        // moves it. Here every event, from the first poll that found every partition held and
        // restored (before the first commit, unless a thread was given its partitions late or the
        // worker's first answer came after it: then the events committed by then are left out
        // instead). The end is the pass's own.
        let counted = done - h.committed;
        let secs = end.saturating_duration_since(h.at).as_secs_f64().max(1e-3);
        println!(
            "every event from every partition held: {counted:.0} events in {secs:.1}s = {:.0} events/s ({:.2} of the raw consume rate; the 0.1 s polls make it ±{:.0} %)",
            counted / secs,
            counted / secs / raw_rate,
            0.1 / secs * 100.0
        );
    }
    println!(
        "worker ({:.0} processing threads): {:.0} events committed in {secs:.1}s = {rate:.0} events/s ({:.2} of the raw consume rate; explanations {}); {changes:.0} audience changes; peak RSS {rss:.0} MiB",
        metric(port, "tailor_processing_threads "),
        done - n0,
        rate / raw_rate,
        if explain { "on" } else { "off" }
    );
    // What a change saves per event, less bound to the broker's share of the cores than the
    // rate (though it too varied by about ±10 % between runs of the same code). Per event or
    // timer fired as well: how many timers fire within the pass varies from run to run (the
    // wide pass's 1 M events: 0.2 to 0.6 M), and a fire costs somewhat less than an event
    // (about 10-12 µs against 15-18 µs in a fit over twelve such passes).
    println!(
        "worker CPU in the pass: {cpu:.1}s (all its threads; {:.2} cores on average; {:.0} % of it in the kernel) = {:.1} µs per event committed, {:.1} µs per event or timer fired ({fired:.0} timers); {:.0} K minor page faults = {:.2} per event",
        cpu / secs,
        system / cpu.max(1e-9) * 100.0,
        cpu / (done - n0) * 1e6,
        cpu / (done - n0 + fired).max(1.0) * 1e6,
        faults / 1e3,
        faults / (done - n0)
    );
    let share = |part: f64| part / cpu.max(1e-9) * 100.0;
    println!(
        "  by thread: processing {:.1}s ({:.0} %), librdkafka's {:.1}s ({:.0} %), RocksDB's {:.1}s ({:.0} %), the others {:.1}s ({:.0} %)",
        by_thread.processing,
        share(by_thread.processing),
        by_thread.librdkafka,
        share(by_thread.librdkafka),
        by_thread.rocksdb,
        share(by_thread.rocksdb),
        by_thread.other,
        share(by_thread.other)
    );
    if let Some(broker) = broker_cpu {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "  the broker's CPU in the pass: {broker:.1}s ({:.2} cores); the worker and the broker together {:.2} of the machine's {cores} cores",
            broker / secs,
            (cpu + broker) / secs
        );
    }
    println!(
        "written to disk by the worker in the pass: {:.0} MiB = {:.0} bytes per event committed (write-ahead log, flushes, compactions)",
        written / 1048576.0,
        written / (done - n0)
    );
    let mib = |part: &str| {
        metric(
            port,
            &format!("tailor_state_memory_bytes{{part=\"{part}\"}}"),
        ) / 1048576.0
    };
    println!(
        "memory at the end of the pass: RSS {:.0} MiB ({}); RocksDB memtables {:.0} MiB, block cache {:.0} MiB, table readers {:.0} MiB; {:.0} profiles cached, estimated at {:.0} MiB",
        rss_mib(pid, "VmRSS:"),
        heaps(port),
        mib("memtables"),
        mib("block_cache"),
        mib("table_readers"),
        metric(port, "tailor_profiles_cached "),
        metric(port, "tailor_profile_cache_bytes ") / 1048576.0
    );
    println!(
        "batches: {:.1}s in all = timers {:.1}s, consume+apply {:.1}s, wait for deliveries {:.1}s, changelog {:.1}s, RocksDB commit {:.1}s; {:.0} batches, {:.0} messages each on average",
        p.seconds,
        p.timers,
        p.seconds - p.timers - p.deliver - p.changelog - p.commit,
        p.deliver,
        p.changelog,
        p.commit,
        p.batches,
        p.messages / p.batches.max(1.0)
    );
    scrapes.sort_by(f64::total_cmp);
    if let Some(max) = scrapes.last() {
        let pct = |p: f64| scrapes[((scrapes.len() as f64 * p) as usize).min(scrapes.len() - 1)];
        println!(
            "GET /metrics during the pass (the bench's progress polls, 100 ms apart): {} answered in p50 {:.1} ms, p99 {:.1} ms, max {max:.1} ms",
            scrapes.len(),
            pct(0.5),
            pct(0.99)
        );
    }
    let state_records = metric(port, "tailor_changelog_records_total{kind=\"state\"}");
    println!(
        "changelog: {state_records:.0} state records + {:.0} markers = {:.2} state records per event committed ({:.0} timers fired meanwhile)",
        metric(port, "tailor_changelog_records_total{kind=\"marker\"}"),
        state_records / done.max(1.0),
        metric(port, "tailor_timers_fired_total ")
    );

    // Keys are (i * 7919) % profiles: 7919 is prime, so min(total, profiles) distinct shoppers.
    let shoppers = total.min(profiles);
    if !all {
        report_disk(&dir.path().join("state"), shoppers);
        report_rocksdb_writes(&dir.path().join("state"));
        // The latency of the live stream, not of the catch-up's timers.
        let (fired, secs, cpu_then, fired_then) = timers_settle(port, pid);
        println!(
            "timers due at catch-up: {fired:.0} fired in {secs:.1}s, before the latency phase"
        );
        report_pass_and_catch_up(
            cpu_then - stat_at_first.cpu,
            done - n0,
            (fired_then - fired_at_first).max(0.0),
        );
        latency(
            port,
            &brokers,
            (&names, &names[8]),
            partitions,
            base,
            rate * latency_share(),
            &format!("{name}-latency"),
        );
        timer_lateness(
            port,
            &brokers,
            (&names[0], &names[3]),
            partitions,
            base,
            500,
            &format!("{name}-lateness"),
        );
        stop(&mut child);
        report_compacted(&dir.path().join("state"), shoppers, "");
        delete_topics(&rt, &admin, &names);
        return;
    }
    // Caught up: the clock jumps from the data's 2019 to the wall clock, and every pending timer
    // fires (each at its own due time, until none is left). Timed until the count stops moving.
    let pending = metric(port, "tailor_timers_pending ");
    let (fired, secs, cpu_then, fired_then) = timers_settle(port, pid);
    report_pass_and_catch_up(
        cpu_then - stat_at_first.cpu,
        done - n0,
        (fired_then - fired_at_first).max(0.0),
    );
    println!(
        "timers: {pending:.0} pending when caught up (estimate); {fired:.0} fired in {secs:.1}s = {:.0} timer fires/s; {:.0} triggers, {:.0} audience changes in all; peak RSS {:.0} MiB",
        fired / secs,
        metric(port, "tailor_journey_triggers_total{"),
        metric(port, "tailor_audience_changes_total{"),
        peak_rss_mib(pid)
    );
    lookups(port, total, profiles);
    report_disk(&dir.path().join("state"), shoppers);
    report_rocksdb_writes(&dir.path().join("state"));

    // A segment every profile matches, added on SIGHUP: every stored profile is re-evaluated
    // (between live batches) and enters it.
    let changed = examples.replacen(
        "segments:\n",
        "segments:\n  - id: bench-added\n    rule: events.total >= 1\n",
        1,
    );
    std::fs::write(&segments, changed).unwrap();
    let profiles_held = metric(port, "tailor_state_profiles ");
    // Profiles re-evaluated before (at start, the definitions were new to the empty store).
    let swept_before = metric(port, "tailor_reevaluated_profiles_total ");
    let t_sweep = Instant::now();
    signal(pid, "HUP");
    let mut swept = 0.0;
    while t_sweep.elapsed() < Duration::from_secs(1800) {
        std::thread::sleep(Duration::from_millis(100));
        let now = metric(port, "tailor_reevaluated_profiles_total ") - swept_before;
        // Done when nothing is pending and the count has stopped moving (the gauge is set after
        // each slice: read alone mid-slice, it can still say 0 from before the change).
        let still = now == swept;
        swept = now;
        if swept > 0.0 && still && metric(port, "tailor_reevaluation_pending_partitions ") == 0.0 {
            break;
        }
    }
    let secs = t_sweep.elapsed().as_secs_f64();
    println!(
        "definitions changed (SIGHUP, one segment added): {swept:.0} profiles re-evaluated (~{profiles_held:.0} held) in {secs:.1}s = {:.0} profiles/s; {:.0} entered the new segment",
        swept / secs,
        metric(port, "tailor_audience_changes_total{direction=\"ENTERED\",segment=\"bench-added\"}")
    );
    stop(&mut child);

    // The state directory lost: a worker starting on an empty one restores every partition from
    // the changelog before it is ready (the partitions restore side by side).
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    // The worker joins a group of its own: a worker of several threads leaves the group member
    // by member, and the development broker can then lose the group for whoever joins it next
    // (README). Its positions come from the state it restores, not from the group.
    let text = std::fs::read_to_string(&config).unwrap();
    let regroup = text.replacen(
        &format!("group_id = \"{prefix}\""),
        &format!("group_id = \"{prefix}-restored\""),
        1,
    );
    assert_ne!(text, regroup, "the bench's config names its group");
    std::fs::write(&config, regroup).unwrap();
    let t_restore = Instant::now();
    let mut child = start();
    // TAILOR_BENCH_PERF: the restoring worker too, from its start to ready, into
    // PREFIX-NAME-restore.data.
    let restore_perf = perf_file
        .as_ref()
        .map(|f| f.replace(".data", "-restore.data"));
    let mut restore_perf_child = restore_perf
        .as_ref()
        .and_then(|file| start_perf(child.id(), file));
    let ready = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = write!(s, "GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") {
                break t_restore.elapsed().as_secs_f64();
            }
        }
        assert!(
            t_restore.elapsed() < Duration::from_secs(1800),
            "no restore"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if let (Some(p), Some(file)) = (restore_perf_child.take(), &restore_perf) {
        stop_perf(p, file);
    }
    let records = metric(port, "tailor_changelog_restored_records_total ");
    let restore_sum = metric(port, "tailor_changelog_restore_seconds_sum ");
    let restore_count = metric(port, "tailor_changelog_restore_seconds_count ");
    println!(
        "restore (state directory lost): {records:.0} changelog records ({profiles} shopper keys, {partitions} partitions side by side) in {ready:.1}s from start to ready = {:.0} records/s; a partition took {:.1}s on average ({:.0} records)",
        records / ready,
        restore_sum / restore_count.max(1.0),
        records / restore_count.max(1.0)
    );
    // At half the measured rate, then at a trickle (what a batch costs when nothing queues).
    latency(
        port,
        &brokers,
        (&names, &names[8]),
        partitions,
        base,
        rate * latency_share(),
        &format!("{name}-latency-a"),
    );
    latency(
        port,
        &brokers,
        (&names, &names[9]),
        partitions,
        base,
        100.0,
        &format!("{name}-latency-b"),
    );
    timer_lateness(
        port,
        &brokers,
        (&names[0], &names[3]),
        partitions,
        base,
        500,
        &format!("{name}-lateness"),
    );
    // The restored state, with the latency phases' new shoppers (measured after the failover
    // below, which leaves this worker's directory alone).
    if std::env::var("TAILOR_BENCH_FAILOVER").map_or(true, |v| v != "0") {
        failover(&config, &mut child, port);
    } else {
        stop(&mut child);
    }
    report_compacted(&dir.path().join("state"), shoppers, " (the restored state)");
    delete_topics(&rt, &admin, &names);
}

/// A failover with a standby copy (`TAILOR_BENCH_FAILOVER=0` skips it): a second worker with
/// `state.standby` joins the first (`config`, `first` on `port`): it restores the partitions
/// it is given and follows the changelog of the others; once its copies are level, the first
/// is killed with SIGKILL and the second takes its partitions over from them, then stops.
fn failover(config: &Path, first: &mut std::process::Child, port: u16) {
    let dir = tempfile::tempdir().unwrap();
    let port_b = free_port();
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("[state]\n", "[state]\nstandby = true\n")
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{port_b}"));
    let config_b = dir.path().join("tailor.toml");
    std::fs::write(&config_b, text).unwrap();
    let mut b = Command::new(worker_binary())
        .args(["run", "--config"])
        .arg(&config_b)
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let all = metric(port, "tailor_assigned_partitions ");
    let joined = Instant::now();
    // B holds some partitions, A the others, and B's copies stop moving (a pass every 5 s).
    let mut followed = -1.0;
    while joined.elapsed() < Duration::from_secs(1800) {
        std::thread::sleep(Duration::from_secs(6));
        let (a, b_held) = (
            metric(port, "tailor_assigned_partitions "),
            metric(port_b, "tailor_assigned_partitions "),
        );
        let now = metric(port_b, "tailor_standby_records_total ");
        let restoring = metric(port_b, "tailor_changelog_restoring_partitions ");
        if a > 0.0
            && b_held > 0.0
            && a + b_held == all
            && restoring == 0.0
            && now > 0.0
            && now == followed
        {
            break;
        }
        followed = now;
    }
    let joined = joined.elapsed().as_secs_f64();
    let restored_before = metric(port_b, "tailor_changelog_restored_records_total ");
    let sum_before = metric(port_b, "tailor_changelog_restore_seconds_sum ");
    let count_before = metric(port_b, "tailor_changelog_restore_seconds_count ");
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = Instant::now();
    while metric(port_b, "tailor_assigned_partitions ") < all
        || metric(port_b, "tailor_changelog_restoring_partitions ") > 0.0
    {
        assert!(killed.elapsed() < Duration::from_secs(600), "no takeover");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took_over = killed.elapsed().as_secs_f64();
    let records = metric(port_b, "tailor_changelog_restored_records_total ") - restored_before;
    let partitions = metric(port_b, "tailor_changelog_restore_seconds_count ") - count_before;
    let secs = metric(port_b, "tailor_changelog_restore_seconds_sum ") - sum_before;
    println!(
        "failover with a standby copy: B joined and was level in {joined:.0}s ({followed:.0} changelog records followed, from an empty store, for the partitions B did not hold at the time; {restored_before:.0} read by the restores of those B was given); A killed (SIGKILL): B held every partition {took_over:.1}s later (librdkafka's 45 s session timeout and the group's rejoin included); catching up A's {partitions:.0} partitions read {records:.0} records in {:.2}s each on average",
        secs / partitions.max(1.0)
    );
    stop(&mut b);
}

/// A loopback port nothing listens on (for a worker's HTTP API).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends signal `name` (`TERM`, `HUP`, `INT`) to process `pid`; whether it was sent.
fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGTERM to the worker, and its exit awaited.
fn stop(child: &mut std::process::Child) {
    signal(child.id(), "TERM");
    let _ = child.wait();
}

/// Prints the stopped worker's state size after a full compaction, per shopper.
fn report_compacted(state: &Path, shoppers: u64, which: &str) {
    let compacted = compacted_bytes(state);
    println!(
        "state on disk after a full compaction{which}: {:.0} MiB = {:.0} bytes per shopper",
        compacted as f64 / 1048576.0,
        compacted as f64 / shoppers.max(1) as f64
    );
}

fn delete_topics(
    rt: &tokio::runtime::Runtime,
    admin: &AdminClient<DefaultClientContext>,
    names: &[String],
) {
    for r in rt
        .block_on(admin.delete_topics(
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
            &AdminOptions::new(),
        ))
        .unwrap()
    {
        let _ = r;
    }
}

/// The worker the bench runs: this build's, or `TAILOR_BENCH_WORKER` (another build's binary,
/// to compare two builds on the same harness and broker).
fn worker_binary() -> std::path::PathBuf {
    std::env::var_os("TAILOR_BENCH_WORKER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tailor").into())
}

/// `perf record` of process `pid` into `file` (499 samples a second with 16 KiB of stack each:
/// about 15 MB a second), its messages into `file.log`. `None` (and a line saying why) if perf
/// cannot start: the bench goes on without the profile. The pass's figures are then taken under
/// perf (the kernel copies each sample's stack in the worker's time): not comparable with a run
/// without it.
fn start_perf(pid: u32, file: &str) -> Option<std::process::Child> {
    let log = match std::fs::File::create(format!("{file}.log")) {
        Ok(f) => f,
        Err(e) => {
            println!("TAILOR_BENCH_PERF: cannot create {file}.log ({e}); no profile of the pass");
            return None;
        }
    };
    // TAILOR_BENCH_PERF_EVENT=EVENT (e.g. `page-faults`): one sample per 20 of that event
    // instead of the CPU clock's 499 a second, to see where the worker takes them.
    let sampling: Vec<String> = match std::env::var("TAILOR_BENCH_PERF_EVENT") {
        Ok(event) if !event.trim().is_empty() => {
            vec!["-e".into(), event.trim().into(), "-c".into(), "20".into()]
        }
        _ => vec!["-F".into(), "499".into()],
    };
    let started = Command::new("perf")
        .arg("record")
        .args(&sampling)
        .args([
            "--call-graph",
            "dwarf,16384",
            // No build ids collected at the end (a read of the whole file): the profile is read
            // on this machine, with these binaries.
            "--no-buildid",
            "-o",
            file,
            "-p",
        ])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    match started {
        Ok(child) => {
            println!("TAILOR_BENCH_PERF: perf records this pass; its figures are taken under perf");
            Some(child)
        }
        Err(e) => {
            println!("TAILOR_BENCH_PERF: perf could not start ({e}); no profile of the pass");
            None
        }
    }
}

/// Stops the profile (perf finishes its file on SIGINT, then ends by that signal) and says
/// where it is, or why there is none (perf's own messages are in `file.log`).
fn stop_perf(mut child: std::process::Child, file: &str) {
    use std::os::unix::process::ExitStatusExt;
    if !signal(child.id(), "INT") {
        // Killed instead: waiting for a perf that got no signal would wait for the worker's end.
        // (A killed perf leaves an unfinished file, which the line below reports.)
        let _ = child.kill();
    }
    let status = child.wait();
    // A pass shorter than perf's start leaves a header at most.
    let samples = std::fs::metadata(file).map_or(0, |m| m.len()) > 64 * 1024;
    match status {
        Ok(st) if (st.success() || st.signal() == Some(2)) && samples => println!(
            "perf profile of the pass: {file} (perf report -i {file}; perf's messages in {file}.log)"
        ),
        Ok(st) => println!(
            "TAILOR_BENCH_PERF: perf ended with {st}{}; see {file}.log",
            if samples { "" } else { " and recorded nothing" }
        ),
        Err(e) => println!("TAILOR_BENCH_PERF: waiting for perf failed: {e}"),
    }
}
