//! The commit protocol, in one place: **deliver** (every output of the batch acknowledged by the
//! brokers), then **mirror** (the batch's state writes to the changelog, then a marker per
//! partition closing the batch: [`changelog`]), then **commit** (each task's part in one atomic
//! RocksDB write batch with the changelog position: without RocksDB's write-ahead log when the
//! changelog is on, which makes the batch durable, and on disk at RocksDB's next flush; with
//! the log, fsynced by default, without the changelog), then **store offsets** in the group (for
//! lag monitoring only). An offset is stored only after the state and the outputs of its
//! message are durable.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::Producer as _;
use tracing::{debug, info, warn};

use crate::store::Commit;

use super::changelog;
use super::error::Error;
use super::kafka::{self, KafkaContext};
use super::Worker;

/// How long a stopping worker waits for the open batch's deliveries (outputs, then changelog
/// records) before it stops without committing them (the batch is processed again after the
/// restart).
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// After this long waiting for deliveries (outputs or changelog records), `/readyz` says so.
pub(super) const SLOW_DELIVERY: Duration = Duration::from_secs(5);

/// How a wait for a batch's acknowledgements ended ([`await_acks`]).
pub(super) struct Acks<T> {
    /// What the acknowledgements gave; `None`: a stop's grace ran out first.
    pub result: Option<T>,
    /// A stop was asked for, before or during the wait.
    pub stop_requested: bool,
}

/// Awaits `acks`, a batch's acknowledgements (its outputs, or its changelog records): calls
/// `slow` once if they take longer than [`SLOW_DELIVERY`] (to say so on `/readyz`), and gives
/// up [`STOP_GRACE`] after a stop is asked for (`stopping`: it was already).
pub(super) async fn await_acks<T>(
    acks: impl std::future::Future<Output = T>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    stopping: bool,
    mut slow: impl FnMut(),
) -> Acks<T> {
    tokio::pin!(acks);
    let started = Instant::now();
    let mut stop_at = stopping.then(|| Instant::now() + STOP_GRACE);
    let mut reported = false;
    // Selected against a tick, so the wait costs per tick, not per acknowledgement.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            r = &mut acks => {
                return Acks { result: Some(r), stop_requested: stop_at.is_some() };
            }
            _ = tick.tick() => {
                if !reported && started.elapsed() >= SLOW_DELIVERY {
                    reported = true;
                    slow();
                }
                if stop_at.is_some_and(|t| Instant::now() >= t) {
                    return Acks { result: None, stop_requested: true };
                }
            }
            _ = super::stopped(stop), if stop_at.is_none() => {
                stop_at = Some(Instant::now() + STOP_GRACE);
            }
        }
    }
}

impl Worker {
    /// Waits for the batch's outputs, then commits its state and offsets atomically. Returns
    /// without committing when a stop is requested and the deliveries do not complete within
    /// [`STOP_GRACE`].
    pub(super) async fn flush(
        &mut self,
        consumer: &StreamConsumer<KafkaContext>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let started = self.batch_started.take().unwrap_or_else(Instant::now);
        let t_deliver = Instant::now();
        if !self.await_deliveries(stop).await? {
            return Ok(());
        }
        // When the batch's outputs became readable: the end of its messages' latency.
        let acknowledged = super::now_ms();
        self.metrics
            .phase_seconds
            .with_label_values(&["deliver"])
            .observe(t_deliver.elapsed().as_secs_f64());

        let t_commit = Instant::now();
        let mut commit = Commit::default();
        // Sized ahead for the profiles the batch changed (each writes or removes one, and may
        // move its timer), rather than grown by doubling across the thread's partitions.
        let changed = self
            .tasks
            .values()
            .map(|t| t.profiles.changed_count())
            .sum();
        commit.profiles.reserve(changed);
        commit.timers_added.reserve(changed);
        commit.timers_removed.reserve(changed);
        let mut messages = 0;
        for task in self.tasks.values_mut() {
            messages += task.messages;
            task.write_into(&mut commit);
        }
        commit.meta.append(&mut self.meta);
        let store = self.store.clone();
        let ops = super::blocking(|| store.ops(&mut commit))?;
        // The commit phase is the state's own work: the changelog phase is timed apart.
        let commit_secs = t_commit.elapsed().as_secs_f64();
        if let Some(topic) = &self.changelog {
            // The state's records after the outputs, and each partition's marker after both.
            let t_changelog = Instant::now();
            let written = changelog::mirror(
                topic,
                &mut self.out,
                &ops,
                &self.metrics,
                (&self.health, &mut self.fault),
                stop,
            )
            .await?;
            let Some(positions) = written else {
                warn!("stopping without committing the open batch: its changelog records are not acknowledged (it is processed again after the restart)");
                self.stopping = true;
                return Ok(());
            };
            commit.changelog = positions;
            self.metrics
                .phase_seconds
                .with_label_values(&["changelog"])
                .observe(t_changelog.elapsed().as_secs_f64());
        }
        let t_write = Instant::now();
        super::blocking(|| {
            store.write(
                ops.iter().flat_map(|(_, ops)| ops),
                &commit.meta,
                &commit.changelog,
            )
        })?;
        self.metrics
            .phase_seconds
            .with_label_values(&["commit"])
            .observe(commit_secs + t_write.elapsed().as_secs_f64());

        for (_, segment, delta) in &commit.segment_deltas {
            *self.segment_sizes.entry(segment.clone()).or_default() += delta;
            // Summed over the processing threads: each adds its own changes.
            self.metrics
                .segment_members
                .with_label_values(&[segment])
                .add(*delta);
        }
        for (topic, partition, next) in &commit.offsets {
            self.metrics
                .stored_offset
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(*next);
            // For lag monitoring only; store_offset stores offset + 1 itself.
            if let Err(e) = consumer.store_offset(topic, *partition, next - 1) {
                debug!(topic, partition, error = %e, "could not store the offset in the group (partition moved?)");
            }
        }
        self.metrics.batch_messages.observe(messages as f64);
        let latency = crate::codec::Family::ALL.map(|f| {
            self.metrics
                .event_latency
                .with_label_values(&[f.as_str()])
                .local()
        });
        for task in self.tasks.values_mut() {
            for (f, t) in task.record_times.drain(..) {
                // A producer's clock ahead of this one's: no time at all.
                latency[f as usize].observe((acknowledged - t).max(0) as f64 / 1e3);
            }
        }
        latency.iter().for_each(|l| l.flush());
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        super::share(
            &self.metrics.profiles_cached,
            &mut self.shares.cached,
            self.tasks.values().map(|t| t.profiles.len() as i64).sum(),
        );
        super::share(
            &self.metrics.profile_cache_bytes,
            &mut self.shares.cache_bytes,
            self.tasks.values().map(|t| t.profiles.bytes() as i64).sum(),
        );
        // Progress: a fault that rolled batches back is over.
        if self.fault.take().is_some() {
            info!("batch committed again after a transient fault");
            self.publish_readiness();
        }
        self.backoff = Duration::from_secs(1);
        Ok(())
    }

    /// Awaits every delivery of the batch. `Ok(false)`: a stop was requested and they did not
    /// complete within the grace period (nothing may be committed). A failed delivery is a
    /// transient or a fatal error by its code ([`kafka::delivery_error`]).
    async fn await_deliveries(
        &mut self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, Error> {
        let (round, total) = self.out.take_round();
        if total > 0 {
            kafka::send_now(self.out.producer());
        }
        let tracker = self.out.producer().context();
        let all = async {
            tracker
                .acknowledged(round, total)
                .await
                .map_err(|f| kafka::delivery_error(&f.topic, &f.error))
        };
        let waiting = || total.saturating_sub(tracker.reported(round));
        let mut slow = None;
        let health = &self.health;
        let acks = await_acks(all, stop, self.stopping, || {
            let waiting = waiting();
            warn!(waiting, of = total, "outputs not yet acknowledged by the broker; the batch is not committed until they are");
            let why = format!("broker: waiting for {waiting} of {total} outputs to be acknowledged");
            health.set(Err(why.clone()));
            slow = Some(why);
        })
        .await;
        let Some(result) = acks.result else {
            warn!(waiting = waiting(), "stopping without committing the open batch: its outputs are not acknowledged (it is processed again after the restart)");
            self.stopping = true;
            return Ok(false);
        };
        result?;
        self.stopping |= acks.stop_requested;
        if let Some(f) = slow {
            // Cleared by the commit that follows.
            self.fault = Some(f);
        }
        Ok(true)
    }
}
