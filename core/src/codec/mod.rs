//! Wire formats of the input and output topics: three framings, one set of records.
//!
//! A message's framing is recognised by its first bytes, per message, so a topic may carry a mix
//! during a migration:
//!
//! | first bytes | framing | writer schema |
//! |---|---|---|
//! | `C3 01` + 8 bytes | Avro single-object encoding | by CRC-64-AVRO fingerprint ([`canonical`]) |
//! | `00` + 4 bytes | Confluent schema-registry framing | by registry id (fetched by the shell, cached here) |
//! | `{` (after white space) | JSON, the Avro records' field names | the reader schema's shape |
//!
//! Writer schemas come from `avro/` (compiled in), from a directory named in the config (loaded at
//! start and on SIGHUP) and from the registry. Each is checked against the reader schema when it
//! is added ([`SchemaCatalog::add_writer`]); an incompatible one is refused with the reason. When
//! the writer schema *is* the reader schema (the common case) the datum is read straight into the
//! wire type by a reader generated from the schema ([`direct`]), and what that reader refuses by
//! serde_avro_fast, which names the fault; otherwise apache-avro decodes it with the writer schema
//! and resolves it to the reader's. Outputs are written by generated writers ([`direct`]), the
//! bytes serde_avro_fast writes. Readers are built once, when the schema is added: the
//! per-message path never parses or resolves a schema.
//!
//! Fingerprints follow the specification ([`canonical`]); a message fingerprinted the way
//! apache-avro and the Apache Python package do ([`Variant::Legacy`]) is accepted too.
//! Everything here is synchronous and free of I/O: the registry client is [`crate::registry`].

pub mod canonical;
mod direct;
mod json;

use std::{
    collections::{HashMap, HashSet},
    io::Cursor,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use apache_avro::{
    reader::datum::GenericDatumReader, schema_compatibility::SchemaCompatibility,
    writer::datum::GenericDatumWriter, Schema,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_avro_fast::Schema as FastSchema;
use thiserror::Error;

pub use canonical::Variant;
pub use direct::Direct;

use crate::wire::{
    AudienceChange, BackofficeEvent, DeadLetter, JourneyTrigger, ProfileEvent, StorefrontEvent,
};

include!(concat!(env!("OUT_DIR"), "/schemas.rs"));

/// First two bytes of every single-object encoded message.
pub const MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;
/// Confluent framing: magic byte 0, then the schema id (4 bytes, big-endian).
pub const CONFLUENT_MAGIC: u8 = 0;
const CONFLUENT_HEADER_LEN: usize = 5;

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

/// How a message is framed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    SingleObject,
    Confluent,
    Json,
}

impl Framing {
    pub const ALL: [Framing; 3] = [Framing::SingleObject, Framing::Confluent, Framing::Json];

    /// The framing of `payload`, or None when it starts like none of them.
    pub fn detect(payload: &[u8]) -> Option<Framing> {
        match payload {
            [0xC3, 0x01, ..] => Some(Framing::SingleObject),
            [CONFLUENT_MAGIC, ..] => Some(Framing::Confluent),
            _ => match payload.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => Some(Framing::Json),
                _ => None,
            },
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::SingleObject => "single_object",
            Framing::Confluent => "confluent",
            Framing::Json => "json",
        }
    }
}

/// The registry id of a Confluent-framed payload (None for other framings or a short header).
pub fn confluent_id(payload: &[u8]) -> Option<u32> {
    match payload {
        [CONFLUENT_MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
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

/// How a message was read: its framing, for single-object messages which fingerprint variant
/// its producer computed, and whether its writer schema is the reader schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub framing: Framing,
    pub variant: Option<Variant>,
    /// Written with the reader schema itself (its datum is the reader's encoding).
    pub direct: bool,
}

impl Origin {
    /// Whether any Tailor reads this payload without the registry or the schemas directory
    /// (single-object with a built-in reader schema): what can travel as it is through the
    /// repartition topic to another worker.
    pub fn portable(&self) -> bool {
        self.framing == Framing::SingleObject && self.direct
    }
}

/// Why a message could not be decoded. Bad input (dead-letter it and go on), except
/// [`DecodeError::SchemaIdPending`], which is transient: the registry has not answered yet.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown framing: first bytes {0}; expected C3 01 (Avro single-object), 00 (Confluent schema registry) or {{ (JSON)")]
    BadFraming(String),
    #[error("truncated {framing} header: {len} bytes, need {need}")]
    TruncatedHeader {
        framing: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown writer schema fingerprint {0}: add the producer's schema to the schemas directory ([schemas] dir) and send SIGHUP, or use the schema registry")]
    UnknownSchema(String),
    #[error("schema id {0} is not in the schema registry")]
    UnknownSchemaId(u32),
    #[error("schema id {id} cannot be used: {reason}")]
    RefusedSchemaId { id: u32, reason: String },
    #[error("Confluent-framed message (schema id {0}) but no [schema_registry] is configured")]
    NoRegistry(u32),
    #[error("schema id {0}: waiting for the schema registry")]
    SchemaIdPending(u32),
    #[error("schema {found} cannot be read as {expected} (wrong topic?)")]
    WrongRecord {
        expected: &'static str,
        found: String,
    },
    #[error("Avro body does not match schema {schema}: {detail}")]
    Body { schema: String, detail: String },
    #[error("{0} trailing bytes after the Avro datum")]
    TrailingBytes(usize),
    #[error("JSON event does not fit {schema} at {path}: {detail}")]
    Json {
        schema: &'static str,
        path: String,
        detail: String,
    },
}

impl DecodeError {
    /// Low-cardinality class, used as the dead-letter reason code and metric label.
    /// Every code a decoding failure that is bad input can have (not `registry_unavailable`,
    /// which is a wait): the metric's label values, known before the first one happens.
    pub const CODES: &'static [&'static str] = &[
        "empty",
        "bad_framing",
        "unknown_schema",
        "unknown_schema_id",
        "incompatible_schema",
        "no_registry",
        "wrong_record",
        "bad_body",
        "trailing_bytes",
        "bad_json",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::BadFraming(_) | DecodeError::TruncatedHeader { .. } => "bad_framing",
            DecodeError::UnknownSchema(_) => "unknown_schema",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::RefusedSchemaId { .. } => "incompatible_schema",
            DecodeError::NoRegistry(_) => "no_registry",
            DecodeError::SchemaIdPending(_) => "registry_unavailable",
            DecodeError::WrongRecord { .. } => "wrong_record",
            DecodeError::Body { .. } => "bad_body",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::Json { .. } => "bad_json",
        }
    }

    /// True when the message is not at fault and must be retried, not dead-lettered.
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::SchemaIdPending(_))
    }
}

/// One writer schema, with its prepared readers.
pub struct Writer {
    /// Full name of the record.
    pub name: String,
    /// Used when this writer schema *is* the reader schema: the generated reader first
    /// ([`direct`]), then the reader schema compiled for serde_avro_fast, which deserialises the
    /// datum straight into the wire type (no `Value`; about 6 times apache-avro's serde path in
    /// the core bench) or names its fault.
    direct: Option<Arc<FastSchema>>,
    /// Reader that resolves this writer schema to its record's reader schema.
    resolving: Option<GenericDatumReader<'static>>,
}

/// A schema as `tailor schemas` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaInfo {
    pub name: String,
    pub file: String,
    pub canonical: String,
    /// Hex of the 8 fingerprint bytes, little-endian, as written after `C3 01`.
    pub fingerprint: String,
    /// The same for the legacy canonical form (accepted on input).
    pub fingerprint_legacy: String,
}

impl SchemaInfo {
    /// Describes a schema from its JSON alone (any valid schema, also ones apache-avro cannot
    /// parse, such as `error` types: the canonical form is Tailor's own).
    pub fn of(file: &str, json: &str) -> Result<SchemaInfo, String> {
        let canonical =
            canonical::canonical_form(json, Variant::Spec).map_err(|e| format!("{file}: {e}"))?;
        // The canonical form of a named type starts with its full name.
        let name = serde_json::from_str::<serde_json::Value>(&canonical)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .unwrap_or_default();
        Ok(SchemaInfo {
            name,
            file: file.to_owned(),
            fingerprint: hex(&canonical::crc64_avro(canonical.as_bytes()).to_le_bytes()),
            fingerprint_legacy: hex(&canonical::fingerprint(json, Variant::Legacy)?),
            canonical,
        })
    }
}

struct ReaderEntry {
    schema: &'static Schema,
    /// The same schema for serde_avro_fast: reads what the generated readers refuse, and
    /// encodes inputs again (portable payloads).
    fast: Arc<FastSchema>,
    json: &'static str,
    fingerprint: [u8; 8],
}

/// Parses a schema once per distinct text for the life of the process (prepared readers borrow
/// their schemas for `'static`; a reload re-adds the same texts, so this stays as small as the set
/// of schemas ever seen).
fn intern(json: &str) -> Result<&'static Schema, String> {
    static SCHEMAS: LazyLock<Mutex<HashMap<String, &'static Schema>>> =
        LazyLock::new(Default::default);
    let mut map = SCHEMAS.lock().expect("not poisoned");
    if let Some(s) = map.get(json) {
        return Ok(s);
    }
    let schema = Schema::parse_str(json).map_err(|e| e.to_string())?;
    let schema: &'static Schema = Box::leak(Box::new(schema));
    map.insert(json.to_owned(), schema);
    Ok(schema)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders a compatibility error with its causes ("field 'x' …: the writer's type is …").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A registry id's writer schema (or why it cannot be used), and when a "no such id" answer came.
type IdEntry = (Result<Arc<Writer>, DecodeError>, Option<Instant>);

/// The hasher of the maps every message looks its writer up in: foldhash, seeded at random per
/// map. The fingerprints are the catalog's own schemas'; a registry id a message names is
/// entered only after a round trip to the registry, and an unknown one expires after a minute
/// ([`SchemaCatalog::expire_unknown_ids`]), so messages cannot pile up keys to collide. The
/// standard library's SipHash took about 200 instructions per event there (1.3 % of decode +
/// apply + evaluate, `scripts/icount.sh`).
type Lookup = foldhash::fast::RandomState;

/// The reader schemas (compiled in) and every writer schema known, by fingerprint and by id.
#[derive(Clone)]
pub struct SchemaCatalog {
    by_fingerprint: HashMap<[u8; 8], (Arc<Writer>, Variant), Lookup>,
    /// Confluent registry ids: the writer schema, or why it cannot be used (with when the
    /// registry said it has no such id: that answer expires, see [`Self::expire_unknown_ids`]).
    by_id: HashMap<u32, IdEntry, Lookup>,
    /// Ids requested from the registry and not answered yet.
    pending: HashSet<u32>,
    registry: bool,
    readers: Arc<HashMap<String, ReaderEntry>>,
    /// Fingerprints added from each file of the schemas directory.
    from_directory: HashMap<String, Vec<[u8; 8]>>,
}

impl SchemaCatalog {
    /// Builds the catalog from `(path, json)` pairs: files directly under `avro/` are the reader
    /// schemas (one per record); files in sub-folders (`avro/compat/`, from Tailor 0.1) are other
    /// writer versions, as the schemas directory's are.
    pub fn from_sources(files: &[(&str, &str)]) -> Result<SchemaCatalog, String> {
        let mut readers = HashMap::new();
        for (path, json) in files.iter().filter(|(path, _)| !path.contains('/')) {
            let schema = intern(json).map_err(|e| format!("avro/{path}: {e}"))?;
            let name = schema
                .name()
                .map(|n| n.to_string())
                .ok_or_else(|| format!("avro/{path}: top-level schema must be a named record"))?;
            let fast: FastSchema = json.parse().map_err(|e| format!("avro/{path}: {e}"))?;
            let entry = ReaderEntry {
                schema,
                fast: Arc::new(fast),
                json: Box::leak(json.to_string().into_boxed_str()),
                fingerprint: canonical::fingerprint(json, Variant::Spec)
                    .map_err(|e| format!("avro/{path}: {e}"))?,
            };
            if readers.insert(name.clone(), entry).is_some() {
                return Err(format!("avro/{path}: second reader schema for {name}"));
            }
        }
        let mut catalog = SchemaCatalog {
            by_fingerprint: HashMap::default(),
            by_id: HashMap::default(),
            pending: HashSet::new(),
            registry: false,
            readers: Arc::new(readers),
            from_directory: HashMap::new(),
        };
        for (path, json) in files {
            catalog.add_writer(&format!("avro/{path}"), json)?;
        }
        Ok(catalog)
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

    /// Checks a writer schema against its record's reader schema and prepares its readers.
    fn prepare(&self, source: &str, json: &str) -> Result<Writer, String> {
        let schema = intern(json).map_err(|e| format!("{source}: not a valid Avro schema: {e}"))?;
        let name = schema
            .name()
            .map(|n| n.to_string())
            .ok_or_else(|| format!("{source}: the top-level schema must be a named record"))?;
        let reader = self.readers.get(&name).ok_or_else(|| {
            let mut known: Vec<_> = self.readers.keys().cloned().collect();
            known.sort();
            format!(
                "{source}: record {name} is none of Tailor's ({})",
                known.join(", ")
            )
        })?;
        let same = canonical::canonical_form(json, Variant::Spec)?
            == canonical::canonical_form(reader.json, Variant::Spec)?;
        let (direct, resolving) = if same {
            (Some(reader.fast.clone()), None)
        } else {
            SchemaCompatibility::can_read(schema, reader.schema).map_err(|e| {
                format!(
                    "{source}: {name} cannot be read as the current schema: {}",
                    chain(&e)
                )
            })?;
            let r = GenericDatumReader::builder(schema)
                .reader_schema(reader.schema)
                .build()
                .map_err(|e| format!("{source}: {e}"))?;
            (None, Some(r))
        };
        Ok(Writer {
            name,
            direct,
            resolving,
        })
    }

    /// Adds a writer schema, known by both fingerprint variants. Refused (with the field that
    /// breaks it) when the reader schema of its record cannot read it.
    pub fn add_writer(&mut self, source: &str, json: &str) -> Result<SchemaInfo, String> {
        let writer = Arc::new(self.prepare(source, json)?);
        let info = SchemaInfo::of(source, json)?;
        for variant in Variant::ALL {
            let fp = canonical::fingerprint(json, variant)?;
            // The spec's fingerprint of one schema wins over another's legacy one.
            match self.by_fingerprint.get(&fp) {
                Some((_, Variant::Spec)) if variant == Variant::Legacy => {}
                _ => {
                    self.by_fingerprint.insert(fp, (writer.clone(), variant));
                }
            }
        }
        Ok(info)
    }

    /// Checks a writer schema as [`Self::add_writer`] would, without adding it.
    pub fn check_writer(&self, source: &str, json: &str) -> Result<(), String> {
        self.prepare(source, json).map(|_| ())
    }

    /// Adds (or replaces) the writer schema of a file of the schemas directory.
    pub fn add_directory_writer(&mut self, file: &str, json: &str) -> Result<SchemaInfo, String> {
        let info = self.add_writer(file, json)?;
        let mut fps = Vec::new();
        for variant in Variant::ALL {
            let fp = canonical::fingerprint(json, variant)?;
            if !SchemaCatalog::builtin().by_fingerprint.contains_key(&fp) {
                fps.push(fp);
            }
        }
        self.from_directory.insert(file.to_owned(), fps);
        Ok(info)
    }

    /// Forgets the schemas of the directory's files except those in `keep` (files whose last
    /// good version stays in force while their new text is refused).
    pub fn clear_directory_except(&mut self, keep: &HashSet<String>) {
        let gone: Vec<String> = self
            .from_directory
            .keys()
            .filter(|f| !keep.contains(*f))
            .cloned()
            .collect();
        for file in gone {
            for fp in self.from_directory.remove(&file).unwrap_or_default() {
                // Another file may hold the same schema.
                if !self.from_directory.values().any(|v| v.contains(&fp)) {
                    self.by_fingerprint.remove(&fp);
                }
            }
        }
    }

    /// Messages with Confluent framing are expected: ids not yet known are pending, not unknown.
    pub fn enable_registry(&mut self) {
        self.registry = true;
    }

    /// Whether a schema registry is configured (see [`Self::enable_registry`]).
    pub fn registry_enabled(&self) -> bool {
        self.registry
    }

    /// Marks `id` as asked of the registry. True if it was not known or asked before.
    pub fn request_id(&mut self, id: u32) -> bool {
        self.registry && !self.by_id.contains_key(&id) && self.pending.insert(id)
    }

    /// Whether messages with this id can be decoded (or definitely rejected) now.
    pub fn id_settled(&self, id: u32) -> bool {
        !self.registry || self.by_id.contains_key(&id)
    }

    /// The registry's answer for `id`: its schema text, or None when it has no such id.
    pub fn resolve_id(&mut self, id: u32, schema: Option<&str>) {
        self.pending.remove(&id);
        let entry = match schema {
            None => (Err(DecodeError::UnknownSchemaId(id)), Some(Instant::now())),
            Some(json) => (
                self.prepare(&format!("registry id {id}"), json)
                    .map(Arc::new)
                    .map_err(|reason| DecodeError::RefusedSchemaId { id, reason }),
                None,
            ),
        };
        self.by_id.insert(id, entry);
    }

    /// Forgets "no such id" answers older than `ttl`: an id registered since (or served late by
    /// a registry replica) is asked again, and ids from garbage payloads do not pile up.
    pub fn expire_unknown_ids(&mut self, ttl: Duration) {
        self.by_id
            .retain(|_, (_, since)| since.is_none_or(|t| t.elapsed() < ttl));
    }

    /// Every writer schema (for `tailor schemas` and tests): (full name, source, spec fingerprint).
    pub fn known(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .by_fingerprint
            .iter()
            .filter(|(_, (_, variant))| *variant == Variant::Spec)
            .map(|(fp, (e, _))| (e.name.clone(), hex(fp)))
            .collect();
        v.sort();
        v
    }

    /// The JSON text of a reader (current) schema, by full name.
    pub fn reader_json(&self, name: &str) -> Option<&'static str> {
        self.readers.get(name).map(|r| r.json)
    }

    /// The writer of a framed Avro message, and where its datum starts.
    fn writer_of(&self, payload: &[u8]) -> Result<(&Writer, Origin, usize), DecodeError> {
        let framing = match Framing::detect(payload) {
            Some(f) => f,
            None if payload.is_empty() => return Err(DecodeError::Empty),
            None => {
                return Err(DecodeError::BadFraming(hex(
                    &payload[..payload.len().min(2)]
                )))
            }
        };
        match framing {
            Framing::SingleObject => {
                if payload.len() < HEADER_LEN {
                    return Err(DecodeError::TruncatedHeader {
                        framing: "single-object",
                        len: payload.len(),
                        need: HEADER_LEN,
                    });
                }
                let mut fp = [0u8; 8];
                fp.copy_from_slice(&payload[2..HEADER_LEN]);
                let (writer, variant) = self
                    .by_fingerprint
                    .get(&fp)
                    .ok_or_else(|| DecodeError::UnknownSchema(hex(&fp)))?;
                let origin = Origin {
                    framing,
                    variant: Some(*variant),
                    direct: writer.direct.is_some(),
                };
                Ok((writer, origin, HEADER_LEN))
            }
            Framing::Confluent => {
                let id = confluent_id(payload).ok_or(DecodeError::TruncatedHeader {
                    framing: "Confluent",
                    len: payload.len(),
                    need: CONFLUENT_HEADER_LEN,
                })?;
                let writer = match self.by_id.get(&id) {
                    Some((Ok(w), _)) => w,
                    Some((Err(e), _)) => return Err(e.clone()),
                    None if self.registry => return Err(DecodeError::SchemaIdPending(id)),
                    None => return Err(DecodeError::NoRegistry(id)),
                };
                let origin = Origin {
                    framing,
                    variant: None,
                    direct: writer.direct.is_some(),
                };
                Ok((writer, origin, CONFLUENT_HEADER_LEN))
            }
            Framing::Json => unreachable!("JSON has no writer schema"),
        }
    }

    /// Decodes a framed datum (any of the three framings) as the record `expected`.
    pub fn decode_boxed<T: DeserializeOwned + Direct>(
        &self,
        expected: &'static str,
        payload: &[u8],
    ) -> Result<(Box<T>, Origin), DecodeError> {
        self.decode_boxed_as(expected, payload, false)
    }

    /// [`Self::decode_boxed`]; `for_event`: a datum written with the reader schema is read
    /// without the strings `Event::from_input` does not read (the generated `ReadInput` readers).
    fn decode_boxed_as<T: DeserializeOwned + Direct>(
        &self,
        expected: &'static str,
        payload: &[u8],
        for_event: bool,
    ) -> Result<(Box<T>, Origin), DecodeError> {
        if Framing::detect(payload) == Some(Framing::Json) {
            let value = json::decode(expected, payload)?;
            let origin = Origin {
                framing: Framing::Json,
                variant: None,
                direct: false,
            };
            return Ok((value, origin));
        }
        let (writer, origin, start) = self.writer_of(payload)?;
        if writer.name != expected {
            return Err(DecodeError::WrongRecord {
                expected,
                found: writer.name.clone(),
            });
        }
        let body_err = |detail: String| DecodeError::Body {
            schema: writer.name.clone(),
            detail,
        };
        let body = &payload[start..];
        // Written with the reader schema: the generated reader first ([`direct`]); serde reads
        // what it does not, and names the fault of a bad datum.
        if writer.direct.is_some() {
            let read = if for_event {
                T::read_direct_input(body)
            } else {
                T::read_direct(body)
            };
            if let Some(value) = read {
                return Ok((value, origin));
            }
        }
        let (value, rest): (T, usize) = match (&writer.direct, &writer.resolving) {
            (Some(direct), _) => {
                let mut config = serde_avro_fast::de::DeserializerConfig::new(direct);
                // Every array item and map entry of our records takes at least one byte: a
                // longer count is garbage, refused before the decoder loops over it.
                config.max_seq_size = body.len();
                let mut state = serde_avro_fast::de::DeserializerState::with_config(
                    serde_avro_fast::de::read::SliceRead::new(body),
                    config,
                );
                let value =
                    T::deserialize(state.deserializer()).map_err(|e| body_err(e.to_string()))?;
                let rest = std::io::BufRead::fill_buf(&mut state.into_reader())
                    .map(|r| r.len())
                    .unwrap_or(0);
                (value, rest)
            }
            (None, Some(resolving)) => {
                let mut cursor = Cursor::new(body);
                let v = resolving
                    .read_value(&mut cursor)
                    .map_err(|e| body_err(e.to_string()))?;
                let value = apache_avro::from_value(&v).map_err(|e| body_err(e.to_string()))?;
                (value, body.len() - cursor.position() as usize)
            }
            (None, None) => unreachable!("every writer has a reader"),
        };
        if rest > 0 {
            return Err(DecodeError::TrailingBytes(rest));
        }
        Ok((Box::new(value), origin))
    }

    /// As [`Self::decode_boxed`], by value.
    pub fn decode_as<T: DeserializeOwned + Direct>(
        &self,
        expected: &'static str,
        payload: &[u8],
    ) -> Result<T, DecodeError> {
        self.decode_boxed(expected, payload).map(|(b, _)| *b)
    }

    /// Decodes a message from a family's topic.
    pub fn decode_input(
        &self,
        family: Family,
        payload: &[u8],
    ) -> Result<(InputMessage, Origin), DecodeError> {
        self.decode_input_as(family, payload, false)
    }

    /// As [`Self::decode_input`], for [`crate::event::Event::from_input`] only: a datum written
    /// with the reader schema comes without the strings the event does not read (store names,
    /// URLs, search filters … left empty, not copied). It accepts and refuses the same
    /// payloads. What it decodes is not for encoding again (the worker forwards such a datum
    /// as it came: [`Origin::portable`], [`Self::portable_payload`]).
    pub fn decode_for_event(
        &self,
        family: Family,
        payload: &[u8],
    ) -> Result<(InputMessage, Origin), DecodeError> {
        self.decode_input_as(family, payload, true)
    }

    fn decode_input_as(
        &self,
        family: Family,
        payload: &[u8],
        for_event: bool,
    ) -> Result<(InputMessage, Origin), DecodeError> {
        let name = family.record_name();
        Ok(match family {
            Family::Storefront => {
                let (v, o) = self.decode_boxed_as(name, payload, for_event)?;
                (InputMessage::Storefront(v), o)
            }
            Family::Backoffice => {
                let (v, o) = self.decode_boxed_as(name, payload, for_event)?;
                (InputMessage::Backoffice(v), o)
            }
            Family::Profile => {
                let (v, o) = self.decode_boxed_as(name, payload, for_event)?;
                (InputMessage::Profile(v), o)
            }
        })
    }

    /// As [`Self::decode_input`], without the origin.
    pub fn decode(&self, family: Family, payload: &[u8]) -> Result<InputMessage, DecodeError> {
        self.decode_input(family, payload).map(|(m, _)| m)
    }

    /// A payload any Tailor can read (see [`Origin::portable`]): a portable one as it is; a
    /// Confluent datum written with the reader schema with the single-object header instead;
    /// anything else (JSON, another writer version: decoded whole, by serde) encoded again from
    /// the decoded message.
    pub fn portable_payload(
        &self,
        payload: &[u8],
        origin: &Origin,
        msg: &InputMessage,
    ) -> Result<Vec<u8>, EncodeError> {
        let name = match msg {
            InputMessage::Storefront(_) => Family::Storefront.record_name(),
            InputMessage::Backoffice(_) => Family::Backoffice.record_name(),
            InputMessage::Profile(_) => Family::Profile.record_name(),
        };
        // A datum written with the reader schema goes as it came (it may have been decoded for
        // an event, without what events do not read: never encoded again).
        if origin.portable() {
            return Ok(payload.to_vec());
        }
        if origin.framing == Framing::Confluent && origin.direct {
            return self
                .confluent_to_single_object(name, payload)
                .ok_or_else(|| EncodeError(format!("no schema {name}")));
        }
        debug_assert!(
            !origin.direct,
            "only a message decoded whole is encoded again"
        );
        match msg {
            InputMessage::Storefront(v) => self.encode(name, v),
            InputMessage::Backoffice(v) => self.encode(name, v),
            InputMessage::Profile(v) => self.encode(name, v),
        }
    }

    /// A Confluent-framed datum written with the reader schema of `name`, with the single-object
    /// header instead (the datum is the same bytes in both framings; the inverse of
    /// [`to_confluent`]). None for an unknown record or a payload shorter than the header.
    fn confluent_to_single_object(&self, name: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let reader = self.readers.get(name)?;
        let body = payload.get(CONFLUENT_HEADER_LEN..)?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MARKER);
        out.extend_from_slice(&reader.fingerprint);
        out.extend_from_slice(body);
        Some(out)
    }

    /// Encodes `value` with the reader schema of `name`, single-object framed.
    pub fn encode<T: Serialize>(&self, name: &str, value: &T) -> Result<Vec<u8>, EncodeError> {
        let (entry, header) = self.framed(name)?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&header);
        serde_avro_fast::to_datum(
            value,
            out,
            &mut serde_avro_fast::ser::SerializerConfig::new(&entry.fast),
        )
        .map_err(|e| EncodeError(format!("{name}: {e}")))
    }

    /// As [`Self::encode`], for an output record: written by its generated writer
    /// ([`direct`]), the same bytes without serde.
    fn encode_output<T: direct::Write>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<Vec<u8>, EncodeError> {
        let (_, header) = self.framed(name)?;
        Ok(direct::write(&header, value))
    }

    /// Record `name`'s reader schema and the single-object header of datums written with it.
    fn framed(&self, name: &str) -> Result<(&ReaderEntry, [u8; HEADER_LEN]), EncodeError> {
        let entry = self
            .readers
            .get(name)
            .ok_or_else(|| EncodeError(format!("no schema {name}")))?;
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MARKER);
        header[2..].copy_from_slice(&entry.fingerprint);
        Ok((entry, header))
    }

    /// Encodes `value` with another writer schema given as JSON, single-object framed with the
    /// spec's fingerprint; for tests of evolution.
    pub fn encode_with_schema<T: Serialize>(
        schema_json: &str,
        value: &T,
    ) -> Result<Vec<u8>, EncodeError> {
        let schema = Schema::parse_str(schema_json).map_err(|e| EncodeError(e.to_string()))?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&MARKER);
        out.extend_from_slice(
            &canonical::fingerprint(schema_json, Variant::Spec).map_err(EncodeError)?,
        );
        let writer = GenericDatumWriter::builder(&schema)
            .build()
            .map_err(|e| EncodeError(e.to_string()))?;
        writer
            .write_ser(&mut out, value)
            .map_err(|e| EncodeError(e.to_string()))?;
        Ok(out)
    }
}

/// Replaces a single-object header with a Confluent one (magic 0 + schema id): the datum is the
/// same bytes in both framings.
pub fn to_confluent(single_object: &[u8], id: u32) -> Vec<u8> {
    let body = single_object.get(HEADER_LEN..).unwrap_or_default();
    let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + body.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An output record could not be encoded: a bug (our types disagree with `avro/`), never bad input.
#[derive(Debug, Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(pub String);

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
        SchemaCatalog::builtin().encode_output(AUDIENCE_CHANGE, e)
    }
    pub fn dead_letter(e: &DeadLetter) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode_output(DEAD_LETTER, e)
    }
    pub fn journey_trigger(e: &JourneyTrigger) -> Result<Vec<u8>, EncodeError> {
        SchemaCatalog::builtin().encode_output(JOURNEY_TRIGGER, e)
    }
}

pub const AUDIENCE_CHANGE: &str = "com.tailor.output.AudienceChange";
pub const DEAD_LETTER: &str = "com.tailor.output.DeadLetter";
pub const JOURNEY_TRIGGER: &str = "com.tailor.output.JourneyTrigger";

/// The output records' full names, each with the topic setting it goes to.
pub const OUTPUTS: [&str; 3] = [AUDIENCE_CHANGE, JOURNEY_TRIGGER, DEAD_LETTER];

/// Decoders for output records (tests, tools and downstream consumers written in Rust). Tailor
/// writes its outputs with its own reader schemas, so a Confluent-framed output record is read
/// with them too, whatever its id.
pub mod decode {
    use super::*;

    fn own_output<T: DeserializeOwned + Direct>(
        name: &'static str,
        payload: &[u8],
    ) -> Result<T, DecodeError> {
        let catalog = SchemaCatalog::builtin();
        if Framing::detect(payload) == Some(Framing::Confluent) {
            if let Some(single) = catalog.confluent_to_single_object(name, payload) {
                return catalog.decode_as(name, &single);
            }
        }
        catalog.decode_as(name, payload)
    }

    pub fn audience_change(payload: &[u8]) -> Result<AudienceChange, DecodeError> {
        own_output(AUDIENCE_CHANGE, payload)
    }
    pub fn dead_letter(payload: &[u8]) -> Result<DeadLetter, DecodeError> {
        own_output(DEAD_LETTER, payload)
    }
    pub fn journey_trigger(payload: &[u8]) -> Result<JourneyTrigger, DecodeError> {
        own_output(JOURNEY_TRIGGER, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::samples;

    fn catalog() -> SchemaCatalog {
        SchemaCatalog::builtin().clone()
    }

    fn storefront_json() -> &'static str {
        include_str!("../../../avro/storefront.avsc")
    }

    /// The worker indexes per-family arrays (the latency histograms, the order of topics) by
    /// `family as usize`: each family's place in `Family::ALL`.
    #[test]
    fn each_family_is_its_place_in_all() {
        for (i, f) in Family::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?}");
        }
    }

    #[test]
    fn the_codes_of_bad_input_are_listed() {
        let c = catalog();
        let good = encode::storefront(&samples::storefront("addToCart", "a", 1, "e")).unwrap();
        let order = encode::backoffice(&samples::backoffice(
            "orderPlaced",
            "o",
            1,
            "a@b.c",
            "1",
            1.0,
        ))
        .unwrap();
        let mut unknown = vec![0xC3, 0x01];
        unknown.extend_from_slice(&[7; 8]);
        unknown.extend_from_slice(&good[10..]);
        let mut trailing = good.clone();
        trailing.push(0);
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            b"hello".to_vec(),
            vec![0xC3, 0x01, 1],
            unknown,
            vec![0, 0, 0, 0, 9, 1],
            b"{bad".to_vec(),
            order,
            good[..good.len() - 20].to_vec(),
            trailing,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for input in inputs {
            let e = c.decode_input(Family::Storefront, &input).unwrap_err();
            assert!(
                DecodeError::CODES.contains(&e.code()),
                "{} not listed",
                e.code()
            );
            seen.insert(e.code());
        }
        assert!(seen.len() >= 8, "{seen:?}");
    }

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
    fn all_lists_each_enum_in_discriminant_order() {
        // The worker indexes its resolved metric counters by discriminant.
        for (i, f) in Framing::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
        for (i, v) in Variant::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
    }

    #[test]
    fn outputs_carry_the_specs_fingerprint_and_the_legacy_one_is_what_apache_avro_computes() {
        use apache_avro::rabin::Rabin;
        for (path, json) in SCHEMA_FILES {
            let spec = canonical::fingerprint(json, Variant::Spec).unwrap();
            let legacy = canonical::fingerprint(json, Variant::Legacy).unwrap();
            // Every schema here has a timestamp-millis field: the two forms differ.
            assert_ne!(spec, legacy, "{path}");
            let ours = Schema::parse_str(json).unwrap().fingerprint::<Rabin>();
            assert_eq!(&ours.bytes[..8], &legacy, "{path}: apache-avro's form");
        }
        let change = AudienceChange {
            id: "1".into(),
            profile_key: "k".into(),
            identity: Default::default(),
            segment_id: "s".into(),
            direction: crate::wire::Direction::Entered,
            event_time: 5,
            cause: Default::default(),
            store: Default::default(),
            explanation: None,
        };
        let bytes = encode::audience_change(&change).unwrap();
        let json = SchemaCatalog::builtin()
            .reader_json(AUDIENCE_CHANGE)
            .unwrap();
        assert_eq!(
            &bytes[2..10],
            &canonical::fingerprint(json, Variant::Spec).unwrap()
        );
    }

    #[test]
    fn a_message_with_the_legacy_fingerprint_is_accepted_and_told_apart() {
        let ev = samples::storefront("addToCart", "e1", 1_700_000_000_000, "ecid-1");
        let mut bytes = encode::storefront(&ev).unwrap();
        let (_, origin) = catalog().decode_input(Family::Storefront, &bytes).unwrap();
        assert_eq!(origin.variant, Some(Variant::Spec));
        bytes[2..10]
            .copy_from_slice(&canonical::fingerprint(storefront_json(), Variant::Legacy).unwrap());
        let (msg, origin) = catalog().decode_input(Family::Storefront, &bytes).unwrap();
        assert_eq!(origin.variant, Some(Variant::Legacy));
        assert_eq!(msg, InputMessage::Storefront(Box::new(ev)));
    }

    #[test]
    fn every_event_type_round_trips_through_its_family_schema() {
        let d = catalog();
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
            store: crate::wire::StoreRef {
                store_code: Some("main".into()),
                store_view_code: Some("en_gb".into()),
            },
            explanation: Some(crate::wire::Explanation {
                expression: "orders.count >= 2".into(),
                line: 12,
                column: 11,
                before: "true".into(),
                after: "false".into(),
                operands: vec![crate::wire::Operand {
                    expression: "orders.count".into(),
                    before: "2".into(),
                    after: "1".into(),
                }],
            }),
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
            payload_size: Some(3),
            payload_truncated: false,
        };
        assert_eq!(
            decode::dead_letter(&encode::dead_letter(&dl).unwrap()).unwrap(),
            dl
        );
    }

    fn newer_and_older() -> (String, String) {
        let mut newer: serde_json::Value = serde_json::from_str(storefront_json()).unwrap();
        newer["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
            {"name": "experimentId", "type": ["null", "string"], "default": null}));
        let mut older: serde_json::Value = serde_json::from_str(storefront_json()).unwrap();
        older["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "deviceContext");
        (newer.to_string(), older.to_string())
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Newer<'a> {
        #[serde(flatten)]
        base: &'a crate::wire::StorefrontEvent,
        experiment_id: Option<String>,
    }

    #[test]
    fn a_producer_on_a_newer_or_older_compatible_schema_is_resolved() {
        let (newer, older) = newer_and_older();
        let mut catalog = catalog();
        catalog.add_directory_writer("newer.avsc", &newer).unwrap();
        catalog.add_directory_writer("older.avsc", &older).unwrap();

        let ev = samples::storefront("addToCart", "e1", 1_700_000_000_000, "ecid-1");
        let bytes = SchemaCatalog::encode_with_schema(
            &newer,
            &Newer {
                base: &ev,
                experiment_id: Some("x".into()),
            },
        )
        .unwrap();
        let got = catalog.decode(Family::Storefront, &bytes).unwrap();
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
        bytes.extend_from_slice(&canonical::fingerprint(&older, Variant::Spec).unwrap());
        bytes.extend(
            GenericDatumWriter::builder(&older_schema)
                .build()
                .unwrap()
                .write_value_to_vec(value)
                .unwrap(),
        );
        let InputMessage::Storefront(got) = catalog.decode(Family::Storefront, &bytes).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            got.device_context, None,
            "field missing in the writer takes the reader's default"
        );

        // A reload forgets the directory's schemas, not the built-in ones.
        catalog.clear_directory_except(&HashSet::new());
        assert_eq!(
            catalog
                .decode(Family::Storefront, &bytes)
                .unwrap_err()
                .code(),
            "unknown_schema"
        );
        assert!(catalog
            .decode(Family::Storefront, &encode::storefront(&ev).unwrap())
            .is_ok());
    }

    #[test]
    fn an_incompatible_writer_schema_is_refused_naming_the_field() {
        let mut v: serde_json::Value = serde_json::from_str(storefront_json()).unwrap();
        for f in v["fields"].as_array_mut().unwrap() {
            if f["name"] == "eventType" {
                f["type"] = serde_json::json!("int");
            }
        }
        let err = catalog()
            .add_directory_writer("bad.avsc", &v.to_string())
            .unwrap_err();
        assert!(
            err.contains("bad.avsc") && err.contains("eventType"),
            "{err}"
        );
        let err = catalog()
            .add_directory_writer(
                "other.avsc",
                r#"{"type":"record","name":"x.Other","fields":[]}"#,
            )
            .unwrap_err();
        assert!(err.contains("x.Other is none of Tailor's"), "{err}");
    }

    #[test]
    fn confluent_framing_by_registry_id() {
        let ev = samples::storefront("addToCart", "e1", 1_700_000_000_000, "ecid-1");
        let framed = to_confluent(&encode::storefront(&ev).unwrap(), 7);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
        let mut c = catalog();
        assert_eq!(
            c.decode(Family::Storefront, &framed).unwrap_err().code(),
            "no_registry"
        );
        c.enable_registry();
        let err = c.decode(Family::Storefront, &framed).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(c.request_id(7));
        assert!(!c.request_id(7), "asked once");
        assert!(!c.id_settled(7));
        c.resolve_id(7, Some(storefront_json()));
        assert!(c.id_settled(7));
        let (msg, origin) = c.decode_input(Family::Storefront, &framed).unwrap();
        assert_eq!(msg, InputMessage::Storefront(Box::new(ev.clone())));
        assert_eq!(origin.framing, Framing::Confluent);
        // A newer writer version under another id is resolved.
        let (newer, _) = newer_and_older();
        let body = SchemaCatalog::encode_with_schema(
            &newer,
            &Newer {
                base: &ev,
                experiment_id: None,
            },
        )
        .unwrap();
        c.resolve_id(8, Some(&newer));
        assert!(c
            .decode(Family::Storefront, &to_confluent(&body, 8))
            .is_ok());
        // Ids the registry does not know, and schemas it serves that cannot be read, are bad input.
        c.resolve_id(9, None);
        let err = c
            .decode(Family::Storefront, &to_confluent(&body, 9))
            .unwrap_err();
        assert_eq!(err.code(), "unknown_schema_id");
        c.resolve_id(
            10,
            Some(r#"{"type":"record","name":"x.Other","fields":[]}"#),
        );
        let err = c
            .decode(Family::Storefront, &to_confluent(&body, 10))
            .unwrap_err();
        assert_eq!(err.code(), "incompatible_schema");
        assert!(!err.is_transient());
        assert_eq!(
            c.decode(Family::Storefront, &[0, 0, 7]).unwrap_err().code(),
            "bad_framing"
        );
    }

    #[test]
    fn messages_that_need_the_registry_or_the_directory_travel_in_a_portable_form() {
        let ev = samples::storefront("addToCart", "e1", 1_700_000_000_000, "ecid-1");
        let single = encode::storefront(&ev).unwrap();
        let (newer, _) = newer_and_older();
        let mut c = catalog();
        c.enable_registry();
        c.resolve_id(7, Some(storefront_json()));
        c.resolve_id(8, Some(&newer));
        let newer_body = SchemaCatalog::encode_with_schema(
            &newer,
            &Newer {
                base: &ev,
                experiment_id: Some("x".into()),
            },
        )
        .unwrap();
        for payload in [
            single.clone(),
            to_confluent(&single, 7),
            to_confluent(&newer_body, 8),
            serde_json::to_vec(&ev).unwrap(),
        ] {
            let (msg, origin) = c.decode_input(Family::Storefront, &payload).unwrap();
            if origin.portable() {
                assert_eq!(payload, single);
                continue;
            }
            let portable = c.portable_payload(&payload, &origin, &msg).unwrap();
            // The built-in catalog alone (no registry, no directory) reads it as the same event.
            let (again, o) = SchemaCatalog::builtin()
                .decode_input(Family::Storefront, &portable)
                .unwrap();
            assert!(o.portable());
            assert_eq!(again, msg);
        }
    }

    #[test]
    fn a_registry_not_found_answer_expires() {
        let mut c = catalog();
        c.enable_registry();
        assert!(c.request_id(9));
        c.resolve_id(9, None);
        assert!(c.id_settled(9));
        c.expire_unknown_ids(Duration::from_secs(3600));
        assert!(c.id_settled(9), "still fresh");
        c.expire_unknown_ids(Duration::ZERO);
        assert!(!c.id_settled(9), "asked again");
        assert!(c.request_id(9));
    }

    #[test]
    fn compat_files_compiled_in_are_writers_and_confluent_outputs_decode() {
        let (newer, _) = newer_and_older();
        let c = SchemaCatalog::from_sources(&[
            ("storefront.avsc", storefront_json()),
            ("compat/storefront-v2.avsc", &newer),
        ])
        .unwrap();
        assert_eq!(c.known().len(), 2);
        let dl = DeadLetter {
            source_topic: "t".into(),
            source_partition: 1,
            source_offset: 2,
            source_timestamp: None,
            reason_code: "empty".into(),
            reason: "x".into(),
            key: None,
            payload: vec![],
            payload_size: Some(0),
            payload_truncated: false,
        };
        let framed = to_confluent(&encode::dead_letter(&dl).unwrap(), 42);
        assert_eq!(decode::dead_letter(&framed).unwrap(), dl);
    }

    #[test]
    fn json_events_read_as_the_same_record_and_bad_fields_are_named() {
        let ev = samples::storefront("productPageView", "e1", 1_700_000_000_000, "ecid-1");
        let text = serde_json::to_vec(&ev).unwrap();
        let (msg, origin) = catalog().decode_input(Family::Storefront, &text).unwrap();
        assert_eq!(origin.framing, Framing::Json);
        assert_eq!(msg, InputMessage::Storefront(Box::new(ev.clone())));
        // Absent optional fields and unknown fields are fine; leading white space too.
        let minimal = br#"  {"eventId":"e2","eventType":"pageView","timestamp":1700000000000,
            "identity":{"ecid":"x"},"someFutureField":[1,2]}"#;
        assert!(catalog().decode(Family::Storefront, minimal).is_ok());
        let mut bad: serde_json::Value = serde_json::to_value(&ev).unwrap();
        bad["productContext"]["sku"] = serde_json::json!(12);
        let err = catalog()
            .decode(Family::Storefront, &serde_json::to_vec(&bad).unwrap())
            .unwrap_err();
        assert_eq!(err.code(), "bad_json");
        assert!(err.to_string().contains("productContext.sku"), "{err}");
        let err = catalog()
            .decode(Family::Storefront, br#"{"eventId":"e"}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("missing field `eventType`"),
            "{err}"
        );
        let err = catalog()
            .decode(Family::Storefront, br#"{"eventId": "#)
            .unwrap_err();
        assert_eq!(err.code(), "bad_json");
        assert_eq!(
            catalog()
                .decode(Family::Storefront, &[text.clone(), b"x".to_vec()].concat())
                .unwrap_err()
                .code(),
            "bad_json"
        );
    }

    #[test]
    fn an_array_count_beyond_the_datum_is_bad_input() {
        let mut event = samples::storefront("productPageView", "e", 1, "x");
        event
            .product_context
            .get_or_insert_with(Default::default)
            .categories = vec!["zq".into()];
        let good = encode::storefront(&event).unwrap();
        // One block of one item ("zq"), then the end of the array.
        let block = [0x02, 0x04, b'z', b'q', 0x00];
        let at = good
            .windows(block.len())
            .position(|w| w == block)
            .expect("the categories array");
        // The same block claiming 10^8 items (zig-zag varint): more than the datum could hold.
        let mut count = Vec::new();
        let mut n = 200_000_000u64;
        while n >= 0x80 {
            count.push((n as u8) | 0x80);
            n >>= 7;
        }
        count.push(n as u8);
        let bad = [&good[..at], &count, &good[at + 1..]].concat();
        let err = catalog().decode(Family::Storefront, &bad).unwrap_err();
        assert_eq!(err.code(), "bad_body", "{err}");
        assert_eq!(
            catalog().decode(Family::Storefront, &good).unwrap(),
            InputMessage::Storefront(Box::new(event))
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_reason_never_a_panic() {
        let d = catalog();
        let good = encode::storefront(&samples::storefront("pageView", "e", 1, "x")).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (b"hello".to_vec(), "bad_framing"),
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
        // Every truncation and single-byte corruption of a valid message, in each framing: an
        // error or a value, never a panic.
        let mut registry = catalog();
        registry.enable_registry();
        registry.resolve_id(7, Some(storefront_json()));
        let json = serde_json::to_vec(&samples::storefront("pageView", "e", 1, "x")).unwrap();
        for payload in [good.clone(), to_confluent(&good, 7), json] {
            for cut in 0..payload.len() {
                let _ = registry.decode(Family::Storefront, &payload[..cut]);
            }
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            for i in 0..payload.len() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut bad = payload.clone();
                bad[i] = state as u8;
                let _ = registry.decode(Family::Storefront, &bad);
            }
        }
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
