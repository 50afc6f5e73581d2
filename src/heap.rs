//! The process's two heaps, for `tailor_heap_bytes`: what the resident memory is made of beyond
//! RocksDB's own accounting (`tailor_state_memory_bytes`).
//!
//! Rust allocates from mimalloc (the binary's global allocator): decoded profiles, the open
//! batch, queued outputs. The C libraries allocate from glibc's malloc: RocksDB (its block cache
//! and memtables are part of `c_in_use`) and librdkafka (its prefetched messages and the
//! producer's queue). Memory C code has freed stays with glibc's arenas until it is trimmed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One reading of both heaps, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heaps {
    /// Memory mimalloc has committed from the OS (in use, or freed and kept for reuse).
    pub rust_committed: u64,
    /// glibc malloc: in use by the C libraries (arenas and large mapped blocks).
    pub c_in_use: u64,
    /// glibc malloc: freed by the C libraries and held in its arenas (resident or, once
    /// trimmed, not).
    pub c_free: u64,
}

/// The names of `tailor_heap_bytes`'s parts, in [`Heaps::parts`] order.
pub const PARTS: [&str; 3] = ["rust_committed", "c_in_use", "c_free"];

impl Heaps {
    pub fn parts(&self) -> [u64; 3] {
        [self.rust_committed, self.c_in_use, self.c_free]
    }
}

/// Reads both heaps: mimalloc's process info, and glibc's `mallinfo2` (which locks each arena
/// and walks its free lists: call it every few seconds, not per message). The C figures are 0
/// where glibc has no `mallinfo2` (before 2.33, or not glibc).
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
    let (c_in_use, c_free) = glibc::info();
    Heaps {
        rust_committed: current_commit as u64,
        c_in_use,
        c_free,
    }
}

/// How much more freed C memory than the least since the last trim makes [`should_trim`] say yes again.
pub const TRIM_STEP: u64 = 32 << 20;

/// How long after the last trim [`should_trim`] says yes anyway, if at least [`TRIM_STEP`] is free:
/// pages given back are free chunks still (the free figure does not fall), and reusing then
/// freeing them again makes them resident again without moving that figure.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// The least free C memory seen since the last trim.
static TRIMMED_AT: AtomicU64 = AtomicU64::new(0);
/// When the last trim ran, in ms since [`epoch`].
static TRIMMED_WHEN: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whether to give the C libraries' freed memory back to the OS now: glibc holds [`TRIM_STEP`]
/// more of it than the least since the last trim, or [`TRIM_EVERY`] has passed and it holds at
/// least [`TRIM_STEP`]. glibc gives back only the top of a heap by itself, so the freed middle
/// stayed resident: after the bench's timer bursts (their outputs in librdkafka's producer
/// queue) 340 MiB of a 1.2 GiB worker. When it says yes, the caller runs [`trim_now`] (off the
/// processing thread: it takes 1–26 ms). Of several threads asking at once, one gets the yes.
pub fn should_trim(h: &Heaps) -> bool {
    let now = epoch().elapsed().as_millis() as u64;
    let last = TRIMMED_AT
        .fetch_min(h.c_free, Ordering::Relaxed)
        .min(h.c_free);
    let when = TRIMMED_WHEN.load(Ordering::Relaxed);
    let grown = h.c_free >= last + TRIM_STEP;
    let due = now >= when + TRIM_EVERY.as_millis() as u64 && h.c_free >= TRIM_STEP;
    if !grown && !due {
        return false;
    }
    if TRIMMED_WHEN
        .compare_exchange(
            when,
            now.max(when + 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false;
    }
    TRIMMED_AT.store(h.c_free, Ordering::Relaxed);
    true
}

/// `malloc_trim(0)`: the free pages inside every arena of glibc's malloc go back to the OS
/// (the chunks stay free in the arenas, for reuse). Nothing where there is no glibc.
pub fn trim_now() {
    glibc::trim();
}

/// Turns transparent huge pages off for the whole process (`prctl(PR_SET_THP_DISABLE)`, what
/// Redis does by default), unless `processing.transparent_huge_pages` asks for them. mimalloc
/// asks for huge pages (`MADV_HUGEPAGE`) on the memory it takes for the Rust heap, so each
/// first touch of a 2 MiB region has the kernel find and zero a whole 2 MiB page at once. On
/// the project's machines (virtual machines that hand free memory back to their host) that
/// took about 25 ms per huge page against about 0.7 ms for the same 2 MiB in 4 KiB pages, and
/// zeroing them was 12-13 % of the worker's CPU in the wide bench. Linux only; elsewhere
/// nothing to do.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // The kernel reads every argument as an unsigned long and wants the last three 0.
        let (off, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, off, zero, zero, zero) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the kernel may back this process's memory with transparent huge pages, as
/// `/proc/self/status` says (`THP_enabled`, Linux 5.0 and later); `None` where it does not say.
pub fn transparent_huge_pages_enabled() -> Option<bool> {
    thp_enabled(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `THP_enabled` of a `/proc/<pid>/status` text.
pub fn thp_enabled(status: &str) -> Option<bool> {
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    match line["THP_enabled:".len()..].trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::sync::OnceLock;

    /// glibc's `struct mallinfo2` (2.33 and later).
    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }

    type MallInfo2Fn = unsafe extern "C" fn() -> MallInfo2;

    /// `mallinfo2`, looked up at run time: a glibc older than 2.33 lacks it, and linking it
    /// directly would stop the binary from starting there.
    fn mallinfo2() -> Option<MallInfo2Fn> {
        static F: OnceLock<Option<MallInfo2Fn>> = OnceLock::new();
        *F.get_or_init(|| {
            // SAFETY: dlsym with a NUL-terminated name; a non-null result is glibc's
            // `struct mallinfo2 mallinfo2(void)`, which MallInfo2Fn matches.
            unsafe {
                let f = libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr());
                (!f.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, MallInfo2Fn>(f))
            }
        })
    }

    pub fn info() -> (u64, u64) {
        match mallinfo2() {
            Some(f) => {
                // SAFETY: glibc's mallinfo2 takes no arguments and returns the struct by value.
                let m = unsafe { f() };
                ((m.uordblks + m.hblkhd) as u64, m.fordblks as u64)
            }
            None => (0, 0),
        }
    }

    pub fn trim() {
        // SAFETY: malloc_trim only releases free memory; any thread may call it.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn info() -> (u64, u64) {
        (0, 0)
    }

    pub fn trim() {}
}
