//! # Tailor
//!
//! A stream worker that keeps a rolling profile of every shopper and its segment memberships from
//! a commerce platform's Kafka topics, and emits audience changes and journey triggers.
//!
//! ## Layout: how an event flows
//!
//! ```text
//!  Kafka message ─► codec ─► event ─► identity ─► clock ─► profile ─► segments ─► journey ─► audience ─► Kafka
//!  (3 input topics, (Avro    (validate, (whose     (stream (apply:   (evaluate,  (triggers, (ENTERED /   audience.changes
//!   and the         single-  normalise) profile?   time)   counters, next timer) consent,   EXITED and  journey.triggers
//!   repartition     object)             link, merge,       cart,                 context)   triggers    tailor.deadletter
//!   topic)                              forward)           orders)                          with stable tailor.repartition
//!                                                                                           ids)
//!  timer index (RocksDB) ─► due timers, by the partition's clock ─► audience (evaluated at the due time)
//!  definitions changed ─► every stored profile, a slice per batch ─► audience (cause definition-change)
//! ```
//!
//! ### The core: crate `tailor-core` (`core/`), re-exported here
//!
//! Synchronous and free of I/O — the crate depends on no async runtime, Kafka client or storage
//! engine, so the compiler keeps it that way; tested, benchmarked and fuzzed (`fuzz/`) without
//! the C libraries.
//!
//! - [`wire`]: serde mirrors of the Avro schemas in `avro/` (the contract with producers).
//! - [`codec`]: the three framings (Avro single-object, Confluent registry id, JSON); writer
//!   schemas by spec fingerprint or registry id, resolved to the reader schemas.
//! - [`event`]: one validated [`event::Event`] shape for the three families, with every field
//!   within its size cap (so every output stays below the broker's record limit).
//! - [`identity`]: which profile an event belongs to; links, merges of an anonymous profile into
//!   the known one, deletion; the repartition protocol that moves them between partitions, and
//!   its routing decisions as pure functions of what a partition holds.
//! - [`clock`]: each partition's stream clock (event time; wall clock when caught up).
//! - [`window`]: bounded time buckets answering "how many in the last 1 h … 90 d", and when
//!   each count leaves its window.
//! - [`profile`]: the profile and how an event changes it ([`undo`]: what an event is about to
//!   change of what rules read, so that an explanation sees the profile before it).
//! - [`segments`]: the rule language: YAML definitions, parse, type-check, compile, evaluate,
//!   the earliest time the passing of time can change a result (the profile's timer), and what
//!   each rule reads and each event changes ([`segments::inputs`]: an event re-evaluates only
//!   the segments that read what it changed).
//! - [`journey`]: journey definitions, re-entry wait, one trigger per cause, consent, context.
//! - [`audience`]: applies an event or fires a timer; membership changes and journey triggers
//!   with deterministic ids.
//! - [`samples`]: fully populated example events of every type, for tests, benchmarks and
//!   producers who want to see a complete event.
//!
//! ### The shell (this crate)
//!
//! - [`worker`]: the async loop over **partition tasks**, one per assigned partition number
//!   (one loop per processing thread, each a member of the group, over one store; each thread
//!   an OS thread with a single-threaded runtime of its own, `tailor-proc-N`, which RocksDB
//!   calls simply block), one module per stage:
//!   - `worker::kafka` — clients, librdkafka callbacks (rebalances: assigned partitions paused
//!     until restored; logs, lag), topic checks, the class of each Kafka error;
//!   - `worker::changelog` — the state writes mirrored to a compacted topic (the timer index
//!     rebuilt from the profiles instead), each batch closed by a marker; a newly assigned
//!     partition brought level with it (caught up, restored whole, or seeded) on a thread of
//!     its own;
//!   - `worker::task` — one partition number's state: profiles (`worker::overlay`: LRU cache
//!     and the open batch's write-back overlay), aliases, clock, positions, offsets, cursor;
//!     commits its part, rolls back, or is dropped on its own;
//!   - `worker::order` — a task's topics taken in event-time order (the earliest record
//!     timestamp among their heads; a topic with messages still to come is waited for);
//!   - `worker::process` — one message (or due timer, or re-evaluation) through the core for
//!     one task: decode, validate, route by the identity protocol, apply;
//!   - `worker::collector` — every produced record, bounded, handed to the producer;
//!   - `worker::commit` — deliver → changelog → one RocksDB write batch → store offsets;
//!   - `worker::hold` — a partition number paused until the schema registry answers;
//!   - `worker::error` — bad input (dead letter), transient (roll back, retry), fatal (stop).
//! - [`store`]: RocksDB — profiles, identity aliases, the timer index, clocks, offsets, segment
//!   sizes and re-evaluation cursors committed in one atomic batch (with the changelog position),
//!   each partition one key range.
//! - [`registry`] (Confluent-compatible schema registry client), [`schemas`] (the schemas
//!   directory, loaded at start and on SIGHUP).
//! - [`kafka_logs`]: librdkafka's log lines into `tracing`, rate-limited.
//! - [`allocator`]: the Rust heap (mimalloc, called as the standard library calls `malloc`).
//! - [`heap`]: what the process's two heaps hold (mimalloc for Rust, glibc for the C
//!   libraries), for `tailor_heap_bytes`.
//! - [`config`], [`metrics`], [`http`] (`/metrics`, `/healthz`, `/readyz`, `/profiles/{id}`;
//!   served from a runtime and thread of its own, `tailor-http`, so that probes and scrapes do
//!   not wait behind the processing threads), [`replay`] (real data sets as platform events), [`preview`] (new definitions against the
//!   stored profiles).

pub use tailor_core::{
    audience, cases, clock, codec, event, footprint, identity, journey, profile, samples, segments,
    undo, window, wire,
};

pub mod allocator;
pub mod config;
pub mod heap;
pub mod http;
pub mod kafka_logs;
pub mod metrics;
pub mod preview;
pub mod registry;
pub mod replay;
pub mod schemas;
pub mod store;
pub mod worker;
