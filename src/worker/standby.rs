//! Standby state (`state.standby`): a worker follows the changelog of the partitions it does
//! not hold, so that taking one over (a worker lost, a rebalance) is a catch-up of what was
//! written since the last pass instead of a whole restore.
//!
//! One follower thread per worker passes over every partition number not held by any of its
//! processing threads, every [`PASS_EVERY`], bringing the local copy level with the changelog's
//! last marker ([`changelog::Restorer::follow`]: whole batches only; a follower never writes to
//! the changelog). [`Partitions`] keeps a follow and a restore of one partition apart: a
//! partition assigned here is claimed first (a follow of it stops at its next record), and each
//! restore or follow holds the partition while it writes its state.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::store::Store;

use super::changelog::{self, Restorer};

/// Time between two passes of the follower over the partitions not held here.
pub const PASS_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Claims {
    /// Partition numbers assigned to a processing thread here (restoring or open).
    held: BTreeSet<i32>,
    /// Partition numbers whose state a restore or a follow is writing.
    busy: BTreeSet<i32>,
    /// The partition being followed, and its stop flag.
    following: Option<(i32, Arc<AtomicBool>)>,
}

/// Which partitions this worker holds, and which are being written by a restore or a follow.
#[derive(Default)]
pub struct Partitions {
    claims: Mutex<Claims>,
    freed: Condvar,
}

/// A partition's state being written by one restore or follow; freed on drop.
pub struct Busy<'a> {
    partitions: &'a Partitions,
    p: i32,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut c = self.partitions.lock();
        c.busy.remove(&self.p);
        if c.following.as_ref().is_some_and(|(q, _)| *q == self.p) {
            c.following = None;
        }
        self.partitions.freed.notify_all();
    }
}

impl Partitions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Partition `p` is assigned to a thread here: no follow of it starts, and one under way
    /// stops at its next record.
    pub fn claim(&self, p: i32) {
        let mut c = self.lock();
        c.held.insert(p);
        if let Some((q, stop)) = &c.following {
            if *q == p {
                stop.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Partition `p` is no longer held here (revoked): the follower may take it.
    pub fn release(&self, p: i32) {
        self.lock().held.remove(&p);
    }

    /// Waits until no restore or follow writes `p`, then holds it (blocking: on a blocking
    /// thread).
    pub fn hold(&self, p: i32) -> Busy<'_> {
        let mut c = self.lock();
        while c.busy.contains(&p) {
            c = self.freed.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        c.busy.insert(p);
        Busy {
            partitions: self,
            p,
        }
    }

    /// Holds `p` for a follow, unless it is held here or being written.
    fn follow(&self, p: i32) -> Option<(Busy<'_>, Arc<AtomicBool>)> {
        let mut c = self.lock();
        if c.held.contains(&p) || c.busy.contains(&p) {
            return None;
        }
        c.busy.insert(p);
        let stop = Arc::new(AtomicBool::new(false));
        c.following = Some((p, stop.clone()));
        Some((
            Busy {
                partitions: self,
                p,
            },
            stop,
        ))
    }

    /// Stops the follow under way, if any.
    pub fn stop_following(&self) {
        if let Some((_, stop)) = &self.lock().following {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The follower: passes over the partitions not held here until `stop` (blocking: run it on a
/// thread of its own; set `stop`, then [`Partitions::stop_following`], to end it).
pub fn follow(
    restorer: &Restorer,
    store: &Store,
    claims: &Partitions,
    partitions: i32,
    stop: &AtomicBool,
) {
    info!(
        partitions,
        "standby: following the changelog of the partitions not held here"
    );
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        for p in 0..partitions {
            if stop.load(Ordering::Relaxed) {
                claims.stop_following();
                break;
            }
            let Some((_busy, flag)) = claims.follow(p) else {
                continue;
            };
            // Stopped by a claim of the partition, or by the worker stopping.
            match restorer.follow(store, p, &flag) {
                Ok(()) => failing = false,
                Err(e) if e.ends_with(changelog::CANCELLED) => {
                    debug!(partition = p, "standby: follow stopped (assigned here)")
                }
                Err(e) => {
                    // Logged once per run of failures (the broker down: every pass fails).
                    if !failing {
                        warn!(partition = p, error = %e, "standby: following the changelog failed; trying again at the next pass");
                    }
                    failing = true;
                }
            }
        }
        let mut waited = Duration::ZERO;
        while waited < PASS_EVERY && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            waited += Duration::from_millis(100);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_stops_a_follow_and_a_held_partition_is_not_followed() {
        let parts = Partitions::default();
        let (busy, stop) = parts.follow(3).expect("free");
        assert!(parts.follow(3).is_none(), "one writer at a time");
        parts.claim(3);
        assert!(stop.load(Ordering::Relaxed), "the follow is told to stop");
        drop(busy);
        assert!(parts.follow(3).is_none(), "held here: not followed");
        let restore = parts.hold(3);
        drop(restore);
        parts.release(3);
        assert!(parts.follow(3).is_some(), "released: followed again");
    }

    #[test]
    fn a_restore_waits_for_the_follow_of_its_partition() {
        let parts = Arc::new(Partitions::default());
        let (busy, _stop) = parts.follow(1).expect("free");
        let p2 = parts.clone();
        let waiter = std::thread::spawn(move || {
            p2.claim(1);
            let _held = p2.hold(1);
            std::time::Instant::now()
        });
        std::thread::sleep(Duration::from_millis(200));
        let released = std::time::Instant::now();
        drop(busy);
        let got = waiter.join().unwrap();
        assert!(
            got >= released,
            "the restore held the partition only after the follow let go"
        );
    }
}
