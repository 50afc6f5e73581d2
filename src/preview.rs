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

    fn keys(&self) -> Vec<String> {
        self.items.iter().map(|(_, k)| k.clone()).collect()
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
    /// `new`, `changed` or `unchanged` compared with the definitions in force.
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
    let (added, changed, _) = new.diff(in_force);
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
                } else {
                    "unchanged"
                },
                id: seg.id.clone(),
                members: t.members,
                sample: t.sample.keys(),
                would_enter: t.enter,
                enter_sample: t.enter_sample.keys(),
                would_exit: t.exit,
                exit_sample: t.exit_sample.keys(),
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
        assert_eq!(a.keys(), b.keys());
        assert_eq!(a.keys().len(), 5);
        let mut all: Vec<(u64, &String)> = keys
            .iter()
            .map(|k| (xxhash_rust::xxh3::xxh3_64(k.as_bytes()), k))
            .collect();
        all.sort();
        let want: Vec<String> = all[..5].iter().map(|(_, k)| (*k).clone()).collect();
        assert_eq!(a.keys(), want);
    }
}
