//! The process's heap, for `tailor_heap_bytes`: what the resident memory is made of beyond
//! RocksDB's own accounting (`tailor_state_memory_bytes`).
//!
//! One allocator serves the whole process. mimalloc is the Rust code's global allocator
//! (decoded profiles, the open batch, queued outputs), and it also serves the C libraries'
//! `malloc` and `free` (libmimalloc-sys's `override` feature, which defines them in the binary):
//! RocksDB (its block cache, memtables and write batches) and librdkafka (prefetched messages,
//! the producer's queue). Under glibc's malloc, the C libraries' freed pages went back to the OS
//! (glibc's own trim of its arenas' tops, and the worker's `malloc_trim` of their middles) and
//! RocksDB faulted them in again at once: nearly all of the worker's page faults. mimalloc keeps
//! freed memory for reuse for its purge delay (10 s, set in `main.rs`) and then gives it back by
//! itself, the C libraries' as the Rust code's.

/// The names of `tailor_heap_bytes`'s parts, in [`Heaps::parts`] order.
pub const PARTS: [&str; 1] = ["committed"];

/// One reading of the heap, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heaps {
    /// Memory mimalloc has committed from the OS, for the Rust code and the C libraries alike:
    /// in use, or freed and kept for reuse until its purge delay has passed.
    pub committed: u64,
}

impl Heaps {
    pub fn parts(&self) -> [u64; 1] {
        [self.committed]
    }
}

/// Reads mimalloc's process info (cheap: counters it keeps).
pub fn read() -> Heaps {
    let mut current_commit = 0usize;
    let null = std::ptr::null_mut();
    // SAFETY: mimalloc writes the out-parameters that are not null and skips the others.
    unsafe {
        libmimalloc_sys::mi_process_info(
            null,
            null,
            null,
            null,
            null,
            &mut current_commit,
            null,
            null,
        );
    }
    Heaps {
        committed: current_commit as u64,
    }
}

/// Whether `malloc` as C code calls it is mimalloc's: the binary defines it (the `override`
/// feature). Allocates and frees one small block.
pub fn c_malloc_is_mimalloc() -> bool {
    // SAFETY: a plain malloc, looked up and freed at once; mi_is_in_heap_region only compares
    // the address with mimalloc's arenas.
    unsafe {
        let p = libc::malloc(64);
        if p.is_null() {
            return false;
        }
        let ours = libmimalloc_sys::mi_is_in_heap_region(p.cast());
        libc::free(p);
        ours
    }
}
