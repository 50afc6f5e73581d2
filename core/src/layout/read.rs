//! Version 6's state bytes read by hand: the reverse of `layout/write.rs`, what postcard reads
//! through the serde implementations of the profile's parts, without serde's visitor per
//! struct, field and number. The worker decodes a profile for every event or timer of a shopper
//! it does not hold in memory (most of them, in a workload of many shoppers with few events
//! each): through serde 14,529 instructions and 12.84 allocations per profile of the core
//! bench's samples, 12,145 and 12.67 by hand (`scripts/icount.sh state_decode`; most of the
//! rest is allocating and copying the profile's strings and vectors, and moving the struct).
//!
//! It answers "this is the profile" or "not mine", like the direct readers of the input records
//! (`codec/direct.rs`): on anything it does not expect (bytes left over, a truncated or overlong
//! number, an option's or a bool's byte other than 0 or 1, an unknown enum index, a string that
//! is not UTF-8, a length longer than the bytes left), [`crate::profile::decode`] reads the same
//! bytes through serde, which either reads them (then the tests say it must read what this
//! reads) or names the fault. So this may refuse more than postcard does, never accept what it
//! refuses, and never read a value other than postcard's: the tests compare both on every part,
//! on the shipped samples' profiles, and on mangled copies of their bytes; the `repartition`
//! fuzz target on arbitrary ones.
//!
//! postcard's format, as read here: see `layout/write.rs`. Its varints are read as postcard
//! reads them (at most 10 bytes for a `u64`, 5 for a `u32`, the last byte's spare bits zero).

use compact_str::CompactString;

use crate::event::EventType;
use crate::identity::KeyKind;

pub(crate) use crate::bytes::Bad;
use crate::bytes::{unzigzag, Bytes};

pub(crate) struct Reader<'a>(Bytes<'a>);

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader(Bytes::new(buf))
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.0.remaining()
    }

    /// A `u64` varint. Most are one byte (lengths, option tags, small counts): inlined; the
    /// others take [`Self::varint_bytes`].
    #[inline(always)]
    pub(crate) fn varint(&mut self) -> Result<u64, Bad> {
        match self.0.small() {
            Some(b) => Ok(u64::from(b)),
            None => self.varint_bytes(10, 0x01),
        }
    }

    /// A varint of at most `max` bytes whose last byte (if it is the `max`th) is at most
    /// `last` (the bits left of the type).
    fn varint_bytes(&mut self, max: u32, last: u8) -> Result<u64, Bad> {
        let mut v: u64 = 0;
        for i in 0..max {
            let b = self.0.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == max - 1 && b > last {
                    return Err(Bad);
                }
                return Ok(v);
            }
        }
        Err(Bad)
    }

    #[inline]
    fn varint_u32(&mut self) -> Result<u32, Bad> {
        match self.0.small() {
            Some(b) => Ok(u32::from(b)),
            None => self.varint_bytes(5, 0x0f).map(|v| v as u32),
        }
    }

    /// A length: of a string's bytes or a sequence's elements. Every element of the state's
    /// sequences takes at least one byte, so a length beyond the bytes left is refused before
    /// anything is allocated for it.
    #[inline]
    pub(crate) fn len(&mut self) -> Result<usize, Bad> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(Bad);
        }
        Ok(n as usize)
    }

    #[inline]
    fn str(&mut self) -> Result<&'a str, Bad> {
        let n = self.len()?;
        self.0.text(n)
    }

    /// An option's tag (or a bool): 0 or 1.
    #[inline(always)]
    pub(crate) fn some(&mut self) -> Result<bool, Bad> {
        self.0.flag()
    }
}

/// A part of the profile, read in version 6's layout.
pub(crate) trait Decode: Sized {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Bad>;
}

/// An `f64` in version 6's compact layout ([`super::compact_f64`]).
#[inline]
pub(crate) fn compact_f64(r: &mut Reader<'_>) -> Result<f64, Bad> {
    let tag = r.varint()?;
    if tag & 1 == 1 {
        if tag != 1 {
            return Err(Bad);
        }
        return f64::decode(r);
    }
    Ok(unzigzag(tag >> 1) as f64 / 100.0)
}

/// An `Option<f64>` in the compact layout.
#[inline]
pub(crate) fn compact_f64_option(r: &mut Reader<'_>) -> Result<Option<f64>, Bad> {
    if r.some()? {
        compact_f64(r).map(Some)
    } else {
        Ok(None)
    }
}

impl Decode for u64 {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<u64, Bad> {
        r.varint()
    }
}

impl Decode for u32 {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<u32, Bad> {
        r.varint_u32()
    }
}

impl Decode for i64 {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<i64, Bad> {
        r.varint().map(unzigzag)
    }
}

/// postcard reads an `i32` as the zigzag of a `u32` varint.
impl Decode for i32 {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<i32, Bad> {
        let z = r.varint_u32()?;
        Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
    }
}

impl Decode for bool {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<bool, Bad> {
        r.some()
    }
}

/// The eight bytes (the `f64`s not marked compact; those marked are read with
/// [`compact_f64`]).
impl Decode for f64 {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<f64, Bad> {
        r.0.f64_le()
    }
}

impl Decode for String {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<String, Bad> {
        r.str().map(String::from)
    }
}

impl Decode for CompactString {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<CompactString, Bad> {
        r.str().map(CompactString::new)
    }
}

impl<T: Decode> Decode for Option<T> {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<Option<T>, Bad> {
        if r.some()? {
            T::decode(r).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Room reserved ahead for at most this many elements of a sequence: a length is checked
/// against the bytes left, not against what its elements take in memory (a `Line` is 168
/// bytes), so bytes that are not a profile could otherwise make a large allocation. The
/// profile's lists are shorter.
pub(crate) const PREALLOCATED: usize = 1024;

impl<T: Decode> Decode for Vec<T> {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<Vec<T>, Bad> {
        let n = r.len()?;
        let mut v = Vec::with_capacity(n.min(PREALLOCATED));
        for _ in 0..n {
            v.push(T::decode(r)?);
        }
        Ok(v)
    }
}

impl<T: Decode> Decode for std::collections::VecDeque<T> {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<std::collections::VecDeque<T>, Bad> {
        Vec::decode(r).map(Into::into)
    }
}

impl<A: Decode, B: Decode> Decode for (A, B) {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<(A, B), Bad> {
        let a = A::decode(r)?;
        Ok((a, B::decode(r)?))
    }
}

/// A unit variant: its index, as a `u32` varint.
impl Decode for EventType {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<EventType, Bad> {
        let i = r.varint_u32()? as usize;
        EventType::ALL.get(i).copied().ok_or(Bad)
    }
}

impl Decode for KeyKind {
    #[inline]
    fn decode(r: &mut Reader<'_>) -> Result<KeyKind, Bad> {
        match r.varint_u32()? {
            0 => Ok(KeyKind::Ecid),
            1 => Ok(KeyKind::Email),
            2 => Ok(KeyKind::Customer),
            3 => Ok(KeyKind::Key),
            _ => Err(Bad),
        }
    }
}

/// The body of a version 6 profile state (after the version byte, before the timer trailer):
/// `None` unless it is exactly one profile as read above.
pub(crate) fn whole<T: Decode>(body: &[u8]) -> Option<T> {
    let mut r = Reader::new(body);
    let v = T::decode(&mut r).ok()?;
    (r.remaining() == 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` as postcard writes it, read back by hand and by postcard: the same value.
    fn both<T>(v: &T) -> (T, T)
    where
        T: Decode + serde::Serialize + serde::de::DeserializeOwned,
    {
        let bytes = postcard::to_stdvec(v).unwrap();
        let hand = whole::<T>(&bytes).expect("read by hand");
        (hand, postcard::from_bytes(&bytes).unwrap())
    }

    /// Each primitive at its edges, against postcard itself.
    #[test]
    fn primitives_read_as_postcard_reads_them() {
        for v in crate::layout::edges::U64 {
            let (a, b) = both(&v);
            assert_eq!(a, b, "u64 {v}");
            assert_eq!(a, v);
        }
        for v in crate::layout::edges::U32 {
            let (a, b) = both(&v);
            assert_eq!((a, a), (b, v), "u32 {v}");
        }
        for v in crate::layout::edges::I64 {
            let (a, b) = both(&v);
            assert_eq!((a, a), (b, v), "i64 {v}");
        }
        for v in crate::layout::edges::I32 {
            let (a, b) = both(&v);
            assert_eq!((a, a), (b, v), "i32 {v}");
        }
        for v in crate::layout::edges::F64 {
            let (a, b) = both(&v);
            assert_eq!(
                (a.to_bits(), a.to_bits()),
                (b.to_bits(), v.to_bits()),
                "{v}"
            );
        }
        for v in [true, false] {
            assert_eq!(both(&v), (v, v));
        }
        for v in ["", "a", &"é".repeat(64), &"x".repeat(300)] {
            let (a, b) = both(&v.to_string());
            assert_eq!((a.as_str(), b.as_str()), (v, v));
            let (a, b) = both(&CompactString::from(v));
            assert_eq!((a.as_str(), b.as_str()), (v, v));
        }
        let v = vec![(Some(-3i64), 7u64); 200];
        let (a, b) = both(&v);
        assert_eq!((&a, &b), (&v, &v), "a sequence longer than 127");
        for kind in EventType::ALL {
            assert_eq!(both(kind), (*kind, *kind));
        }
        for kind in [
            KeyKind::Ecid,
            KeyKind::Email,
            KeyKind::Customer,
            KeyKind::Key,
        ] {
            assert_eq!(both(&kind), (kind, kind));
        }
    }

    /// What postcard refuses is refused here too; what it reads in more than one way (a
    /// varint with zero continuation bytes) is read the same where it is read at all. (That
    /// the reader accepts what it should is the test above.)
    #[test]
    fn what_postcard_refuses_is_refused() {
        fn agree<T>(bytes: &[u8])
        where
            T: Decode + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
        {
            let hand = whole::<T>(bytes);
            match postcard::from_bytes::<T>(bytes) {
                Ok(v) => {
                    if let Some(h) = hand {
                        assert_eq!(h, v, "{bytes:?}");
                    }
                }
                Err(_) => assert!(hand.is_none(), "{bytes:?} read by hand only: {hand:?}"),
            }
        }
        // Overlong and out-of-range varints, zero continuations.
        let mut cases: Vec<Vec<u8>> = vec![
            vec![0x80, 0x00],
            vec![0xff; 10],
            [vec![0xff; 9], vec![0x01]].concat(),
            [vec![0xff; 9], vec![0x02]].concat(),
            [vec![0xff; 4], vec![0x0f]].concat(),
            [vec![0xff; 4], vec![0x10]].concat(),
            vec![0xff; 11],
            vec![],
            vec![0x80],
        ];
        for b in 0..=255u8 {
            cases.push(vec![b]);
            cases.push(vec![b, b]);
        }
        // What the hand reader accepted: most of the cases (it is not a reader refusing all).
        let accepted = cases.iter().filter(|c| whole::<u64>(c).is_some()).count();
        assert!(accepted > 100, "{accepted} of {} read", cases.len());
        for c in &cases {
            agree::<u64>(c);
            agree::<u32>(c);
            agree::<i64>(c);
            agree::<i32>(c);
            agree::<bool>(c);
            agree::<Option<u32>>(c);
            agree::<EventType>(c);
            agree::<KeyKind>(c);
        }
        // Strings: invalid UTF-8, a length beyond the bytes.
        agree::<String>(&[2, 0xc3, 0x28]);
        agree::<String>(&[2, 0xc3, 0xa9]);
        agree::<CompactString>(&[5, b'a']);
        agree::<Vec<u64>>(&[200, 1, 2]);
        agree::<f64>(&[0, 0, 0]);
    }

    #[test]
    fn compact_numbers_read_as_the_layouts() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Both(
            #[serde(with = "crate::layout::compact_f64")] f64,
            #[serde(with = "crate::layout::compact_f64::option")] Option<f64>,
            #[serde(with = "crate::layout::compact_f64::option")] Option<f64>,
        );
        let _layout = crate::layout::Reading::version(crate::profile::STATE_VERSION);
        for v in crate::layout::COMPACT_NUMBERS {
            let bytes = postcard::to_stdvec(&Both(v, Some(v), None)).unwrap();
            let mut r = Reader::new(&bytes);
            let a = compact_f64(&mut r).unwrap();
            let b = compact_f64_option(&mut r).unwrap();
            let c = compact_f64_option(&mut r).unwrap();
            assert_eq!(r.remaining(), 0);
            let s: Both = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(a.to_bits(), s.0.to_bits(), "{v}");
            assert_eq!(b.map(f64::to_bits), s.1.map(f64::to_bits), "{v}");
            assert_eq!((c, s.2), (None, None));
        }
        // A tag with the low bit set other than 1 is refused, as serde refuses it.
        let mut r = Reader::new(&[3, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(compact_f64(&mut r).is_err());
    }
}
