//! The Rust heap: mimalloc, called the way the standard library calls `malloc`.
//!
//! The `mimalloc` crate's `GlobalAlloc` asks for every block through `mi_malloc_aligned`, with
//! the alignment of its `Layout`. In mimalloc 3 that path is quick only while the size class
//! has a free block at hand; otherwise, for a size whose class is not a power of two (24, 40,
//! 48 … bytes: most of the worker's), it over-allocates `size + alignment - 1` bytes from the
//! next class up, so that class's own pages are never refilled and every later request of that
//! size takes the slow path as well. The standard library's `System` allocator calls plain
//! `malloc` whenever the alignment is at most 16 and at most the size; [`Mimalloc`] calls plain
//! `mi_malloc` where its blocks are sure to be aligned enough (see [`plain`]) and keeps the
//! aligned calls for the rest.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Whether a block `mi_malloc` (or `mi_realloc`) returns for `size` bytes is aligned to `align`.
/// Its size classes are multiples of 8 bytes (the smallest is 8), and from 64 bytes on
/// multiples of 16, laid out from 16-byte boundaries: every block is 8-aligned, and one of a
/// multiple of 16 bytes falls in a class of multiples of 16 (16, 32, 48, 64, then all). A
/// request of 20 bytes aligned to 16 would land in the 24-byte class: aligned call. (This is
/// stricter than the standard library's rule for glibc, whose every block is 16-aligned.)
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= 8 || (align == 16 && size % 16 == 0)
}

/// mimalloc as the global allocator (`#[global_allocator]` in the binary and the benches).
pub struct Mimalloc;

// SAFETY: every block comes from mimalloc with at least the layout's alignment (`plain` or the
// aligned calls) and goes back to it through `mi_free`, which takes blocks from either.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: mimalloc's allocation functions take any size and a power-of-two alignment.
        unsafe {
            if plain(align, size) {
                mi::mi_malloc(size).cast()
            } else {
                mi::mi_malloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(align, size) {
                mi::mi_zalloc(size).cast()
            } else {
                mi::mi_zalloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from this allocator; the new block keeps the alignment (`plain`
        // for the new size, or the aligned call).
        unsafe {
            if plain(align, new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, align).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every size up to 1 KiB and some larger, at every alignment up to a page
    /// (sizes that are not a multiple of the alignment too: a `Layout` allows them): aligned
    /// as asked, writable, and growing or shrinking keeps the bytes. (The tests run on the
    /// default allocator, so the blocks here come from `Mimalloc` alone.)
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let a = Mimalloc;
        for size in (1..=1100).chain([2048, 4095, 4096, 65536, 1 << 20, 3 << 20]) {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let layout = Layout::from_size_align(size, align).unwrap();
                let bigger = Layout::from_size_align(size * 3, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "{size} bytes");
                    assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
                    for i in 0..size {
                        p.add(i).write(i as u8);
                    }
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "{size} -> {} bytes", size * 3);
                    for i in 0..size {
                        assert_eq!(
                            grown.add(i).read(),
                            i as u8,
                            "byte {i} of {size} after growth"
                        );
                    }
                    let shrunk = a.realloc(grown, bigger, size);
                    assert_eq!(shrunk as usize % align, 0, "shrunk back to {size}");
                    assert_eq!(shrunk.add(size - 1).read(), (size - 1) as u8);
                    a.dealloc(shrunk, layout);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(
                        z as usize % align,
                        0,
                        "{size} zeroed bytes aligned to {align}"
                    );
                    assert!(
                        (0..size).all(|i| z.add(i).read() == 0),
                        "{size} bytes zeroed"
                    );
                    a.dealloc(z, layout);
                }
            }
        }
    }

    /// What [`plain`] rests on: `mi_malloc` of a multiple of 16 bytes is 16-aligned, however
    /// many blocks (so pages) of the class are taken.
    #[test]
    fn plain_blocks_of_multiples_of_16_are_16_aligned() {
        for size in (16..=2048).step_by(16) {
            let blocks: Vec<*mut c_void> =
                (0..1500).map(|_| unsafe { mi::mi_malloc(size) }).collect();
            for p in &blocks {
                assert_eq!(*p as usize % 16, 0, "mi_malloc({size})");
            }
            for p in blocks {
                unsafe { mi::mi_free(p) };
            }
        }
    }

    #[test]
    fn plain_malloc_only_where_its_alignment_suffices() {
        assert!(plain(8, 24));
        assert!(plain(8, 1), "the smallest class is 8 bytes");
        assert!(plain(16, 48));
        assert!(!plain(16, 20), "would land in the 24-byte class");
        assert!(!plain(16, 8), "an 8-byte block is aligned to 8 only");
        assert!(!plain(32, 64));
        assert!(!plain(4096, 4096));
    }
}
