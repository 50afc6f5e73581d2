//! The stream clock of one partition: the time rules and timers run on.
//!
//! Policy:
//! - The clock is the largest event time seen on the partition minus the allowed lateness, so
//!   an event that arrives up to that much out of order is still in time for its timers.
//! - When the partition is caught up (nothing left to read), the clock also follows the wall
//!   clock, minus the same allowed lateness: a cart abandoned at 10:00 enters "cart abandoners"
//!   at 11:00 (and the lateness) even if no other event arrives, and a live event sent on time
//!   is never late. While catching up (a replay of history at full speed) only event time moves
//!   it, so the same timers fire at the same stream times.
//! - The clock never goes back and never runs ahead of the wall clock minus the lateness: an
//!   event stamped a few hours in the future is applied but does not pull every timer of its
//!   partition forward.
//!   Events more than a day ahead, or before 2000, are dead-lettered (`bad_time`).
//! - A late event (older than the clock) is applied and evaluated at the clock's time, and
//!   counted in `tailor_late_events_total`; changes already made by timers stand.
//!
//! Pure: the wall clock and the caught-up state are passed in, so tests inject them.

/// One partition's stream clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamClock {
    now: Option<i64>,
    lateness: i64,
}

impl StreamClock {
    /// A clock resumed from its stored value (or new), allowing `lateness` ms of disorder.
    pub fn new(stored: Option<i64>, lateness: i64) -> StreamClock {
        StreamClock {
            now: stored,
            lateness,
        }
    }

    /// The clock's time, once anything moved it.
    pub fn now(&self) -> Option<i64> {
        self.now
    }

    fn raise(&mut self, t: i64) {
        self.now = Some(self.now.map_or(t, |n| n.max(t)));
    }

    /// An event at `time` arrived at wall time `wall`; returns whether it was late.
    pub fn observe(&mut self, time: i64, wall: i64) -> bool {
        let late = self.now.is_some_and(|n| time < n);
        let limit = wall.saturating_sub(self.lateness);
        self.raise(time.saturating_sub(self.lateness).min(limit));
        late
    }

    /// Follows the wall clock (minus the allowed lateness) while the partition is caught up.
    pub fn tick(&mut self, wall: i64, caught_up: bool) {
        if caught_up {
            self.raise(wall.saturating_sub(self.lateness));
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days-from-civil).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: i64 = 1_800_000_000_000;

    #[test]
    fn event_time_drives_the_clock_while_catching_up() {
        let mut c = StreamClock::new(None, 5_000);
        assert_eq!(c.now(), None);
        assert!(!c.observe(1_000_000, WALL));
        assert_eq!(c.now(), Some(995_000));
        c.tick(WALL, false);
        assert_eq!(
            c.now(),
            Some(995_000),
            "lagging: the wall clock does not count"
        );
        // Within the allowed lateness: not late, and the clock does not go back.
        assert!(!c.observe(997_000, WALL));
        assert_eq!(c.now(), Some(995_000));
        assert!(c.observe(990_000, WALL), "older than the clock: late");
        assert_eq!(c.now(), Some(995_000));
    }

    /// Regression: live events stamped at send time were counted late while the clock followed
    /// the wall clock (the allowed lateness was not applied to it).
    #[test]
    fn caught_up_a_live_event_sent_on_time_is_not_late() {
        let mut c = StreamClock::new(Some(1_000), 5_000);
        c.tick(WALL, true);
        assert_eq!(c.now(), Some(WALL - 5_000));
        // Stamped when sent, a few hundred ms before it is read: within the lateness.
        assert!(!c.observe(WALL - 300, WALL + 50));
        assert!(!c.observe(WALL - 4_900, WALL + 60));
        // Older than the lateness: late.
        assert!(c.observe(WALL - 6_000, WALL + 70));
    }

    #[test]
    fn caught_up_the_clock_follows_the_wall_and_never_passes_it() {
        let mut c = StreamClock::new(Some(1_000), 0);
        c.tick(WALL, true);
        assert_eq!(c.now(), Some(WALL));
        c.observe(WALL + 3_600_000, WALL + 10);
        assert_eq!(
            c.now(),
            Some(WALL + 10),
            "a future event stops at the wall clock"
        );
        c.tick(WALL - 50_000, true);
        assert_eq!(c.now(), Some(WALL + 10), "never back");
        assert_eq!(
            StreamClock::new(Some(42), 0).now(),
            Some(42),
            "resumes where it was"
        );
    }
}
