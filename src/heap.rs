//! The process's two heaps, for `tailor_heap_bytes`: what the resident memory is made of beyond
//! RocksDB's own accounting (`tailor_state_memory_bytes`).
//!
//! Rust allocates from mimalloc (the binary's global allocator): decoded profiles, the open
//! batch, queued outputs. The C libraries allocate from glibc's malloc: RocksDB (its block cache
//! and memtables are part of `c_in_use`) and librdkafka (its prefetched messages and the
//! producer's queue). Memory C code has freed stays with glibc's arenas until it is trimmed.

/// One reading of both heaps, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heaps {
    /// Memory mimalloc has committed from the OS (in use, or freed and kept for reuse).
    pub rust_committed: u64,
    /// glibc malloc: in use by the C libraries (arenas and large mapped blocks).
    pub c_in_use: u64,
    /// glibc malloc: freed by the C libraries and held in its arenas.
    pub c_free: u64,
}

/// The names of `tailor_heap_bytes`'s parts, in [`Heaps::parts`] order.
pub const PARTS: [&str; 3] = ["rust_committed", "c_in_use", "c_free"];

impl Heaps {
    pub fn parts(&self) -> [u64; 3] {
        [self.rust_committed, self.c_in_use, self.c_free]
    }
}

/// Reads both heaps (mimalloc's process info, glibc's `mallinfo2`). Cheap: no walk of the
/// allocated blocks.
pub fn read() -> Heaps {
    // elapsed, user, system, current rss, peak rss, current commit, peak commit, page faults
    let mut info = [0usize; 8];
    let p = info.as_mut_ptr();
    // SAFETY: eight distinct, valid out-parameters, each written once.
    unsafe {
        libmimalloc_sys::mi_process_info(
            p,
            p.add(1),
            p.add(2),
            p.add(3),
            p.add(4),
            p.add(5),
            p.add(6),
            p.add(7),
        );
    }
    let (c_in_use, c_free) = glibc();
    Heaps {
        rust_committed: info[5] as u64,
        c_in_use,
        c_free,
    }
}

/// How much more freed C memory than at the last trim makes [`trim`] run again.
pub const TRIM_STEP: u64 = 32 << 20;

/// glibc's free memory right after the last trim (or less, as it was reused since).
static TRIMMED_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Returns the C libraries' freed memory to the OS once glibc holds [`TRIM_STEP`] more of it than
/// after the last trim (`malloc_trim`: the free pages inside every arena, not only the top of
/// each heap). glibc gives back only the top of a heap by itself, so the freed middle stayed
/// resident: after the bench's timer bursts (their outputs in librdkafka's producer queue)
/// 340 MiB of a 1.2 GiB worker. The pages given back stay free chunks of the arenas (glibc
/// reuses them), so the free figure does not fall. Returns the free bytes if it trimmed.
pub fn trim(h: &Heaps) -> Option<u64> {
    use std::sync::atomic::Ordering;
    let last = TRIMMED_AT
        .fetch_min(h.c_free, Ordering::Relaxed)
        .min(h.c_free);
    if h.c_free < last + TRIM_STEP {
        return None;
    }
    // Another processing thread trims at the same time: one is enough.
    if TRIMMED_AT
        .compare_exchange(last, h.c_free, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    trim_glibc();
    Some(h.c_free)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_glibc() {
    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_glibc() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc() -> (u64, u64) {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
    let m = unsafe { libc::mallinfo2() };
    ((m.uordblks + m.hblkhd) as u64, m.fordblks as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc() -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident memory of this process, from /proc/self/statm.
    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn freed_c_memory_shows_as_free_and_a_trim_gives_its_pages_back() {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return;
        }
        const MIB: u64 = 1 << 20;
        let before = read();
        // 128 MiB in 64 KiB blocks: below glibc's mmap threshold, so from an arena; written,
        // so resident.
        let blocks: Vec<*mut u8> = (0..2048)
            .map(|_| {
                // SAFETY: plain malloc of 64 KiB, written whole, freed below.
                unsafe {
                    let b = libc::malloc(64 << 10).cast::<u8>();
                    assert!(!b.is_null());
                    std::ptr::write_bytes(b, 1, 64 << 10);
                    b
                }
            })
            .collect();
        let held = read();
        assert!(
            held.c_in_use >= before.c_in_use + 120 * MIB,
            "{before:?} then {held:?}"
        );
        // Every other block freed: holes in the middle of the heap, which glibc keeps.
        for b in blocks.iter().step_by(2) {
            // SAFETY: allocated above, freed once.
            unsafe { libc::free(b.cast()) };
        }
        let holes = read();
        assert!(
            holes.c_free >= before.c_free + 60 * MIB,
            "{held:?} then {holes:?}"
        );
        let resident_before = resident();
        assert!(trim(&holes).is_some(), "64 MiB freed is past the step");
        let resident_after = resident();
        assert!(
            resident_after + 32 * MIB <= resident_before,
            "resident {} MiB before the trim, {} MiB after",
            resident_before / MIB,
            resident_after / MIB
        );
        // Nothing more freed since: no second trim.
        assert_eq!(trim(&read()), None);
        for b in blocks.iter().skip(1).step_by(2) {
            // SAFETY: the other half, freed once.
            unsafe { libc::free(b.cast()) };
        }
    }
}
