//! A partition task: everything the worker holds for one input partition *number* (state is
//! keyed by number across the three co-partitioned input topics and the repartition topic).
//!
//! A task owns its profiles (cache and write-back overlay), its identity aliases written in the
//! open batch, its stream clock, the read position and next offsets of each of its topics, its
//! re-evaluation cursor, its segment-size changes, and whether it is held for the schema
//! registry. It contributes its part to the batch's single RocksDB write
//! ([`Task::write_into`]), rolls back alone ([`Task::rollback`]), and is dropped alone when its
//! partition is revoked: a revocation touches no other task.

use std::collections::HashMap;

use rdkafka::Offset;

use crate::clock::StreamClock;
use crate::codec::Family;
use crate::identity::Local;
use crate::profile::Profile;
use crate::store::{Commit, Store};

use super::error::Error;
use super::order::{self, Buffered, Heads};
use super::overlay::{is_new, KeyHasher, Profiles};

/// Where a profile re-evaluation after a definitions change has got to, per partition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sweep {
    /// Fingerprint of the definitions being applied.
    pub version: u64,
    /// Last profile key done (`None`: none yet).
    pub after: Option<String>,
    pub done: bool,
}

fn sweep_key(partition: i32) -> Vec<u8> {
    let mut k = b"sweep/".to_vec();
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// One assigned topic of the task's partition number.
struct Input {
    topic: String,
    /// Next offset to read: after the last message applied, else the stored offset (`None`:
    /// not known until the first message, when starting from the configured position).
    position: Option<i64>,
    /// Next offset to commit, when a message of this topic was applied in the open batch.
    pending: Option<i64>,
    /// The first message applied since the last commit: where a rollback reads again from.
    first_uncommitted: Option<i64>,
}

pub struct Task {
    pub partition: i32,
    pub profiles: Profiles,
    inputs: Vec<Input>,
    /// Identity aliases written in the open batch (`None`: removed), visible before the commit.
    aliases: HashMap<String, Option<String>>,
    clock: StreamClock,
    /// The clock as last committed (a clock that has not moved is not written again).
    committed_clock: Option<i64>,
    /// No timer of this partition in the index is due before this: the scan for due timers
    /// starts here, not at the partition's first key (through the deletions of every timer
    /// fired since the last compaction). Lowered by every timer the commits add.
    pub timer_floor: i64,
    lateness: i64,
    /// Members per segment gained (or lost) in the open batch.
    segment_deltas: HashMap<String, i64>,
    /// Timer index entries found that no profile owns (removed with the commit).
    stray_timers: Vec<(i64, String)>,
    /// Re-evaluation progress (loaded from the store on first use), and whether the open batch
    /// moved it.
    sweep: Option<Sweep>,
    sweep_moved: bool,
    /// The schema id this partition number waits for (all its topics paused).
    pub held: Option<u32>,
    /// Messages read and not yet applied, per topic, taken in event-time order.
    pub heads: Heads,
    /// Messages buffered since the task last applied what it could: their profiles are read
    /// together ([`Self::prefetch_buffered`]) before they are applied.
    pub undrained: usize,
    /// Messages applied in the open batch.
    pub messages: usize,
    /// The family and record timestamp (ms) of each input topic's message applied in the open
    /// batch: observed into `tailor_event_latency_seconds` once the batch is committed (dropped
    /// with the batch on a rollback or a revocation: a message read again counts once).
    pub record_times: Vec<(Family, i64)>,
    /// Whether this partition has been read to its end since this thread got it (logged once;
    /// never reset).
    pub reached_end: bool,
    state_reads: prometheus::IntCounter,
}

/// Reads the profiles of `keys` the cache and the open batch lack, in one batched read (at most
/// half the cache; fewer than two: left to the reads one at a time).
fn read_missing<'k>(
    profiles: &mut Profiles,
    partition: i32,
    state_reads: &prometheus::IntCounter,
    keys: impl IntoIterator<Item = &'k str>,
    store: &Store,
) -> Result<(), Error> {
    let room = (profiles.capacity() / 2).max(1);
    let mut missing: Vec<&str> = keys
        .into_iter()
        .filter(|k| !k.is_empty() && profiles.needs_read(k))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    missing.truncate(room);
    if missing.len() < 2 {
        return Ok(());
    }
    super::blocking(|| {
        store.read_profiles(partition, &missing, |key, profile| {
            state_reads.inc();
            profiles
                .fetch(key, || Ok::<_, std::convert::Infallible>(profile))
                .unwrap_or_else(|never| match never {});
        })
    })?;
    Ok(())
}

impl Task {
    /// Opens the task of `partition`: its stream clock resumes from the store.
    pub fn open(
        partition: i32,
        store: &Store,
        lateness: i64,
        (cache_capacity, cache_budget): (usize, usize),
        hasher: KeyHasher,
        state_reads: prometheus::IntCounter,
    ) -> Result<Task, Error> {
        let stored = store.clock(partition)?;
        Ok(Task {
            partition,
            profiles: Profiles::new(cache_capacity, cache_budget, hasher),
            inputs: Vec::new(),
            aliases: HashMap::new(),
            clock: StreamClock::new(stored, lateness),
            committed_clock: stored,
            timer_floor: i64::MIN,
            lateness,
            segment_deltas: HashMap::new(),
            stray_timers: Vec::new(),
            sweep: None,
            sweep_moved: false,
            held: None,
            heads: Heads::default(),
            undrained: 0,
            messages: 0,
            record_times: Vec::new(),
            reached_end: false,
            state_reads,
        })
    }

    /// A topic of this partition number is assigned (`rank`: its place among the inputs, for
    /// event-time ties; `awaited`: whether an empty queue of it holds the others back): it
    /// resumes at its stored offset.
    pub fn assign(
        &mut self,
        topic: &str,
        rank: u8,
        awaited: bool,
        store: &Store,
    ) -> Result<(), Error> {
        self.heads.track(topic, rank, awaited);
        let position = store.next_offset(topic, self.partition)?;
        match self.inputs.iter_mut().find(|i| i.topic == topic) {
            Some(i) => {
                i.position = position;
                i.pending = None;
                i.first_uncommitted = None;
            }
            None => self.inputs.push(Input {
                topic: topic.to_owned(),
                position,
                pending: None,
                first_uncommitted: None,
            }),
        }
        Ok(())
    }

    /// The next buffered message to apply (with its topic's index, to put it back), in
    /// event-time order across the task's topics (see [`order`]), or `None` to wait for more.
    /// `caught_up(topic, position)`: whether the topic is read to its end. Also returns how
    /// many topics' waits ran out (`max_idle`) just now.
    pub fn next_buffered(
        &mut self,
        max_idle: std::time::Duration,
        mut caught_up: impl FnMut(&str, Option<i64>) -> bool,
    ) -> (Option<(usize, Buffered)>, u64) {
        let inputs = &self.inputs;
        let (heads, ran_out) = self.heads.heads(max_idle, |t| {
            let position = inputs
                .iter()
                .find(|i| i.topic == t)
                .and_then(|i| i.position);
            !caught_up(t, position)
        });
        match order::choose(heads) {
            order::Next::Take(i) => (self.heads.pop(i).map(|m| (i, m)), ran_out),
            _ => (None, ran_out),
        }
    }

    /// Where a topic with no stored offset starts (its low or high watermark, as the consumer
    /// starts it), so that "read to its end" is known before its first message.
    pub fn start_at(&mut self, topic: &str, offset: i64) {
        if let Some(i) = self
            .inputs
            .iter_mut()
            .find(|i| i.topic == topic && i.position.is_none())
        {
            i.position = Some(offset);
        }
    }

    /// The assigned topics of this partition number.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|i| i.topic.as_str())
    }

    /// The next offset to read from `topic` (`None`: not known yet).
    pub fn position(&self, topic: &str) -> Option<i64> {
        self.inputs
            .iter()
            .find(|i| i.topic == topic)
            .and_then(|i| i.position)
    }

    /// Whether the message at `offset` of `topic` was already applied (by the open batch, or
    /// before the last commit): a fetch that raced a seek hands it out again.
    pub fn already_applied(&self, topic: &str, offset: i64) -> bool {
        self.position(topic).is_some_and(|next| offset < next)
    }

    /// Records that the message at `offset` of `topic` is applied (its outputs queued).
    pub fn applied(&mut self, topic: &str, offset: i64) {
        self.messages += 1;
        match self.inputs.iter_mut().find(|i| i.topic == topic) {
            Some(i) => {
                i.position = Some(offset + 1);
                i.pending = Some(offset + 1);
                i.first_uncommitted.get_or_insert(offset);
            }
            None => self.inputs.push(Input {
                topic: topic.to_owned(),
                position: Some(offset + 1),
                pending: Some(offset + 1),
                first_uncommitted: Some(offset),
            }),
        }
    }

    /// `processing.allowed_lateness` in ms: how far the clock trails the wall clock when it
    /// follows it.
    pub fn lateness(&self) -> i64 {
        self.lateness
    }

    pub fn clock(&mut self) -> &mut StreamClock {
        &mut self.clock
    }

    pub fn now(&self) -> Option<i64> {
        self.clock.now()
    }

    /// Brings the profile of `key` into the cache (from the overlay, the store, or a placeholder).
    /// A profile that cannot be read is fatal: starting it afresh would overwrite the shopper's
    /// history at the next commit.
    pub fn fetch(&mut self, key: &str, store: &Store) -> Result<(), Error> {
        let (partition, reads) = (self.partition, &self.state_reads);
        self.profiles.fetch(key, || {
            reads.inc();
            store.profile(partition, key)
        })?;
        Ok(())
    }

    /// Brings the profiles of `keys` into the cache ahead of their use, those not there yet in
    /// one batched read (see [`Store::read_profiles`]). At most half the cache's capacity is
    /// read, so that the first ones are not pushed out by the last before they are used.
    pub fn prefetch<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
        store: &Store,
    ) -> Result<(), Error> {
        let Task {
            profiles,
            partition,
            state_reads,
            ..
        } = self;
        read_missing(profiles, *partition, state_reads, keys, store)
    }

    /// [`Self::prefetch`] for the keys of the messages buffered (up to `max`): the profiles a
    /// run of messages is about to read (a key that is an alias, or not UTF-8, reads nothing
    /// that matters). Only a read ahead: if it fails (a profile that cannot be decoded, a read
    /// error), each message's own read decides, as before (a message dead-lettered or forwarded
    /// reads no profile).
    pub fn prefetch_buffered(&mut self, max: usize, store: &Store) {
        let Task {
            profiles,
            partition,
            state_reads,
            heads,
            ..
        } = self;
        let keys = heads
            .keys()
            .take(max)
            .filter_map(|k| std::str::from_utf8(k).ok());
        if let Err(e) = read_missing(profiles, *partition, state_reads, keys, store) {
            tracing::debug!(partition = *partition, error = %e, "reading a run's profiles ahead failed; read one at a time");
        }
    }

    /// As [`Self::fetch`], and marks the profile changed: the caller is about to change it.
    pub fn load(&mut self, key: &str, store: &Store) -> Result<&mut Profile, Error> {
        self.fetch(key, store)?;
        self.profiles.mark_dirty(key);
        Ok(self.profiles.get_mut(key).expect("fetched"))
    }

    /// What this partition holds for an identity value: an alias, a profile, or nothing.
    pub fn local(&mut self, key: &str, store: &Store) -> Result<Local, Error> {
        let alias = match self.aliases.get(key) {
            Some(a) => a.clone(),
            // A profile stored under the key: it is not an alias (no read needed).
            None if self.profiles.get(key).is_some_and(|p| !is_new(p)) => None,
            None => store.alias(self.partition, key)?,
        };
        if let Some(owner) = alias {
            return Ok(Local::Alias(owner));
        }
        self.fetch(key, store)?;
        let p = self.profiles.get(key).expect("fetched");
        Ok(if is_new(p) {
            Local::Unknown
        } else {
            Local::Profile(p.identities.kind)
        })
    }

    /// Writes (`Some(owner)`) or removes (`None`) the identity alias `key` with the batch.
    pub fn set_alias(&mut self, key: String, owner: Option<String>) {
        self.aliases.insert(key, owner);
    }

    pub fn segment_delta(&mut self, segment: &str, delta: i64) {
        match self.segment_deltas.get_mut(segment) {
            Some(d) => *d += delta,
            None => {
                self.segment_deltas.insert(segment.to_owned(), delta);
            }
        }
    }

    /// A timer index entry no profile owns: removed with the commit.
    pub fn stray_timer(&mut self, at: i64, key: String) {
        self.stray_timers.push((at, key));
    }

    /// The re-evaluation cursor for definitions `version` (from the store on first use).
    pub fn sweep(&mut self, version: u64, store: &Store) -> Result<Sweep, Error> {
        if let Some(s) = self.sweep.as_ref().filter(|s| s.version == version) {
            return Ok(s.clone());
        }
        let stored = store
            .meta(&sweep_key(self.partition))?
            .and_then(|b| postcard::from_bytes::<Sweep>(&b).ok())
            .filter(|s| s.version == version);
        let s = match stored {
            Some(s) => s,
            None => {
                // Written with the next commit: that commit may hold evaluations under these
                // definitions, and a record of other ones done must not outlive it (an event
                // evaluates only what it changed when its partition's sweep is done).
                self.sweep_moved = true;
                Sweep {
                    version,
                    after: None,
                    done: false,
                }
            }
        };
        self.sweep = Some(s.clone());
        Ok(s)
    }

    /// Loads (or starts) the partition's re-evaluation cursor under the definitions of
    /// `version`, unless it is loaded ([`Task::swept`] then knows).
    pub fn load_sweep(&mut self, version: u64, store: &Store) -> Result<(), Error> {
        if self.sweep.as_ref().is_none_or(|s| s.version != version) {
            self.sweep(version, store)?;
        }
        Ok(())
    }

    /// Whether every profile of the partition is known to be evaluated under the definitions
    /// of `version` (its re-evaluation sweep, as loaded, is done). Not loaded yet: not known
    /// ([`Task::load_sweep`]).
    pub fn swept(&self, version: u64) -> bool {
        self.sweep
            .as_ref()
            .is_some_and(|s| s.version == version && s.done)
    }

    pub fn move_sweep(&mut self, to: Sweep) {
        self.sweep = Some(to);
        self.sweep_moved = true;
    }

    /// Whether the open batch has anything to commit for this task.
    pub fn has_changes(&self) -> bool {
        self.messages > 0
            || self.profiles.changed()
            || !self.aliases.is_empty()
            || self.sweep_moved
            || !self.stray_timers.is_empty()
    }

    /// Adds this task's part of the batch to the commit: profiles written and removed, the timer
    /// index, aliases, the clock, each topic's next offset, segment sizes and the sweep cursor.
    pub fn write_into(&mut self, c: &mut Commit) {
        let p = self.partition;
        let w = self.profiles.take_writes();
        c.profiles.extend(w.put.into_iter().map(|(k, b)| (p, k, b)));
        c.profiles_deleted
            .extend(w.deleted.into_iter().map(|k| (p, k)));
        if let Some(lowest) = w.timers_added.iter().map(|(t, _)| *t).min() {
            self.timer_floor = self.timer_floor.min(lowest);
        }
        c.timers_added
            .extend(w.timers_added.into_iter().map(|(t, k)| (p, t, k)));
        c.timers_removed
            .extend(w.timers_removed.into_iter().map(|(t, k)| (p, t, k)));
        c.timers_removed
            .extend(self.stray_timers.drain(..).map(|(t, k)| (p, t, k)));
        c.aliases
            .extend(self.aliases.drain().map(|(k, owner)| (p, k, owner)));
        if let Some(now) = self
            .clock
            .now()
            .filter(|n| Some(*n) != self.committed_clock)
        {
            c.clocks.push((p, now));
            self.committed_clock = Some(now);
        }
        for i in &mut self.inputs {
            if let Some(next) = i.pending.take() {
                c.offsets.push((i.topic.clone(), p, next));
            }
            i.first_uncommitted = None;
        }
        c.segment_deltas.extend(
            self.segment_deltas
                .drain()
                .filter(|(_, d)| *d != 0)
                .map(|(s, d)| (p, s, d)),
        );
        if self.sweep_moved {
            if let Some(s) = &self.sweep {
                c.partition_meta.push((
                    p,
                    sweep_key(p),
                    Some(postcard::to_stdvec(s).expect("cursor serialises")),
                ));
            }
            self.sweep_moved = false;
        }
        self.messages = 0;
    }

    /// A topic of this partition number is no longer assigned here.
    pub fn unassign(&mut self, topic: &str) {
        self.inputs.retain(|i| i.topic != topic);
        self.heads.remove(topic);
        self.undrained = 0;
    }

    /// Drops the open batch and the messages buffered: profiles, aliases, clock, positions and
    /// cursor go back to what the store holds. Returns each topic read since the last commit and
    /// the offset to seek it back to: the first message applied since, else the first buffered
    /// (a topic nothing was read from needs no seek, and
    /// one with no stored offset is not sent to the configured start position, which with
    /// `latest` would skip what arrived meanwhile).
    pub fn rollback(&mut self, store: &Store) -> Result<Vec<(String, Offset)>, Error> {
        self.profiles.rollback();
        for key in self.aliases.keys() {
            self.profiles.forget(key);
        }
        self.aliases.clear();
        self.segment_deltas.clear();
        self.stray_timers.clear();
        self.sweep = None;
        self.sweep_moved = false;
        self.messages = 0;
        self.record_times.clear();
        self.clock = StreamClock::new(store.clock(self.partition)?, self.lateness);
        // Timers the dropped batch fired are in the index again.
        self.timer_floor = i64::MIN;
        // Messages read and not applied are read again too.
        let buffered = self.heads.clear();
        self.undrained = 0;
        let mut seeks = Vec::with_capacity(self.inputs.len());
        for i in &mut self.inputs {
            i.pending = None;
            if let Some(first) = i.first_uncommitted.take() {
                i.position = Some(first);
                seeks.push((i.topic.clone(), Offset::Offset(first)));
            } else if let Some((_, first)) = buffered.iter().find(|(t, _)| *t == i.topic) {
                seeks.push((i.topic.clone(), Offset::Offset(*first)));
            }
        }
        Ok(seeks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;
    use crate::store::StoreOptions;

    const T0: i64 = 1_709_287_200_000;

    fn stored(events: u64) -> Profile {
        Profile {
            events_total: events,
            ..Default::default()
        }
    }

    /// A store holding `profiles` (key, events) of partition 3, and that partition's task with
    /// a cache of `cache` profiles, counting its store reads.
    fn task_over(
        profiles: &[(&str, u64)],
        cache: usize,
    ) -> (tempfile::TempDir, Store, prometheus::IntCounter, Task) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        store
            .commit(Commit {
                profiles: profiles
                    .iter()
                    .map(|(k, n)| (3, k.to_string(), profile::encode(&stored(*n))))
                    .collect(),
                ..Default::default()
            })
            .unwrap();
        let reads = prometheus::IntCounter::new("reads", "reads").unwrap();
        let task = Task::open(
            3,
            &store,
            0,
            (cache, usize::MAX),
            KeyHasher::with_seed(0),
            reads.clone(),
        )
        .unwrap();
        (dir, store, reads, task)
    }

    /// A batch rolled back takes its messages' record times with it: applied again, each
    /// message's latency is counted once, with the batch that commits it.
    #[test]
    fn a_rollback_drops_the_batch_record_times() {
        let (_dir, store, _reads, mut task) = task_over(&[], 4);
        task.record_times
            .extend([(Family::Storefront, T0), (Family::Backoffice, T0 + 1)]);
        task.messages = 2;
        task.rollback(&store).unwrap();
        assert!(task.record_times.is_empty());
        assert!(!task.has_changes());
    }

    /// A partition whose re-evaluation under other definitions is done: under new ones it is
    /// not (events evaluate every segment), and the new cursor goes with the next commit, so
    /// that the old "done" cannot outlive what was evaluated under the new definitions.
    #[test]
    fn a_new_definitions_cursor_is_committed_when_it_starts() {
        let (_dir, store, _reads, mut task) = task_over(&[], 4);
        let cursor = |version, done| Sweep {
            version,
            after: None,
            done,
        };
        let record = |s: &Sweep| (3, sweep_key(3), Some(postcard::to_stdvec(s).unwrap()));
        store
            .commit(Commit {
                partition_meta: vec![record(&cursor(1, true))],
                ..Default::default()
            })
            .unwrap();
        task.load_sweep(1, &store).unwrap();
        assert!(task.swept(1));
        assert!(!task.has_changes(), "a stored cursor is not written again");
        task.load_sweep(2, &store).unwrap();
        assert!(!task.swept(2));
        assert!(task.has_changes());
        let mut c = Commit::default();
        task.write_into(&mut c);
        assert_eq!(c.partition_meta, vec![record(&cursor(2, false))]);
        store.commit(c).unwrap();
        let stored: Sweep =
            postcard::from_bytes(&store.meta(&sweep_key(3)).unwrap().unwrap()).unwrap();
        assert_eq!(stored, cursor(2, false));
    }

    // On a multi-threaded runtime the reads go through `block_in_place`, as on the worker's
    // start; the processing threads' own runtimes run them directly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn prefetch_reads_what_is_missing_and_keeps_changes_of_the_batch() {
        let (_dir, store, reads, mut task) = task_over(&[("a", 1), ("b", 2), ("c", 3)], 4);
        // "c" changed in the open batch, then pushed out of the cache (4 places) by four others.
        task.load("c", &store).unwrap().events_total = 30;
        for k in ["x", "y", "z", "w"] {
            task.fetch(k, &store).unwrap();
        }
        let before = reads.get();
        task.prefetch(["c", "a", "b", "a", "nobody"], &store)
            .unwrap();
        assert_eq!(
            reads.get() - before,
            2,
            "one read each for what is missing (half the cache's 4 places: \"a\" and \"b\")"
        );
        let got = |task: &Task, k| task.profiles.get(k).map(|p| p.events_total);
        assert_eq!(got(&task, "a"), Some(1));
        assert_eq!(got(&task, "b"), Some(2));
        task.fetch("c", &store).unwrap();
        assert_eq!(
            got(&task, "c"),
            Some(30),
            "the batch's change, not the store's"
        );
        task.fetch("nobody", &store).unwrap();
        assert_eq!(
            got(&task, "nobody"),
            Some(0),
            "a new shopper: an empty profile"
        );
    }

    /// A stored profile that cannot be decoded ends the read ahead with an error (for buffered
    /// messages it is logged and each message reads its own; timers and the sweep return it):
    /// the profiles read before it are cached, the bad one is not replaced by an empty
    /// profile, and the one after it is read on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_corrupt_profile_stops_the_read_ahead_but_not_the_reads_before_it() {
        let (_dir, store, reads, mut task) = task_over(&[("a", 1), ("c", 3)], 100);
        store
            .commit(Commit {
                profiles: vec![(3, "b".into(), vec![250, 1, 2])],
                ..Default::default()
            })
            .unwrap();
        let err = task.prefetch(["c", "b", "a"], &store).unwrap_err();
        assert!(
            format!("{err:?}").contains("corrupt state for a profile"),
            "{err:?}"
        );
        assert_eq!(
            reads.get(),
            1,
            "\"a\" (keys are read sorted) and no further"
        );
        assert_eq!(task.profiles.get("a").map(|p| p.events_total), Some(1));
        assert!(task.profiles.get("b").is_none() && task.profiles.get("c").is_none());
        assert!(
            task.fetch("b", &store).is_err(),
            "the bad profile fails its own read"
        );
        task.fetch("c", &store).unwrap();
        assert_eq!(task.profiles.get("c").map(|p| p.events_total), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_profiles_of_buffered_messages_are_read_in_one_go_before_they_are_applied() {
        let (_dir, store, reads, mut task) = task_over(&[("a", 7)], 100);
        task.heads.track("storefront", 0, true);
        let keys: [Option<&[u8]>; 5] = [Some(b"a"), Some(b"new"), None, Some(b"\xff"), Some(b"a")];
        for (offset, key) in keys.into_iter().enumerate() {
            task.heads.push(
                Buffered {
                    topic: "storefront".into(),
                    offset: offset as i64,
                    key: key.map(Box::from),
                    payload: Box::new([]),
                    timestamp: Some(0),
                },
                1_000,
            );
        }
        task.prefetch_buffered(256, &store);
        assert_eq!(
            reads.get(),
            2,
            "\"a\" once and \"new\"; no key and a key that is not UTF-8 read nothing"
        );
        // Applying the messages then reads nothing more.
        task.fetch("a", &store).unwrap();
        task.fetch("new", &store).unwrap();
        assert_eq!(reads.get(), 2);
        assert_eq!(task.profiles.get("a").map(|p| p.events_total), Some(7));
        assert_eq!(task.profiles.get("new").map(|p| p.events_total), Some(0));
        assert_eq!(task.heads.len(), 5, "the messages stay buffered");
    }
}
