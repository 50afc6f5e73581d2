//! Wire format: Avro single-object encoding (`C3 01` + 8-byte CRC-64-AVRO fingerprint + datum).
//!
//! The writer schema of every message is found by its fingerprint among the schemas compiled in
//! from `avro/`. When it is the reader schema itself (the usual case) the datum is deserialised
//! straight into the wire type by the schema-aware serde path; when a producer wrote with another
//! compatible version (kept in `avro/compat/`), the datum is decoded with the writer schema and
//! resolved to the reader schema. Readers are built once, at first use: the per-message path never
//! parses or resolves a schema.
//!
//! [`Decoder`] is the seam for other framings (e.g. a Confluent schema-registry decoder).

use std::{collections::HashMap, io::Cursor, sync::LazyLock};

use apache_avro::{
    rabin::Rabin, reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter, Schema,
};
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::wire::{
    AudienceChange, BackofficeEvent, DeadLetter, JourneyTrigger, ProfileEvent, StorefrontEvent,
};

include!(concat!(env!("OUT_DIR"), "/schemas.rs"));

/// First two bytes of every single-object encoded message.
pub const MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// The input families: one topic each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Storefront,
    Backoffice,
    Profile,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Storefront, Family::Backoffice, Family::Profile];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Storefront => "storefront",
            Family::Backoffice => "backoffice",
            Family::Profile => "profile",
        }
    }

    /// Full name of the family's reader record in `avro/`.
    pub fn record_name(self) -> &'static str {
        match self {
            Family::Storefront => "com.tailor.commerce.StorefrontEvent",
            Family::Backoffice => "com.tailor.commerce.BackofficeEvent",
            Family::Profile => "com.tailor.commerce.ProfileEvent",
        }
    }
}

/// A decoded input message, still in the platform's wire shape. Boxed: a storefront event is
/// about 2 KiB, and moving it by value through decode and validation showed as the worker's top
/// cost (memcpy) in a profile.
#[derive(Debug, Clone, PartialEq)]
pub enum InputMessage {
    Storefront(Box<StorefrontEvent>),
    Backoffice(Box<BackofficeEvent>),
    Profile(Box<ProfileEvent>),
}

/// Why a message could not be decoded. Always bad input: dead-letter it and go on.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("not Avro single-object encoding: expected marker C3 01, found {0}")]
    BadMarker(String),
    #[error("truncated header: {0} bytes, need 10")]
    TruncatedHeader(usize),
    #[error("unknown writer schema fingerprint {0}: add the producer's schema to avro/compat/")]
    UnknownSchema(String),
    #[error("schema {found} cannot be read as {expected} (wrong topic?)")]
    WrongRecord {
        expected: &'static str,
        found: String,
    },
    #[error("Avro body does not match schema {schema}: {detail}")]
    Body { schema: String, detail: String },
    #[error("{0} trailing bytes after the Avro datum")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// Low-cardinality class, used as the dead-letter reason code and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::BadMarker(_) | DecodeError::TruncatedHeader(_) => "bad_framing",
            DecodeError::UnknownSchema(_) => "unknown_schema",
            DecodeError::WrongRecord { .. } => "wrong_record",
            DecodeError::Body { .. } => "bad_body",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
        }
    }
}

/// Turns a message payload from a family's topic into an [`InputMessage`].
pub trait Decoder: Send + Sync {
    fn decode(&self, family: Family, payload: &[u8]) -> Result<InputMessage, DecodeError>;
}

/// One writer schema known by fingerprint, with its prepared readers.
struct WriterEntry {
    name: String,
    /// Reader used when this writer schema *is* the reader schema: schema-aware serde, no `Value`.
    direct: Option<GenericDatumReader<'static>>,
    /// Reader that resolves this writer schema to its record's reader schema.
    resolving: Option<GenericDatumReader<'static>>,
}

/// All schemas compiled in from `avro/`, indexed by fingerprint.
pub struct SchemaCatalog {
    by_fingerprint: HashMap<[u8; 8], WriterEntry>,
    /// Reader (current) schema per record full name, with its fingerprint and prepared writer.
    readers: HashMap<String, ReaderEntry>,
}

struct ReaderEntry {
    schema: &'static Schema,
    fingerprint: [u8; 8],
    writer: GenericDatumWriter<'static>,
}

fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes[..8]);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SchemaCatalog {
    /// Builds the catalog from `(path, json)` pairs. Files directly under `avro/` are the reader
    /// schemas; files in sub-folders (`compat/`) are other writer versions of the same records.
    pub fn from_sources(files: &[(&str, &str)]) -> Result<SchemaCatalog, String> {
        let mut readers = HashMap::new();
        let mut writers: Vec<(&'static Schema, bool)> = Vec::new();
        for (path, json) in files {
            let schema = Schema::parse_str(json).map_err(|e| format!("avro/{path}: {e}"))?;
            let schema: &'static Schema = Box::leak(Box::new(schema));
            let name = schema
                .name()
                .map(|n| n.to_string())
                .ok_or_else(|| format!("avro/{path}: top-level schema must be a named record"))?;
            let is_reader = !path.contains('/');
            if is_reader {
                let writer = GenericDatumWriter::builder(schema)
                    .build()
                    .map_err(|e| format!("avro/{path}: {e}"))?;
                let entry = ReaderEntry {
                    schema,
                    fingerprint: fingerprint(schema),
                    writer,
                };
                if readers.insert(name.clone(), entry).is_some() {
                    return Err(format!("avro/{path}: second reader schema for {name}"));
                }
            }
            writers.push((schema, is_reader));
        }
        let mut by_fingerprint = HashMap::new();
        for (schema, is_reader) in writers {
            let name = schema.name().map(|n| n.to_string()).unwrap_or_default();
            let direct = if is_reader {
                Some(
                    GenericDatumReader::builder(schema)
                        .build()
                        .map_err(|e| format!("{name}: {e}"))?,
                )
            } else {
                None
            };
            let resolving = match readers.get(&name) {
                Some(reader) if !is_reader => Some(
                    GenericDatumReader::builder(schema)
                        .reader_schema(reader.schema)
                        .build()
                        .map_err(|e| format!("{name}: {e}"))?,
                ),
                None if !is_reader => {
                    return Err(format!(
                        "compat schema {name} has no reader schema in avro/"
                    ))
                }
                _ => None,
            };
            by_fingerprint.insert(
                fingerprint(schema),
                WriterEntry {
                    name,
                    direct,
                    resolving,
                },
            );
        }
        Ok(SchemaCatalog {
            by_fingerprint,
            readers,
        })
    }

    /// The catalog of the schemas compiled into this binary.
    pub fn builtin() -> &'static SchemaCatalog {
        static CATALOG: LazyLock<SchemaCatalog> = LazyLock::new(|| {
            // Garbage length prefixes must not make the decoder allocate much: no valid message
            // of ours comes near this.
            apache_avro::util::max_allocation_bytes(16 << 20);
            SchemaCatalog::from_sources(SCHEMA_FILES)
                .expect("schemas compiled in from avro/ are valid")
        });
        &CATALOG
    }

    /// Every schema's fingerprint and full name (for docs and tests).
    pub fn known(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .by_fingerprint
            .iter()
            .map(|(fp, e)| (e.name.clone(), hex(fp)))
            .collect();
        v.sort();
        v
    }

    /// Decodes a single-object encoded datum as the record `expected` (a reader full name).
    pub fn decode_as<T: DeserializeOwned>(
        &self,
        expected: &'static str,
        payload: &[u8],
    ) -> Result<T, DecodeError> {
        self.decode_boxed(expected, payload).map(|b| *b)
    }

    /// As [`Self::decode_as`], into a box: the value is built in place on the heap.
    pub fn decode_boxed<T: DeserializeOwned>(
        &self,
        expected: &'static str,
        payload: &[u8],
    ) -> Result<Box<T>, DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::Empty);
        }
        if payload.len() < 2 || payload[..2] != MARKER {
            return Err(DecodeError::BadMarker(
                hex(&payload[..payload.len().min(2)]),
            ));
        }
        if payload.len() < HEADER_LEN {
            return Err(DecodeError::TruncatedHeader(payload.len()));
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&payload[2..HEADER_LEN]);
        let entry = self
            .by_fingerprint
            .get(&fp)
            .ok_or_else(|| DecodeError::UnknownSchema(hex(&fp)))?;
        if entry.name != expected {
            return Err(DecodeError::WrongRecord {
                expected,
                found: entry.name.clone(),
            });
        }
        let body_err = |e: apache_avro::Error| DecodeError::Body {
            schema: entry.name.clone(),
            detail: e.to_string(),
        };
        let mut cursor = Cursor::new(&payload[HEADER_LEN..]);
        let value: T = match (&entry.direct, &entry.resolving) {
            (Some(direct), _) => direct.read_deser(&mut cursor).map_err(body_err)?,
            (None, Some(resolving)) => {
                let v = resolving.read_value(&mut cursor).map_err(body_err)?;
                apache_avro::from_value(&v).map_err(body_err)?
            }
            (None, None) => unreachable!("every catalog entry has a reader"),
        };
        let rest = payload.len() - HEADER_LEN - cursor.position() as usize;
        if rest > 0 {
            return Err(DecodeError::TrailingBytes(rest));
        }
        Ok(Box::new(value))
    }

    /// Encodes `value` with the reader schema of `name`, single-object framed.
    pub fn encode<T: Serialize>(&self, name: &str, value: &T) -> Result<Vec<u8>, EncodeError> {
        let entry = self
            .readers
            .get(name)
            .ok_or_else(|| EncodeError(format!("no schema {name}")))?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&MARKER);
        out.extend_from_slice(&entry.fingerprint);
        entry
            .writer
            .write_ser(&mut out, value)
            .map_err(|e| EncodeError(format!("{name}: {e}")))?;
        Ok(out)
    }

    /// Encodes `value` with another (compat) writer schema given as JSON; for tests of evolution.
    pub fn encode_with_schema<T: Serialize>(
        schema_json: &str,
        value: &T,
    ) -> Result<Vec<u8>, EncodeError> {
        let schema = Schema::parse_str(schema_json).map_err(|e| EncodeError(e.to_string()))?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&MARKER);
        out.extend_from_slice(&fingerprint(&schema));
        let writer = GenericDatumWriter::builder(&schema)
            .build()
            .map_err(|e| EncodeError(e.to_string()))?;
        writer
            .write_ser(&mut out, value)
            .map_err(|e| EncodeError(e.to_string()))?;
        Ok(out)
    }
}

/// An output record could not be encoded: a bug (our types disagree with `avro/`), never bad input.
#[derive(Debug, Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(pub String);

/// The default decoder: single-object encoding against the built-in catalog.
pub struct SingleObjectDecoder {
    catalog: &'static SchemaCatalog,
}

impl SingleObjectDecoder {
    pub fn new(catalog: &'static SchemaCatalog) -> Self {
        SingleObjectDecoder { catalog }
    }
}

impl Default for SingleObjectDecoder {
    fn default() -> Self {
        SingleObjectDecoder::new(SchemaCatalog::builtin())
    }
}

impl Decoder for SingleObjectDecoder {
    fn decode(&self, family: Family, payload: &[u8]) -> Result<InputMessage, DecodeError> {
        let name = family.record_name();
        Ok(match family {
            Family::Storefront => {
                InputMessage::Storefront(self.catalog.decode_boxed(name, payload)?)
            }
            Family::Backoffice => {
                InputMessage::Backoffice(self.catalog.decode_boxed(name, payload)?)
            }
            Family::Profile => InputMessage::Profile(self.catalog.decode_boxed(name, payload)?),
        })
    }
}

/// Encoders for the output records and for producing input events (replay, tests).
pub mod encode {
    use super::*;

    pub fn storefront(e: &StorefrontEvent) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode(Family::Storefront.record_name(), e)
    }
    pub fn backoffice(e: &BackofficeEvent) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode(Family::Backoffice.record_name(), e)
    }
    pub fn profile(e: &ProfileEvent) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode(Family::Profile.record_name(), e)
    }
    pub fn audience_change(e: &AudienceChange) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode(AUDIENCE_CHANGE, e)
    }
    pub fn dead_letter(e: &DeadLetter) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode(DEAD_LETTER, e)
    }
    pub fn journey_trigger(e: &JourneyTrigger) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode(JOURNEY_TRIGGER, e)
    }
}

pub const AUDIENCE_CHANGE: &str = "com.tailor.output.AudienceChange";
pub const DEAD_LETTER: &str = "com.tailor.output.DeadLetter";
pub const JOURNEY_TRIGGER: &str = "com.tailor.output.JourneyTrigger";

/// Decoders for output records (tests, tools and downstream consumers written in Rust).
pub mod decode {
    use super::*;

    pub fn audience_change(payload: &[u8]) -> Result<AudienceChange, DecodeError> {
        SchemaCatalog::builtin().decode_as(AUDIENCE_CHANGE, payload)
    }
    pub fn dead_letter(payload: &[u8]) -> Result<DeadLetter, DecodeError> {
        SchemaCatalog::builtin().decode_as(DEAD_LETTER, payload)
    }
    pub fn journey_trigger(payload: &[u8]) -> Result<JourneyTrigger, DecodeError> {
        SchemaCatalog::builtin().decode_as(JOURNEY_TRIGGER, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::samples;

    #[test]
    fn every_schema_in_avro_parses_and_is_in_the_catalog() {
        let catalog = SchemaCatalog::builtin();
        let names: Vec<String> = catalog.known().into_iter().map(|(n, _)| n).collect();
        for name in [
            Family::Storefront.record_name(),
            Family::Backoffice.record_name(),
            Family::Profile.record_name(),
            AUDIENCE_CHANGE,
            DEAD_LETTER,
            JOURNEY_TRIGGER,
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
        assert_eq!(
            SCHEMA_FILES.len(),
            catalog.known().len(),
            "each file one fingerprint"
        );
    }

    #[test]
    fn every_event_type_round_trips_through_its_family_schema() {
        let d = SingleObjectDecoder::default();
        for t in EventType::ALL {
            let id = format!("e-{}", t.name());
            let (msg, bytes) = match t.family() {
                Family::Storefront => {
                    let e = samples::storefront(t.name(), &id, 1_700_000_000_000, "ecid-1");
                    (
                        InputMessage::Storefront(Box::new(e.clone())),
                        encode::storefront(&e).unwrap(),
                    )
                }
                Family::Backoffice => {
                    let e =
                        samples::backoffice(t.name(), &id, 1_700_000_000_000, "a@b.c", "o1", 9.5);
                    (
                        InputMessage::Backoffice(Box::new(e.clone())),
                        encode::backoffice(&e).unwrap(),
                    )
                }
                Family::Profile => {
                    let e = samples::profile(
                        t.name(),
                        &id,
                        1_700_000_000_000,
                        "c1",
                        "a@b.c",
                        Some("gold"),
                    );
                    (
                        InputMessage::Profile(Box::new(e.clone())),
                        encode::profile(&e).unwrap(),
                    )
                }
            };
            assert_eq!(&bytes[..2], &MARKER);
            assert_eq!(d.decode(t.family(), &bytes).unwrap(), msg, "{}", t.name());
        }
    }

    #[test]
    fn output_records_round_trip() {
        let change = AudienceChange {
            id: "0123".into(),
            profile_key: "k".into(),
            identity: Default::default(),
            segment_id: "vip".into(),
            direction: crate::wire::Direction::Exited,
            event_time: 5,
            cause: crate::wire::Cause {
                kind: "event".into(),
                source_offset: Some(3),
                ..Default::default()
            },
        };
        assert_eq!(
            decode::audience_change(&encode::audience_change(&change).unwrap()).unwrap(),
            change
        );
        let dl = DeadLetter {
            source_topic: "t".into(),
            source_partition: 1,
            source_offset: 2,
            source_timestamp: None,
            reason_code: "bad_framing".into(),
            reason: "x".into(),
            key: Some(vec![0, 255]),
            payload: vec![1, 2, 3],
        };
        assert_eq!(
            decode::dead_letter(&encode::dead_letter(&dl).unwrap()).unwrap(),
            dl
        );
    }

    #[test]
    fn a_producer_on_a_newer_or_older_compatible_schema_is_resolved() {
        // Newer producer: one extra field. Older producer: without the optional deviceContext.
        let mut newer: serde_json::Value =
            serde_json::from_str(include_str!("../avro/storefront.avsc")).unwrap();
        newer["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
            {"name": "experimentId", "type": ["null", "string"], "default": null}));
        let mut older: serde_json::Value =
            serde_json::from_str(include_str!("../avro/storefront.avsc")).unwrap();
        older["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "deviceContext");
        let (newer, older) = (newer.to_string(), older.to_string());
        let reader = include_str!("../avro/storefront.avsc");
        let catalog = SchemaCatalog::from_sources(&[
            ("storefront.avsc", reader),
            ("compat/storefront.newer.avsc", &newer),
            ("compat/storefront.older.avsc", &older),
        ])
        .unwrap();
        let catalog: &'static SchemaCatalog = Box::leak(Box::new(catalog));

        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Newer<'a> {
            #[serde(flatten)]
            base: &'a crate::wire::StorefrontEvent,
            experiment_id: Option<String>,
        }
        let ev = samples::storefront("addToCart", "e1", 1_700_000_000_000, "ecid-1");
        let bytes = SchemaCatalog::encode_with_schema(
            &newer,
            &Newer {
                base: &ev,
                experiment_id: Some("x".into()),
            },
        )
        .unwrap();
        let got = SingleObjectDecoder::new(catalog)
            .decode(Family::Storefront, &bytes)
            .unwrap();
        assert_eq!(
            got,
            InputMessage::Storefront(Box::new(ev.clone())),
            "extra field ignored"
        );

        // The older writer: build the datum through apache-avro's Value path, without the field.
        let older_schema = Schema::parse_str(&older).unwrap();
        let mut value = apache_avro::to_value(&ev).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value {
            fields.retain(|(name, _)| name != "deviceContext");
        }
        let value = value.resolve(&older_schema).unwrap();
        let mut bytes = MARKER.to_vec();
        bytes.extend_from_slice(&fingerprint(&older_schema));
        bytes.extend(
            GenericDatumWriter::builder(&older_schema)
                .build()
                .unwrap()
                .write_value_to_vec(value)
                .unwrap(),
        );
        let InputMessage::Storefront(got) = SingleObjectDecoder::new(catalog)
            .decode(Family::Storefront, &bytes)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            got.device_context, None,
            "field missing in the writer takes the reader's default"
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_reason_never_a_panic() {
        let d = SingleObjectDecoder::default();
        let good = encode::storefront(&samples::storefront("pageView", "e", 1, "x")).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (b"{\"json\":true}".to_vec(), "bad_framing"),
            (vec![0xC3], "bad_framing"),
            (vec![0xC3, 0x01, 1, 2], "bad_framing"),
            (
                vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0],
                "unknown_schema",
            ),
            (good[..good.len() / 2].to_vec(), "bad_body"),
            ([good.clone(), vec![0, 0]].concat(), "trailing_bytes"),
        ];
        for (bytes, code) in cases {
            assert_eq!(
                d.decode(Family::Storefront, &bytes).unwrap_err().code(),
                code,
                "{bytes:?}"
            );
        }
        assert_eq!(
            d.decode(Family::Backoffice, &good).unwrap_err().code(),
            "wrong_record"
        );
        // Every truncation and single-byte corruption of a valid message: an error or a value, never a panic.
        for cut in 0..good.len() {
            let _ = d.decode(Family::Storefront, &good[..cut]);
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for i in 10..good.len() {
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut bad = good.clone();
                bad[i] = state as u8;
                let _ = d.decode(Family::Storefront, &bad);
            }
        }
    }
}
