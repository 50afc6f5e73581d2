//! glibc's free memory as `tailor_heap_bytes` reports it, and the trim that gives its pages
//! back. A file of its own: it measures the process's resident memory, which other tests
//! running in the same process would move.

use tailor::heap;

/// Resident memory of this process, from /proc/self/statm.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf with a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

#[test]
fn freed_c_memory_shows_as_free_and_a_trim_gives_its_pages_back() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    const MIB: u64 = 1 << 20;
    const BLOCK: usize = 256 << 10;
    let before = heap::read();
    assert!(before.c_in_use > 0, "mallinfo2 is read: {before:?}");
    // 128 MiB in 256 KiB blocks, allocated from the arenas (glibc's mmap threshold moves up to
    // 32 MiB after the first large free, so it is raised here to keep them out of mmap) and
    // written, so resident.
    // SAFETY: mallopt with a valid parameter.
    assert_eq!(unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20) }, 1);
    let blocks: Vec<*mut u8> = (0..512)
        .map(|_| {
            // SAFETY: plain malloc, written whole, freed below.
            unsafe {
                let b = libc::malloc(BLOCK).cast::<u8>();
                assert!(!b.is_null());
                std::ptr::write_bytes(b, 1, BLOCK);
                b
            }
        })
        .collect();
    let held = heap::read();
    assert!(
        held.c_in_use >= before.c_in_use + 120 * MIB,
        "{before:?} then {held:?}"
    );
    // Every other block freed: holes in the middle of the heap, which glibc keeps.
    for b in blocks.iter().step_by(2) {
        // SAFETY: allocated above, freed once.
        unsafe { libc::free(b.cast()) };
    }
    let holes = heap::read();
    assert!(
        holes.c_free >= held.c_free + 60 * MIB,
        "{held:?} then {holes:?}"
    );
    assert!(heap::should_trim(&holes), "64 MiB freed is past the step");
    let resident_before = resident();
    heap::trim_now();
    let resident_after = resident();
    assert!(
        resident_after + 48 * MIB <= resident_before,
        "resident {} MiB before the trim, {} MiB after",
        resident_before / MIB,
        resident_after / MIB
    );
    // Nothing more freed since, and the last trim is recent: no second one.
    assert!(!heap::should_trim(&heap::read()));
    for b in blocks.iter().skip(1).step_by(2) {
        // SAFETY: the other half, freed once.
        unsafe { libc::free(b.cast()) };
    }
}

#[test]
fn transparent_huge_pages_turned_off_show_in_the_process_status() {
    if !cfg!(target_os = "linux") {
        return;
    }
    heap::disable_transparent_huge_pages().unwrap();
    assert_eq!(heap::transparent_huge_pages_enabled(), Some(false));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(status.contains("THP_enabled:\t0"), "{status}");
}

#[test]
fn the_status_line_is_read_as_the_kernel_writes_it() {
    assert_eq!(
        heap::thp_enabled("Name:\ttailor\nTHP_enabled:\t1\n"),
        Some(true)
    );
    assert_eq!(
        heap::thp_enabled("THP_enabled:\t0\nThreads:\t9\n"),
        Some(false)
    );
    assert_eq!(heap::thp_enabled("Name:\ttailor\n"), None);
    assert_eq!(heap::thp_enabled("THP_enabled:\tmaybe\n"), None);
}
