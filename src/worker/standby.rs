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

use std::collections::{BTreeMap, BTreeSet};
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
    /// Partition numbers assigned to processing threads here (restoring or open), with the
    /// threads that claimed them: a number moving from one thread to another can be claimed by
    /// the new one before the old one has let go.
    held: BTreeMap<i32, BTreeSet<usize>>,
    /// The worker is stopping: no follow starts.
    stopping: bool,
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

    /// Partition `p` is assigned to thread `slot` here: no follow of it starts, and one under
    /// way stops at its next record.
    pub fn claim(&self, p: i32, slot: usize) {
        let mut c = self.lock();
        c.held.entry(p).or_default().insert(slot);
        if let Some((q, stop)) = &c.following {
            if *q == p {
                stop.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Partition `p` is no longer held by thread `slot` (revoked): once no thread holds it,
    /// the follower may take it.
    pub fn release(&self, p: i32, slot: usize) {
        let mut c = self.lock();
        if let Some(slots) = c.held.get_mut(&p) {
            slots.remove(&slot);
            if slots.is_empty() {
                c.held.remove(&p);
            }
        }
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
        if c.stopping || c.held.contains_key(&p) || c.busy.contains(&p) {
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

    /// Stops the follow under way, if any, and starts none after.
    pub fn stop_following(&self) {
        let mut c = self.lock();
        c.stopping = true;
        if let Some((_, stop)) = &c.following {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The follower thread; stopped (and waited for by [`Follower::stop`]) when dropped too.
pub struct Follower {
    claims: Arc<Partitions>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Starts following the changelog of the partitions not held here.
    pub fn start(
        restorer: Restorer,
        store: Arc<Store>,
        claims: Arc<Partitions>,
        partitions: i32,
    ) -> std::io::Result<Follower> {
        let c = claims.clone();
        let thread = std::thread::Builder::new()
            .name("tailor-standby".into())
            .spawn(move || follow(&restorer, &store, &c, partitions))?;
        Ok(Follower {
            claims,
            thread: Some(thread),
        })
    }

    /// Stops the follow under way at its next record, and waits for the thread.
    pub fn stop(mut self) {
        self.claims.stop_following();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("the standby follower panicked");
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.claims.stop_following();
    }
}

/// Passes over the partitions not held here until [`Partitions::stop_following`].
fn follow(restorer: &Restorer, store: &Store, claims: &Partitions, partitions: i32) {
    info!(
        partitions,
        "standby: following the changelog of the partitions not held here"
    );
    // One consumer for every pass (assigned a partition at a time).
    let consumer = match restorer.consumer() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "standby: no follower");
            return;
        }
    };
    let stopping = || claims.lock().stopping;
    let mut failing = false;
    while !stopping() {
        for p in 0..partitions {
            let Some((_busy, flag)) = claims.follow(p) else {
                continue;
            };
            // Stopped by a claim of the partition, or by the worker stopping.
            match restorer.follow(&consumer, store, p, &flag) {
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
        while waited < PASS_EVERY && !stopping() {
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
        parts.claim(3, 0);
        assert!(stop.load(Ordering::Relaxed), "the follow is told to stop");
        drop(busy);
        assert!(parts.follow(3).is_none(), "held here: not followed");
        let restore = parts.hold(3);
        drop(restore);
        // Moving from thread 0 to thread 1: claimed by 1 before 0 lets go.
        parts.claim(3, 1);
        parts.release(3, 0);
        assert!(parts.follow(3).is_none(), "still held by thread 1");
        parts.release(3, 1);
        assert!(parts.follow(3).is_some(), "released: followed again");
        parts.stop_following();
        assert!(parts.follow(4).is_none(), "stopping: no new follow");
    }

    #[test]
    fn a_restore_waits_for_the_follow_of_its_partition() {
        let parts = Arc::new(Partitions::default());
        let (busy, _stop) = parts.follow(1).expect("free");
        let p2 = parts.clone();
        let waiter = std::thread::spawn(move || {
            p2.claim(1, 0);
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
