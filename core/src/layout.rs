//! Which state version's layout the profile's parts are read and written in.
//!
//! The profile's state encoding is postcard over the serde implementations of its parts
//! ([`crate::profile::encode_as`]; the worker writes the same bytes by hand, `layout/write.rs`,
//! and reads them by hand, `layout/read.rs`).
//! Version 6 changed a few of them, to store less:
//! - an empty [`crate::sparse::Sparse`] part (attributes, orders: most shoppers have neither)
//!   is one byte instead of every field of its default;
//! - a [`KeyedSeries`] no longer stores its key's hash, nor an [`Affinity`] its rank: both
//!   are computed again from what is stored;
//! - the sums of a series' buckets, and the quantity and price of a cart line or a product
//!   viewed, are written in fewer bytes when they are whole numbers or whole cents
//!   ([`compact_f64`]).
//!
//! Only binary formats (the state's postcard) take these layouts: JSON (the profile served over
//! HTTP) shows every number as a number.
//!
//! Earlier versions are still read: [`crate::profile::encode_as`] and [`crate::profile::decode`]
//! set the version they write or read for the thread while they run ([`Reading`]), and these
//! implementations follow it. Outside them (another binary format, a test), the plain layout
//! of the earlier versions: the compact one is postcard's alone (its numbers' tag is read as a
//! tuple of one or two elements, which a self-describing format would refuse).

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use compact_str::CompactString;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::EventType;
use crate::profile::{key_hash, Affinity, KeyedSeries};
use crate::window::DailyCounts;

pub(crate) mod read;
pub(crate) mod write;

/// The state's layout of a struct whose fields are all written and read as their types are, in
/// the order listed (the derive's: the declaration order): [`write::Encode`] and
/// [`read::Decode`]. The fields after `;` are not stored: reading gives each its default, or
/// what the function after its `=` computes from the struct read (as the key's hash in
/// `hash = |s| key_hash(&s.key)`). Attributes before the type go on both functions
/// (`#[inline]`). Every field is named: one added to the struct is a compile error until it is
/// listed.
macro_rules! state_fields {
    ($(#[$attr:meta])* $ty:ident {
        $($field:ident),+ $(; $($skipped:ident $(= $init:expr)?),+)?
    }) => {
        impl $crate::layout::write::Encode for $ty {
            $(#[$attr])*
            fn encode(&self, out: &mut Vec<u8>) {
                let $ty { $($field,)+ $($($skipped: _,)+)? } = self;
                $($crate::layout::write::Encode::encode($field, out);)+
            }
        }

        impl $crate::layout::read::Decode for $ty {
            $(#[$attr])*
            fn decode(
                r: &mut $crate::layout::read::Reader<'_>,
            ) -> Result<Self, $crate::layout::read::Bad> {
                #[allow(unused_mut)]
                let mut v = $ty {
                    $($field: $crate::layout::read::Decode::decode(r)?,)+
                    $($($skipped: Default::default(),)+)?
                };
                $($($(v.$skipped = $crate::layout::computed(&v, $init);)?)+)?
                Ok(v)
            }
        }
    };
}

/// `f(v)`: gives the closures of [`state_fields`] their argument's type.
#[inline(always)]
pub(crate) fn computed<T, U>(v: &T, f: impl FnOnce(&T) -> U) -> U {
    f(v)
}

pub(crate) use state_fields;

/// Each primitive at its edges (one-byte varints and the first two-byte ones, the types'
/// limits, a timestamp), for the writer's and the reader's tests against postcard.
#[cfg(test)]
pub(crate) mod edges {
    pub(crate) const U64: [u64; 8] = [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX];
    pub(crate) const U32: [u32; 4] = [0, 127, 128, u32::MAX];
    pub(crate) const I64: [i64; 9] = [
        0,
        -1,
        1,
        -64,
        64,
        -65,
        i64::MIN,
        i64::MAX,
        -1_709_287_200_000,
    ];
    pub(crate) const I32: [i32; 5] = [0, -1, 1, i32::MIN, i32::MAX];
    pub(crate) const F64: [f64; 6] = [0.0, -0.0, 1.5, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE];
}

/// Numbers of each kind for the compact layout's tests (the writer's and the reader's): whole
/// cents, negative, signed zero, not whole cents, not finite, beyond the cents' range.
#[cfg(test)]
pub(crate) const COMPACT_NUMBERS: [f64; 12] = [
    0.0,
    -0.0,
    1.0,
    19.99,
    -5.25,
    1.0 / 3.0,
    0.001,
    f64::NAN,
    f64::NEG_INFINITY,
    1e15,
    -1e15,
    11_258_999_068_426.23,
];

/// The first state version with the layouts above.
pub const COMPACT_SINCE: u8 = 6;

thread_local! {
    /// 0: not encoding or decoding a profile.
    static VERSION: Cell<u8> = const { Cell::new(0) };
}

/// Whether this thread reads or writes version 6's layouts (the current ones), in a profile's
/// encode or decode.
#[inline]
pub(crate) fn compact() -> bool {
    VERSION.with(Cell::get) >= COMPACT_SINCE
}

/// While it lives, this thread reads and writes `version`'s layouts; then those it had before
/// (also when a decode panics). Not `Send`: it belongs to the thread whose layout it set.
pub(crate) struct Reading(u8, PhantomData<*const ()>);

impl Reading {
    pub(crate) fn version(version: u8) -> Reading {
        Reading(VERSION.with(|v| v.replace(version)), PhantomData)
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        VERSION.with(|v| v.set(self.0));
    }
}

impl Serialize for KeyedSeries {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let compact = compact() && !s.is_human_readable();
        let mut st = s.serialize_struct("KeyedSeries", if compact { 3 } else { 4 })?;
        st.serialize_field("kind", &self.kind)?;
        if !compact {
            st.serialize_field("hash", &self.hash)?;
        }
        st.serialize_field("key", &self.key)?;
        st.serialize_field("series", &self.series)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for KeyedSeries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let compact = compact() && !d.is_human_readable();
        d.deserialize_struct(
            "KeyedSeries",
            &["kind", "hash", "key", "series"],
            Fields(PhantomData::<Self>, compact),
        )
    }
}

impl<'de> Visitor<'de> for Fields<KeyedSeries> {
    type Value = KeyedSeries;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a keyed series")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyedSeries, A::Error> {
        let mut i = 0;
        let kind: EventType = next(&mut seq, &mut i)?;
        if !self.1 {
            // The stored hash is the key's: computed again below, as version 6 does.
            let _: u64 = next(&mut seq, &mut i)?;
        }
        let key: CompactString = next(&mut seq, &mut i)?;
        let series: DailyCounts = next(&mut seq, &mut i)?;
        Ok(KeyedSeries {
            kind,
            hash: key_hash(&key),
            key,
            series,
        })
    }
}

impl Serialize for Affinity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let compact = compact() && !s.is_human_readable();
        let mut st = s.serialize_struct("Affinity", if compact { 3 } else { 4 })?;
        st.serialize_field("key", &self.key)?;
        st.serialize_field("score", &self.score)?;
        st.serialize_field("at", &self.at)?;
        if !compact {
            st.serialize_field("rank", &self.rank)?;
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for Affinity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let compact = compact() && !d.is_human_readable();
        d.deserialize_struct(
            "Affinity",
            &["key", "score", "at", "rank"],
            Fields(PhantomData::<Self>, compact),
        )
    }
}

impl<'de> Visitor<'de> for Fields<Affinity> {
    type Value = Affinity;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an affinity")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Affinity, A::Error> {
        let mut i = 0;
        let key: CompactString = next(&mut seq, &mut i)?;
        let score: f64 = next(&mut seq, &mut i)?;
        let at: i64 = next(&mut seq, &mut i)?;
        if !self.1 {
            // Always `rerank`'s function of the score and time: computed again below.
            let _: f64 = next(&mut seq, &mut i)?;
        }
        let mut a = Affinity {
            key,
            score,
            at,
            rank: 0.0,
        };
        a.rerank();
        Ok(a)
    }
}

/// The visitor of a struct read field by field, in order; in version 6's layout (`true`) or an
/// earlier one.
struct Fields<T>(PhantomData<T>, bool);

fn next<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut A,
    i: &mut usize,
) -> Result<T, A::Error> {
    let v = seq
        .next_element()?
        .ok_or_else(|| A::Error::invalid_length(*i, &"more fields"))?;
    *i += 1;
    Ok(v)
}

/// An `f64` in version 6's layout (`#[serde(with = "crate::layout::compact_f64")]`): a whole
/// number of cents within ±2^50 is a zigzag varint of twice that number (so zero, counts and
/// prices in cents take one to four bytes); any other value a 1 and its eight bytes, exactly.
/// In earlier versions' layout, the eight bytes alone.
pub mod compact_f64 {
    use super::*;

    const CENTS_LIMIT: f64 = (1u64 << 50) as f64;

    /// `v` as a whole number of cents, if it is one exactly (bit for bit, sign of zero included).
    pub(crate) fn cents(v: f64) -> Option<i64> {
        // (Also refuses NaN and the infinities.)
        if !v.is_finite() || v.abs() >= CENTS_LIMIT / 100.0 {
            return None;
        }
        let c = nearest(v * 100.0) as i64;
        // From the integer, as the reader computes it (so -0.0 is not taken for 0).
        ((c as f64 / 100.0).to_bits() == v.to_bits()).then_some(c)
    }

    /// `x` (below 2^51 in magnitude) rounded to the nearest whole number, ties to even, by
    /// adding and taking away 1.5 × 2^52 (the sum has no bits below the units). `f64::round`
    /// is a call into the C library on the default x86-64 target: 250 of the 6,000
    /// instructions a profile of the core bench took to encode. Ties (x.5) round to even here
    /// and away from zero there, but a tie is never a whole number of cents, and `cents`
    /// refuses it either way: the tests compare the two.
    #[inline]
    pub(crate) fn nearest(x: f64) -> f64 {
        const SHIFT: f64 = (3u64 << 51) as f64;
        (x + SHIFT) - SHIFT
    }

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if !compact() || s.is_human_readable() {
            return s.serialize_f64(*v);
        }
        match cents(*v) {
            // Zigzag, then shifted: the low bit 0 says "cents".
            Some(c) => s.serialize_u64((((c << 1) ^ (c >> 63)) as u64) << 1),
            None => {
                // The low bit 1 says "exact bits follow"; postcard writes a u64 as a varint, so
                // the tag is one byte.
                let mut st = s.serialize_tuple(2)?;
                serde::ser::SerializeTuple::serialize_element(&mut st, &1u64)?;
                serde::ser::SerializeTuple::serialize_element(&mut st, v)?;
                serde::ser::SerializeTuple::end(st)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        if !compact() || d.is_human_readable() {
            return f64::deserialize(d);
        }
        d.deserialize_tuple(2, CompactF64)
    }

    /// An `Option<f64>` whose number is written as above.
    pub mod option {
        use super::*;

        struct Inner(f64);

        impl Serialize for Inner {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                super::serialize(&self.0, s)
            }
        }

        impl<'de> Deserialize<'de> for Inner {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                super::deserialize(d).map(Inner)
            }
        }

        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(&Inner(*v)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Ok(Option::<Inner>::deserialize(d)?.map(|i| i.0))
        }
    }

    struct CompactF64;

    impl<'de> Visitor<'de> for CompactF64 {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number (whole cents, or tagged bits)")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<f64, A::Error> {
            let tag: u64 = seq
                .next_element()?
                .ok_or_else(|| A::Error::invalid_length(0, &self))?;
            if tag & 1 == 1 {
                if tag != 1 {
                    return Err(A::Error::custom(format!("number tag {tag} (expected 1)")));
                }
                return seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self));
            }
            let z = tag >> 1;
            let c = ((z >> 1) as i64) ^ -((z & 1) as i64);
            Ok(c as f64 / 100.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Sum(#[serde(with = "compact_f64")] f64);

    fn bytes(v: f64) -> Vec<u8> {
        postcard::to_stdvec(&Sum(v)).unwrap()
    }

    fn read(b: &[u8]) -> f64 {
        postcard::from_bytes::<Sum>(b).unwrap().0
    }

    fn v6() -> Reading {
        Reading::version(COMPACT_SINCE)
    }

    /// Every value reads back bit for bit; whole cents are short, anything else costs one byte
    /// more than its eight; version 5's layout is the eight bytes alone.
    #[test]
    fn numbers_read_back_exactly_and_whole_cents_are_short() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            19.99,
            0.1 + 0.2,
            1.0 / 3.0,
            1234567.89,
            -5.25,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            (1u64 << 48) as f64,
            (1u64 << 53) as f64,
            1e-300,
        ];
        // Sums of prices as a series adds them, and pseudo-random bits.
        let mut sum = 0.0;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..2_000 {
            sum += [19.99, 5.0, 0.01, 1_299.5][i % 4];
            values.push(sum);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(f64::from_bits(x));
        }
        let _v6 = v6();
        for v in values {
            let b = bytes(v);
            assert_eq!(read(&b).to_bits(), v.to_bits(), "{v:e}");
            match cents_of(v) {
                Some(c) if c.abs() < 1 << 20 => assert!(b.len() <= 4, "{v}: {b:?}"),
                Some(_) => assert!(b.len() <= 8, "{v}: {b:?}"),
                None => assert_eq!(b.len(), 9, "{v:e}: {b:?}"),
            }
            let _v5 = Reading::version(5);
            let old = bytes(v);
            assert_eq!(old, v.to_le_bytes(), "version 5: the eight bytes");
            assert_eq!(read(&old).to_bits(), v.to_bits());
        }
        assert_eq!(bytes(0.0), [0], "zero in one byte");
        assert_eq!(bytes(-0.0).len(), 9, "negative zero keeps its sign");
        // A tag other than 1 with the low bit set is refused.
        assert!(postcard::from_bytes::<Sum>(&[3, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(
            postcard::from_bytes::<Sum>(&[1, 0, 0]).is_err(),
            "cut short"
        );
    }

    /// `cents` with the standard library's rounding (what it used before `nearest`): the same
    /// answer for every value, on the edges (ties, signed zeros, the limit, the largest
    /// doubles below it) and on two million others, spread over every magnitude.
    #[test]
    fn cents_rounds_as_the_standard_library_does() {
        fn by_round(v: f64) -> Option<i64> {
            if !v.is_finite() || v.abs() >= (1u64 << 50) as f64 / 100.0 {
                return None;
            }
            let c = (v * 100.0).round() as i64;
            ((c as f64 / 100.0).to_bits() == v.to_bits()).then_some(c)
        }
        let limit = (1u64 << 50) as f64 / 100.0;
        let mut values = vec![0.0, -0.0, 0.005, -0.005, 0.015, 0.025, 1.005, 2.675, limit];
        for k in 1..=64 {
            values.push(f64::from_bits(limit.to_bits() - k));
            values.push(-f64::from_bits(limit.to_bits() - k));
        }
        for n in [0i64, 1, 2, 3, 99, 12345, (1 << 49) - 1] {
            for half in [n as f64 + 0.5, -(n as f64) - 0.5] {
                values.push(half / 100.0);
                values.push(f64::from_bits((half / 100.0).to_bits() + 1));
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..2_000_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Whole cents, cents and a bit, and raw bits over every magnitude.
            let sign = if x & 1 == 1 { -1.0 } else { 1.0 };
            let whole = sign * ((x >> 14) >> (x % 50)) as f64 / 100.0;
            let v = match i % 3 {
                0 => whole,
                1 => f64::from_bits(whole.to_bits() ^ (1 + (x >> 62))),
                _ => f64::from_bits(x),
            };
            values.push(v);
        }
        let mut whole = 0;
        for v in values {
            let got = compact_f64::cents(v);
            assert_eq!(got, by_round(v), "{v:e} ({:#x})", v.to_bits());
            whole += usize::from(got.is_some());
        }
        assert!(whole > 600_000, "the values hold whole cents too: {whole}");
    }

    /// What the encoding counts as whole cents, by another route: the decimal text.
    fn cents_of(v: f64) -> Option<i64> {
        if !v.is_finite()
            || v.abs() >= (1u64 << 50) as f64 / 100.0
            || (v == 0.0 && v.is_sign_negative())
        {
            return None;
        }
        let c = (v * 100.0).round() as i64;
        (format!("{}", c as f64 / 100.0) == format!("{v}")).then_some(c)
    }

    /// JSON (the profile served over HTTP) keeps plain numbers and every field.
    #[test]
    fn json_is_not_compacted() {
        let line = crate::event::Line {
            sku: "S".into(),
            quantity: 2.0,
            price: Some(19.99),
            ..Default::default()
        };
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["quantity"], 2.0);
        assert_eq!(v["price"], 19.99);
        let back: crate::event::Line = serde_json::from_value(v).unwrap();
        assert_eq!(back, line);
        assert_eq!(serde_json::to_value(Sum(0.5)).unwrap(), 0.5);
        let p = crate::profile::Profile::default();
        let v = serde_json::to_value(&p.attributes).unwrap();
        assert!(v.is_object(), "an empty part is its default's fields: {v}");
    }

    #[test]
    fn the_layout_follows_the_version_read_and_comes_back_after() {
        assert!(!compact(), "plain outside a profile's encode or decode");
        {
            let _v6 = v6();
            assert!(compact());
            {
                let _v5 = Reading::version(5);
                assert!(!compact());
            }
            assert!(compact());
        }
        assert!(!compact());
        // A decode that panics leaves the thread's layout as it was.
        let _ = std::panic::catch_unwind(|| {
            let _v6 = v6();
            panic!("mid-decode");
        });
        assert!(!compact());
    }

    /// Version 5's `KeyedSeries` and `Affinity` as their derives wrote them (an independent
    /// writer of the old layout): read by version 6's code, and written again the same.
    #[test]
    fn keyed_series_and_affinities_read_as_version_5_wrote_them() {
        #[derive(Serialize)]
        struct KeyedSeries5 {
            kind: EventType,
            hash: u64,
            key: String,
            series: DailyCounts,
        }
        #[derive(Serialize)]
        struct Affinity5 {
            key: String,
            score: f64,
            at: i64,
            rank: f64,
        }
        let key = "electronics.audio.headphone";
        let mut series = DailyCounts::default();
        series.add(1_700_000_000_000, 1_700_000_000_000);
        let old = KeyedSeries5 {
            kind: EventType::AddToCart,
            hash: key_hash(key),
            key: key.into(),
            series,
        };
        let (score, at) = (2.75f64, 1_700_000_000_000i64);
        let rank = score.log2() + at as f64 / crate::profile::AFFINITY_HALF_LIFE_MS as f64;
        let old_affinity = Affinity5 {
            key: key.into(),
            score,
            at,
            rank,
        };
        let (k5, a5) = (
            postcard::to_stdvec(&old).unwrap(),
            postcard::to_stdvec(&old_affinity).unwrap(),
        );
        let _v5 = Reading::version(5);
        let k: KeyedSeries = postcard::from_bytes(&k5).unwrap();
        assert_eq!((k.kind, k.hash, k.key.as_str()), (old.kind, old.hash, key));
        assert_eq!(k.series, old.series);
        assert_eq!(postcard::to_stdvec(&k).unwrap(), k5);
        let a: Affinity = postcard::from_bytes(&a5).unwrap();
        assert_eq!((a.key.as_str(), a.score, a.at), (key, score, at));
        assert_eq!(a.rank.to_bits(), rank.to_bits());
        assert_eq!(postcard::to_stdvec(&a).unwrap(), a5);
        // Version 6: the same without the hash and the rank, read back whole.
        let _v6 = v6();
        let k6 = postcard::to_stdvec(&k).unwrap();
        assert_eq!(
            k6.len(),
            k5.len() - postcard::to_stdvec(&old.hash).unwrap().len()
        );
        assert_eq!(postcard::from_bytes::<KeyedSeries>(&k6).unwrap(), k);
        let a6 = postcard::to_stdvec(&a).unwrap();
        assert_eq!(a6.len(), a5.len() - 8);
        assert_eq!(postcard::from_bytes::<Affinity>(&a6).unwrap(), a);
    }
}
