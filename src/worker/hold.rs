//! Holding a partition for the schema registry. A Confluent-framed message whose schema id the
//! registry has not answered for is not applied: its partition number is held (every topic of
//! it paused and sought back to its next message, so its clock and timers wait too) while a
//! background task asks the registry, and resumed when the answer arrives. A registry outage is a
//! wait, never a dead letter.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::codec::SchemaCatalog;
use crate::metrics::Metrics;
use crate::registry::{Lookup, Registry};

use super::error::Error;
use super::kafka::KafkaContext;
use super::task::Task;

/// Registry answers, from the look-up tasks to the worker: (schema id, answer).
pub type LookupSender = tokio::sync::mpsc::UnboundedSender<(u32, Lookup)>;

/// Holds `task`'s partition number until the registry answers for schema `id`. The message
/// waiting for it is at the head of its topic's queue, not applied (nor dead-lettered); every
/// assigned topic of the number is paused and sought back to its first message not applied;
/// other partitions go on. The queues are dropped only once every seek succeeded: a failure
/// half-way rolls the task back, which seeks to them.
/// `(topic, offset)`: the waiting message, for the log line.
pub fn hold(
    consumer: &StreamConsumer<KafkaContext>,
    task: &mut Task,
    id: u32,
    (topic, offset): (&str, i64),
) -> Result<(), Error> {
    let partition = task.partition;
    // Held from the start, so that a failure half-way still resumes every topic (`release`).
    task.held = Some(id);
    let buffered = task.heads.fronts();
    for t in task.topics().map(str::to_owned).collect::<Vec<_>>() {
        let to = if let Some((_, first)) = buffered.iter().find(|(b, _)| *b == t) {
            Some(*first)
        } else {
            // Nothing read from it yet: pausing alone keeps its position.
            task.position(&t)
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&t, partition);
        // Pause first: pausing moves the fetch position to after the last message handed
        // out; the seek then sets it back where it must be.
        consumer
            .pause(&tpl)
            .map_err(|e| Error::transient("broker", format!("pausing {t}/{partition}: {e}")))?;
        if let Some(to) = to {
            // A failed seek leaves the fetch position after messages not applied: fatal (a
            // restart resumes from the last commit), never a silent gap.
            consumer
                .seek(&t, partition, Offset::Offset(to), Duration::from_secs(10))
                .map_err(|e| {
                    Error::fatal(format!("seeking {t}/{partition} back to offset {to}: {e}"))
                })?;
        }
    }
    // Read again after the hold.
    task.heads.clear();
    info!(
        topic,
        partition,
        offset,
        schema_id = id,
        "partition paused until the schema registry answers for this schema id"
    );
    Ok(())
}

/// Resumes every assigned topic of `task`'s partition number.
pub fn release(consumer: &StreamConsumer<KafkaContext>, task: &mut Task) -> Result<(), Error> {
    let mut tpl = TopicPartitionList::new();
    for t in task.topics() {
        tpl.add_partition(t, task.partition);
    }
    if tpl.count() > 0 {
        consumer.resume(&tpl).map_err(|e| {
            Error::transient(
                "broker",
                format!("resuming partition {}: {e}", task.partition),
            )
        })?;
    }
    if task.held.take().is_some() {
        info!(partition = task.partition, "partition resumed");
    }
    Ok(())
}

/// Starts a background look-up of schema `id` (once per id), retried with backoff while the
/// registry cannot be reached; the answer goes to `tx`.
pub fn look_up(
    registry: &Arc<Registry>,
    catalog: &mut SchemaCatalog,
    id: u32,
    tx: &LookupSender,
    metrics: &Arc<Metrics>,
) {
    if !catalog.request_id(id) {
        return;
    }
    let (registry, tx, metrics) = (registry.clone(), tx.clone(), metrics.clone());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            let r = registry.clone();
            let answer = tokio::task::spawn_blocking(move || r.schema_by_id(id)).await;
            match answer {
                Ok(Ok(lookup)) => {
                    let result = match lookup {
                        Lookup::Found(_) => "found",
                        Lookup::NotFound => "not_found",
                    };
                    metrics.registry_requests.with_label_values(&[result]).inc();
                    if failures > 0 {
                        info!(schema_id = id, failures, "schema registry answered again");
                    }
                    let _ = tx.send((id, lookup));
                    return;
                }
                Ok(Err(e)) => {
                    metrics
                        .registry_requests
                        .with_label_values(&["error"])
                        .inc();
                    failures += 1;
                    // At the first failure, then less often, and at least every 30 tries.
                    if failures.is_power_of_two() || failures % 30 == 0 {
                        if e.is_permanent() {
                            warn!(schema_id = id, failures, error = %e, "the schema registry refuses Tailor's requests (check schema_registry credentials and URL); its partitions stay paused");
                        } else {
                            warn!(schema_id = id, failures, error = %e, retry_in = ?backoff, "schema registry look-up failed; its partitions stay paused");
                        }
                    }
                }
                Err(e) => {
                    metrics
                        .registry_requests
                        .with_label_values(&["error"])
                        .inc();
                    failures += 1;
                    warn!(schema_id = id, error = %e, "schema registry look-up task failed; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}
