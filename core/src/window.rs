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

use serde::{Deserialize, Serialize};

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
    sum: f64,
}

/// Counts and sums of one kind of event over time.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    levels: [Vec<Bucket>; 3],
    /// Time of the latest event recorded (for "time since").
    last: Option<i64>,
    /// The latest [`RECENT`] event times, oldest first (for sequences).
    recent: Vec<i64>,
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
            levels: self.levels.clone(),
            last: self.last,
            recent: self.recent.clone(),
        }
    }

    /// Reuses the buckets' allocations (explanations copy the profile before each event).
    fn clone_from(&mut self, from: &Self) {
        for (to, from) in self.levels.iter_mut().zip(&from.levels) {
            to.clone_from(from);
        }
        self.last = from.last;
        self.recent.clone_from(&from.recent);
    }
}

impl Series {
    /// Records one event of `value` at `time` (ms), and forgets buckets that fell out of every
    /// window as seen from `now` (the latest time this profile has seen).
    pub fn add(&mut self, time: i64, value: f64, now: i64) {
        self.last = Some(self.last.map_or(time, |t| t.max(time)));
        let at = self.recent.partition_point(|&t| t <= time);
        if at > 0 || self.recent.len() < RECENT {
            self.recent.insert(at, time);
            if self.recent.len() > RECENT {
                self.recent.remove(0);
            }
        }
        for (level, (width, max)) in LEVELS.iter().enumerate() {
            let buckets = &mut self.levels[level];
            let start = (time.max(0) / width) as u32;
            // Sorted by start; events mostly arrive in order, so search from the back.
            match buckets.iter().rposition(|b| b.start <= start) {
                Some(i) if buckets[i].start == start => {
                    buckets[i].count = buckets[i].count.saturating_add(1);
                    buckets[i].sum += value;
                }
                Some(i) => buckets.insert(
                    i + 1,
                    Bucket {
                        start,
                        count: 1,
                        sum: value,
                    },
                ),
                None => buckets.insert(
                    0,
                    Bucket {
                        start,
                        count: 1,
                        sum: value,
                    },
                ),
            }
            let horizon = now.max(time) - max;
            let keep_from = buckets.partition_point(|b| (b.start as i64 + 1) * width <= horizon);
            if keep_from > 0 {
                buckets.drain(..keep_from);
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
        for b in self.levels[level].iter().rev() {
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
        self.recent.iter().copied().find(|&r| r > t)
    }

    /// How `query(window, t)` falls as `t` passes `now` with no new events: for each bucket
    /// counted at `now`, oldest first, the first time it is no longer counted, and its count and
    /// sum. Timers use it to find when a windowed condition flips.
    pub fn expiries(&self, window: i64, now: i64) -> impl Iterator<Item = (i64, u64, f64)> + '_ {
        let level = level_for(window);
        let width = LEVELS[level].0;
        self.levels[level].iter().filter_map(move |b| {
            let start = b.start as i64 * width;
            let gone = start + width + window;
            (start <= now && gone > now).then_some((gone, b.count as u64, b.sum))
        })
    }

    /// Adds another series' events to this one (two profiles of one shopper becoming one),
    /// then forgets what fell out of every window as seen from `now`.
    pub fn merge(&mut self, other: &Series, now: i64) {
        self.last = self.last.max(other.last);
        let mut recent: Vec<i64> = self.recent.iter().chain(&other.recent).copied().collect();
        recent.sort_unstable();
        let drop = recent.len().saturating_sub(RECENT);
        recent.drain(..drop);
        self.recent = recent;
        for (level, (width, max)) in LEVELS.iter().enumerate() {
            let mine = std::mem::take(&mut self.levels[level]);
            let theirs = &other.levels[level];
            let mut merged: Vec<Bucket> = Vec::with_capacity(mine.len() + theirs.len());
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
                match merged.last_mut() {
                    Some(last) if last.start == b.start => {
                        last.count = last.count.saturating_add(b.count);
                        last.sum += b.sum;
                    }
                    _ => merged.push(b),
                }
            }
            let horizon = now - max;
            let keep_from = merged.partition_point(|b| (b.start as i64 + 1) * width <= horizon);
            merged.drain(..keep_from);
            self.levels[level] = merged;
        }
    }

    /// Takes back one event of `value` at `time` (an order both merged profiles had counted).
    /// The latest-times list is left as it is.
    pub fn remove(&mut self, time: i64, value: f64) {
        for (level, (width, _)) in LEVELS.iter().enumerate() {
            let start = (time.max(0) / width) as u32;
            let buckets = &mut self.levels[level];
            if let Some(i) = buckets.iter().position(|b| b.start == start) {
                buckets[i].count = buckets[i].count.saturating_sub(1);
                buckets[i].sum -= value;
                if buckets[i].count == 0 {
                    buckets.remove(i);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(Vec::is_empty)
    }

    /// Buckets held, for bounds checks and state-size metrics.
    pub fn bucket_count(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }
}

/// Daily counts, for the many small series kept per category and per product: one sparse vector
/// of at most 91 days. A window counts the days that overlap it, so "the last 7d" reaches back up
/// to one day further.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DailyCounts {
    /// (day since the epoch, count), oldest first.
    days: Vec<(u32, u32)>,
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
