//! # Tailor's core
//!
//! Everything that decides what happens to a shopper's profile, synchronous and free of I/O: the
//! worker (`tailor`, the shell) feeds it decoded messages and the passing of time, and writes
//! what it returns to Kafka and RocksDB. This crate depends on no async runtime, Kafka client or
//! storage engine, so the compiler keeps it that way; its unit tests and the fuzz targets in
//! `fuzz/` build without the C libraries.
//!
//! - [`wire`]: serde mirrors of the Avro schemas in `avro/` (the contract with producers).
//! - [`codec`]: the three framings (Avro single-object, Confluent registry id, JSON); writer
//!   schemas by spec fingerprint or registry id, resolved to the reader schemas.
//! - [`event`]: one validated [`event::Event`] shape for the three families.
//! - [`identity`]: which profile an event belongs to; links, merges of an anonymous profile into
//!   the known one, deletion; the repartition protocol that moves them between partitions, and its
//!   routing decisions as pure functions of what a partition holds.
//! - [`clock`]: each partition's stream clock (event time; wall clock when caught up).
//! - [`window`]: bounded time buckets answering "how many in the last 1 h … 90 d", and when
//!   each count leaves its window.
//! - [`profile`]: the profile and how an event changes it ([`sparse`]: its parts most shoppers
//!   leave empty, held out of line and allocated only when filled; [`undo`]: what an event is
//!   about to change of what rules read, so that an explanation can see the profile before it;
//!   [`layout`]: the parts' state encoding, and the earlier versions' that are still read).
//! - [`footprint`]: the heap blocks a profile owns, for the worker's cache budget.
//! - [`segments`]: the rule language: YAML definitions, parse, type-check, compile, evaluate,
//!   the earliest time the passing of time can change a result (the profile's timer), and what
//!   each rule reads and each event changes ([`segments::inputs`]: an event re-evaluates only
//!   the segments that read what it changed).
//! - [`journey`]: journey definitions, re-entry wait, one trigger per cause, consent, context.
//! - [`audience`]: applies an event or fires a timer; membership changes and journey triggers
//!   with deterministic ids.
//! - [`samples`]: fully populated example events of every type.
//! - [`cases`]: tests for rules (`tailor test`): shoppers' stories and what must hold when.

pub mod audience;
mod bytes;
pub mod cases;
pub mod clock;
pub mod codec;
pub mod event;
pub mod footprint;
pub mod identity;
pub mod journey;
pub mod layout;
pub mod profile;
pub mod samples;
pub mod segments;
pub mod sparse;
pub mod undo;
pub mod window;
pub mod wire;
