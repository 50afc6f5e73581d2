//! JSON input: the same records as the Avro schemas, as plain JSON objects with the Avro field
//! names (no union wrappers: an optional field is its value, `null`, or absent). The platform's
//! own storefront and back-office services emit JSON.
//!
//! Fields the reader schema does not know are ignored (as a newer writer schema's are); a field
//! of the wrong type is reported with its path, e.g. `productContext.price: invalid type …`.

use serde::de::DeserializeOwned;

use super::DecodeError;

/// Decodes one JSON event as the record `expected` (its wire type `T`).
pub(super) fn decode<T: DeserializeOwned>(
    expected: &'static str,
    payload: &[u8],
) -> Result<Box<T>, DecodeError> {
    // The plain reader first: tracking the path costs on every field, and only a bad event
    // needs it, read again below to name where it is wrong.
    if let Ok(value) = serde_json::from_slice::<T>(payload) {
        return Ok(Box::new(value));
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        DecodeError::Json {
            schema: expected,
            path: if path == "." {
                "(top level)".into()
            } else {
                path
            },
            detail: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| DecodeError::Json {
        schema: expected,
        path: "(after the object)".into(),
        detail: e.to_string(),
    })?;
    Ok(Box::new(value))
}
