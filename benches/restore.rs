//! A restore's replay without the broker: changelog records of profiles applied to a RocksDB
//! store on disk (`Replay`, as a restore or a standby copy applies them after reading them from
//! the changelog), in three shapes: a marker every 10,000 records (an uncompacted changelog, each
//! key once), the same over fewer keys (each profile rewritten by later batches), and one batch
//! with a single marker at its end (a compacted changelog's cleaned part). Prints records per
//! second and the peak resident memory of each shape (run in a process of its own).
//! `cargo bench --bench restore` (`TAILOR_BENCH_RECORDS`, default 1,000,000).

use std::time::Instant;

use tailor::profile::{encode, Profile};
use tailor::store::{Op, Store};
use tailor::worker::{ChangelogEntry, Replay};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Replays `records` profile records over `keys` keys of partition 1, a marker after every
/// `every` records (and at the end), into a fresh store; returns records per second. The records
/// are made as they are taken (a key formatted, and one of a thousand encoded profiles copied),
/// as a restore copies each out of the consumer's message.
fn replay(records: usize, keys: usize, every: usize) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path(), &Default::default()).expect("the store");
    let values: Vec<Vec<u8>> = (0..1_000)
        .map(|i| {
            encode(&Profile {
                events_total: i,
                next_timer: Some(1_700_000_000_000 + i as i64 * 60_000),
                ..Default::default()
            })
        })
        .collect();
    let started = Instant::now();
    let mut replay = Replay::new(&store, 1, 0);
    let mut offset = 0;
    for i in 0..records {
        let mut key = 1u32.to_be_bytes().to_vec();
        key.extend_from_slice(format!("shopper-{:09}", i % keys).as_bytes());
        let entry = ChangelogEntry::Op(Op {
            cf: 0,
            key,
            value: Some(values[i % values.len()].clone()),
        });
        replay.take(offset, entry).expect("a record applied");
        offset += 1;
        if (i + 1) % every == 0 || i + 1 == records {
            replay
                .take(offset, ChangelogEntry::Marker)
                .expect("a marker");
            offset += 1;
        }
    }
    replay.finish().expect("the replay finished");
    records as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("restore benchmark: cargo bench --bench restore");
        return;
    }
    let records = std::env::var("TAILOR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000usize);
    let shapes = [
        (
            "a marker every 10,000 records, each key once",
            records,
            10_000,
        ),
        (
            "a marker every 10,000 records over a third as many keys",
            records / 3,
            10_000,
        ),
        ("one batch (a compacted changelog)", records, records),
    ];
    // Each shape in a process of its own, so that its peak memory is its own.
    if let Some(shape) = std::env::var("TAILOR_BENCH_SHAPE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let (what, keys, every) = shapes[shape];
        let rate = replay(records, keys.max(1), every);
        println!(
            "replay of {records} profile records, {what}: {:.0} K records/s, peak RSS {:.0} MiB",
            rate / 1e3,
            peak_rss_mib()
        );
        return;
    }
    let me = std::env::current_exe().expect("this bench's executable");
    for shape in 0..shapes.len() {
        let status = std::process::Command::new(&me)
            .arg("--bench")
            .env("TAILOR_BENCH_SHAPE", shape.to_string())
            .status()
            .expect("the bench runs a shape");
        assert!(status.success(), "shape {shape} failed");
    }
}
