//! Version 6's state bytes written by hand: exactly what postcard writes through the serde
//! implementations of the profile's parts (the derives and the layouts above), without serde's
//! call per field and per number. The worker encodes every profile it changed at each commit;
//! through serde that was 8 % of the wide e2e bench's samples (about 8,300 instructions for a
//! profile of the core bench's samples).
//!
//! postcard's format, as used here: unsigned integers are LEB128 varints, signed ones zigzag
//! then varint, `u8` and `bool` one byte, `f64` its eight bytes little-endian, a string or a
//! sequence its length (varint) then its bytes or elements, an option 0 or 1 then the value, a
//! struct or tuple its fields in order, a unit enum variant its index (varint).
//!
//! The serde path stays: it writes the earlier versions ([`crate::profile::encode_as`]), the JSON
//! of the HTTP API, and is the reference the tests compare these bytes with
//! (`profile::tests::the_hand_written_encoding_is_postcards`, and the tailor crate's
//! `tests/state_encoding.rs` over the shipped samples' profiles).

use compact_str::CompactString;

use crate::event::EventType;
use crate::identity::KeyKind;

/// A part of the profile, written in version 6's layout.
pub(crate) trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

#[inline]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn zigzag(out: &mut Vec<u8>, v: i64) {
    varint(out, zigzagged(v));
}

#[inline]
fn zigzagged(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// An `f64` in version 6's compact layout ([`super::compact_f64`]): whole cents as a varint
/// whose low bit is 0, anything else a 1 and the eight bytes.
#[inline]
pub(crate) fn compact_f64(out: &mut Vec<u8>, v: f64) {
    match super::compact_f64::cents(v) {
        Some(c) => varint(out, zigzagged(c) << 1),
        None => {
            out.push(1);
            v.encode(out);
        }
    }
}

/// An `Option<f64>` in the compact layout.
#[inline]
pub(crate) fn compact_f64_option(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) => {
            out.push(1);
            compact_f64(out, v);
        }
        None => out.push(0),
    }
}

impl Encode for u64 {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, *self);
    }
}

impl Encode for u32 {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, u64::from(*self));
    }
}

impl Encode for i64 {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        zigzag(out, *self);
    }
}

/// postcard's zigzag of an `i32` is the `i64`'s of the same value.
impl Encode for i32 {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        zigzag(out, i64::from(*self));
    }
}

impl Encode for bool {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

/// The eight bytes: the layout of the `f64`s not marked compact (those marked are written with
/// [`compact_f64`]; only the comparison with postcard's bytes tells one written as the other).
impl Encode for f64 {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
}

impl Encode for str {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }
}

impl Encode for String {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_str().encode(out);
    }
}

impl Encode for CompactString {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_str().encode(out);
    }
}

impl<T: Encode> Encode for Option<T> {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
            None => out.push(0),
        }
    }
}

impl<T: Encode> Encode for [T] {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, self.len() as u64);
        for v in self {
            v.encode(out);
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_slice().encode(out);
    }
}

/// As a `Vec` of the same elements in the same order (postcard writes both as a sequence).
impl<T: Encode> Encode for std::collections::VecDeque<T> {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, self.len() as u64);
        for v in self {
            v.encode(out);
        }
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
}

/// A unit variant: its index, which is the discriminant (declared in order, none given).
impl Encode for EventType {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, *self as u64);
    }
}

impl Encode for KeyKind {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, *self as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &(impl Encode + serde::Serialize + ?Sized)) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::new();
        v.encode(&mut out);
        (out, postcard::to_stdvec(v).unwrap())
    }

    /// Each primitive at its edges, against postcard itself.
    #[test]
    fn primitives_are_written_as_postcard_writes_them() {
        for v in crate::layout::edges::U64 {
            let (a, b) = bytes(&v);
            assert_eq!(a, b, "u64 {v}");
        }
        for v in crate::layout::edges::U32 {
            let (a, b) = bytes(&v);
            assert_eq!(a, b, "u32 {v}");
        }
        for v in crate::layout::edges::I64 {
            let (a, b) = bytes(&v);
            assert_eq!(a, b, "i64 {v}");
        }
        for v in crate::layout::edges::I32 {
            let (a, b) = bytes(&v);
            assert_eq!(a, b, "i32 {v}");
        }
        for v in crate::layout::edges::F64 {
            let (a, b) = bytes(&v);
            assert_eq!(a, b, "f64 {v}");
        }
        for v in [true, false] {
            let (a, b) = bytes(&v);
            assert_eq!(a, b);
        }
        for v in ["", "a", &"é".repeat(64), &"x".repeat(300)] {
            let (a, b) = bytes(v);
            assert_eq!(a, b, "a string of {} bytes", v.len());
            let (a, b) = bytes(&CompactString::from(v));
            assert_eq!(a, b);
        }
        let (a, b) = bytes(&vec![(Some(-3i64), 7u64); 200]);
        assert_eq!(a, b, "a sequence longer than 127, of tuples of options");
        let (a, b) = bytes(&Option::<String>::None);
        assert_eq!(a, b);
        for kind in EventType::ALL {
            let (a, b) = bytes(kind);
            assert_eq!(a, b, "{kind:?}");
        }
        for kind in [
            KeyKind::Ecid,
            KeyKind::Email,
            KeyKind::Customer,
            KeyKind::Key,
        ] {
            let (a, b) = bytes(&kind);
            assert_eq!(a, b, "{kind:?}");
        }
    }

    /// The compact numbers against the serde layout they mirror, on values of each kind: whole
    /// cents, negative, signed zero, not whole cents, not finite, beyond the cents' range.
    #[test]
    fn compact_numbers_are_the_layouts() {
        #[derive(serde::Serialize)]
        struct Both(
            #[serde(with = "crate::layout::compact_f64")] f64,
            #[serde(with = "crate::layout::compact_f64::option")] Option<f64>,
        );
        let _layout = crate::layout::Reading::version(crate::profile::STATE_VERSION);
        for v in crate::layout::COMPACT_NUMBERS {
            let mut out = Vec::new();
            compact_f64(&mut out, v);
            compact_f64_option(&mut out, Some(v));
            compact_f64_option(&mut out, None);
            let mut serde = postcard::to_stdvec(&Both(v, Some(v))).unwrap();
            serde.push(0);
            assert_eq!(out, serde, "{v}");
        }
    }
}
