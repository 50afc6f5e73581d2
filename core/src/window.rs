//! Rolling windows with bounded memory: counts and sums in time buckets at three resolutions.
//!
//! | level | bucket | kept for | answers windows up to |
//! |-------|--------|----------|-----------------------|
//! | 0     | 5 min  | 2 h      | 2 h                   |
//! | 1     | 1 h    | 48 h     | 48 h                  |
//! | 2     | 1 day  | 91 days  | 90 days               |
//!
//! An event counts in "the last W" while its bucket overlaps the window `(now - W, now]`, so a
//! window reaches back at most one bucket further than W (5 min for 1 h, 1 h for 24 h, 1 day for
//! 7/30/90 days). Buckets are sparse: a series holds only buckets that saw an event, at most
//! 25 + 49 + 91 of them, whatever the event volume.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::layout::read::{self, Decode};
use crate::layout::write::{self, Encode};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// (bucket width, longest window answered) per level.
const LEVELS: [(i64, i64); 3] = [(5 * MINUTE, 2 * HOUR), (HOUR, 48 * HOUR), (DAY, 90 * DAY)];

/// The longest window a rule may ask for.
pub const MAX_WINDOW_MS: i64 = 90 * DAY;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    /// Bucket start divided by the level's width.
    start: u32,
    count: u32,
    /// Zero for most event types, a whole number of cents for most others: compact in the
    /// state since version 6.
    #[serde(with = "crate::layout::compact_f64")]
    sum: f64,
}

/// Counts and sums of one kind of event over time.
///
/// The three levels' buckets live in one vector, level after level, and the latest event times
/// inline: one allocation per series instead of four (a shopper's first event makes three to
/// five series, and a decoded profile allocates, and later frees, each of them). The state
/// encoding is the one of `{ levels: [Vec<Bucket>; 3], last, recent: Vec<i64> }`.
#[derive(Debug, Default, PartialEq)]
pub struct Series {
    /// Level 0's buckets, then level 1's, then level 2's; each level sorted by start.
    buckets: Vec<Bucket>,
    /// Where levels 0 and 1 end in `buckets` (level 2 ends at its end).
    ends: [u32; 2],
    /// Time of the latest event recorded (for "time since").
    last: Option<i64>,
    /// The latest [`RECENT`] event times, oldest first (for sequences): the first
    /// `recent_len` of `recent`.
    recent: [i64; RECENT],
    recent_len: u8,
}

/// Event times kept exactly per series, for sequences ("A, then no B within 1h").
pub const RECENT: usize = 4;

fn level_for(window: i64) -> usize {
    LEVELS
        .iter()
        .position(|(_, max)| window <= *max)
        .unwrap_or(LEVELS.len() - 1)
}

impl Clone for Series {
    fn clone(&self) -> Self {
        Series {
            buckets: self.buckets.clone(),
            ends: self.ends,
            last: self.last,
            recent: self.recent,
            recent_len: self.recent_len,
        }
    }

    /// Reuses the buckets' allocation (explanations copy the profile before each event).
    fn clone_from(&mut self, from: &Self) {
        self.buckets.clone_from(&from.buckets);
        self.ends = from.ends;
        self.last = from.last;
        self.recent = from.recent;
        self.recent_len = from.recent_len;
    }
}

impl crate::footprint::Footprint for Series {
    fn heap(&self, m: &mut crate::footprint::Meter) {
        let Series {
            buckets,
            ends: _,
            last: _,
            recent: _,
            recent_len: _,
        } = self;
        m.list(buckets);
    }
}

impl Series {
    /// Where `level`'s buckets are in `buckets`.
    fn range(&self, level: usize) -> std::ops::Range<usize> {
        let start = if level == 0 {
            0
        } else {
            self.ends[level - 1] as usize
        };
        let end = if level < 2 {
            self.ends[level] as usize
        } else {
            self.buckets.len()
        };
        start..end
    }

    fn level(&self, level: usize) -> &[Bucket] {
        &self.buckets[self.range(level)]
    }

    /// Moves the ends of `level` and of the levels after it by `by` buckets.
    fn shift_ends(&mut self, level: usize, by: isize) {
        for end in self.ends.iter_mut().skip(level) {
            *end = (*end as isize + by) as u32;
        }
    }

    /// The latest event times, oldest first.
    fn recent(&self) -> &[i64] {
        &self.recent[..self.recent_len as usize]
    }

    /// Records one event of `value` at `time` (ms), and forgets buckets that fell out of every
    /// window as seen from `now` (the latest time this profile has seen).
    pub fn add(&mut self, time: i64, value: f64, now: i64) {
        self.last = Some(self.last.map_or(time, |t| t.max(time)));
        let mut at = self.recent().partition_point(|&t| t <= time);
        let mut n = self.recent_len as usize;
        if at > 0 || n < RECENT {
            if n == RECENT {
                // Full: the oldest goes (the new time is not older than it).
                self.recent.copy_within(1..RECENT, 0);
                n -= 1;
                at -= 1;
            }
            self.recent.copy_within(at..n, at + 1);
            self.recent[at] = time;
            self.recent_len = (n + 1) as u8;
        }
        for (level, (width, max)) in LEVELS.iter().enumerate() {
            let range = self.range(level);
            let start = (time.max(0) / width) as u32;
            let buckets = &mut self.buckets[range.clone()];
            // Sorted by start; events mostly arrive in order, so search from the back.
            match buckets.iter().rposition(|b| b.start <= start) {
                Some(i) if buckets[i].start == start => {
                    buckets[i].count = buckets[i].count.saturating_add(1);
                    buckets[i].sum += value;
                }
                found => {
                    let at = range.start + found.map_or(0, |i| i + 1);
                    self.buckets.insert(
                        at,
                        Bucket {
                            start,
                            count: 1,
                            sum: value,
                        },
                    );
                    self.shift_ends(level, 1);
                }
            }
            let range = self.range(level);
            let horizon = now.max(time) - max;
            let keep_from = self.buckets[range.clone()]
                .partition_point(|b| (b.start as i64 + 1) * width <= horizon);
            if keep_from > 0 {
                self.buckets.drain(range.start..range.start + keep_from);
                self.shift_ends(level, -(keep_from as isize));
            }
        }
    }

    /// (count, sum) of the events in the last `window` ms before `now`.
    pub fn query(&self, window: i64, now: i64) -> (u64, f64) {
        let level = level_for(window);
        let width = LEVELS[level].0;
        let from = now - window;
        let mut count = 0u64;
        let mut sum = 0.0;
        for b in self.level(level).iter().rev() {
            let start = b.start as i64 * width;
            if start > now {
                continue;
            }
            if start + width <= from {
                break;
            }
            count += b.count as u64;
            sum += b.sum;
        }
        (count, sum)
    }

    /// Time of the latest event recorded, ms.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// The first event after `t`, exactly when it is among the latest [`RECENT`]; otherwise the
    /// oldest of those (an upper bound: an earlier one was forgotten).
    pub fn first_after(&self, t: i64) -> Option<i64> {
        self.recent().iter().copied().find(|&r| r > t)
    }

    /// How `query(window, t)` falls as `t` passes `now` with no new events: for each bucket
    /// counted at `now`, oldest first, the first time it is no longer counted, and its count and
    /// sum. Timers use it to find when a windowed condition flips.
    pub fn expiries(&self, window: i64, now: i64) -> impl Iterator<Item = (i64, u64, f64)> + '_ {
        let level = level_for(window);
        let width = LEVELS[level].0;
        self.level(level).iter().filter_map(move |b| {
            let start = b.start as i64 * width;
            let gone = start + width + window;
            (start <= now && gone > now).then_some((gone, b.count as u64, b.sum))
        })
    }

    /// Adds another series' events to this one (two profiles of one shopper becoming one),
    /// then forgets what fell out of every window as seen from `now`.
    pub fn merge(&mut self, other: &Series, now: i64) {
        self.last = self.last.max(other.last);
        let mut recent: Vec<i64> = self
            .recent()
            .iter()
            .chain(other.recent())
            .copied()
            .collect();
        recent.sort_unstable();
        let keep = &recent[recent.len().saturating_sub(RECENT)..];
        self.recent[..keep.len()].copy_from_slice(keep);
        self.recent_len = keep.len() as u8;
        let mut merged: Vec<Bucket> = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let mut ends = [0u32; 2];
        for (level, (width, max)) in LEVELS.iter().enumerate() {
            let (mine, theirs) = (self.level(level), other.level(level));
            let from = merged.len();
            let (mut i, mut j) = (0, 0);
            while i < mine.len() || j < theirs.len() {
                let take_mine =
                    j >= theirs.len() || (i < mine.len() && mine[i].start <= theirs[j].start);
                let b = if take_mine {
                    i += 1;
                    mine[i - 1]
                } else {
                    j += 1;
                    theirs[j - 1]
                };
                match merged[from..].last_mut() {
                    Some(last) if last.start == b.start => {
                        last.count = last.count.saturating_add(b.count);
                        last.sum += b.sum;
                    }
                    _ => merged.push(b),
                }
            }
            let horizon = now - max;
            let keep_from =
                merged[from..].partition_point(|b| (b.start as i64 + 1) * width <= horizon);
            merged.drain(from..from + keep_from);
            if level < 2 {
                ends[level] = merged.len() as u32;
            }
        }
        self.buckets = merged;
        self.ends = ends;
    }

    /// Takes back one event of `value` at `time` (an order both merged profiles had counted).
    /// The latest-times list is left as it is.
    pub fn remove(&mut self, time: i64, value: f64) {
        for (level, (width, _)) in LEVELS.iter().enumerate() {
            let start = (time.max(0) / width) as u32;
            let range = self.range(level);
            if let Some(i) = self.buckets[range.clone()]
                .iter()
                .position(|b| b.start == start)
            {
                let b = &mut self.buckets[range.start + i];
                b.count = b.count.saturating_sub(1);
                b.sum -= value;
                if b.count == 0 {
                    self.buckets.remove(range.start + i);
                    self.shift_ends(level, -1);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Buckets held, for bounds checks and state-size metrics.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }
}

/// The state encoding of a [`Series`], written: the layout of the struct it once was.
#[derive(Serialize)]
#[serde(rename = "Series")]
struct SeriesOut<'a> {
    levels: (&'a [Bucket], &'a [Bucket], &'a [Bucket]),
    last: Option<i64>,
    recent: &'a [i64],
}

impl Serialize for Series {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SeriesOut {
            levels: (self.level(0), self.level(1), self.level(2)),
            last: self.last,
            recent: self.recent(),
        }
        .serialize(s)
    }
}

/// [`SeriesOut`]'s bytes, written by hand (`layout/write.rs`).
impl Encode for Series {
    fn encode(&self, out: &mut Vec<u8>) {
        for level in 0..3 {
            self.level(level).encode(out);
        }
        self.last.encode(out);
        self.recent().encode(out);
    }
}

/// As [`SeriesVisitor`] reads it: the three levels into one vector, the latest times kept.
impl Decode for Series {
    fn decode(r: &mut read::Reader<'_>) -> Result<Series, read::Bad> {
        let mut s = Series::default();
        for level in 0..3 {
            // Room for a few buckets of the levels after too (most series have one to four in
            // all): one allocation.
            let n = r.len()?;
            s.buckets
                .reserve(if level == 0 { n + 3 } else { n }.min(read::PREALLOCATED));
            for _ in 0..n {
                s.buckets.push(Bucket::decode(r)?);
            }
            if level < 2 {
                s.ends[level] = s.buckets.len() as u32;
            }
        }
        s.last = Decode::decode(r)?;
        for _ in 0..r.len()? {
            s.push_recent(i64::decode(r)?);
        }
        Ok(s)
    }
}

impl Decode for Bucket {
    #[inline]
    fn decode(r: &mut read::Reader<'_>) -> Result<Bucket, read::Bad> {
        Ok(Bucket {
            start: u32::decode(r)?,
            count: u32::decode(r)?,
            sum: read::compact_f64(r)?,
        })
    }
}

impl Encode for Bucket {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        let Bucket { start, count, sum } = self;
        start.encode(out);
        count.encode(out);
        write::compact_f64(out, *sum);
    }
}

/// Reads the three levels' sequences into one vector (no vector per level).
struct LevelsSeed<'a> {
    buckets: &'a mut Vec<Bucket>,
    ends: &'a mut [u32; 2],
}

impl<'de> serde::de::DeserializeSeed<'de> for LevelsSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_tuple(3, self)
    }
}

impl<'de> serde::de::Visitor<'de> for LevelsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("three sequences of buckets")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for level in 0..3 {
            let buckets = &mut *self.buckets;
            seq.next_element_seed(Each(|b| buckets.push(b), PhantomData))?
                .ok_or_else(|| serde::de::Error::invalid_length(level, &"three levels"))?;
            if level < 2 {
                self.ends[level] = self.buckets.len() as u32;
            }
        }
        Ok(())
    }
}

/// Reads a sequence, handing each element to the closure (into storage of the caller's: no
/// vector of its own).
struct Each<T, F>(F, PhantomData<T>);

impl<'de, T: Deserialize<'de>, F: FnMut(T)> serde::de::DeserializeSeed<'de> for Each<T, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> serde::de::Visitor<'de> for Each<T, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(x) = seq.next_element()? {
            (self.0)(x);
        }
        Ok(())
    }
}

impl Series {
    /// Appends `t` to the latest times, oldest first; when full, the oldest goes (reading
    /// state: of more than [`RECENT`] times, not written by any version, the latest are kept).
    fn push_recent(&mut self, t: i64) {
        if self.recent_len as usize == RECENT {
            self.recent.copy_within(1..RECENT, 0);
            self.recent_len -= 1;
        }
        self.recent[self.recent_len as usize] = t;
        self.recent_len += 1;
    }
}

struct SeriesVisitor;

impl<'de> serde::de::Visitor<'de> for SeriesVisitor {
    type Value = Series;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a series (levels, last, recent)")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Series, A::Error> {
        use serde::de::Error;
        let mut s = Series::default();
        seq.next_element_seed(LevelsSeed {
            buckets: &mut s.buckets,
            ends: &mut s.ends,
        })?
        .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        s.last = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
        seq.next_element_seed(Each(|t| s.push_recent(t), PhantomData))?
            .ok_or_else(|| A::Error::invalid_length(2, &self))?;
        Ok(s)
    }
}

impl<'de> Deserialize<'de> for Series {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Series, D::Error> {
        d.deserialize_struct("Series", &["levels", "last", "recent"], SeriesVisitor)
    }
}

/// Daily counts, for the many small series kept per category and per product: one sparse vector
/// of at most 91 days. A window counts the days that overlap it, so "the last 7d" reaches back up
/// to one day further.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DailyCounts {
    /// (day since the epoch, count), oldest first. One day inline: most series of a category
    /// or product saw it on one day, and then allocate nothing.
    days: SmallVec<[(u32, u32); 1]>,
    last: Option<i64>,
}

impl Clone for DailyCounts {
    fn clone(&self) -> Self {
        DailyCounts {
            days: self.days.clone(),
            last: self.last,
        }
    }

    fn clone_from(&mut self, from: &Self) {
        self.days.clone_from(&from.days);
        self.last = from.last;
    }
}

impl Encode for DailyCounts {
    fn encode(&self, out: &mut Vec<u8>) {
        let DailyCounts { days, last } = self;
        days.as_slice().encode(out);
        last.encode(out);
    }
}

impl Decode for DailyCounts {
    fn decode(r: &mut read::Reader<'_>) -> Result<DailyCounts, read::Bad> {
        let n = r.len()?;
        let mut days = SmallVec::with_capacity(n.min(read::PREALLOCATED));
        for _ in 0..n {
            days.push(<(u32, u32)>::decode(r)?);
        }
        Ok(DailyCounts {
            days,
            last: Decode::decode(r)?,
        })
    }
}

impl crate::footprint::Footprint for DailyCounts {
    fn heap(&self, m: &mut crate::footprint::Meter) {
        let DailyCounts { days, last: _ } = self;
        m.small(days);
    }
}

impl DailyCounts {
    pub fn add(&mut self, time: i64, now: i64) {
        self.last = Some(self.last.map_or(time, |t| t.max(time)));
        let day = (time.max(0) / DAY) as u32;
        match self.days.iter().rposition(|(d, _)| *d <= day) {
            Some(i) if self.days[i].0 == day => self.days[i].1 = self.days[i].1.saturating_add(1),
            Some(i) => self.days.insert(i + 1, (day, 1)),
            None => self.days.insert(0, (day, 1)),
        }
        let horizon = now.max(time) - MAX_WINDOW_MS;
        let keep_from = self
            .days
            .partition_point(|(d, _)| (*d as i64 + 1) * DAY <= horizon);
        if keep_from > 0 {
            self.days.drain(..keep_from);
        }
    }

    pub fn query(&self, window: i64, now: i64) -> u64 {
        let from = now - window;
        self.days
            .iter()
            .rev()
            .filter(|(d, _)| *d as i64 * DAY <= now)
            .take_while(|(d, _)| (*d as i64 + 1) * DAY > from)
            .map(|(_, n)| *n as u64)
            .sum()
    }

    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// Adds another shopper profile's daily counts to these.
    pub fn merge(&mut self, other: &DailyCounts, now: i64) {
        self.last = self.last.max(other.last);
        for &(day, n) in &other.days {
            match self.days.binary_search_by_key(&day, |(d, _)| *d) {
                Ok(i) => self.days[i].1 = self.days[i].1.saturating_add(n),
                Err(i) => self.days.insert(i, (day, n)),
            }
        }
        let horizon = now - MAX_WINDOW_MS;
        let keep_from = self
            .days
            .partition_point(|(d, _)| (*d as i64 + 1) * DAY <= horizon);
        self.days.drain(..keep_from);
    }

    /// As [`Series::expiries`]: when each counted day leaves the window, and its count.
    pub fn expiries(&self, window: i64, now: i64) -> impl Iterator<Item = (i64, u64, f64)> + '_ {
        self.days.iter().filter_map(move |(d, n)| {
            let start = *d as i64 * DAY;
            let gone = start + DAY + window;
            (start <= now && gone > now).then_some((gone, *n as u64, 0.0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn counts_fall_out_of_short_windows_but_stay_in_long_ones() {
        let mut s = Series::default();
        s.add(T0, 10.0, T0);
        s.add(T0 + 10 * MINUTE, 5.0, T0 + 10 * MINUTE);
        let now = T0 + 10 * MINUTE;
        assert_eq!(s.query(HOUR, now), (2, 15.0));
        let later = T0 + 3 * HOUR;
        assert_eq!(s.query(HOUR, later), (0, 0.0));
        assert_eq!(s.query(24 * HOUR, later), (2, 15.0));
        let much_later = T0 + 10 * DAY;
        assert_eq!(s.query(24 * HOUR, much_later), (0, 0.0));
        assert_eq!(s.query(30 * DAY, much_later), (2, 15.0));
        assert_eq!(s.query(90 * DAY, T0 + 95 * DAY), (0, 0.0));
        assert_eq!(s.last(), Some(T0 + 10 * MINUTE));
    }

    #[test]
    fn expiries_say_exactly_when_the_query_falls() {
        let mut s = Series::default();
        for (i, t) in [T0, T0 + 7 * MINUTE, T0 + 40 * MINUTE]
            .into_iter()
            .enumerate()
        {
            s.add(t, i as f64 + 1.0, t);
        }
        let now = T0 + 41 * MINUTE;
        let steps: Vec<_> = s.expiries(HOUR, now).collect();
        assert_eq!(steps.len(), 3);
        let mut expected = s.query(HOUR, now);
        for (gone, n, sum) in steps {
            assert_eq!(
                s.query(HOUR, gone - 1),
                expected,
                "still counted just before"
            );
            expected = (expected.0 - n, expected.1 - sum);
            assert_eq!(s.query(HOUR, gone), expected, "gone at {gone}");
        }
        assert_eq!(expected.0, 0);
        let mut d = DailyCounts::default();
        d.add(T0, T0);
        let (gone, n, _) = d.expiries(7 * DAY, T0).next().unwrap();
        assert_eq!(
            (d.query(7 * DAY, gone - 1), d.query(7 * DAY, gone), n),
            (1, 0, 1)
        );
    }

    #[test]
    fn out_of_order_events_land_in_their_own_bucket() {
        let mut s = Series::default();
        s.add(T0 + 2 * DAY, 1.0, T0 + 2 * DAY);
        s.add(T0, 1.0, T0 + 2 * DAY);
        assert_eq!(s.query(7 * DAY, T0 + 2 * DAY), (2, 2.0));
        assert_eq!(s.query(24 * HOUR, T0 + 2 * DAY), (1, 1.0));
    }

    #[test]
    fn daily_counts_answer_day_windows_and_stay_bounded() {
        let mut d = DailyCounts::default();
        for i in 0..400i64 {
            d.add(T0 + i * DAY / 2, T0 + i * DAY / 2);
        }
        assert!(d.days.len() <= 91, "{}", d.days.len());
        let now = T0 + 399 * DAY / 2;
        let week = d.query(7 * DAY, now);
        assert!((14..=16).contains(&week), "{week}");
        assert_eq!(d.query(90 * DAY, now + 200 * DAY), 0);
        assert_eq!(d.last(), Some(now));
    }

    #[test]
    fn merged_series_answer_as_if_one_had_seen_all_events() {
        let t0 = 1_700_000_000_000;
        let times_a = [t0, t0 + 7 * MINUTE, t0 + 3 * HOUR, t0 + 2 * DAY];
        let times_b = [t0 + MINUTE, t0 + 90 * MINUTE, t0 + 3 * HOUR, t0 + 50 * DAY];
        let now = t0 + 50 * DAY;
        let (mut a, mut b, mut all) = (Series::default(), Series::default(), Series::default());
        for t in times_a {
            a.add(t, 1.0, t);
            all.add(t, 1.0, t);
        }
        for t in times_b {
            b.add(t, 2.0, t);
            all.add(t, 2.0, now);
        }
        a.merge(&b, now);
        for w in [HOUR, 2 * HOUR, DAY, 7 * DAY, 90 * DAY] {
            assert_eq!(a.query(w, now), all.query(w, now), "window {w}");
        }
        assert_eq!(a.query(90 * DAY, now), (8, 12.0));
        assert_eq!(a.last(), Some(now));
        assert_eq!(a.first_after(t0 + 2 * HOUR), Some(t0 + 3 * HOUR));
        a.remove(t0 + 50 * DAY, 2.0);
        assert_eq!(a.query(DAY, now), (0, 0.0));
        assert_eq!(a.query(90 * DAY, now), (7, 10.0));

        let (mut d, mut e) = (DailyCounts::default(), DailyCounts::default());
        d.add(t0, t0);
        e.add(t0 + HOUR, t0 + HOUR);
        e.add(t0 + 3 * DAY, t0 + 3 * DAY);
        d.merge(&e, t0 + 3 * DAY);
        assert_eq!(d.query(7 * DAY, t0 + 3 * DAY), 3);
        assert_eq!(d.last(), Some(t0 + 3 * DAY));
    }

    /// The layout `Series` had before its levels shared one vector, as each state version
    /// from 3 to 5 wrote it (version 6 kept it, its buckets' sums compact).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct WrittenSeries {
        levels: [Vec<Bucket>; 3],
        last: Option<i64>,
        recent: Vec<i64>,
    }

    fn written(s: &Series) -> WrittenSeries {
        WrittenSeries {
            levels: [0, 1, 2].map(|l| s.level(l).to_vec()),
            last: s.last(),
            recent: s.recent().to_vec(),
        }
    }

    #[test]
    fn the_state_encoding_is_the_one_earlier_versions_wrote_and_read() {
        let mut s = Series::default();
        for i in 0..300i64 {
            // Every level holds buckets, some dropped; times out of order now and then.
            let t = T0 + i * 37 * MINUTE - (i % 7) * 3 * HOUR;
            s.add(t, i as f64, T0 + i * 37 * MINUTE);
        }
        s.add(T0 + 300 * 37 * MINUTE, 1.0, T0 + 300 * 37 * MINUTE);
        {
            // Version 6: the same layout, the buckets' sums compact (version 5 below).
            let _v6 = crate::layout::Reading::version(crate::layout::COMPACT_SINCE);
            let bytes = postcard::to_stdvec(&s).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&written(&s)).unwrap());
            assert_eq!(postcard::from_bytes::<Series>(&bytes).unwrap(), s);
        }
        // Version 5's buckets: the sum as its eight bytes, as the derive wrote them.
        #[derive(Serialize)]
        struct Bucket5 {
            start: u32,
            count: u32,
            sum: f64,
        }
        let plain = |l: &[Bucket]| -> Vec<Bucket5> {
            l.iter()
                .map(|b| Bucket5 {
                    start: b.start,
                    count: b.count,
                    sum: b.sum,
                })
                .collect()
        };
        let v5 = postcard::to_stdvec(&(
            [0, 1, 2].map(|l| plain(s.level(l))),
            s.last(),
            s.recent().to_vec(),
        ))
        .unwrap();
        let _v5 = crate::layout::Reading::version(5);
        let old = written(&s);
        assert!(old.levels.iter().all(|l| !l.is_empty()), "{old:?}");
        assert_eq!(old.recent.len(), RECENT);
        let bytes = postcard::to_stdvec(&s).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&old).unwrap());
        assert_eq!(bytes, v5);
        let back: Series = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        for w in [HOUR, DAY, 30 * DAY] {
            assert_eq!(
                back.query(w, T0 + 300 * 37 * MINUTE),
                s.query(w, T0 + 300 * 37 * MINUTE)
            );
        }
        // An empty series and one with fewer times than RECENT.
        for s in [Series::default(), {
            let mut s = Series::default();
            s.add(T0, 2.5, T0);
            s
        }] {
            let bytes = postcard::to_stdvec(&written(&s)).unwrap();
            assert_eq!(postcard::from_bytes::<Series>(&bytes).unwrap(), s);
        }
        // Cut short: an error, not a panic.
        assert!(postcard::from_bytes::<Series>(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn daily_counts_encode_as_the_list_they_were() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Written {
            days: Vec<(u32, u32)>,
            last: Option<i64>,
        }
        for n in [0i64, 1, 5] {
            let mut d = DailyCounts::default();
            for i in 0..n {
                d.add(T0 + i * DAY, T0 + i * DAY);
            }
            let old = Written {
                days: d.days.to_vec(),
                last: d.last,
            };
            let bytes = postcard::to_stdvec(&d).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&old).unwrap());
            assert_eq!(postcard::from_bytes::<DailyCounts>(&bytes).unwrap(), d);
        }
    }

    #[test]
    fn the_latest_times_stay_the_latest_four_in_order() {
        let mut s = Series::default();
        let mut all = Vec::new();
        for i in [5i64, 1, 9, 3, 7, 2, 11, 10, 0, 12] {
            let t = T0 + i * MINUTE;
            s.add(t, 1.0, T0 + 12 * MINUTE);
            all.push(t);
            all.sort_unstable();
            // An event older than all the four kept is not kept (it was never among them).
            let kept = s.recent().to_vec();
            assert!(kept.windows(2).all(|w| w[0] <= w[1]), "{kept:?}");
            assert!(kept.len() <= RECENT);
            assert_eq!(kept.last(), all.last());
        }
        assert_eq!(s.recent(), &[9, 10, 11, 12].map(|i| T0 + i * MINUTE)[..]);
        assert_eq!(s.first_after(T0 + 9 * MINUTE), Some(T0 + 10 * MINUTE));
    }

    #[test]
    fn memory_stays_bounded_whatever_the_volume() {
        let mut s = Series::default();
        for i in 0..200_000i64 {
            let t = T0 + i * 2 * MINUTE;
            s.add(t, 1.0, t);
        }
        assert!(
            s.bucket_count() <= 25 + 49 + 91,
            "{} buckets",
            s.bucket_count()
        );
        let now = T0 + 199_999 * 2 * MINUTE;
        // An hour of 2-minute events is 30; the window may reach one 5-minute bucket further back.
        let (n, _) = s.query(HOUR, now);
        assert!((30..=33).contains(&n), "{n}");
    }
}
