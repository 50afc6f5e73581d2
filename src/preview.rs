//! `tailor preview`: new or changed segment definitions evaluated against the stored profiles
//! with the live path's engine ([`SegmentSet::evaluate`]), read-only: how many shoppers would be
//! members, a sample of them, the overlap with each segment in force, and who would enter or
//! exit compared with the memberships held now.
//!
//! It reads a RocksDB state directory opened read-only (safe while the worker runs: it sees the
//! state as of its start). Each profile is evaluated at its partition's stream clock, as the
//! worker would evaluate it now.

use std::collections::HashMap;

use serde::Serialize;

use crate::profile::Profile;
use crate::segments::SegmentSet;
use crate::store::{Store, StoreError};

/// The `n` keys with the smallest hashes: a sample that is the same every run and spread over
/// the key space (not the first keys in order).
#[derive(Debug, Clone, Default)]
struct Sample {
    n: usize,
    items: Vec<(u64, String)>,
}

impl Sample {
    fn new(n: usize) -> Sample {
        Sample {
            n,
            items: Vec::with_capacity(n + 1),
        }
    }

    fn offer(&mut self, key: &str) {
        if self.n == 0 {
            return;
        }
        let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        if self.items.len() == self.n && self.items.last().is_some_and(|(m, _)| h >= *m) {
            return;
        }
        let at = self.items.partition_point(|(x, _)| *x < h);
        self.items.insert(at, (h, key.to_owned()));
        self.items.truncate(self.n);
    }

    /// The sampled keys; e-mail addresses (profiles keyed by e-mail) masked unless `show`.
    fn keys(&self, show: bool) -> Vec<String> {
        self.items
            .iter()
            .map(|(_, k)| if show { k.clone() } else { mask_email(k) })
            .collect()
    }
}

/// `ann.smith@example.com` as `a…@example.com`: a report passed around names no one.
pub fn mask_email(key: &str) -> String {
    match key.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}…@{domain}")
        }
        None => key.to_owned(),
    }
}

/// Shoppers in a previewed segment and in one segment in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overlap {
    pub segment: String,
    pub shoppers: u64,
}

/// What one segment of the new definitions would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentPreview {
    pub id: String,
    /// `new`, `changed` or `unchanged` compared with the definitions in force; `affected`: the
    /// rule is unchanged but uses (`in_segment`) a segment that is new, changed or removed.
    pub status: &'static str,
    pub members: u64,
    pub sample: Vec<String>,
    /// Not a member now, would be one.
    pub would_enter: u64,
    pub enter_sample: Vec<String>,
    /// A member now, would not be.
    pub would_exit: u64,
    pub exit_sample: Vec<String>,
    /// With each segment in force that shares members, most shared first.
    pub overlap: Vec<Overlap>,
}

/// A segment in force that the new definitions drop: its members would all exit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Removed {
    pub id: String,
    pub members: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub profiles: u64,
    pub partitions: Vec<i32>,
    pub segments: Vec<SegmentPreview>,
    pub removed: Vec<Removed>,
}

struct Tally {
    members: u64,
    sample: Sample,
    enter: u64,
    enter_sample: Sample,
    exit: u64,
    exit_sample: Sample,
    /// Per segment in force.
    overlap: Vec<u64>,
}

/// Evaluates `new` for every profile of `partitions` (all the store holds if `None`).
/// `progress` is called with the number of profiles done every 10,000 and at the end.
pub fn run(
    store: &Store,
    in_force: &SegmentSet,
    new: &SegmentSet,
    partitions: Option<&[i32]>,
    sample: usize,
    show_emails: bool,
    mut progress: impl FnMut(u64),
) -> Result<Report, StoreError> {
    let partitions = match partitions {
        Some(p) => p.to_vec(),
        None => store.partitions()?,
    };
    let force_index: HashMap<&str, usize> = in_force
        .segments()
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut tallies: Vec<Tally> = new
        .segments()
        .iter()
        .map(|_| Tally {
            members: 0,
            sample: Sample::new(sample),
            enter: 0,
            enter_sample: Sample::new(sample),
            exit: 0,
            exit_sample: Sample::new(sample),
            overlap: vec![0; in_force.len()],
        })
        .collect();
    let removed_ids: Vec<&str> = in_force
        .segments()
        .iter()
        .map(|s| s.id.as_str())
        .filter(|id| new.index_of(id).is_none())
        .collect();
    let mut removed = vec![0u64; removed_ids.len()];
    let mut results = Vec::with_capacity(new.len());
    let mut done = 0u64;
    for &partition in &partitions {
        let clock = store.clock(partition)?;
        store.each_profile(partition, |key, p: Profile| -> Result<(), StoreError> {
            let now = crate::http::stream_now(clock, &p);
            new.evaluate(&p, now, &mut results);
            let held = |id: &str| p.segments.iter().any(|m| m.segment == id);
            for ((seg, &hit), t) in new.segments().iter().zip(&results).zip(&mut tallies) {
                let member = held(&seg.id);
                if hit {
                    t.members += 1;
                    t.sample.offer(key);
                    for m in &p.segments {
                        if let Some(&i) = force_index.get(m.segment.as_str()) {
                            t.overlap[i] += 1;
                        }
                    }
                }
                if hit && !member {
                    t.enter += 1;
                    t.enter_sample.offer(key);
                } else if member && !hit {
                    t.exit += 1;
                    t.exit_sample.offer(key);
                }
            }
            for (id, n) in removed_ids.iter().zip(&mut removed) {
                *n += u64::from(held(id));
            }
            done += 1;
            if done % 10_000 == 0 {
                progress(done);
            }
            Ok(())
        })?;
    }
    progress(done);
    let (added, changed, gone) = new.diff(in_force);
    // Unchanged rules that use a new, changed or removed segment (`in_segment`), transitively.
    let mut touched: Vec<String> = added.iter().chain(&changed).chain(&gone).cloned().collect();
    let mut affected: Vec<String> = Vec::new();
    loop {
        let more: Vec<String> = new
            .segments()
            .iter()
            .filter(|s| !touched.contains(&s.id))
            .filter(|s| s.uses().iter().any(|u| touched.contains(u)))
            .map(|s| s.id.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        touched.extend(more.iter().cloned());
        affected.extend(more);
    }
    let segments = new
        .segments()
        .iter()
        .zip(tallies)
        .map(|(seg, t)| {
            let mut overlap: Vec<Overlap> = in_force
                .segments()
                .iter()
                .zip(&t.overlap)
                .filter(|(s, n)| **n > 0 && s.id != seg.id)
                .map(|(s, n)| Overlap {
                    segment: s.id.clone(),
                    shoppers: *n,
                })
                .collect();
            overlap.sort_by(|a, b| b.shoppers.cmp(&a.shoppers).then(a.segment.cmp(&b.segment)));
            SegmentPreview {
                status: if added.contains(&seg.id) {
                    "new"
                } else if changed.contains(&seg.id) {
                    "changed"
                } else if affected.contains(&seg.id) {
                    "affected"
                } else {
                    "unchanged"
                },
                id: seg.id.clone(),
                members: t.members,
                sample: t.sample.keys(show_emails),
                would_enter: t.enter,
                enter_sample: t.enter_sample.keys(show_emails),
                would_exit: t.exit,
                exit_sample: t.exit_sample.keys(show_emails),
                overlap,
            }
        })
        .collect();
    Ok(Report {
        profiles: done,
        partitions,
        segments,
        removed: removed_ids
            .iter()
            .zip(removed)
            .map(|(id, members)| Removed {
                id: (*id).to_owned(),
                members,
            })
            .collect(),
    })
}

/// The report as text, for people.
pub fn to_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{} profiles in partitions {:?}\n\n{:<28} {:<9} {:>9} {:>12} {:>11}\n",
        r.profiles, r.partitions, "segment", "status", "members", "would enter", "would exit"
    );
    for s in &r.segments {
        let _ = writeln!(
            out,
            "{:<28} {:<9} {:>9} {:>12} {:>11}",
            s.id, s.status, s.members, s.would_enter, s.would_exit
        );
    }
    for s in r.segments.iter().filter(|s| s.status != "unchanged") {
        let _ = writeln!(out, "\n{} ({}):", s.id, s.status);
        let _ = writeln!(out, "  members, e.g.: {}", s.sample.join(", "));
        if s.would_enter > 0 {
            let _ = writeln!(out, "  would enter, e.g.: {}", s.enter_sample.join(", "));
        }
        if s.would_exit > 0 {
            let _ = writeln!(out, "  would exit, e.g.: {}", s.exit_sample.join(", "));
        }
        let shared: Vec<String> = s
            .overlap
            .iter()
            .take(8)
            .map(|o| {
                let pct = if s.members > 0 {
                    100.0 * o.shoppers as f64 / s.members as f64
                } else {
                    0.0
                };
                format!("{} {} ({pct:.0}%)", o.segment, o.shoppers)
            })
            .collect();
        if !shared.is_empty() {
            let _ = writeln!(out, "  also in: {}", shared.join(", "));
        }
    }
    for rm in &r.removed {
        let _ = writeln!(
            out,
            "\n{} (removed): its {} members would exit",
            rm.id, rm.members
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_keeps_the_smallest_hashes_whatever_the_order() {
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        let mut a = Sample::new(5);
        let mut b = Sample::new(5);
        keys.iter().for_each(|k| a.offer(k));
        keys.iter().rev().for_each(|k| b.offer(k));
        assert_eq!(a.keys(true), b.keys(true));
        assert_eq!(a.keys(true).len(), 5);
        let mut all: Vec<(u64, &String)> = keys
            .iter()
            .map(|k| (xxhash_rust::xxh3::xxh3_64(k.as_bytes()), k))
            .collect();
        all.sort();
        let want: Vec<String> = all[..5].iter().map(|(_, k)| (*k).clone()).collect();
        assert_eq!(a.keys(true), want);
    }

    #[test]
    fn e_mail_keys_are_masked_in_samples_unless_asked() {
        let mut s = Sample::new(3);
        s.offer("ann.smith@example.com");
        s.offer("17850");
        let mut shown = s.keys(false);
        shown.sort();
        assert_eq!(shown, vec!["17850", "a…@example.com"]);
        assert!(s.keys(true).contains(&"ann.smith@example.com".to_string()));
    }
}

// ------------------------------------------------------------------ history

/// `--history`: the new definitions run over recorded input (the three input topics between two
/// times) into scratch state held in memory, counting entries and exits per day. Each message key
/// is one shopper (identity stitching across keys is not replayed), and the scratch state starts
/// empty, so the first days count shoppers entering for the first time.
pub mod history {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    use serde::Serialize;

    use crate::audience::{Core, Outputs, Source};
    use crate::codec::{DecodeError, Family, SchemaCatalog};
    use crate::config::Settings;
    use crate::event::Event;
    use crate::profile::Profile;
    use crate::registry::{Lookup, Registry};
    use crate::segments::SegmentSet;
    use crate::wire::Direction;

    /// `30d` (the last 30 days), `2026-01-01..2026-02-01`, or `2026-01-01..` (until now), as
    /// (from, to) in ms.
    pub fn parse_range(s: &str, now: i64) -> Result<(i64, i64), String> {
        let bad = || {
            format!("--history {s:?}: expected a duration such as 30d, or FROM..TO with UTC times such as 2026-01-01..2026-02-01 (TO may be left out)")
        };
        if let Some((from, to)) = s.split_once("..") {
            let from = crate::cases::parse_utc(from.trim()).ok_or_else(bad)?;
            let to = match to.trim() {
                "" => now,
                t => crate::cases::parse_utc(t).ok_or_else(bad)?,
            };
            if to <= from {
                return Err(format!("--history {s:?}: the end is not after the start"));
            }
            return Ok((from, to));
        }
        let d = crate::segments::parse_duration(s.trim()).ok_or_else(bad)?;
        Ok((now - d, now))
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Day {
        /// `YYYY-MM-DD` (UTC).
        pub day: String,
        pub entered: u64,
        pub exited: u64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize)]
    pub struct SegmentHistory {
        pub id: String,
        pub entered: u64,
        pub exited: u64,
        /// Members at the end of the range.
        pub members: u64,
        /// Days with at least one change, oldest first.
        pub days: Vec<Day>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize)]
    pub struct Report {
        pub from: i64,
        pub to: i64,
        /// Messages read in the range, events applied, and messages left out by reason (bad
        /// input, as the worker would dead-letter it).
        pub messages: u64,
        pub events: u64,
        pub rejected: BTreeMap<String, u64>,
        pub shoppers: u64,
        pub timers_fired: u64,
        /// Timers due after the range's end (what time alone would still change).
        pub timers_pending: u64,
        pub segments: Vec<SegmentHistory>,
    }

    /// One input message of the range, decoded.
    pub struct Recorded {
        pub time: i64,
        /// 0 storefront, 1 back office, 2 profile (the order among equal times).
        pub topic: usize,
        pub partition: i32,
        pub offset: i64,
        pub key: String,
        pub event: Event,
    }

    /// Reads the input topics' records stamped between `from` and `to` (the time they were
    /// recorded; a replay of old data has recent stamps and old event times), decoded as the
    /// worker decodes them.
    fn read(
        settings: &Settings,
        catalog: &mut SchemaCatalog,
        registry: Option<&Registry>,
        (from, to): (i64, i64),
        rejected: &mut BTreeMap<String, u64>,
        messages: &mut u64,
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Vec<Recorded>> {
        let c = &settings.config;
        let mut cfg = ClientConfig::new();
        for (k, v) in &c.kafka {
            cfg.set(k, v);
        }
        cfg.set("group.id", format!("tailor-preview-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let topics = [
            (&c.topics.storefront, Family::Storefront),
            (&c.topics.backoffice, Family::Backoffice),
            (&c.topics.profile, Family::Profile),
        ];
        let timeout = Duration::from_secs(10);
        let mut out = Vec::new();
        let mut last = Instant::now();
        // One topic at a time, with a consumer of its own: an end-of-partition event names the
        // partition number only.
        for (i, (topic, family)) in topics.iter().enumerate() {
            let consumer: BaseConsumer = cfg.create().context("creating the Kafka consumer")?;
            let meta = consumer
                .fetch_metadata(Some(topic), timeout)
                .with_context(|| format!("reading the metadata of {topic}"))?;
            let Some(t) = meta.topics().first().filter(|t| !t.partitions().is_empty()) else {
                continue;
            };
            let mut wanted = TopicPartitionList::new();
            let mut ends: HashMap<i32, i64> = HashMap::new();
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), timeout)
                    .with_context(|| format!("reading the end of {topic}/{}", p.id()))?;
                ends.insert(p.id(), high);
                wanted.add_partition_offset(topic, p.id(), Offset::Offset(from))?;
            }
            // Offsets of the first records at or after `from`.
            let starts = consumer
                .offsets_for_times(wanted, timeout)
                .with_context(|| format!("finding where {topic} reaches the range's start"))?;
            let mut assign = TopicPartitionList::new();
            let mut open: BTreeSet<i32> = BTreeSet::new();
            for e in starts.elements() {
                let end = ends[&e.partition()];
                let start = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => end, // nothing at or after `from`
                };
                if start < end {
                    open.insert(e.partition());
                    assign.add_partition_offset(topic, e.partition(), Offset::Offset(start))?;
                }
            }
            if open.is_empty() {
                continue;
            }
            consumer.assign(&assign)?;
            let mut quiet = Instant::now();
            let mut heard: HashMap<i32, Instant> =
                open.iter().map(|p| (*p, Instant::now())).collect();
            // A partition is done at its end (the end-of-partition event), at its first record
            // stamped at or after `to` (a live topic goes on), or when the position has passed
            // the end found at start and nothing came for a second (the development broker here
            // reports the start of the last record batch as the end, and no end event past it).
            let close = |p: i32, open: &mut BTreeSet<i32>| {
                open.remove(&p);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, p);
                let _ = consumer.pause(&tpl);
            };
            while !open.is_empty() {
                for e in consumer.position()?.elements() {
                    let p = e.partition();
                    if let Offset::Offset(at) = e.offset() {
                        if open.contains(&p)
                            && at >= ends[&p]
                            && heard[&p].elapsed() >= Duration::from_secs(1)
                        {
                            close(p, &mut open);
                        }
                    }
                }
                let msg = match consumer.poll(Duration::from_millis(200)) {
                    None => {
                        if quiet.elapsed() > Duration::from_secs(30) {
                            bail!("no message from {topic} for 30 s with partitions {open:?} not read to their end");
                        }
                        continue;
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                        close(p, &mut open);
                        continue;
                    }
                    Some(m) => m.with_context(|| format!("reading {topic}"))?,
                };
                quiet = Instant::now();
                let p = msg.partition();
                if !open.contains(&p) {
                    continue; // fetched before its partition was closed
                }
                heard.insert(p, Instant::now());
                if msg.timestamp().to_millis().is_some_and(|t| t >= to) {
                    close(p, &mut open);
                    continue;
                }
                *messages += 1;
                if last.elapsed() >= Duration::from_secs(2) {
                    last = Instant::now();
                    progress(&format!("read {messages} messages"));
                }
                let payload = msg.payload().unwrap_or_default();
                let mut decoded = catalog.decode_for_event(*family, payload);
                if let (Err(DecodeError::SchemaIdPending(id)), Some(reg)) = (&decoded, registry) {
                    // A Confluent-framed message whose schema id is new: ask the registry once.
                    let id = *id;
                    match reg
                        .schema_by_id(id)
                        .with_context(|| format!("asking the schema registry for id {id}"))?
                    {
                        Lookup::Found(json) => catalog.resolve_id(id, Some(&json)),
                        Lookup::NotFound => catalog.resolve_id(id, None),
                    }
                    decoded = catalog.decode_for_event(*family, payload);
                }
                let decoded = decoded
                    .map_err(|e: DecodeError| e.code().to_owned())
                    .and_then(|(m, _)| Event::from_input(m, to).map_err(|e| e.code().to_owned()));
                let event = match decoded {
                    Ok(ev) => ev,
                    Err(code) => {
                        *rejected.entry(code).or_default() += 1;
                        continue;
                    }
                };
                let key = match msg.key().filter(|k| !k.is_empty()) {
                    Some(k) => String::from_utf8_lossy(k).into_owned(),
                    None => match event.fallback_key() {
                        Some(k) => k.to_owned(),
                        None => {
                            *rejected.entry("no_identity".into()).or_default() += 1;
                            continue;
                        }
                    },
                };
                out.push(Recorded {
                    time: event.time,
                    topic: i,
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key,
                    event,
                });
            }
        }
        Ok(out)
    }

    /// Runs `set` over the recorded input of `range`.
    pub fn run(
        settings: &Settings,
        set: &Arc<SegmentSet>,
        range: (i64, i64),
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Report> {
        let c = &settings.config;
        let mut catalog = SchemaCatalog::builtin().clone();
        if let Some(dir) = &c.schemas.dir {
            let (_, refused) = crate::schemas::load(&mut catalog, dir);
            if !refused.is_empty() {
                bail!("schemas.dir {}: {}", dir.display(), refused.join("; "));
            }
        }
        let registry = Registry::from_config(&c.schema_registry, settings.registry_timeout)?;
        if registry.is_some() {
            catalog.enable_registry();
        }
        let mut rejected = BTreeMap::new();
        let mut messages = 0;
        let recorded = read(
            settings,
            &mut catalog,
            registry.as_ref(),
            range,
            &mut rejected,
            &mut messages,
            progress,
        )?;
        let mut report = simulate(set, c.identity.max_identities, recorded, range, progress);
        report.messages = messages;
        report.rejected = rejected;
        Ok(report)
    }

    /// Runs `set` over `recorded` in event-time order, in scratch state, firing timers up to the
    /// range's end (no I/O: the part of `run` after reading).
    pub fn simulate(
        set: &Arc<SegmentSet>,
        max_identities: usize,
        mut recorded: Vec<Recorded>,
        range: (i64, i64),
        progress: &mut dyn FnMut(&str),
    ) -> Report {
        // Event-time order across the three topics, as the worker's ordering approaches it.
        recorded.sort_by_key(|r| (r.time, r.topic, r.partition, r.offset));
        progress(&format!("running {} events", recorded.len()));
        let mut core = Core::new(set.clone())
            .with_max_identities(max_identities)
            .with_explanations(false);
        let mut profiles: HashMap<String, Profile> = HashMap::new();
        let mut timers: BTreeSet<(i64, String)> = BTreeSet::new();
        let mut out = Outputs::default();
        let mut counts: Vec<BTreeMap<i64, (u64, u64)>> = vec![BTreeMap::new(); set.len()];
        let index: HashMap<&str, usize> = set
            .segments()
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let mut tally = |out: &mut Outputs| {
            for c in out.changes.drain(..) {
                if let Some(&i) = index.get(c.segment_id.as_str()) {
                    let day = counts[i]
                        .entry(c.event_time.div_euclid(86_400_000))
                        .or_default();
                    match c.direction {
                        Direction::Entered => day.0 += 1,
                        Direction::Exited => day.1 += 1,
                    }
                }
            }
            let fired = out.timers_fired;
            out.clear();
            fired
        };
        let mut timers_fired = 0;
        let fire_until = |until: i64,
                          core: &mut Core,
                          profiles: &mut HashMap<String, Profile>,
                          timers: &mut BTreeSet<(i64, String)>,
                          out: &mut Outputs| {
            while let Some((due, key)) = timers.first().cloned().filter(|(d, _)| *d <= until) {
                timers.remove(&(due, key.clone()));
                let p = profiles.get_mut(&key).expect("a timer's profile");
                core.advance(&key, p, due, out);
                if let Some(next) = p.next_timer {
                    timers.insert((next, key));
                }
            }
        };
        let total = recorded.len();
        let mut last = Instant::now();
        for (n, r) in recorded.into_iter().enumerate() {
            fire_until(r.time, &mut core, &mut profiles, &mut timers, &mut out);
            timers_fired += tally(&mut out);
            let p = profiles.entry(r.key.clone()).or_default();
            if let Some(t) = p.next_timer {
                timers.remove(&(t, r.key.clone()));
            }
            let source = Source {
                topic: "history",
                partition: r.partition,
                offset: r.offset,
            };
            core.process(&r.key, p, &r.event, source, r.time, &mut out);
            if let Some(t) = p.next_timer {
                timers.insert((t, r.key));
            }
            timers_fired += tally(&mut out);
            if last.elapsed() >= Duration::from_secs(2) {
                last = Instant::now();
                progress(&format!("{} of {total} events", n + 1));
            }
        }
        fire_until(range.1, &mut core, &mut profiles, &mut timers, &mut out);
        timers_fired += tally(&mut out);
        let segments = set
            .segments()
            .iter()
            .zip(counts)
            .map(|(seg, days)| SegmentHistory {
                id: seg.id.clone(),
                entered: days.values().map(|d| d.0).sum(),
                exited: days.values().map(|d| d.1).sum(),
                members: profiles
                    .values()
                    .filter(|p| p.segments.iter().any(|m| m.segment == seg.id))
                    .count() as u64,
                days: days
                    .into_iter()
                    .map(|(day, (entered, exited))| Day {
                        day: crate::replay::format_time(day * 86_400_000)[..10].to_owned(),
                        entered,
                        exited,
                    })
                    .collect(),
            })
            .collect();
        Report {
            from: range.0,
            to: range.1,
            messages: total as u64,
            events: total as u64,
            rejected: BTreeMap::new(),
            shoppers: profiles.len() as u64,
            timers_fired,
            timers_pending: timers.len() as u64,
            segments,
        }
    }

    /// The report as text: totals per segment, then a line per day.
    pub fn to_text(r: &Report) -> String {
        use std::fmt::Write;
        let f = crate::replay::format_time;
        let mut out = format!(
            "history {} .. {}: {} messages, {} events of {} shoppers, {} timers fired\n",
            f(r.from),
            f(r.to),
            r.messages,
            r.events,
            r.shoppers,
            r.timers_fired
        );
        if !r.rejected.is_empty() {
            let _ = writeln!(out, "left out (bad input): {:?}", r.rejected);
        }
        let _ = writeln!(
            out,
            "\n{:<28} {:>9} {:>9} {:>12}",
            "segment", "entered", "exited", "members end"
        );
        for s in &r.segments {
            let _ = writeln!(
                out,
                "{:<28} {:>9} {:>9} {:>12}",
                s.id, s.entered, s.exited, s.members
            );
        }
        for s in r.segments.iter().filter(|s| !s.days.is_empty()) {
            let _ = writeln!(out, "\n{} per day (entered / exited):", s.id);
            for d in &s.days {
                let _ = writeln!(out, "  {}  +{} -{}", d.day, d.entered, d.exited);
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn history_ranges_parse_or_say_what_is_expected() {
            let now = 1_767_225_600_000; // 2026-01-01
            assert_eq!(parse_range("30d", now), Ok((now - 30 * 86_400_000, now)));
            assert_eq!(
                parse_range("2025-12-01..2025-12-31", now),
                Ok((now - 31 * 86_400_000, now - 86_400_000))
            );
            assert_eq!(
                parse_range("2025-12-31..", now),
                Ok((now - 86_400_000, now))
            );
            assert!(parse_range("last month", now)
                .unwrap_err()
                .contains("expected"));
            assert!(parse_range("2026-01-02..2026-01-01", now)
                .unwrap_err()
                .contains("not after"));
        }
    }
}
