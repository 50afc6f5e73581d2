//! The C libraries allocate from mimalloc, as the Rust code does, and `tailor_heap_bytes`
//! counts their memory. A file of its own: it measures the process's committed memory, which
//! other tests running in the same process would move.

use tailor::heap;

const MIB: u64 = 1 << 20;

#[test]
fn malloc_as_c_code_calls_it_is_mimalloc() {
    assert!(
        heap::c_malloc_is_mimalloc(),
        "malloc is glibc's: the C libraries' freed pages go back to the OS and fault in again"
    );
    // Blocks of the sizes glibc would have mapped on their own (256 KiB) or kept in its arenas
    // (4 KiB), written whole: mimalloc's committed memory grows by what they hold.
    let before = heap::read();
    let blocks: Vec<*mut u8> = [256usize << 10, 4 << 10]
        .iter()
        .flat_map(|&size| std::iter::repeat_n(size, (64 << 20) / size))
        .map(|size| {
            // SAFETY: plain malloc, written whole, freed below.
            unsafe {
                let b = libc::malloc(size).cast::<u8>();
                assert!(!b.is_null());
                std::ptr::write_bytes(b, 1, size);
                assert!(libmimalloc_sys::mi_is_in_heap_region(b.cast()));
                b
            }
        })
        .collect();
    let held = heap::read();
    assert!(
        held.committed >= before.committed + 120 * MIB,
        "128 MiB allocated with malloc: {before:?} then {held:?}"
    );
    for b in blocks {
        // SAFETY: allocated above, freed once.
        unsafe { libc::free(b.cast()) };
    }
}

#[test]
fn rocksdb_memtables_are_in_the_committed_heap() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(256 << 20);
    let db = rocksdb::DB::open(&opts, dir.path()).unwrap();
    let before = heap::read();
    // 64 MiB of values into the memtable (no flush at this write buffer size); the Rust side
    // reuses one value buffer, so what grows is RocksDB's.
    let value = vec![7u8; 8 << 10];
    for i in 0u32..8192 {
        db.put(i.to_be_bytes(), &value).unwrap();
    }
    let after = heap::read();
    assert!(
        after.committed >= before.committed + 56 * MIB,
        "64 MiB written to a memtable: {before:?} then {after:?}"
    );
    drop(db);
}
