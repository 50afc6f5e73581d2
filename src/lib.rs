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
//! - [`wire`]: serde mirrors of the Avro schemas in `avro/` (the contract with producers).
//! - [`codec`]: the three framings (Avro single-object, Confluent registry id, JSON); writer
//!   schemas by spec fingerprint or registry id, resolved to the reader schemas.
//! - [`event`]: one validated [`event::Event`] shape for the three families.
//! - [`identity`]: which profile an event belongs to; links, merges of an anonymous profile into
//!   the known one, deletion; the repartition protocol that moves them between partitions.
//! - [`clock`]: each partition's stream clock (event time; wall clock when caught up).
//! - [`window`]: bounded time buckets answering "how many in the last 1 h … 90 d", and when
//!   each count leaves its window.
//! - [`profile`]: the profile and how an event changes it.
//! - [`segments`]: the rule language: YAML definitions, parse, type-check, compile, evaluate,
//!   and the earliest time the passing of time can change a result (the profile's timer).
//! - [`journey`]: journey definitions, re-entry wait, one trigger per cause, consent, context.
//! - [`audience`]: applies an event or fires a timer; membership changes and journey triggers
//!   with deterministic ids.
//!
//! Those modules are the synchronous core: no I/O, tested and benchmarked without Kafka.
//! The shell around it:
//!
//! - [`store`]: RocksDB — profiles, identity aliases, the timer index, clocks, offsets, segment
//!   sizes and re-evaluation cursors committed in one atomic batch.
//! - [`worker`]: move clocks and fire due timers → consume → apply ([`audience::Core`]) →
//!   produce and await delivery → commit state + next offsets → store offsets for lag monitoring.
//! - [`registry`] (Confluent-compatible schema registry client), [`schemas`] (the schemas
//!   directory, loaded at start and on SIGHUP).
//! - [`config`], [`metrics`], [`http`] (`/metrics`, `/healthz`, `/readyz`, `/profiles/{id}`),
//!   [`replay`] (real data sets as platform events).
//! - [`samples`]: fully populated example events of every type, for tests, benchmarks and
//!   producers who want to see a complete event.

pub use tailor_core::{
    audience, clock, codec, event, identity, journey, profile, samples, segments, window, wire,
};

pub mod config;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod replay;
pub mod schemas;
pub mod store;
pub mod worker;
