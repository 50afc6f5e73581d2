//! A cursor over bytes: what the hand-written readers share, of the input records
//! (`codec/direct.rs`, Avro's binary encoding) and of the profile's state (`layout/read.rs`,
//! postcard's). Each reads "the value" or [`Bad`], and the caller then reads the same bytes
//! through serde, which reads them or names the fault.

/// Not read here: serde reads the bytes again and says what is wrong (or reads them).
#[derive(Debug)]
pub(crate) struct Bad;

pub(crate) struct Bytes<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8]) -> Bytes<'a> {
        Bytes { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.remaining() {
            return Err(Bad);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline(always)]
    pub(crate) fn byte(&mut self) -> Result<u8, Bad> {
        let b = *self.buf.get(self.pos).ok_or(Bad)?;
        self.pos += 1;
        Ok(b)
    }

    /// The next byte if its high bit is clear (a varint of one byte: most lengths, tags and
    /// small numbers), taken; otherwise nothing is taken. Inlined into the readers' varints.
    #[inline(always)]
    pub(crate) fn small(&mut self) -> Option<u8> {
        match self.buf.get(self.pos) {
            Some(&b) if b & 0x80 == 0 => {
                self.pos += 1;
                Some(b)
            }
            _ => None,
        }
    }

    /// A boolean's byte (both formats: 0 or 1, anything else refused).
    #[inline(always)]
    pub(crate) fn flag(&mut self) -> Result<bool, Bad> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Bad),
        }
    }

    /// Eight bytes, little-endian (both formats' `f64`).
    #[inline]
    pub(crate) fn f64_le(&mut self) -> Result<f64, Bad> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes(b.try_into().map_err(|_| Bad)?))
    }

    /// `n` bytes of UTF-8. Most strings are ASCII: checking that word by word took decoding
    /// from 6,146 to 5,409 instructions per sample event (`scripts/icount.sh decode`; events
    /// with every context set 30,996 to 25,884) against validating each as UTF-8. Always
    /// inlined: called from many places, the compiler otherwise kept it a call (state decode
    /// 12,834 instructions per profile that way, 12,528 inlined).
    #[inline(always)]
    pub(crate) fn text(&mut self, n: usize) -> Result<&'a str, Bad> {
        let bytes = self.take(n)?;
        if bytes.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| Bad)
    }
}

/// A zig-zag encoded integer's value (both formats' signed integers).
#[inline]
pub(crate) fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}
