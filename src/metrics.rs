//! Every metric the worker exports, in one place. Labels are low-cardinality: families, event
//! types, reasons, segment ids (from configuration), topics and partitions — never a shopper.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Events applied, by family and event type.
    pub events: IntCounterVec,
    /// Messages sent to the dead-letter topic, by reason code.
    pub dead_letters: IntCounterVec,
    /// Audience changes emitted, by segment and direction.
    pub audience_changes: IntCounterVec,
    /// Members per segment (all partitions of this worker's store).
    pub segment_members: IntGaugeVec,
    /// Time to process and commit one batch.
    pub batch_seconds: Histogram,
    /// Phases of a batch: apply, deliver, commit.
    pub phase_seconds: HistogramVec,
    pub batch_messages: Histogram,
    /// Consumer lag per input partition (librdkafka statistics).
    pub partition_lag: IntGaugeVec,
    /// Next offset committed to the state store, per input partition.
    pub stored_offset: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    /// Processing threads running (`processing.threads`, or one per core when it is 0).
    pub processing_threads: IntGauge,
    /// Partition numbers taken from this worker by rebalances.
    pub partitions_revoked: IntCounter,
    pub profiles_cached: IntGauge,
    /// The cached profiles' estimated memory (what `state.cache_memory` bounds).
    pub profile_cache_bytes: IntGauge,
    pub state_profiles: IntGauge,
    pub state_bytes: IntGauge,
    pub state_memory: IntGaugeVec,
    /// RocksDB's compaction backlog per column family, its level-0 files, compactions running,
    /// write stalls ([`crate::store::StoreCompaction`]).
    pub state_compaction_pending: IntGaugeVec,
    pub state_level0_files: IntGaugeVec,
    pub state_compactions_running: IntGauge,
    pub state_write_stall: IntGauge,
    pub heap: IntGaugeVec,
    /// Profile cache misses that read RocksDB.
    pub state_reads: IntCounter,
    /// Journey triggers emitted, by journey.
    pub journey_triggers: IntCounterVec,
    /// Journeys that matched but did not trigger, by journey and reason.
    pub journey_suppressed: IntCounterVec,
    /// Timers fired (profile re-evaluated at a due time).
    pub timers_fired: IntCounter,
    /// Partitions read to their end: how long after its due time a timer fired (wall clock).
    pub timer_lateness: Histogram,
    /// Timers waiting in the index (estimate).
    pub timers_pending: IntGauge,
    /// From an input message's record timestamp to its batch's outputs acknowledged (counted
    /// once the batch is committed), by the message's family.
    pub event_latency: HistogramVec,
    /// Events older than their partition's stream clock when they arrived.
    pub late_events: IntCounter,
    /// Stream clock per partition, seconds since the epoch.
    pub stream_clock: IntGaugeVec,
    /// Identity links, by result: linked, merged, repointed, refused_limit, refused_conflict.
    pub identity_links: IntCounterVec,
    /// Messages sent through the repartition topic, by kind (event, merge, claim, forget, delete).
    pub repartitioned: IntCounterVec,
    /// Input events whose key belongs on another partition (forwarded there).
    pub misrouted: IntCounter,
    /// Repartition messages received again after a sender's crash (skipped).
    pub duplicates_skipped: IntCounter,
    pub repeats_skipped: IntCounter,
    pub order_forced: IntCounter,
    /// Changelog records written (state writes mirrored, batch markers, compensations).
    pub changelog_records: IntCounterVec,
    /// Changelog records read while restoring partitions (rate(): the restore rate).
    pub restored_records: IntCounter,
    /// Changelog records read for standby copies of partitions held elsewhere.
    pub standby_records: IntCounter,
    /// Partitions being restored from the changelog right now.
    pub restoring: IntGauge,
    /// Time to bring one assigned partition level with the changelog.
    pub restore_seconds: Histogram,
    /// Profiles deleted, by source (account_deleted, admin).
    pub deletions: IntCounterVec,
    /// Profiles re-evaluated after a segment definitions change.
    pub reevaluated: IntCounter,
    /// Partitions of this worker still being re-evaluated after a definitions change.
    pub reevaluation_pending: IntGauge,
    /// Segment definition reloads (SIGHUP), by result.
    pub definition_reloads: IntCounterVec,
    /// HTTP requests, by route template and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency, by route template.
    pub http_seconds: HistogramVec,
    /// Input messages decoded, by framing (single_object, confluent, json).
    pub input_framing: IntCounterVec,
    /// Single-object messages by the canonical form their producer fingerprinted: spec (Java,
    /// fastavro) or legacy (apache-avro, the Apache Python package, Tailor before 0.2).
    pub fingerprint_variants: IntCounterVec,
    /// Schema-registry requests, by result (found, not_found, error).
    pub registry_requests: IntCounterVec,
    /// Input partitions held back until the schema registry answers.
    pub paused_partitions: IntGauge,
    /// Schemas-directory reloads (SIGHUP), by result (ok, refused).
    pub schema_reloads: IntCounterVec,
    /// Transient faults that rolled the open batch back to be retried, by what failed.
    pub transient_faults: IntCounterVec,
    /// Outputs larger than the producer accepts, dead-lettered instead (a last resort: outputs
    /// are bounded at validation), by output topic.
    pub outputs_oversized: IntCounterVec,
}

/// Dead-letter reasons the shell itself gives (beside the decoders' and the validator's).
pub const SHELL_REASONS: &[&str] = &[
    "unknown_topic",
    "too_large",
    "bad_key",
    "bad_internal_message",
    "output_too_large",
];

/// Registers a metric and hands it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

/// The parts of `tailor_state_memory_bytes`.
pub const STATE_MEMORY_PARTS: [&str; 3] = ["memtables", "block_cache", "table_readers"];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... (Linux).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let plain_gauge = |name: &str, help: &str| {
            registered(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        // Which build is running: a constant 1 with the version as a label.
        gauge(
            "tailor_build_info",
            "Tailor's version (always 1).",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        let events = counter(
            "tailor_events_total",
            "Input events applied to profiles.",
            &["family", "type"],
        );
        let dead_letters = counter(
            "tailor_dead_letters_total",
            "Input messages dead-lettered, by reason.",
            &["reason"],
        );
        let input_framing = counter(
            "tailor_input_framing_total",
            "Input messages decoded, by framing.",
            &["framing"],
        );
        for f in crate::codec::Framing::ALL {
            input_framing.with_label_values(&[f.as_str()]);
        }
        let fingerprint_variants = counter(
            "tailor_schema_fingerprint_variant_total",
            "Single-object input messages by the canonical form of their writer schema's fingerprint (spec or legacy).",
            &["variant"],
        );
        for v in crate::codec::Variant::ALL {
            fingerprint_variants.with_label_values(&[v.as_str()]);
        }
        let registry_requests = counter(
            "tailor_schema_registry_requests_total",
            "Schema-registry look-ups, by result (found, not_found, error).",
            &["result"],
        );
        for r in ["found", "not_found", "error"] {
            registry_requests.with_label_values(&[r]);
        }
        let schema_reloads = counter(
            "tailor_schema_reloads_total",
            "Reloads of the schemas directory, by result (ok: every file loaded, refused: some file refused).",
            &["result"],
        );
        for r in ["ok", "refused"] {
            schema_reloads.with_label_values(&[r]);
        }
        let transient_faults = counter(
            "tailor_transient_faults_total",
            "Transient faults (broker, schema registry) that paused processing to retry: the open batch rolled back, or a committed batch's changelog write retried; by what failed.",
            &["what"],
        );
        for w in ["broker", "producer", "schema_registry"] {
            transient_faults.with_label_values(&[w]);
        }
        let outputs_oversized = counter(
            "tailor_outputs_oversized_total",
            "Outputs larger than the producer accepts, dead-lettered instead, by output topic.",
            &["topic"],
        );
        let audience_changes = counter(
            "tailor_audience_changes_total",
            "Audience changes emitted.",
            &["segment", "direction"],
        );
        let segment_members = gauge(
            "tailor_segment_members",
            "Profiles in each segment.",
            &["segment"],
        );
        let partition_lag = gauge(
            "tailor_partition_lag_messages",
            "Consumer lag per input partition.",
            &["topic", "partition"],
        );
        let stored_offset = gauge(
            "tailor_stored_offset",
            "Next offset committed with the state, per input partition.",
            &["topic", "partition"],
        );
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tailor_batch_duration_seconds",
                "Time to apply, deliver and commit one batch.",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("buckets")),
        )
        .expect("valid metric");
        let batch_seconds = registered(&registry, batch_seconds);
        let phase_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tailor_batch_phase_duration_seconds",
                "Time in each phase of a batch.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("buckets")),
            &["phase"],
        )
        .expect("valid metric");
        let phase_seconds = registered(&registry, phase_seconds);
        let batch_messages = Histogram::with_opts(
            HistogramOpts::new("tailor_batch_messages", "Messages per batch.")
                .buckets(prometheus::exponential_buckets(1.0, 4.0, 9).expect("buckets")),
        )
        .expect("valid metric");
        let batch_messages = registered(&registry, batch_messages);
        let state_reads = IntCounter::new(
            "tailor_state_reads_total",
            "Profile cache misses read from RocksDB.",
        )
        .expect("valid metric");
        let state_reads = registered(&registry, state_reads);
        let plain_counter = |name: &str, help: &str| {
            registered(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let journey_triggers = counter(
            "tailor_journey_triggers_total",
            "Journey triggers emitted.",
            &["journey"],
        );
        let journey_suppressed = counter(
            "tailor_journey_suppressed_total",
            "Journeys that matched but did not trigger (reentry_wait, consent, duplicate_cause).",
            &["journey", "reason"],
        );
        let stream_clock = gauge(
            "tailor_stream_clock_timestamp_seconds",
            "Stream clock of each input partition number, Unix time (event time; the wall clock minus the allowed lateness when caught up).",
            &["partition"],
        );
        let http_seconds = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "tailor_http_request_duration_seconds",
                    "HTTP request latency.",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 14).expect("buckets")),
                &["route"],
            )
            .expect("valid metric"),
        );
        let event_latency = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "tailor_event_latency_seconds",
                    "By input family: from a message's record timestamp (the producer's clock, or the broker's with LogAppendTime) to the moment every output of the batch that applied it (audience changes, journey triggers, dead letters, forwards) was acknowledged by the brokers, counted once that batch is committed. Includes the time in the topic: a backlog or a replay of old records shows here.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5,
                    2.0, 3.0, 5.0, 7.5, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
                ]),
                &["family"],
            )
            .expect("valid metric"),
        );
        Metrics {
            identity_links: counter(
                "tailor_identity_links_total",
                "Identity links: linked, merged, repointed, refused_limit, refused_conflict.",
                &["result"],
            ),
            repartitioned: counter(
                "tailor_repartition_messages_total",
                "Messages sent through the repartition topic, by kind.",
                &["kind"],
            ),
            misrouted: plain_counter(
                "tailor_misrouted_events_total",
                "Input events whose key belongs on another partition (producer partitioner differs); forwarded.",
            ),
            duplicates_skipped: plain_counter(
                "tailor_repartition_duplicates_total",
                "Repartition messages seen again after their sender's crash, skipped.",
            ),
            repeats_skipped: plain_counter(
                "tailor_repeated_messages_total",
                "Exact repeats of an input message applied lately to the same profile (same event id and bytes: a producer's retry), skipped.",
            ),
            changelog_records: counter(
                "tailor_changelog_records_total",
                "Records written to the changelog topic, by kind (state, marker, compensation, seed).",
                &["kind"],
            ),
            restored_records: plain_counter(
                "tailor_changelog_restored_records_total",
                "Changelog records read while restoring partitions assigned here (its rate is the restore rate).",
            ),
            standby_records: plain_counter(
                "tailor_standby_records_total",
                "Changelog records read for this worker's standby copies of partitions held by others (state.standby).",
            ),
            restoring: plain_gauge(
                "tailor_changelog_restoring_partitions",
                "Partitions being restored from the changelog (the worker is not ready meanwhile).",
            ),
            restore_seconds: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tailor_changelog_restore_seconds",
                        "Time to bring an assigned partition's state level with the changelog (catching up or restoring it whole).",
                    )
                    .buckets(prometheus::exponential_buckets(0.01, 4.0, 9).expect("buckets")),
                )
                .expect("valid metric"),
            ),
            order_forced: plain_counter(
                "tailor_order_forced_total",
                "Messages applied while another topic of their partition, with messages still to come, had none buffered after processing.max_idle (event-time order across topics not kept).",
            ),
            deletions: counter(
                "tailor_profile_deletions_total",
                "Profiles deleted, by source.",
                &["source"],
            ),
            reevaluated: plain_counter(
                "tailor_reevaluated_profiles_total",
                "Profiles re-evaluated after a segment definitions change.",
            ),
            reevaluation_pending: plain_gauge(
                "tailor_reevaluation_pending_partitions",
                "Partitions still being re-evaluated after a definitions change.",
            ),
            definition_reloads: counter(
                "tailor_definition_reloads_total",
                "Segment definition reloads on SIGHUP, by result (applied, unchanged, invalid).",
                &["result"],
            ),
            http_requests: counter(
                "tailor_http_requests_total",
                "HTTP requests by route template and status.",
                &["route", "status"],
            ),
            http_seconds,
            journey_triggers,
            journey_suppressed,
            timers_fired: plain_counter(
                "tailor_timers_fired_total",
                "Timers fired: a profile re-evaluated at the moment time alone could change it.",
            ),
            timer_lateness: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tailor_timer_lateness_seconds",
                        "Wall-clock time from a timer's due time to the batch that fired it, on partitions read to their end since they were assigned, from the batch that reaches the end (processing.allowed_lateness, up to 50 ms to gather timers due together, and any backlog or downtime).",
                    )
                    .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 5.5, 6.0, 7.0, 10.0, 30.0, 60.0, 300.0]),
                )
                .expect("valid metric"),
            ),
            timers_pending: plain_gauge(
                "tailor_timers_pending",
                "Timers waiting in the state store (estimate).",
            ),
            event_latency,
            late_events: plain_counter(
                "tailor_late_events_total",
                "Events older than their partition's stream clock on arrival (applied, counted).",
            ),
            stream_clock,
            events,
            dead_letters,
            audience_changes,
            segment_members,
            batch_seconds,
            phase_seconds,
            batch_messages,
            partition_lag,
            stored_offset,
            assigned_partitions: plain_gauge(
                "tailor_assigned_partitions",
                "Input partitions assigned to this worker.",
            ),
            processing_threads: plain_gauge(
                "tailor_processing_threads",
                "Processing threads running, each a member of the consumer group (processing.threads, or one per core when it is 0).",
            ),
            partitions_revoked: plain_counter(
                "tailor_partitions_revoked_total",
                "Partition numbers taken from this worker by rebalances (moved to another member, or lost with the group session); the others keep their open batches.",
            ),
            profiles_cached: plain_gauge(
                "tailor_profiles_cached",
                "Profiles held in the in-memory cache.",
            ),
            profile_cache_bytes: plain_gauge(
                "tailor_profile_cache_bytes",
                "Estimated memory of the profiles held in the in-memory cache, which state.cache_memory bounds (each counted by the heap blocks it owns, at the allocator's sizes, with its entry).",
            ),
            state_profiles: plain_gauge(
                "tailor_state_profiles",
                "Profiles in the state store (estimate).",
            ),
            state_bytes: plain_gauge(
                "tailor_state_bytes",
                "State store size on disk and in memtables (estimate).",
            ),
            state_memory: gauge(
                "tailor_state_memory_bytes",
                "RocksDB's memory by part: memtables (all column families; flushes start at about twice state.write_buffer), block_cache (data, index and filter blocks; state.block_cache), table_readers (outside the cache).",
                &["part"],
            ),
            state_compaction_pending: gauge(
                "tailor_state_compaction_pending_bytes",
                "Read at each scrape: bytes RocksDB estimates its compactions have yet to rewrite to bring every level of a column family within its target size; growing without bound, compactions fall behind the writes (RocksDB slows writes at 64 GiB, stops them at 256 GiB).",
                &["family"],
            ),
            state_level0_files: gauge(
                "tailor_state_level0_files",
                "Read at each scrape: files in level 0 of a column family, not yet merged into the levels below (merged at 4 files, the timer index's at 16; writes slow at 20 and stop at 36, the timer index's at 40 and 64); each read of a key missing from the memtables probes every one.",
                &["family"],
            ),
            state_compactions_running: plain_gauge(
                "tailor_state_compactions_running",
                "RocksDB compactions running now, every column family together (read at each scrape).",
            ),
            state_write_stall: plain_gauge(
                "tailor_state_write_stall",
                "RocksDB's write stall, read at each scrape: 0 writes run, 1 delayed (too many level-0 files or bytes pending compaction), 2 stopped (a column family with two full memtables waiting for a flush, or level-0 files or pending bytes at their stop limit).",
            ),
            heap: gauge(
                "tailor_heap_bytes",
                "The process's heaps: rust_committed (mimalloc, the Rust code's: decoded profiles, the open batch, queued outputs; in use or kept for reuse), c_in_use (glibc malloc, the C libraries': RocksDB's block cache and memtables, librdkafka's prefetched messages and producer queue), c_free (freed by the C libraries, held by glibc's arenas).",
                &["part"],
            ),
            state_reads,
            input_framing,
            fingerprint_variants,
            registry_requests,
            schema_reloads,
            transient_faults,
            outputs_oversized,
            paused_partitions: plain_gauge(
                "tailor_paused_partitions",
                "Input partitions held back until the schema registry answers for a schema id.",
            ),
            registry,
        }
    }

    /// RocksDB's compaction backlog and write stall as last read ([`crate::store::Store::compaction`]).
    pub fn set_compaction(&self, c: &crate::store::StoreCompaction) {
        for f in &c.families {
            self.state_compaction_pending
                .with_label_values(&[f.name])
                .set(f.pending_bytes as i64);
            self.state_level0_files
                .with_label_values(&[f.name])
                .set(f.level0_files as i64);
        }
        self.state_compactions_running.set(c.running as i64);
        self.state_write_stall.set(i64::from(c.write_stall));
    }

    /// Creates every labelled series whose label values are known, at 0, so that dashboards and
    /// alerts see a series before the first increment (a dead-letter alert must not wait for
    /// the first dead letter to exist): dead-letter reasons, segments, journeys and their
    /// suppression reasons, identity-link results, reload results, deletion sources, repartition
    /// message kinds, the input families' event latency. Called at start and for each new set
    /// of definitions.
    pub fn know(&self, segments: &crate::segments::SegmentSet) {
        for reason in crate::codec::DecodeError::CODES
            .iter()
            .chain(crate::event::InvalidEvent::CODES)
            .chain(SHELL_REASONS)
        {
            self.dead_letters.with_label_values(&[reason]);
        }
        for s in segments.segments() {
            self.segment_members.with_label_values(&[&s.id]);
            for direction in ["ENTERED", "EXITED"] {
                self.audience_changes.with_label_values(&[&s.id, direction]);
            }
        }
        for j in segments.journeys() {
            self.journey_triggers.with_label_values(&[&j.id]);
            for why in crate::journey::Suppressed::ALL {
                self.journey_suppressed
                    .with_label_values(&[&j.id, why.as_str()]);
            }
        }
        for part in STATE_MEMORY_PARTS {
            self.state_memory.with_label_values(&[part]);
        }
        for family in crate::store::FAMILIES {
            self.state_compaction_pending.with_label_values(&[family]);
            self.state_level0_files.with_label_values(&[family]);
        }
        for part in crate::heap::PARTS {
            self.heap.with_label_values(&[part]);
        }
        for f in crate::codec::Family::ALL {
            self.event_latency.with_label_values(&[f.as_str()]);
        }
        for result in [
            "linked",
            "linked_here",
            "repointed",
            "merged",
            crate::identity::Refused::Limit.label(),
            crate::identity::Refused::Conflict.label(),
        ] {
            self.identity_links.with_label_values(&[result]);
        }
        for result in ["applied", "unchanged", "invalid"] {
            self.definition_reloads.with_label_values(&[result]);
        }
        for source in ["account_deleted", "admin"] {
            self.deletions.with_label_values(&[source]);
        }
        for kind in ["event", "merge", "claim", "forget", "delete"] {
            self.repartitioned.with_label_values(&[kind]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_store_s_compaction_state_is_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        // Two level-0 files in the profiles' family.
        for round in 0..2 {
            store
                .commit(crate::store::Commit {
                    profiles: vec![(0, format!("shopper-{round}"), vec![1u8; 32])],
                    ..Default::default()
                })
                .unwrap();
            store.flush(true).unwrap();
        }
        let m = Metrics::new();
        m.set_compaction(&store.compaction());
        let text = m.render();
        for line in [
            "tailor_state_level0_files{family=\"profiles\"} 2",
            "tailor_state_level0_files{family=\"timers\"} 0",
            "tailor_state_compaction_pending_bytes{family=\"profiles\"} 0",
            "tailor_state_write_stall 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    /// Regression: labelled counters appeared only after their first increment, so the
    /// dead-letter alert and several panels had no series until the first incident.
    #[test]
    fn known_label_values_have_series_before_anything_happens() {
        let m = Metrics::new();
        let set =
            crate::segments::SegmentSet::parse(include_str!("../examples/segments.yaml")).unwrap();
        m.know(&set);
        let text = m.render();
        for reason in [
            "bad_json",
            "negative_value",
            "unknown_topic",
            "output_too_large",
        ] {
            let line = format!("tailor_dead_letters_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        for s in set.segments() {
            let line = format!("tailor_segment_members{{segment=\"{}\"}} 0", s.id);
            assert!(text.contains(&line), "{line}");
        }
        for j in set.journeys() {
            let line = format!("tailor_journey_triggers_total{{journey=\"{}\"}} 0", j.id);
            assert!(text.contains(&line), "{line}");
        }
        for family in [
            "tailor_build_info{version=\"0.1.0\"} 1",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "tailor_identity_links_total{result=\"merged\"} 0",
            "tailor_definition_reloads_total{result=\"invalid\"} 0",
            "tailor_profile_deletions_total{source=\"admin\"} 0",
            "tailor_event_latency_seconds_count{family=\"backoffice\"} 0",
        ] {
            assert!(text.contains(family), "{family}");
        }
    }
}
