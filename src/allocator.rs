//! The Rust heap: mimalloc, called the way the standard library calls `malloc`.
//!
//! The `mimalloc` crate's `GlobalAlloc` asks for every block through `mi_malloc_aligned`, with
//! the alignment of its `Layout`. In mimalloc 3 that call takes its fast path only while the
//! size class has a free block at hand; otherwise its generic path, which for a class whose size
//! is not a power of two (48, 80, 96 … bytes) over-allocates `size + alignment - 1` bytes: from
//! the next class up where that crosses a class's bound (48 bytes aligned to 8: 55, the 64-byte
//! class), so the class's own pages are not refilled and later requests of that size take the
//! slow path too. In the core bench an allocation cost about 96 instructions that way, 42 now.
//! The standard library's `System` allocator calls plain `malloc` whenever the alignment is at
//! most 16 and at most the size; [`Mimalloc`] calls plain `mi_malloc` on the same rule (see
//! [`plain`]) and keeps the aligned calls for the rest.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Whether the block `mi_malloc` (or `mi_realloc`) returns for `size` bytes is aligned to
/// `align`: on 64-bit targets, when `align` is at most 16 and at most `size`. mimalloc's size
/// classes up to 64 bytes are 8 and then multiples of 16 (a request of 9 to 16 bytes gets 16,
/// of 17 to 32 gets 32, … : `mi_bin` rounds to two words), the larger ones multiples of 16, and
/// a page's blocks start at a multiple of 16: an 8-byte block is 8-aligned, every larger one
/// 16-aligned (C's `max_align_t`, as mimalloc promises when it stands in for `malloc`). On
/// other targets its smallest classes are narrower: the aligned calls always.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    cfg!(target_pointer_width = "64") && align <= 16 && align <= size
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
                unsafe {
                    let p = filled(&a, layout);
                    let grown = resized(&a, p, layout, size * 3);
                    let bigger = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = resized(&a, grown, bigger, size);
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

    /// A block moved by `realloc` from one path to the other (plain and aligned), both ways:
    /// sizes on either side of the alignment, at the alignments around 16.
    #[test]
    fn realloc_crosses_between_plain_and_aligned_blocks() {
        let a = Mimalloc;
        let sizes = [1, 4, 7, 8, 12, 16, 20, 24, 31, 32, 33, 48, 64, 100];
        for align in [4, 8, 16, 32, 64] {
            for from in sizes {
                for to in sizes {
                    let layout = Layout::from_size_align(from, align).unwrap();
                    unsafe {
                        let p = filled(&a, layout);
                        let q = resized(&a, p, layout, to);
                        a.dealloc(q, Layout::from_size_align(to, align).unwrap());
                    }
                }
            }
        }
    }

    /// A block of `layout`, checked aligned, each byte set to its index.
    unsafe fn filled(a: &Mimalloc, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "{size} bytes");
            assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
            for i in 0..size {
                p.add(i).write(i as u8);
            }
            p
        }
    }

    /// `p` (of `layout`, filled) reallocated to `to` bytes: aligned, its bytes kept.
    unsafe fn resized(a: &Mimalloc, p: *mut u8, layout: Layout, to: usize) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        unsafe {
            let q = a.realloc(p, layout, to);
            assert!(!q.is_null());
            assert_eq!(
                q as usize % align,
                0,
                "{size} -> {to} bytes aligned to {align}"
            );
            for i in 0..size.min(to) {
                assert_eq!(q.add(i).read(), i as u8, "byte {i} of {size} -> {to}");
            }
            q
        }
    }

    /// What [`plain`] rests on: `mi_malloc` of more than 8 bytes is 16-aligned, over enough
    /// blocks of each class to fill several of its pages.
    #[test]
    fn plain_blocks_over_8_bytes_are_16_aligned() {
        for size in 9..=1100 {
            let n = (256 * 1024 / size).max(64);
            let blocks: Vec<*mut c_void> = (0..n).map(|_| unsafe { mi::mi_malloc(size) }).collect();
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
        assert!(plain(8, 8));
        assert!(plain(16, 16));
        assert!(plain(16, 20), "the 32-byte class");
        assert!(
            !plain(8, 4),
            "the standard library's rule: the alignment at most the size"
        );
        assert!(!plain(16, 8), "an 8-byte block is aligned to 8 only");
        assert!(!plain(32, 64));
        assert!(!plain(4096, 4096));
    }
}
