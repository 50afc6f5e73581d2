//! The Avro specification's Parsing Canonical Form and CRC-64-AVRO fingerprint, written from the
//! specification ("Schema Resolution" → "Parsing Canonical Form for Schemas" and "Schema
//! Fingerprints"), step by step, so that Tailor's fingerprints are the ones the reference
//! implementation (Java's `SchemaNormalization`) and fastavro compute.
//!
//! Implementations disagree on one point: a primitive that carries a `logicalType` (every
//! `timestamp-millis` field) is `"long"` in the spec's form ([PRIMITIVES]: "convert primitive
//! schemas to their simple form"), but apache-avro (Rust) and the Apache `avro` Python package
//! write `{"type":"long"}`. Producers in the wild use both, so [`Variant::Legacy`] computes the
//! other form too; Tailor accepts both on input and writes only [`Variant::Spec`].

use serde_json::{Map, Value};

/// Which canonical form a fingerprint was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The specification's form (Java, fastavro, and Tailor's outputs).
    Spec,
    /// A primitive with a `logicalType` kept as `{"type":"long"}` (apache-avro up to at least
    /// 0.22, the Apache Python package 1.12, Tailor before the fix).
    Legacy,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Spec, Variant::Legacy];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Spec => "spec",
            Variant::Legacy => "legacy",
        }
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of a schema given as JSON text.
pub fn canonical_form(schema_json: &str, variant: Variant) -> Result<String, String> {
    let v: Value = serde_json::from_str(schema_json).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = String::with_capacity(schema_json.len() / 2);
    let mut seen = Vec::new();
    write(&v, None, variant, &mut seen, &mut out)?;
    Ok(out)
}

/// The CRC-64-AVRO fingerprint of the Parsing Canonical Form, as written after `C3 01` in a
/// single-object encoded message (little-endian).
pub fn fingerprint(schema_json: &str, variant: Variant) -> Result<[u8; 8], String> {
    Ok(crc64_avro(canonical_form(schema_json, variant)?.as_bytes()).to_le_bytes())
}

/// CRC-64-AVRO (the specification's `fingerprint64`).
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    let mut fp = EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ TABLE[((fp ^ b as u64) & 0xff) as usize];
    }
    fp
}

const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

static TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// [FULLNAMES]: a name with a dot is already full; otherwise it takes the `namespace` attribute
/// when present (empty: the null namespace), else the enclosing namespace.
fn full_name(name: &str, namespace: Option<&str>, enclosing: Option<&str>) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match namespace.or(enclosing) {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

/// The full name a reference to a named type stands for: in the enclosing namespace if a type of
/// that name is defined there, else the null namespace's if one is defined (as Java's
/// `Schema.Names.get` falls back), else the enclosing namespace's.
fn reference(name: &str, enclosing: Option<&str>, seen: &[String]) -> String {
    let qualified = full_name(name, None, enclosing);
    if name.contains('.') || seen.contains(&qualified) || !seen.iter().any(|s| s == name) {
        qualified
    } else {
        name.to_owned()
    }
}

fn namespace_of(full: &str) -> Option<&str> {
    full.rsplit_once('.').map(|(ns, _)| ns)
}

fn str_attr<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("\"{key}\" must be a string, found {other}")),
    }
}

/// [STRINGS]: string literals are written with their characters, not escapes; only what JSON
/// requires is escaped (a name or symbol never needs it: the spec restricts them to
/// `[A-Za-z_][A-Za-z0-9_]*`).
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes one schema in canonical form. `seen` holds the full names already defined: a second
/// occurrence is written as its full name alone (as Java's `SchemaNormalization` does).
fn write(
    v: &Value,
    enclosing: Option<&str>,
    variant: Variant,
    seen: &mut Vec<String>,
    out: &mut String,
) -> Result<(), String> {
    match v {
        Value::String(s) => {
            if PRIMITIVES.contains(&s.as_str()) {
                push_str(out, s);
            } else {
                push_str(out, &reference(s, enclosing, seen));
            }
            Ok(())
        }
        Value::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(b, enclosing, variant, seen, out)?;
            }
            out.push(']');
            Ok(())
        }
        Value::Object(o) => {
            let ty = match o.get("type") {
                Some(Value::String(t)) => t.as_str(),
                // {"type": {...}} or {"type": [...]}: the inner schema is the schema.
                Some(inner @ (Value::Object(_) | Value::Array(_))) => {
                    return write(inner, enclosing, variant, seen, out)
                }
                Some(other) => return Err(format!("\"type\" must be a string, found {other}")),
                None => return Err(format!("schema object without \"type\": {v}")),
            };
            if PRIMITIVES.contains(&ty) {
                // [PRIMITIVES]: {"type":"int"} is "int"; the legacy variant keeps the object
                // form when the primitive carries a logical type.
                if variant == Variant::Legacy && o.contains_key("logicalType") {
                    out.push_str("{\"type\":");
                    push_str(out, ty);
                    out.push('}');
                } else {
                    push_str(out, ty);
                }
                return Ok(());
            }
            match ty {
                "record" | "error" | "enum" | "fixed" => {
                    let name =
                        str_attr(o, "name")?.ok_or_else(|| format!("{ty} without a \"name\""))?;
                    let full = full_name(name, str_attr(o, "namespace")?, enclosing);
                    if seen.contains(&full) {
                        push_str(out, &full);
                        return Ok(());
                    }
                    seen.push(full.clone());
                    // [ORDER]: name, type, fields, symbols, items, values, size.
                    out.push_str("{\"name\":");
                    push_str(out, &full);
                    out.push_str(",\"type\":");
                    // An error is written as a record (as Java and fastavro do).
                    push_str(out, if ty == "error" { "record" } else { ty });
                    match ty {
                        "enum" => {
                            let symbols = o
                                .get("symbols")
                                .and_then(Value::as_array)
                                .ok_or_else(|| format!("enum {full} without \"symbols\""))?;
                            out.push_str(",\"symbols\":[");
                            for (i, s) in symbols.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let s = s.as_str().ok_or_else(|| {
                                    format!("enum {full}: symbol {s} is not a string")
                                })?;
                                push_str(out, s);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            // [INTEGERS]: no quotes, no leading zeros.
                            let size = match o.get("size") {
                                Some(Value::Number(n)) => n.as_u64(),
                                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                                _ => None,
                            }
                            .ok_or_else(|| format!("fixed {full} without a valid \"size\""))?;
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            let fields = o
                                .get("fields")
                                .and_then(Value::as_array)
                                .ok_or_else(|| format!("record {full} without \"fields\""))?;
                            let ns = namespace_of(&full);
                            out.push_str(",\"fields\":[");
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let f = f.as_object().ok_or_else(|| {
                                    format!("record {full}: field {f} is not an object")
                                })?;
                                let fname = str_attr(f, "name")?.ok_or_else(|| {
                                    format!("record {full}: field without \"name\"")
                                })?;
                                let fty = f.get("type").ok_or_else(|| {
                                    format!("record {full}: field {fname} without \"type\"")
                                })?;
                                out.push_str("{\"name\":");
                                push_str(out, fname);
                                out.push_str(",\"type\":");
                                write(fty, ns, variant, seen, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                    Ok(())
                }
                "array" => {
                    let items = o.get("items").ok_or("array without \"items\"")?;
                    out.push_str("{\"type\":\"array\",\"items\":");
                    write(items, enclosing, variant, seen, out)?;
                    out.push('}');
                    Ok(())
                }
                "map" => {
                    let values = o.get("values").ok_or("map without \"values\"")?;
                    out.push_str("{\"type\":\"map\",\"values\":");
                    write(values, enclosing, variant, seen, out)?;
                    out.push('}');
                    Ok(())
                }
                // A reference written as {"type": "com.x.Name"}.
                other => {
                    push_str(out, &reference(other, enclosing, seen));
                    Ok(())
                }
            }
        }
        other => Err(format!("not a schema: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcf(s: &str) -> String {
        canonical_form(s, Variant::Spec).unwrap()
    }

    #[test]
    fn crc64_avro_of_the_empty_input_is_the_specs_empty_value() {
        assert_eq!(crc64_avro(b""), EMPTY);
    }

    /// Fingerprints computed with fastavro 1.x (`fingerprint(parse_schema(s), "CRC-64-AVRO")`,
    /// hex of the little-endian bytes) and Java's `SchemaNormalization.parsingFingerprint64`;
    /// the test suite under `tests/foreign/` recomputes them with fastavro on every run.
    #[test]
    fn primitives_match_the_reference_fingerprints() {
        for (schema, hex) in [
            ("\"null\"", "63dd24e7cc258f8a"),
            ("\"boolean\"", "9f42fc78a4d4f764"),
            ("\"int\"", "7275d51a3f395c8f"),
            ("\"long\"", "d054e14493f41db7"),
            ("\"float\"", "4d7c02cb3ea8d790"),
            ("\"double\"", "8e7535c032ab957e"),
            ("\"bytes\"", "4fc016dac3201965"),
            ("\"string\"", "8f014872634503c7"),
        ] {
            let fp = u64::from_le_bytes(fingerprint(schema, Variant::Spec).unwrap());
            assert_eq!(format!("{fp:016x}"), hex, "{schema}");
        }
    }

    #[test]
    fn the_specs_transformations() {
        // [PRIMITIVES]
        assert_eq!(pcf(r#"{"type":"int"}"#), r#""int""#);
        assert_eq!(
            pcf(r#"{"type":"long","logicalType":"timestamp-millis"}"#),
            r#""long""#
        );
        assert_eq!(
            canonical_form(
                r#"{"type":"long","logicalType":"timestamp-millis"}"#,
                Variant::Legacy
            )
            .unwrap(),
            r#"{"type":"long"}"#
        );
        // [FULLNAMES], [STRIP], [ORDER], [WHITESPACE]
        assert_eq!(
            pcf(
                r#"{"fields": [{"type": "int", "name": "a", "doc": "d", "default": 1}],
                    "namespace": "x.y", "doc": "r", "type": "record", "name": "R",
                    "aliases": ["Q"]}"#
            ),
            r#"{"name":"x.y.R","type":"record","fields":[{"name":"a","type":"int"}]}"#
        );
        // Nested names inherit the enclosing namespace; a dotted name sets its own; a second
        // use of a name is its full name.
        assert_eq!(
            pcf(r#"{"type":"record","name":"R","namespace":"a","fields":[
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"],"default":"X"}},
                {"name":"f","type":{"type":"fixed","name":"b.F","size":"016"}},
                {"name":"g","type":["null","E","b.F"]},
                {"name":"m","type":{"type":"map","values":{"type":"array","items":"E"}}}]}"#),
            r#"{"name":"a.R","type":"record","fields":[{"name":"e","type":{"name":"a.E","type":"enum","symbols":["X","Y"]}},{"name":"f","type":{"name":"b.F","type":"fixed","size":16}},{"name":"g","type":["null","a.E","b.F"]},{"name":"m","type":{"type":"map","values":{"type":"array","items":"a.E"}}}]}"#
        );
        // An error is a record; a reference falls back to a type of the null namespace.
        assert_eq!(
            pcf(r#"{"type":"record","name":"T","fields":[{"name":"x","type":
                {"type":"record","name":"a.R","fields":[{"name":"t","type":["null","T"]},
                {"name":"e","type":{"type":"error","name":"E","fields":[]}}]}}]}"#),
            r#"{"name":"T","type":"record","fields":[{"name":"x","type":{"name":"a.R","type":"record","fields":[{"name":"t","type":["null","T"]},{"name":"e","type":{"name":"a.E","type":"record","fields":[]}}]}}]}"#
        );
        // An empty namespace is the null namespace.
        assert_eq!(
            pcf(r#"{"type":"record","name":"R","namespace":"","fields":[]}"#),
            r#"{"name":"R","type":"record","fields":[]}"#
        );
        // [STRINGS]: escapes become characters.
        assert_eq!(
            pcf(r#"{"type":"enum","name":"E","symbols":["\u0041"]}"#),
            r#"{"name":"E","type":"enum","symbols":["A"]}"#
        );
    }

    #[test]
    fn bad_schemas_are_errors() {
        for s in [
            "",
            "{}",
            r#"{"type":"record"}"#,
            r#"{"type":"fixed","name":"F"}"#,
            "3",
        ] {
            assert!(canonical_form(s, Variant::Spec).is_err(), "{s}");
        }
    }
}
