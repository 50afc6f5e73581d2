//! The async shell: Kafka in, the synchronous core, Kafka and RocksDB out.
//!
//! Each processing thread (`processing.threads`; a tokio task, a member of the consumer group
//! with its own consumer and producer) runs one loop ([`run`]) over the partition tasks it is
//! assigned; the threads share the RocksDB store, the metrics, `/readyz` (ready when every
//! thread is) and the HTTP API, and one that stops stops the others:
//!
//! ```text
//!  rebalance ─► kafka (callbacks: assign, paused) ─► changelog::Restorer (a blocking thread per
//!              new partition number: state level with the changelog) ─► Worker: a Task per
//!              partition number, sought to the restored offsets and resumed │ drop on revoke
//!  each batch:
//!   0. time     every task: clock moves (wall clock when caught up), due timers fire; then a slice
//!               of profiles re-evaluated if the definitions changed ............ process::Processor
//!   1. consume  a message ─► its task's queue for its topic (skipped if held or already
//!               applied); a run of 64 buffered (or none ready): each task reads the missing
//!               profiles of its buffered messages in one batched read, then applies the
//!               earliest head of its topics while it can ................................ order
//!               ─► process::Processor (decode, validate, identity route, core)
//!               ─► collector::Collector (bounded records)
//!               a Confluent id the registry has not answered: the task is held ........... hold
//!   2. deliver  await every output of the batch (acks=all) ........................... commit
//!   3. mirror   the batch's state writes to the changelog, then a marker per partition changelog
//!   4. commit   each task writes its part into ONE RocksDB write batch: profiles, aliases, timer
//!               index, clock, next offsets, segment sizes, cursors, changelog position . commit
//!   5. offsets  stored in the group for lag monitoring only
//! ```
//!
//! - [`task`]: one partition number's state: profiles ([`overlay`]: cache + write-back overlay),
//!   aliases, clock, positions, offsets, sweep cursor, hold. Commits, rolls back, or is dropped
//!   on its own.
//! - [`order`]: event-time order across a task's topics (timestamp synchronisation).
//! - [`process`]: one message (or timer, or re-evaluation) through the core for one task.
//! - [`collector`]: every produced record, kept below the producer's size limit.
//! - [`acks`]: the producer, and the brokers' acknowledgements counted per round (a batch's
//!   outputs, its changelog records, its markers).
//! - [`commit`]: the commit protocol, in one place.
//! - [`changelog`]: the state's mirror in a compacted topic, and restoring a partition from it.
//! - [`kafka`]: clients, callbacks, topic checks, and the class of each Kafka error.
//! - [`hold`]: pausing a partition number until the schema registry answers.
//! - [`error`]: bad input (dead letter), transient (roll back, retry), fatal (stop).
//!
//! On (re)assignment a partition's state is first brought level with the changelog (restored
//! whole on a worker that lacks it), then it resumes at the offset in that state, never the
//! group's. A crash at
//! any point leaves RocksDB at the end of some whole batch; the messages after it are applied again
//! and their outputs sent again with the same deterministic ids (at-least-once output, exactly-once
//! state). A revoked partition's task is dropped with its open batch; the other tasks keep theirs.
//! A transient fault (the broker not acknowledging outputs, the registry unreachable at the wrong
//! moment) rolls every task back to its last commit and retries after a backoff; `/readyz` says
//! why meanwhile. The rebalance callback runs inside `recv()` on this same task, so the loop never
//! races it.

mod acks;
mod changelog;
mod collector;
mod commit;
mod error;
mod hold;
mod kafka;
mod order;
mod overlay;
mod process;
mod standby;
mod task;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::codec::{self, SchemaCatalog};
use crate::config::Settings;
use crate::http::{Api, Health, HealthPart};
use crate::metrics::Metrics;
use crate::registry::{Lookup, Registry};
use crate::store::Store;

pub use collector::{DEAD_LETTER_KEY_BYTES, DEAD_LETTER_PAYLOAD_BYTES};
// For `benches/restore.rs`: a changelog partition's records applied to a store.
pub use changelog::{Entry as ChangelogEntry, Replay};
pub use kafka::{check_kafka_properties, CHANGELOG_CONFIG, CONSUMER_FETCH_DEFAULTS};
pub use overlay::KeyHasher;
pub use process::{MAX_EVENT_BYTES, MAX_KEY_BYTES};

use collector::Collector;
use error::Error;
use hold::LookupSender;
use kafka::{KafkaContext, ProducerLogs, Rebalance};
use order::Buffered;
use process::{Incoming, InputTopics, Processor};
use task::Task;

/// A transient fault with nothing left to redo is over after this long without another.
const FAULT_QUIET: Duration = Duration::from_secs(30);

/// The shortest an idle batch stays open before it closes for a live timer that comes due: timers
/// due within this of each other fire in one batch and one commit (at most 20 such commits a
/// second), each at most this much later than `processing.allowed_lateness` after its due time.
const TIMER_WAKE_GAP: Duration = Duration::from_millis(50);

/// How long a processing thread that stops waits for its (cancelled) restores to end.
const RESTORE_GRACE: Duration = Duration::from_secs(5);

/// A panic's message, for the error the worker stops with.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The least time a batch that leaves due timers for the next gives to messages.
const MIN_SHARE: Duration = Duration::from_millis(5);

/// How often a batch polls its consumer afresh (a message polls it too). rdkafka's
/// `StreamConsumer` wakes a waiting `recv` for messages, not for a rebalance: the rebalance
/// callback runs at the next poll (rust-rdkafka#738), which for a thread with nothing to read
/// was its batch's close (`processing.batch_max_wait`, 1 s). At start the second thread got
/// its assignment 1 s after the first, and an idle thread answered a revocation up to 1 s late.
const REPOLL: Duration = Duration::from_millis(100);

/// A task's messages are applied a run at a time, once this many are buffered (or when the
/// consumer has no message ready): the run's profiles are read from the store in one batched
/// read before it is applied.
const DRAIN_RUN: usize = 64;
/// At most this many buffered messages' profiles are read ahead at a drain.
const PREFETCH_BUFFERED: usize = 256;

/// Meta record: the segment definitions (source) profiles were last evaluated under (read by
/// `tailor preview` too).
pub const DEFINITIONS_KEY: &[u8] = b"definitions";

/// Runs blocking work (RocksDB, a librdkafka call that waits) from async code. A processing
/// thread's runtime is its own (current-thread): the call just runs. On a multi-threaded
/// runtime (the worker's start and stop, tests) it goes through `block_in_place`.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A newly assigned partition number whose state is being restored from the changelog.
struct Restoring {
    /// Its assigned topics (paused until the restore ends).
    topics: Vec<String>,
    job: tokio::task::JoinHandle<Result<(), String>>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
    /// Set by the job as it ends, before it wakes the loop: the join handle says finished only
    /// a little later (after the job's locals are dropped).
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Restoring {
    fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire) || self.job.is_finished()
    }
}

/// The worker: its partition tasks and what they share.
struct Worker {
    proc: Processor,
    out: Collector,
    tasks: BTreeMap<i32, Task>,
    /// (topic, partition) assigned, in assignment order.
    assigned: Vec<(String, i32)>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// This processing thread's part of the worker's readiness.
    health: HealthPart,
    /// Which processing thread this is (0-based).
    slot: usize,
    /// What this thread last added to the worker-wide gauges several threads report into.
    shares: Shares,
    api: Arc<Api>,
    registry: Option<Arc<Registry>>,
    lookups: LookupSender,
    schemas_dir: Option<std::path::PathBuf>,
    segments_file: std::path::PathBuf,
    /// Counted up on SIGHUP: reload the schemas directory and the segments file (each
    /// processing thread compares it with the count it last reloaded at).
    reload: Arc<AtomicU64>,
    reload_seen: u64,
    /// Source text of the definitions in force (stored with the commit that puts them in force).
    defs_src: String,
    /// The changelog topic every commit mirrors its state writes to (`None`: no changelog).
    changelog: Option<String>,
    restorer: Option<Arc<changelog::Restorer>>,
    /// The partitions held by this worker's threads, kept apart from the standby follower.
    claims: Arc<standby::Partitions>,
    /// Partition numbers being restored, not yet opened.
    restoring: BTreeMap<i32, Restoring>,
    /// Restores cancelled by a revocation, until they have stopped.
    cancelled: BTreeMap<i32, tokio::task::JoinHandle<Result<(), String>>>,
    /// When this thread last stamped its partitions' changelog positions afresh
    /// ([`Worker::flush_state_if_due`]).
    restamped: Instant,
    /// Worker-wide meta writes of the open batch (the definitions in force).
    meta: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Members per segment in this worker's store: loaded at start, kept with each commit.
    segment_sizes: BTreeMap<String, i64>,
    /// This thread's share of the profile cache: most profiles, most bytes.
    cache_profiles: usize,
    cache_memory: usize,
    hasher: overlay::KeyHasher,
    lateness: i64,
    /// Caught-up partitions follow the wall clock (`processing.wall_clock`).
    follow_wall: bool,
    max_messages: usize,
    /// Most profiles a batch's messages change (`processing.batch_max_profiles`); also the
    /// budget of the timers fired, and that of the profiles re-evaluated, per batch.
    max_profiles: usize,
    /// Profiles the open batch had changed when its messages began (timers fired, profiles
    /// re-evaluated): [`Self::message_budget`] counts from there.
    changed_before_messages: usize,
    /// Longest a partition waits for a topic with messages still to come ([`order`]).
    max_idle: Duration,
    /// How long a batch that has caught up waits for more messages (`processing.batch_linger`).
    linger: Duration,
    /// Messages a topic's queue holds before its fetching is paused ([`order`]).
    buffer_limit: usize,
    /// A transient fault of the batch in force (what and why), for `/readyz`; cleared by the
    /// next commit, or after [`FAULT_QUIET`] with nothing to redo.
    fault: Option<String>,
    fault_since: Option<Instant>,
    /// The broker unreachable, as consumer errors and librdkafka's statistics tell; cleared
    /// when messages arrive or a connection is up again.
    broker_down: Option<String>,
    /// Consumer errors since the last message, and when the last was logged.
    consumer_errors: (u64, Option<Instant>),
    /// Wait before the next retry after a transient fault.
    backoff: Duration,
    stopping: bool,
    /// Messages skipped in this batch because their offset is below what was already applied.
    skipped: u64,
    batch_started: Option<Instant>,
    last_log: (Instant, u64),
}

/// However a processing thread ends — a panic too, which unwinds past the loop's own
/// cancellation — its restores still running stop at their next record and write nothing more
/// to the changelog (the partition may already be another worker's).
impl Drop for Worker {
    fn drop(&mut self) {
        for r in self.restoring.values() {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// What one processing thread contributes to worker-wide gauges: each thread adds the change
/// of its own share, so the gauge is the sum over the threads.
#[derive(Default)]
struct Shares {
    assigned: i64,
    paused: i64,
    cached: i64,
    cache_bytes: i64,
    reevaluation_pending: i64,
}

/// Adds the change of this thread's share to a worker-wide gauge.
fn share(gauge: &prometheus::IntGauge, mine: &mut i64, now: i64) {
    if now != *mine {
        gauge.add(now - *mine);
        *mine = now;
    }
}

impl Worker {
    /// Tells `/readyz` whether this processing thread is ready and, if not, why.
    fn publish_readiness(&mut self) {
        let held: Vec<String> = self
            .tasks
            .values()
            .filter_map(|t| t.held.map(|id| format!("{} (schema id {id})", t.partition)))
            .collect();
        share(
            &self.metrics.paused_partitions,
            &mut self.shares.paused,
            held.len() as i64,
        );
        let state = if self.stopping {
            Err("shutting down".to_string())
        } else if let Some(f) = self.fault.as_ref().or(self.broker_down.as_ref()) {
            Err(f.clone())
        } else if !self.restoring.is_empty() {
            let numbers: Vec<String> = self.restoring.keys().map(i32::to_string).collect();
            Err(format!(
                "restoring partitions {} from the changelog",
                numbers.join(", ")
            ))
        } else if self.tasks.is_empty() {
            // Ready if another processing thread holds partitions.
            self.health.idle("no partitions assigned yet");
            return;
        } else if !held.is_empty() {
            Err(format!(
                "partitions {} paused until the schema registry answers",
                held.join(", ")
            ))
        } else {
            Ok(())
        };
        self.health.set(state);
    }

    /// Applies the assignments and revocations the rebalance callback recorded. A revoked
    /// partition's task is dropped with its open batch (nothing of it is committed; its next
    /// owner starts from the last commit); other tasks are not touched.
    fn apply_rebalances(&mut self, consumer: &StreamConsumer<KafkaContext>) -> Result<(), Error> {
        let events =
            std::mem::take(&mut *consumer.context().rebalances.lock().expect("not poisoned"));
        if events.is_empty() {
            return Ok(());
        }
        for ev in events {
            match ev {
                Rebalance::Assigned(parts) => {
                    if let Some(restorer) = self.restorer.clone() {
                        // Paused by the callback: each new partition number's state is brought
                        // level with the changelog first (on a blocking thread, while the loop
                        // goes on polling), then its topics open ([`Self::finish_restores`]).
                        for (topic, partition) in parts {
                            if self.tasks.contains_key(&partition) {
                                self.open_topic(consumer, topic, partition, true)?;
                                continue;
                            }
                            if let Some(r) = self.restoring.get_mut(&partition) {
                                if !r.topics.contains(&topic) {
                                    r.topics.push(topic);
                                }
                                continue;
                            }
                            self.metrics.restoring.inc();
                            let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
                            let (store, flag) = (self.store.clone(), cancel.clone());
                            let restorer = restorer.clone();
                            // A standby follow of it stops.
                            self.claims.claim(partition, self.slot);
                            let claims = self.claims.clone();
                            let wake = consumer.context().wake.clone();
                            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                            let ended = done.clone();
                            // A restore of it cancelled by an earlier revocation may still be
                            // writing: this one starts when it has stopped.
                            let before = self.cancelled.remove(&partition);
                            let job = tokio::task::spawn_blocking(move || {
                                if let Some(before) = before {
                                    let _ = tokio::runtime::Handle::current().block_on(before);
                                }
                                let writing = claims.hold(partition);
                                if flag.load(Ordering::Relaxed) {
                                    return Err(changelog::CANCELLED.to_string());
                                }
                                let restored = restorer.restore(&store, partition, &flag);
                                drop(writing);
                                // The loop opens the partition at its next batch: an idle
                                // batch closes now for it.
                                ended.store(true, Ordering::Release);
                                wake.notify_one();
                                restored
                            });
                            self.restoring.insert(
                                partition,
                                Restoring {
                                    topics: vec![topic],
                                    job,
                                    cancel,
                                    done,
                                },
                            );
                        }
                        continue;
                    }
                    // A partition held when it was revoked must not come back paused (whether an
                    // application's pause survives unassign and assign depends on librdkafka's
                    // version), with nothing left here to resume it. Resume what is assigned (a
                    // no-op when not paused); a message still waiting for the registry is met
                    // again and holds its partition again.
                    let mut tpl = TopicPartitionList::new();
                    for (topic, partition) in &parts {
                        tpl.add_partition(topic, *partition);
                    }
                    if let Err(e) = consumer.resume(&tpl) {
                        warn!(error = %e, "resuming newly assigned partitions failed");
                    }
                    for (topic, partition) in parts {
                        self.open_topic(consumer, topic, partition, false)?;
                    }
                }
                Rebalance::Failed(what) => {
                    return Err(Error::fatal(format!(
                        "the consumer refused a rebalance ({what}); restart to rejoin the group"
                    )))
                }
                Rebalance::Revoked(parts) => {
                    self.assigned.retain(|x| !parts.contains(x));
                    // Series of partitions held elsewhere now would mislead (their next owner
                    // reports them); an assignment sets them again.
                    for (topic, p) in &parts {
                        let labels = [topic.as_str(), &p.to_string()];
                        let _ = self.metrics.stored_offset.remove_label_values(&labels);
                        let _ = self.metrics.partition_lag.remove_label_values(&labels);
                    }
                    for p in kafka::numbers(&parts) {
                        if let Some(r) = self.restoring.get_mut(&p) {
                            r.topics
                                .retain(|t| !parts.iter().any(|(u, q)| u == t && *q == p));
                            if r.topics.is_empty() {
                                // Its restore stops at the next record; nothing of it is written
                                // to the changelog after this.
                                r.cancel.store(true, Ordering::Relaxed);
                                let r = self.restoring.remove(&p).expect("present");
                                self.cancelled.insert(p, r.job);
                                self.metrics.restoring.dec();
                            }
                        }
                        if !self.assigned.iter().any(|(_, q)| *q == p) {
                            self.metrics.partitions_revoked.inc();
                            // A restore of it still stopping holds it until it has.
                            self.claims.release(p, self.slot);
                            if let Some(task) = self.tasks.remove(&p) {
                                if task.has_changes() {
                                    info!(
                                        partition = p,
                                        messages = task.messages,
                                        "partition revoked: its open batch is dropped"
                                    );
                                }
                            }
                        } else if let Some(task) = self.tasks.get_mut(&p) {
                            // Part of a partition number revoked (never: the group assigns
                            // whole numbers): its state mixes every topic of the number, so the
                            // task goes back to its last commit.
                            for (topic, _) in parts.iter().filter(|(_, q)| *q == p) {
                                task.unassign(topic);
                            }
                            for (topic, to) in task.rollback(&self.store)? {
                                seek_back(consumer, &topic, p, to)?;
                            }
                            // None stays paused for a full queue (the queues were dropped).
                            resume_all(consumer, task);
                        }
                    }
                }
            }
        }
        self.after_assignment()
    }

    /// What follows a change of the partitions held: cache shares, metrics, sizes, the API.
    fn after_assignment(&mut self) -> Result<(), Error> {
        // A task dropped or rolled back takes its changes with it: the open batch's messages
        // get no more than their budget for that.
        self.changed_before_messages = self.changed_before_messages.min(self.changed_profiles());
        // The API first: a partition counted as assigned serves its profiles.
        self.api.set_assigned(self.slot, &self.assigned);
        // Each task gets an equal share of the profile cache.
        let tasks = self.tasks.len().max(1);
        let (each, budget) = (self.cache_profiles / tasks, self.cache_memory / tasks);
        for task in self.tasks.values_mut() {
            task.profiles.resize(each, budget);
        }
        share(
            &self.metrics.assigned_partitions,
            &mut self.shares.assigned,
            self.assigned.len() as i64,
        );
        // Members of the partitions held here now (their state may have just been restored).
        let numbers = kafka::numbers(&self.assigned);
        let sizes: BTreeMap<String, i64> =
            self.store.segment_sizes_in(&numbers)?.into_iter().collect();
        // The gauge sums every thread's members: this thread adds the change of its own.
        for (segment, old) in &self.segment_sizes {
            if !sizes.contains_key(segment) {
                self.metrics
                    .segment_members
                    .with_label_values(&[segment])
                    .sub(*old);
            }
        }
        for (segment, n) in &sizes {
            let old = self.segment_sizes.get(segment).copied().unwrap_or(0);
            self.metrics
                .segment_members
                .with_label_values(&[segment])
                .add(*n - old);
        }
        self.segment_sizes = sizes;
        info!(thread = self.slot, partitions = ?numbers, "partitions held");
        self.publish_readiness();
        Ok(())
    }

    /// Opens an assigned topic of partition number `partition` (its task first, if new): it
    /// resumes at the stored offset. `paused`: the callback paused it (it is sought to that offset
    /// and resumed here).
    fn open_topic(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        topic: String,
        partition: i32,
        paused: bool,
    ) -> Result<(), Error> {
        let task = match self.tasks.entry(partition) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let task = v.insert(Task::open(
                    partition,
                    &self.store,
                    self.lateness,
                    (self.cache_profiles, self.cache_memory),
                    self.hasher,
                    self.metrics.state_reads.clone(),
                )?);
                // Profiles read before its first commit are counted with the next changes
                // their first evaluation adds.
                task.profiles.expect_nexts(self.proc.core.segments().len());
                task
            }
        };
        task.held = None;
        // The repartition topic is fed by the group's own processing: waiting for it would put
        // a broker round trip between messages.
        let awaited = topic != self.proc.topics.repartition;
        let rank = self.proc.topics.rank(&topic);
        task.assign(&topic, rank, awaited, &self.store)?;
        if paused {
            // Assigned at the offset stored before the restore: the restored one now (or, with
            // none, the configured start).
            match task.position(&topic) {
                Some(next) => {
                    seek_back(consumer, &topic, partition, Offset::Offset(next))?;
                    self.metrics
                        .stored_offset
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(next);
                }
                None => {
                    let start = consumer.context().start_from;
                    seek_back(consumer, &topic, partition, start)?;
                    let _ = self
                        .metrics
                        .stored_offset
                        .remove_label_values(&[topic.as_str(), &partition.to_string()]);
                }
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            consumer.resume(&tpl).map_err(|e| {
                Error::transient("broker", format!("resuming {topic}/{partition}: {e}"))
            })?;
        }
        // The watermarks: where a topic never read here starts (knowing it tells an empty topic
        // from one still to be read: event-time order waits only for the latter), and the lag,
        // a series from the start (librdkafka's statistics report none for a partition never
        // read).
        match blocking(|| consumer.fetch_watermarks(&topic, partition, Duration::from_secs(2))) {
            Ok((lo, hi)) => {
                // From the beginning it starts at the low watermark. From the end, where
                // librdkafka resolved it when assigning, which may be before `hi` by now: left
                // unknown (nothing to wait for).
                let from_end = consumer.context().start_from == Offset::End;
                if !from_end {
                    task.start_at(&topic, lo);
                }
                let next = task.position(&topic).unwrap_or(hi);
                self.metrics
                    .partition_lag
                    .with_label_values(&[topic.as_str(), &partition.to_string()])
                    .set((hi - next).max(0));
            }
            Err(e) => {
                debug!(topic = %topic, partition, error = %e, "watermarks unknown at assignment")
            }
        }
        if !self.assigned.contains(&(topic.clone(), partition)) {
            self.assigned.push((topic, partition));
        }
        Ok(())
    }

    /// Opens the partitions whose restore has finished; a restore that failed stops the worker
    /// (its state cannot be trusted; a restart tries again).
    async fn finish_restores(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
    ) -> Result<(), Error> {
        self.cancelled.retain(|_, job| !job.is_finished());
        let done: Vec<i32> = self
            .restoring
            .iter()
            .filter(|(_, r)| r.finished())
            .map(|(p, _)| *p)
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        for p in done {
            let r = self.restoring.remove(&p).expect("listed");
            self.metrics.restoring.dec();
            match r.job.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::fatal(e)),
                Err(e) => {
                    return Err(Error::fatal(format!(
                        "the restore of partition {p} failed: {e}"
                    )))
                }
            }
            for topic in r.topics {
                self.open_topic(consumer, topic, p, true)?;
            }
        }
        self.after_assignment()
    }

    /// Step 0: every task's clock moves and its due timers fire; then a slice of profiles not yet
    /// evaluated under the definitions in force. Returns whether work remains: timers beyond this
    /// batch's budget, or profiles still to re-evaluate (the batch then gives messages as long
    /// as this step took, at least [`MIN_SHARE`], and closes at once when none is ready, rather
    /// than waiting `batch_max_wait` for them); whether it did any (timers fired or
    /// profiles re-evaluated); and when (wall clock, ms) the next timer of a partition whose
    /// clock follows the wall clock comes due, if within `horizon` (a batch that has taken
    /// nothing by then closes, so that the timer fires on time rather than up to
    /// `batch_max_wait` late).
    fn time_step(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        horizon: Duration,
    ) -> Result<(bool, bool, Option<i64>), Error> {
        let wall = now_ms();
        let horizon = horizon.as_millis().min(i64::MAX as u128) as i64;
        let mut wake: Option<i64> = None;
        let mut budget = self.max_profiles;
        for task in self.tasks.values_mut() {
            // A held partition's events wait, and so do its clock and timers.
            if task.held.is_some() {
                continue;
            }
            // Every topic at its high watermark; caught up: and nothing buffered or just
            // arrived.
            let at_end = self.follow_wall
                && task
                    .topics()
                    .all(|t| kafka::caught_up(consumer, t, task.partition, task.position(t)));
            let caught_up = at_end && !task.heads.flowing();
            // From when its clock follows the wall clock (wall ms), if nothing more arrives:
            // now, or once what just arrived has settled.
            let follows_from = if caught_up {
                Some(wall)
            } else if at_end {
                task.heads
                    .settles_in()
                    .map(|d| wall.saturating_add(d.as_millis() as i64))
            } else {
                None
            };
            if caught_up && !task.reached_end {
                task.reached_end = true;
                // The first time since this thread got the partition: from now on its clock
                // follows the wall clock whenever it is idle, and pending timers due by then
                // fire (after a replay, all at once). Positions and high watermarks as
                // librdkafka last heard them, to compare with the broker's own.
                let ends: Vec<String> = task
                    .topics()
                    .map(|t| {
                        let (_, hi) = kafka::watermarks(consumer, t, task.partition);
                        match task.position(t) {
                            Some(at) => format!("{t} at {at} of {hi}"),
                            None => format!("{t} at its end"),
                        }
                    })
                    .collect();
                info!(
                    partition = task.partition,
                    positions = %ends.join(", "),
                    "partition read to its end: its clock follows the wall clock when idle"
                );
            }
            let next = self.proc.fire_timers(
                task,
                &mut self.out,
                wall,
                (caught_up, follows_from),
                &mut budget,
                horizon,
            )?;
            if let Some(next) = next {
                wake = Some(wake.map_or(next, |w| w.min(next)));
            }
        }
        // The budget used up: more timers may be due.
        let timers_left = budget == 0;
        let mut worked = budget < self.max_profiles;
        let mut budget = self.max_profiles;
        let mut pending = 0;
        for task in self.tasks.values_mut() {
            if task.held.is_none() && self.proc.sweep(task, &mut self.out, &mut budget)? {
                pending += 1;
            }
        }
        worked |= budget < self.max_profiles;
        share(
            &self.metrics.reevaluation_pending,
            &mut self.shares.reevaluation_pending,
            pending,
        );
        Ok((timers_left || pending > 0, worked, wake))
    }

    /// One message from the consumer: buffered in its task; when the task has a run of
    /// [`DRAIN_RUN`] buffered since it last applied, every task applies what it can in
    /// event-time order ([`Self::drain_runs`]).
    fn on_message(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        msg: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<(), Error> {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(task) = self.tasks.get_mut(&partition) else {
            debug!(
                topic,
                partition, "message of a partition not assigned here; skipped"
            );
            return Ok(());
        };
        // Handed out before its partition was held (every topic of it was sought back to its
        // next message), or before a seek back to the last commit: it comes again.
        if task.held.is_some() {
            return Ok(());
        }
        if task.already_applied(topic, offset) {
            self.skipped += 1;
            return Ok(());
        }
        let Some(topic) = task.heads.topic(topic) else {
            debug!(
                topic,
                partition, "message of a topic not assigned here; skipped"
            );
            return Ok(());
        };
        // A repartition message is ordered by the time of the message that caused it.
        let header_time = || {
            use rdkafka::message::Headers;
            let headers = msg.headers()?;
            let h = headers
                .iter()
                .find(|h| h.key == collector::EVENT_TIME_HEADER)?;
            std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok()
        };
        let timestamp = if *topic == *self.proc.topics.repartition {
            header_time().or_else(|| msg.timestamp().to_millis())
        } else {
            msg.timestamp().to_millis()
        };
        let full = task.heads.push(
            Buffered {
                topic: topic.clone(),
                offset,
                key: msg.key().map(Box::from),
                payload: Box::from(msg.payload().unwrap_or(&[])),
                timestamp,
            },
            self.buffer_limit,
        );
        task.undrained += 1;
        let run_complete = task.undrained >= DRAIN_RUN;
        if full {
            // Its queue grew past the limit while another topic is awaited: stop fetching it
            // until the queue has drained to half (`drain`).
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            debug!(
                %topic,
                partition,
                buffered = task.heads.len(),
                "fetching paused: the topic's queue is full while another topic is awaited"
            );
            consumer.pause(&tpl).map_err(|e| {
                Error::transient("broker", format!("pausing {topic}/{partition}: {e}"))
            })?;
        }
        // Applied a run at a time: when one task's is complete (then every task's, so that a
        // quiet partition's messages do not wait for the busy one's to fill), or when the
        // consumer has nothing ready (`batch`).
        if !run_complete {
            return Ok(());
        }
        self.drain_runs(consumer)
    }

    /// [`Self::drain`] for every task with messages buffered since its last drain.
    fn drain_runs(&mut self, consumer: &StreamConsumer<KafkaContext>) -> Result<(), Error> {
        let undrained: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.undrained > 0)
            .map(|(p, _)| *p)
            .collect();
        for p in undrained {
            self.drain(consumer, p)?;
        }
        Ok(())
    }

    /// Applies the messages task `partition` has buffered, in event-time order, until it must
    /// wait for one of its topics (or holds for the schema registry).
    fn drain(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        partition: i32,
    ) -> Result<(), Error> {
        // The task may change this many profiles in all (those it changed count).
        let mut limit = self.message_budget();
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(());
        };
        limit += task.profiles.changed_count();
        if std::mem::take(&mut task.undrained) > 1 && task.held.is_none() {
            task.prefetch_buffered(PREFETCH_BUFFERED, &self.store);
        }
        while task.held.is_none() {
            if task.profiles.changed_count() >= limit {
                // The batch has changed as many profiles as it may: the rest waits for the
                // next batch, which drains it first.
                task.undrained = task.heads.len();
                break;
            }
            let (next, ran_out) = task.next_buffered(self.max_idle, |t, at| {
                kafka::caught_up(consumer, t, partition, at)
            });
            self.metrics.order_forced.inc_by(ran_out);
            let Some((i, m)) = next else { break };
            if let Some(id) = self.proc.awaited_schema(&m.topic, &m.payload) {
                // Not applied: back at the head of its queue, where the hold seeks to.
                let at = (m.topic.clone(), m.offset);
                task.heads.unpop(i, m);
                hold::hold(consumer, task, id, (&at.0, at.1))?;
                if let Some(registry) = &self.registry {
                    hold::look_up(
                        registry,
                        &mut self.proc.catalog,
                        id,
                        &self.lookups,
                        &self.metrics,
                    );
                }
                self.publish_readiness();
                return Ok(());
            }
            self.batch_started.get_or_insert_with(Instant::now);
            let incoming = Incoming {
                topic: &m.topic,
                partition,
                offset: m.offset,
                key: m.key.as_deref(),
                payload: &m.payload,
                timestamp: m.timestamp,
            };
            self.proc.apply(task, &mut self.out, &incoming)?;
            // An input topic's message (a forwarded one counted where it was read first).
            if let (Some(f), Some(t)) = (self.proc.topics.family(&m.topic), m.timestamp) {
                task.record_times.push((f, t));
            }
        }
        // Topics paused for a full queue that has drained to half fetch again.
        let resume = task.heads.drained_to_resume(self.buffer_limit);
        if !resume.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for t in &resume {
                tpl.add_partition(t, partition);
            }
            debug!(
                topics = ?resume,
                partition,
                buffered = task.heads.len(),
                "fetching resumed: the queue drained to half"
            );
            consumer.resume(&tpl).map_err(|e| {
                Error::transient("broker", format!("resuming partition {partition}: {e}"))
            })?;
        }
        Ok(())
    }

    /// [`Self::drain`] for every task: a topic waited for may be read to its end, or waited
    /// for long enough, since the last message.
    fn drain_all(&mut self, consumer: &StreamConsumer<KafkaContext>) -> Result<(), Error> {
        let buffered: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.heads.len() > 0)
            .map(|(p, _)| *p)
            .collect();
        for p in buffered {
            self.drain(consumer, p)?;
        }
        Ok(())
    }

    /// Takes a registry answer in and resumes the partitions it held.
    fn take_lookup(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        (id, lookup): (u32, Lookup),
    ) -> Result<(), Error> {
        match &lookup {
            Lookup::Found(json) => self.proc.catalog.resolve_id(id, Some(json)),
            Lookup::NotFound => self.proc.catalog.resolve_id(id, None),
        }
        for task in self.tasks.values_mut() {
            if task.held.is_some_and(|h| self.proc.catalog.id_settled(h)) {
                hold::release(consumer, task)?;
            }
        }
        self.publish_readiness();
        Ok(())
    }

    /// Whether the open batch has anything to commit.
    fn has_changes(&self) -> bool {
        !self.meta.is_empty() || self.tasks.values().any(Task::has_changes)
    }

    /// A transient fault: every task goes back to its last commit (its messages are read again
    /// and their outputs sent again, with the same ids), and the loop waits before retrying.
    async fn recover(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        what: &'static str,
        detail: String,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Error> {
        self.metrics
            .transient_faults
            .with_label_values(&[what])
            .inc();
        warn!(what, error = %detail, retry_in = ?self.backoff, "transient fault: the open batch is rolled back and retried");
        self.fault = Some(format!("{what}: {detail}"));
        self.fault_since = Some(Instant::now());
        self.publish_readiness();
        self.out.discard();
        self.meta.clear();
        self.batch_started = None;
        if what == "producer" {
            // The producer instance cannot go on (fenced, or its idempotence state lost): a new
            // one sends the batch again.
            self.out.renew_producer()?;
        }
        for task in self.tasks.values_mut() {
            for (topic, to) in task.rollback(&self.store)? {
                seek_back(consumer, &topic, task.partition, to)?;
            }
            // Every topic resumes (a no-op when not paused): a hold that failed half-way, or a
            // queue that was full, must not leave one paused. A message still waiting for the
            // registry holds it again.
            task.held = None;
            resume_all(consumer, task);
        }
        self.publish_readiness();
        // Definitions put in force in the dropped batch are put in force again.
        self.restart_definitions_if_needed()?;
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = stopped(stop) => { self.stopping = true; }
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        Ok(())
    }

    /// A consumer error: fatal ones stop the worker; transient ones (the broker unreachable)
    /// are reported on `/readyz` and logged now and then, while librdkafka reconnects.
    fn on_consumer_error(&mut self, e: &rdkafka::error::KafkaError) -> Result<(), Error> {
        if kafka::class_of_consumer_error(e) == kafka::Class::Fatal {
            return Err(Error::fatal(format!("the Kafka consumer failed: {e}")));
        }
        let (count, last) = &mut self.consumer_errors;
        *count += 1;
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            warn!(error = %e, errors_since_last_message = *count, "consumer error; librdkafka retries");
            *last = Some(Instant::now());
        }
        if kafka::is_connectivity(e) {
            self.broker_down = Some(format!("broker: {e}"));
            self.publish_readiness();
        }
        Ok(())
    }

    /// The broker connection as librdkafka's statistics see it (every 5 s): with none up,
    /// `/readyz` says so even when nothing is being consumed or produced; when one is up again
    /// and no consumer error came for a while, a broker fault noted from consumer errors is over.
    fn check_brokers(&mut self, consumer: &StreamConsumer<KafkaContext>) {
        let up = consumer.context().brokers_up.load(Ordering::Relaxed);
        let quiet = self
            .consumer_errors
            .1
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if !up && self.broker_down.is_none() {
            self.broker_down = Some("broker: no broker connection is up".into());
            self.publish_readiness();
        } else if up && quiet && self.broker_down.is_some() {
            info!("broker connection up again");
            self.broker_down = None;
            self.consumer_errors = (0, None);
            self.publish_readiness();
        }
    }

    /// Reads the schemas directory again (SIGHUP). Refused files are logged with the reason;
    /// the others, and every schema compiled in or from the registry, stay in force.
    fn reload_schemas(&mut self) {
        let Some(dir) = self.schemas_dir.clone() else {
            return;
        };
        let (loaded, refused) = crate::schemas::load(&mut self.proc.catalog, &dir);
        for e in &refused {
            warn!(error = %e, "writer schema refused; its last good version stays in force");
        }
        let result = if refused.is_empty() { "ok" } else { "refused" };
        self.metrics
            .schema_reloads
            .with_label_values(&[result])
            .inc();
        info!(dir = %dir.display(), loaded = loaded.len(), refused = refused.len(), "schemas directory reloaded");
    }

    /// Reads the segments file again (SIGHUP). Invalid definitions are logged with their
    /// line:column and the ones in force stay, whatever the file holds.
    fn reload_definitions(&mut self) {
        let path = self.segments_file.clone();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|src| parse_definitions(&src).map(|set| (set, src)));
        match parsed {
            Err(e) => {
                self.metrics
                    .definition_reloads
                    .with_label_values(&["invalid"])
                    .inc();
                warn!(file = %path.display(), error = %e, "segment definitions not reloaded: the ones in force stay");
            }
            Ok((set, src)) => {
                if set.fingerprint() == self.proc.defs_version {
                    self.metrics
                        .definition_reloads
                        .with_label_values(&["unchanged"])
                        .inc();
                    info!("segment definitions reloaded: no rule changed");
                    self.proc.core.set_segments(Arc::new(set));
                    self.api.set_segments(self.proc.core.segment_set());
                    return;
                }
                self.metrics
                    .definition_reloads
                    .with_label_values(&["applied"])
                    .inc();
                self.start_definitions(set, &src);
            }
        }
    }

    /// Puts definitions in force; every profile is re-evaluated under them (see
    /// [`Processor::sweep`]).
    fn start_definitions(&mut self, set: crate::segments::SegmentSet, src: &str) {
        let old = self
            .store
            .meta(DEFINITIONS_KEY)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| parse_definitions(&s).ok())
            .unwrap_or_else(|| self.proc.core.segments().clone());
        let (added, changed, removed) = set.diff(&old);
        self.metrics.know(&set);
        info!(
            ?added,
            ?changed,
            ?removed,
            "segment definitions changed: re-evaluating every profile"
        );
        self.proc.defs_version = set.fingerprint();
        self.proc.core.set_segments(Arc::new(set));
        self.api.set_segments(self.proc.core.segment_set());
        self.defs_src = src.to_owned();
        self.meta
            .push((DEFINITIONS_KEY.to_vec(), Some(src.as_bytes().to_vec())));
    }

    /// The definitions in force differ from the stored ones (and no write of them is pending):
    /// write them with the next commit, and re-evaluate.
    fn restart_definitions_if_needed(&mut self) -> Result<(), Error> {
        let stored = self
            .store
            .meta(DEFINITIONS_KEY)?
            .and_then(|b| String::from_utf8(b).ok());
        let stored_version = stored
            .as_deref()
            .and_then(|s| parse_definitions(s).ok())
            .map(|s| s.fingerprint());
        if stored_version != Some(self.proc.defs_version) && self.meta.is_empty() {
            let set = self.proc.core.segments().clone();
            let src = self.defs_src.clone();
            self.start_definitions(set, &src);
        }
        Ok(())
    }

    fn log_progress(&mut self, force: bool) {
        let now = Instant::now();
        let (last, last_events) = self.last_log;
        let elapsed = now.duration_since(last);
        if !force && elapsed < Duration::from_secs(5) {
            return;
        }
        let p = &self.proc.progress;
        let rate = (p.events - last_events) as f64 / elapsed.as_secs_f64().max(1e-3);
        self.metrics
            .state_bytes
            .set(self.store.estimated_bytes() as i64);
        self.metrics
            .timers_pending
            .set(self.store.estimated_timers() as i64);
        let memory = self.store.memory();
        let parts = [memory.memtables, memory.block_cache, memory.table_readers];
        for (part, bytes) in crate::metrics::STATE_MEMORY_PARTS.iter().zip(parts) {
            self.metrics
                .state_memory
                .with_label_values(&[part])
                .set(bytes as i64);
        }
        let heaps = crate::heap::read();
        if crate::heap::should_trim(&heaps) {
            // Off the processing thread: a trim took up to 26 ms in the bench.
            let free_mib = heaps.c_free >> 20;
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                crate::heap::trim_now();
                debug!(
                    free_mib,
                    millis = started.elapsed().as_millis() as u64,
                    "the C libraries' freed memory given back to the OS"
                );
            });
        }
        for (part, bytes) in crate::heap::PARTS.iter().zip(heaps.parts()) {
            self.metrics
                .heap
                .with_label_values(&[part])
                .set(bytes as i64);
        }
        let profiles = self.store.estimated_profiles();
        self.metrics.state_profiles.set(profiles as i64);
        let sizes: Vec<String> = self
            .segment_sizes
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        info!(
            thread = self.slot,
            events = p.events,
            events_per_sec = rate.round(),
            dead_lettered = p.dead,
            audience_changes = p.changes,
            journey_triggers = p.triggers,
            profiles,
            segments = %sizes.join(" "),
            "progress"
        );
        self.last_log = (now, p.events);
    }
}

/// Resumes every assigned topic of `task`'s partition number (a no-op for those not paused).
fn resume_all(consumer: &StreamConsumer<KafkaContext>, task: &Task) {
    let mut tpl = TopicPartitionList::new();
    for t in task.topics() {
        tpl.add_partition(t, task.partition);
    }
    if let Err(e) = consumer.resume(&tpl) {
        warn!(partition = task.partition, error = %e, "resuming after a rollback failed");
    }
}

/// Seeks `topic`/`partition` back to `to`. A failed seek would leave the fetch position after
/// messages that are no longer applied: fatal (a restart resumes from the last commit), never a
/// silent gap.
fn seek_back(
    consumer: &StreamConsumer<KafkaContext>,
    topic: &str,
    partition: i32,
    to: Offset,
) -> Result<(), Error> {
    consumer
        .seek(topic, partition, to, Duration::from_secs(10))
        .map_err(|e| Error::fatal(format!("seeking {topic}/{partition} back to {to:?}: {e}")))
}

/// Parses segment definitions. A parser panic (a bug) is turned into an error naming it, so a
/// SIGHUP with an odd file never stops a running worker.
fn parse_definitions(src: &str) -> Result<crate::segments::SegmentSet, String> {
    std::panic::catch_unwind(|| crate::segments::SegmentSet::parse(src))
        .map_err(|_| {
            "the definitions parser failed on this file (a bug: please report it with the file)"
                .to_string()
        })?
        .map_err(|e| e.to_string())
}

/// The writer schemas (built in and from the schemas directory), the registry client, and the
/// registry ids of the output schemas when outputs are Confluent-framed (registered now).
async fn schemas_and_registry(
    settings: &Settings,
) -> anyhow::Result<(SchemaCatalog, Option<Arc<Registry>>, Option<[u32; 3]>)> {
    let c = &settings.config;
    let mut catalog = SchemaCatalog::builtin().clone();
    if let Some(dir) = &c.schemas.dir {
        let (loaded, refused) = crate::schemas::load(&mut catalog, dir);
        if !refused.is_empty() {
            bail!("schemas.dir {}: {}", dir.display(), refused.join("; "));
        }
        info!(dir = %dir.display(), schemas = loaded.len(), "writer schemas loaded");
    }
    let registry =
        Registry::from_config(&c.schema_registry, settings.registry_timeout)?.map(Arc::new);
    let Some(reg) = registry.clone() else {
        return Ok((catalog, None, None));
    };
    catalog.enable_registry();
    if c.output.framing != "confluent" {
        return Ok((catalog, registry, None));
    }
    let topics = [
        (&c.topics.audience_changes, codec::AUDIENCE_CHANGE),
        (&c.topics.journey_triggers, codec::JOURNEY_TRIGGER),
        (&c.topics.dead_letter, codec::DEAD_LETTER),
    ];
    let mut ids = [0u32; 3];
    for (i, (topic, record)) in topics.into_iter().enumerate() {
        let subject = format!("{topic}-value");
        let schema = SchemaCatalog::builtin()
            .reader_json(record)
            .expect("output schemas are built in");
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        ids[i] = loop {
            let r = reg.clone();
            let s = subject.clone();
            match tokio::task::spawn_blocking(move || r.register(&s, schema)).await? {
                Ok(id) => break id,
                Err(e) if attempt < 8 && !e.is_permanent() => {
                    warn!(subject = %subject, error = %e, retry_in = ?backoff, "registering an output schema failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => bail!("registering the output schema {record} under {subject}: {e}"),
            }
        };
        info!(subject = %subject, schema_id = ids[i], "output schema registered");
    }
    Ok((catalog, registry, Some(ids)))
}

/// Runs the worker until `shutdown` resolves or a fatal error occurs. `reload` is raised on
/// SIGHUP: the schemas directory and the segments file are read again between batches.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    api: Arc<Api>,
    reload: Arc<AtomicU64>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let c = &settings.config;
    metrics.know(&settings.segments);
    std::fs::create_dir_all(&c.state.path)
        .with_context(|| format!("creating state directory {}", c.state.path.display()))?;
    let store = Arc::new(Store::open(&c.state.path, &settings.store)?);

    // Schemas and the registry first: a configuration they refuse stops the worker before it
    // joins the group.
    let (catalog, registry, output_ids) = schemas_and_registry(&settings).await?;
    let pcfg = kafka::producer_config(&settings);

    let threads = settings.threads;
    metrics.processing_threads.set(threads as i64);
    // Each processing thread is a member of the group with a consumer of its own (it is
    // given whole partition numbers); they share the store.
    let consumer_for = |slot: usize| -> anyhow::Result<StreamConsumer<KafkaContext>> {
        let context = KafkaContext {
            store: store.clone(),
            metrics: metrics.clone(),
            start_from: if c.consumer.start_from == "latest" {
                Offset::End
            } else {
                Offset::Beginning
            },
            rebalances: std::sync::Mutex::new(Vec::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            brokers_up: std::sync::atomic::AtomicBool::new(true),
            pause_on_assign: c.state.changelog,
            topics: [
                &c.topics.repartition,
                &c.topics.storefront,
                &c.topics.backoffice,
                &c.topics.profile,
            ]
            .map(|t| t.to_string())
            .to_vec(),
        };
        kafka::consumer_config(&settings, slot)
            .create_with_context(context)
            .context("creating the Kafka consumer")
    };
    let first = consumer_for(0)?;
    let inputs = [
        c.topics.storefront.as_str(),
        c.topics.backoffice.as_str(),
        c.topics.profile.as_str(),
    ];
    let partitions = blocking(|| kafka::input_partitions(&first, &inputs))?;
    kafka::ensure_internal_topic(
        &settings,
        &first,
        (&c.topics.repartition, "repartition"),
        partitions,
        &[],
    )
    .await?;
    if c.state.changelog {
        kafka::ensure_internal_topic(
            &settings,
            &first,
            (&c.topics.changelog, "changelog"),
            partitions,
            &kafka::CHANGELOG_CONFIG,
        )
        .await?;
    }
    // The group assigns the repartition topic's partitions; each stands for its number of every
    // topic (`KafkaContext::topics_of`).
    let subscribed = [c.topics.repartition.as_str()];
    // The HTTP API's deletions go through a producer of their own.
    let api_producer: FutureProducer<ProducerLogs> = pcfg
        .create_with_context(ProducerLogs)
        .context("creating the Kafka producer")?;
    api.set_segments(Arc::new(settings.segments.clone()));
    api.attach(crate::http::Attached {
        store: store.clone(),
        partitions,
        producer: api_producer,
        repartition: c.topics.repartition.clone(),
        group: c.consumer.group_id.clone(),
        kafka: kafka::client_config(&settings),
    });
    info!(topics = ?inputs, group = %c.consumer.group_id, segments = settings.segments.len(), threads, auto_threads = c.processing.threads == 0, "worker started");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    }
    let defs_src = std::fs::read_to_string(&c.segments.file)
        .with_context(|| format!("reading {}", c.segments.file.display()))?;
    let reload_seen = reload.load(Ordering::Relaxed);
    let healths = health.parts(threads);
    let mut consumers = vec![first];
    for slot in 1..threads {
        consumers.push(consumer_for(slot)?);
    }
    let claims = Arc::new(standby::Partitions::default());
    // Standby copies of the partitions the other workers hold, on a thread of their own
    // (stopped when this function returns, however it returns).
    let follower = if c.state.changelog && c.state.standby {
        let restorer = changelog::Restorer::new(
            c.topics.changelog.clone(),
            kafka::client_config(&settings),
            kafka::producer_config(&settings),
            &c.consumer.group_id,
            metrics.clone(),
        );
        Some(
            standby::Follower::start(restorer, store.clone(), claims.clone(), partitions)
                .context("starting the standby follower")?,
        )
    } else {
        None
    };
    let mut loops = Vec::with_capacity(threads);
    for (slot, consumer) in consumers.into_iter().enumerate() {
        consumer
            .subscribe(&subscribed)
            .context("subscribing to the repartition topic")?;
        let (lookups_tx, lookups) = tokio::sync::mpsc::unbounded_channel();
        let out = Collector::new(
            pcfg.clone(),
            [
                c.topics.audience_changes.clone(),
                c.topics.journey_triggers.clone(),
                c.topics.dead_letter.clone(),
                c.topics.repartition.clone(),
            ],
            output_ids,
            kafka::producer_max_bytes(&settings),
            metrics.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let proc = Processor::new(
            settings.core(),
            catalog.clone(),
            store.clone(),
            metrics.clone(),
            InputTopics {
                storefront: c.topics.storefront.clone(),
                backoffice: c.topics.backoffice.clone(),
                profile: c.topics.profile.clone(),
                repartition: c.topics.repartition.clone(),
            },
            partitions,
            settings.segments.fingerprint(),
        );
        let mut w = Worker {
            proc,
            out,
            tasks: BTreeMap::new(),
            assigned: Vec::new(),
            store: store.clone(),
            metrics: metrics.clone(),
            health: healths[slot].clone(),
            slot,
            shares: Shares::default(),
            api: api.clone(),
            registry: registry.clone(),
            lookups: lookups_tx,
            schemas_dir: c.schemas.dir.clone(),
            segments_file: c.segments.file.clone(),
            reload: reload.clone(),
            reload_seen,
            defs_src: defs_src.clone(),
            changelog: c.state.changelog.then(|| c.topics.changelog.clone()),
            restorer: c.state.changelog.then(|| {
                Arc::new(changelog::Restorer::new(
                    c.topics.changelog.clone(),
                    kafka::client_config(&settings),
                    kafka::producer_config(&settings),
                    &c.consumer.group_id,
                    metrics.clone(),
                ))
            }),
            claims: claims.clone(),
            restoring: BTreeMap::new(),
            cancelled: BTreeMap::new(),
            restamped: Instant::now(),
            meta: Vec::new(),
            segment_sizes: BTreeMap::new(),
            // Each thread gets an equal share of the profile cache.
            cache_profiles: c.state.cache_profiles / threads,
            cache_memory: settings.cache_memory_bytes / threads,
            hasher: overlay::KeyHasher::random(),
            lateness: settings.allowed_lateness.as_millis() as i64,
            follow_wall: c.processing.wall_clock,
            max_messages: c.processing.batch_max_messages,
            max_profiles: c.processing.batch_max_profiles,
            changed_before_messages: 0,
            max_idle: settings.max_idle,
            linger: settings.batch_linger,
            buffer_limit: c.processing.batch_max_profiles.clamp(1_000, 100_000),
            fault: None,
            fault_since: None,
            broker_down: None,
            consumer_errors: (0, None),
            backoff: Duration::from_secs(1),
            stopping: false,
            skipped: 0,
            batch_started: None,
            last_log: (Instant::now(), 0),
        };
        // Definitions changed since profiles were last evaluated: re-evaluate them all.
        w.restart_definitions_if_needed()?;
        let max_wait = settings.batch_max_wait;
        let ending = StopOnDrop(stop_tx.clone());
        let stop = stop.clone();
        // A thread of its own, with a runtime of its own: the loop blocks it for RocksDB and
        // reads it alone. As a task of the shared runtime, each `block_in_place` handed the
        // runtime's worker to another thread, and the loop moved between six of them (its
        // allocations freed on other threads than made them, its caches cold).
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("tailor-proc-{}", w.slot))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the processing thread");
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rt.block_on(async move {
                        let _ending = ending;
                        w.run_loop(consumer, lookups, stop, max_wait).await
                    })
                }));
                // Restores still running were cancelled at the loop's end (after a panic, when
                // the worker was dropped): a few seconds to end, then they are left to the
                // process's exit.
                rt.shutdown_timeout(RESTORE_GRACE);
                let _ = done.send(r.map_err(|p| panic_message(p.as_ref())));
            })
            .context("starting a processing thread")?;
        loops.push(finished);
    }
    // The worker runs until every thread has stopped; one that stops (a fatal error, a panic)
    // stops the others.
    let mut result = Ok(());
    let mut members = Vec::with_capacity(threads);
    for (slot, handle) in loops.into_iter().enumerate() {
        let r = match handle.await {
            Ok(Ok((r, consumer))) => {
                members.push(consumer);
                r
            }
            Ok(Err(panic)) => Err(anyhow::anyhow!(
                "processing thread {slot} panicked: {panic}"
            )),
            Err(_) => Err(anyhow::anyhow!(
                "processing thread {slot} ended without a result"
            )),
        };
        if result.is_ok() {
            result = r;
        }
    }
    if let Some(follower) = follower {
        blocking(|| follower.stop());
    }
    // Every commit on disk (without the write-ahead log they may be in the memtables only): the
    // next start has nothing to restore, and `tailor profile` reads the state as it stopped.
    if let Err(e) = blocking(|| store.flush(true)) {
        warn!(error = %e, "flushing the state at the stop (the next start restores what is missing from the changelog)");
    }
    // The threads leave the group one after another (closing a consumer waits for its leave):
    // the development broker lost track of the group when several members left at once. With
    // the broker unreachable librdkafka's close can wait much longer than a stop may take, so
    // the leave gets LEAVE_GRACE; state and offsets are committed already, and without the
    // leave the group moves the partitions after its session timeout.
    let leave = std::thread::Builder::new()
        .name("tailor-leave".into())
        .spawn(move || {
            for consumer in members {
                consumer.unsubscribe();
                drop(consumer);
            }
        });
    match leave {
        Ok(leave) => {
            let deadline = Instant::now() + LEAVE_GRACE;
            while !leave.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !leave.is_finished() {
                warn!(
                    grace_secs = LEAVE_GRACE.as_secs(),
                    "stopping without leaving the consumer group (the broker does not answer): its partitions move after the session timeout"
                );
            }
        }
        Err(e) => warn!(error = %e, "stopping without leaving the consumer group"),
    }
    info!("worker stopped");
    result
}

/// How long a stop waits for the consumers to leave the group.
const LEAVE_GRACE: Duration = Duration::from_secs(10);

/// Resolves once the worker is asked to stop (holding no guard of the channel).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Stops every processing thread when one ends, however it ends.
struct StopOnDrop(Arc<tokio::sync::watch::Sender<bool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

impl Worker {
    /// One processing thread: batches until asked to stop or a fatal error; returns its
    /// consumer, still in the group.
    async fn run_loop(
        mut self,
        consumer: StreamConsumer<KafkaContext>,
        mut lookups: tokio::sync::mpsc::UnboundedReceiver<(u32, Lookup)>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        max_wait: Duration,
    ) -> (anyhow::Result<()>, StreamConsumer<KafkaContext>) {
        let w = &mut self;
        let result: Result<(), Error> = async {
            while !w.stopping {
                match w.batch(&consumer, &mut lookups, &mut stop, max_wait).await {
                    Ok(()) => {}
                    Err(Error::Transient { what, detail }) => {
                        w.recover(&consumer, what, detail, &mut stop).await?
                    }
                    Err(fatal) => return Err(fatal),
                }
                w.log_progress(false);
            }
            Ok(())
        }
        .await;

        w.stopping = true;
        w.publish_readiness();
        // Restores still running stop at their next record, and write nothing more.
        for r in w.restoring.values() {
            r.cancel.store(true, Ordering::Relaxed);
        }
        let result = result.map_err(|e| match e {
            Error::Fatal(e) => e,
            transient => anyhow::anyhow!("{transient}"),
        });
        if let Err(e) = &result {
            error!(thread = w.slot, error = %format!("{e:#}"), "worker stopped on a fatal error; nothing after the last commit is acknowledged");
        }
        w.log_progress(true);
        if let Err(e) = w.out.producer().flush(Duration::from_secs(10)) {
            warn!(error = %e, "producer flush at shutdown");
        }
        // `run` takes the consumer out of the group (after the other threads' have stopped).
        (result, consumer)
    }
}

impl Worker {
    /// Without the write-ahead log, what the commits wrote reaches RocksDB's files at least
    /// every flush interval (the changelog holds it meanwhile): one thread asks for the flush.
    /// A crash falls back to the last flush, and the restart catches up from the changelog
    /// positions on disk, if they are recent: a position older than the changelog keeps
    /// deletions for means a whole restore. A partition idle for a day has an old position
    /// though its store is level with the changelog, so each thread stamps its partitions'
    /// positions afresh every interval (the owner is the changelog's only writer; a partition
    /// being restored is left alone: its restore writes its position).
    fn flush_state_if_due(&mut self) -> Result<(), Error> {
        let store = self.store.clone();
        if store.flush_due() {
            if let Err(e) = blocking(|| store.flush(false)) {
                store.flush_failed();
                warn!(error = %e, "RocksDB did not start a flush of the state; asked again at the next batch (the changelog holds what is not flushed)");
            }
        }
        if store.write_ahead_log() || self.restamped.elapsed() < store.flush_interval() {
            return Ok(());
        }
        self.restamped = Instant::now();
        let mut positions = Vec::new();
        for &p in self.tasks.keys() {
            if self.restoring.contains_key(&p) || self.cancelled.contains_key(&p) {
                continue;
            }
            if let Some((n, _)) = store.changelog_position(p)? {
                positions.push((p, n));
            }
        }
        if !positions.is_empty() {
            blocking(|| store.write(&[], &[], &positions))?;
        }
        Ok(())
    }

    /// One batch: time, consume until full or `max_wait`, deliver, commit.
    async fn batch(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        lookups: &mut tokio::sync::mpsc::UnboundedReceiver<(u32, Lookup)>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        max_wait: Duration,
    ) -> Result<(), Error> {
        // One deadline per batch (a timer per message showed in profiles).
        let deadline = tokio::time::sleep(max_wait);
        tokio::pin!(deadline);
        self.proc.wall = now_ms();
        self.flush_state_if_due()?;
        self.check_brokers(consumer);
        self.finish_restores(consumer).await?;
        if self.reload_requested() {
            self.reload_schemas();
            self.reload_definitions();
        }
        // "No such id" answers are asked again after a while (a registry replica may have
        // lagged; garbage ids must not pile up).
        self.proc
            .catalog
            .expire_unknown_ids(Duration::from_secs(60));
        // Time first: the partitions' clocks move and the timers due by then fire; then
        // profiles not yet evaluated under the definitions in force, a slice per batch.
        let t_time = Instant::now();
        let (more, worked, wake) = self.time_step(consumer, max_wait)?;
        if worked {
            // The batch's time includes its timers, also timed as a phase of their own.
            self.batch_started.get_or_insert(t_time);
            self.metrics
                .phase_seconds
                .with_label_values(&["timers"])
                .observe(t_time.elapsed().as_secs_f64());
        }
        // Timers (or re-evaluation) left over: a batch taking messages takes them for as long as
        // its timers took (at least 5 ms, even past `batch_max_wait`) or until its budget is
        // used up; an idle one closes as soon as no message is ready. Then the next fires more.
        // A backlog of timers (every timer of a partition read to its end after a replay) shares
        // the thread with the other partitions' messages rather than holding them to 5 ms a
        // batch, and does not wait for messages that do not come.
        if more {
            let now = tokio::time::Instant::now();
            let at = (now + t_time.elapsed().max(MIN_SHARE))
                .min(deadline.deadline().max(now + MIN_SHARE));
            deadline.as_mut().reset(at);
        }
        // A live partition's timer comes due before the batch would close: if the batch is
        // still idle then (no message, nothing changed), it closes, and the next batch fires
        // the timer. A millisecond after the due time (the next batch reads the clock in whole
        // milliseconds), and at least `TIMER_WAKE_GAP` after this batch's start, so that timers
        // due close together fire together (one commit, not one each).
        let wake_at = wake.filter(|_| !more).map(|at| {
            let wait = Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64 + 1);
            tokio::time::Instant::now() + wait.max(TIMER_WAKE_GAP)
        });
        let woken = tokio::time::sleep_until(wake_at.unwrap_or_else(|| deadline.deadline()));
        tokio::pin!(woken);
        if self.out.has_queued() {
            self.batch_started.get_or_insert_with(Instant::now);
            self.out.send().await?;
        }
        let repoll = tokio::time::sleep(REPOLL);
        tokio::pin!(repoll);
        let mut messages = 0usize;
        // The batch's latest close; a batch that has caught up closes sooner (`linger`).
        let closes_at = deadline.deadline();
        let mut lingering = false;
        // Timers fired or profiles re-evaluated (or, below, messages the last batch left
        // buffered applied): committed once caught up, like messages.
        let mut changed = self.has_changes();
        // What the timers and the re-evaluation changed has budgets of its own.
        self.changed_before_messages = self.changed_profiles();
        loop {
            tokio::select! {
                biased;
                _ = stopped(stop) => { self.stopping = true; break; }
                _ = &mut deadline => break,
                // Only an idle batch: one taking messages (a backlog on another partition)
                // closes as before.
                _ = &mut woken, if wake_at.is_some() && messages == 0 && !changed => break,
                Some(answer) = lookups.recv() => self.take_lookup(consumer, answer)?,
                r = consumer.recv() => {
                    let msg = match r {
                        Err(e) => {
                            self.apply_rebalances(consumer)?;
                            self.on_consumer_error(&e)?;
                            continue;
                        }
                        Ok(m) => m,
                    };
                    if self.broker_down.is_some() {
                        info!(errors = self.consumer_errors.0, "consuming again");
                        self.consumer_errors = (0, None);
                        self.broker_down = None;
                        self.publish_readiness();
                    }
                    self.apply_rebalances(consumer)?;
                    self.on_message(consumer, &msg)?;
                    drop(msg);
                    messages += 1;
                    self.out.send().await?;
                    if messages >= self.max_messages || self.message_budget() == 0 {
                        break;
                    }
                }
                // The two below are polled only when no message is ready (`biased`): nothing
                // per message. A message applies the rebalances recorded so far itself.
                // A rebalance recorded, or a restore finished: applied now; an idle batch
                // closes, so that the next opens what is restored (a batch under way opens
                // it at its end, as before).
                _ = consumer.context().wake.notified() => {
                    self.apply_rebalances(consumer)?;
                    let restored = self.restoring.values().any(Restoring::finished);
                    if restored && messages == 0 && !changed {
                        break;
                    }
                }
                // The next turn polls the consumer afresh (its rebalance callback runs then).
                _ = &mut repoll => {
                    repoll.as_mut().reset(tokio::time::Instant::now() + REPOLL);
                }
                // No message ready: the runs buffered so far are applied.
                _ = std::future::ready(()), if self.tasks.values().any(|t| t.undrained > 0) => {
                    // A revocation may have come in the consumer's poll: its partitions' tasks
                    // go first (nothing of theirs is applied here any more).
                    self.apply_rebalances(consumer)?;
                    self.drain_runs(consumer)?;
                    self.out.send().await?;
                    if self.message_budget() == 0 {
                        break;
                    }
                    changed |= self.has_changes();
                }
                // Every other branch pending: most often no message is waiting, the thread
                // has caught up (sometimes the consumer's poll took a statistics or commit
                // event instead, and a batch under load closes a little early). Committing
                // then, `batch_linger` after, rather than at `batch_max_wait`, keeps the
                // committed state (profiles served, offsets) close to the stream below the
                // maximum rate: a batch holds what arrived during the previous commit, so
                // batches grow with the load. (Outputs are sent as the batch goes.)
                _ = std::future::ready(()), if (messages > 0 || changed || more) && !lingering => {
                    lingering = true;
                    // Timers wait: an idle batch closes now, one taking messages goes on to
                    // its share (the deadline) or its budget.
                    if more {
                        if messages == 0 {
                            break;
                        }
                        continue;
                    }
                    // Messages held for event-time order across topics are applied at a later
                    // drain or at the batch's end: such a batch stays open as before.
                    if self.tasks.values().any(|t| t.heads.len() > 0) {
                        continue;
                    }
                    if self.linger.is_zero() {
                        break;
                    }
                    deadline
                        .as_mut()
                        .reset((tokio::time::Instant::now() + self.linger).min(closes_at));
                }
            }
        }
        // Rebalances can also arrive while no message does.
        self.apply_rebalances(consumer)?;
        // A topic waited for may have been read to its end, or waited for long enough.
        if !self.stopping {
            self.drain_all(consumer)?;
            if self.out.has_queued() {
                self.out.send().await?;
            }
        }
        if self.skipped > 0 {
            warn!(
                messages = self.skipped,
                "messages below the position already applied were skipped (a topic truncated or recreated below the stored offset?)"
            );
            self.skipped = 0;
        }
        if self.has_changes() {
            self.flush(consumer, stop).await?;
        } else if self.fault.is_some()
            && self.fault_since.is_none_or(|t| t.elapsed() >= FAULT_QUIET)
        {
            // Nothing left to redo after a transient fault (its partitions moved, or they are
            // idle), and no fault since: over.
            self.fault = None;
            self.backoff = Duration::from_secs(1);
            self.publish_readiness();
        }
        Ok(())
    }

    /// Profiles the open batch has changed or removed so far, over this thread's tasks (each
    /// key once: [`overlay::Profiles::changed_count`]).
    fn changed_profiles(&self) -> usize {
        self.tasks
            .values()
            .map(|t| t.profiles.changed_count())
            .sum()
    }

    /// How many more profiles the open batch's messages may change
    /// (`processing.batch_max_profiles`); at 0 the batch closes, and messages still buffered
    /// wait for the next one.
    fn message_budget(&self) -> usize {
        (self.changed_before_messages + self.max_profiles).saturating_sub(self.changed_profiles())
    }

    fn reload_requested(&mut self) -> bool {
        let asked = self.reload.load(Ordering::Relaxed);
        std::mem::replace(&mut self.reload_seen, asked) != asked
    }
}
