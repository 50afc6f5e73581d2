//! [`Sparse`]: a part of the profile most shoppers leave at its default (attributes, orders),
//! held out of line and not allocated at all while it is the default.
//!
//! A decoded profile is kept in the worker's cache, so its size is memory: `Attributes` and
//! `OrderStats` were more than 500 of the `Profile`'s 1,136 bytes, and a browsing shopper fills
//! neither. Reading one that is not there gives its default; writing allocates it. In the
//! state (since version 6) it is an option: one byte while not held.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::layout::read::{self, Decode};
use crate::layout::write::Encode;

/// A default value to lend out while a [`Sparse`] holds none.
pub trait Empty: Default + PartialEq + 'static {
    fn empty() -> &'static Self;
}

/// Implements [`Empty`] with a value made once.
macro_rules! empty_default {
    ($t:ty) => {
        impl $crate::sparse::Empty for $t {
            fn empty() -> &'static Self {
                static EMPTY: std::sync::OnceLock<$t> = std::sync::OnceLock::new();
                EMPTY.get_or_init(<$t>::default)
            }
        }
    };
}

pub(crate) use empty_default;

/// `T`, out of line, or nothing while it is `T::default()`.
#[derive(Clone, Default)]
pub struct Sparse<T>(Option<Box<T>>);

impl<T: Empty> Sparse<T> {
    pub fn new(value: T) -> Self {
        if value == *T::empty() {
            Sparse(None)
        } else {
            Sparse(Some(Box::new(value)))
        }
    }

    pub fn into_inner(self) -> T {
        self.0.map_or_else(T::default, |b| *b)
    }

    /// Whether it holds a value of its own (allocated), not the lent default.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl<T: crate::footprint::Footprint> crate::footprint::Footprint for Sparse<T> {
    /// Its box, when it holds a value (named here: through `Deref` the lent default would be
    /// walked and the box missed).
    fn heap(&self, m: &mut crate::footprint::Meter) {
        self.0.heap(m);
    }
}

impl<T: Empty> Deref for Sparse<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(held) => held,
            None => T::empty(),
        }
    }
}

/// Writing allocates the part (even if what is written leaves it at its default).
impl<T: Empty> DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<T: Empty> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + fmt::Debug> fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// Since state version 6, an option in the state: none while not held (one byte). Before, and
/// in JSON, every field of the part, its default's when not held ([`crate::layout`]).
impl<T: Empty + Serialize> Serialize for Sparse<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !crate::layout::compact() || s.is_human_readable() {
            return (**self).serialize(s);
        }
        match &self.0 {
            // A part written to and left at its default reads back not held.
            Some(held) if **held != *T::empty() => s.serialize_some(&**held),
            _ => s.serialize_none(),
        }
    }
}

/// As serialized in version 6 (`layout/write.rs`).
impl<T: Empty + Encode> Encode for Sparse<T> {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Some(held) if **held != *T::empty() => {
                out.push(1);
                held.encode(out);
            }
            _ => out.push(0),
        }
    }
}

/// As deserialized in version 6: a part held at its default reads back not held.
impl<T: Empty + Decode> Decode for Sparse<T> {
    #[inline]
    fn decode(r: &mut read::Reader<'_>) -> Result<Self, read::Bad> {
        Ok(Option::<T>::decode(r)?.map_or_else(Sparse::default, Sparse::new))
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Sparse<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !crate::layout::compact() || d.is_human_readable() {
            return T::deserialize(d).map(Sparse::new);
        }
        Ok(Option::<T>::deserialize(d)?.map_or_else(Sparse::default, Sparse::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Part {
        n: u64,
        name: Option<String>,
    }
    empty_default!(Part);

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Inline {
        before: u8,
        part: Part,
        after: u8,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct OutOfLine {
        before: u8,
        part: Sparse<Part>,
        after: u8,
    }

    /// Version 6's layout: an option, one byte while not held. Before it, the part itself
    /// (its default's fields when not held), which still reads.
    #[test]
    fn encodes_as_an_option_reads_the_part_itself_before_version_6() {
        for part in [
            Part::default(),
            Part {
                n: 7,
                name: Some("x".into()),
            },
        ] {
            let inline = Inline {
                before: 1,
                part: part.clone(),
                after: 2,
            };
            let held = part != Part::default();
            let old_bytes = postcard::to_stdvec(&inline).unwrap();
            let optional = postcard::to_stdvec(&(1u8, held.then_some(&part), 2u8)).unwrap();
            {
                let _v5 = crate::layout::Reading::version(5);
                let out: OutOfLine = postcard::from_bytes(&old_bytes).unwrap();
                assert_eq!(*out.part, part);
                assert_eq!(out.part.is_held(), held);
                assert_eq!((out.before, out.after), (1, 2));
                assert_eq!(postcard::to_stdvec(&out).unwrap(), old_bytes);
            }
            let _v6 = crate::layout::Reading::version(crate::layout::COMPACT_SINCE);
            let out: OutOfLine = postcard::from_bytes(&optional).unwrap();
            assert_eq!(*out.part, part);
            assert_eq!(out.part.is_held(), held);
            assert_eq!((out.before, out.after), (1, 2));
            assert_eq!(postcard::to_stdvec(&out).unwrap(), optional);
            // JSON is the part itself, in any layout.
            assert_eq!(
                serde_json::to_value(&out).unwrap(),
                serde_json::to_value(&inline).unwrap()
            );
            if !held {
                assert_eq!(optional, [1, 0, 2], "one byte while not held");
                // Held, but written back to its default: one byte too, stored as not there.
                let mut written = OutOfLine::default();
                written.part.n = 0;
                assert!(written.part.is_held());
                let bytes = postcard::to_stdvec(&(0u8, &written.part, 0u8)).unwrap();
                assert_eq!(bytes, [0, 0, 0]);
            }
        }
    }

    #[test]
    fn reads_lend_the_default_and_writes_allocate() {
        let mut s: Sparse<Part> = Sparse::default();
        assert_eq!(s.n, 0);
        assert!(!s.is_held());
        s.n = 3;
        assert!(s.is_held());
        assert_eq!(s.clone().into_inner().n, 3);
        assert_eq!(s, Sparse::new(Part { n: 3, name: None }));
        assert_ne!(s, Sparse::default());
        assert_eq!(Sparse::<Part>::default().into_inner(), Part::default());
    }
}
