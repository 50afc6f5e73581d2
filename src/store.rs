//! Durable state in RocksDB: profiles, the next offset of every input partition, segment sizes,
//! the timer index and each partition's stream clock.
//!
//! Keys carry the input partition first (`u32` big-endian), so each partition's state is one
//! key range that can be dropped, mirrored or moved as a unit. Everything a batch changed is
//! written in one atomic [`WriteBatch`] together with the partitions' next offsets: after a crash
//! the store is exactly as after some whole batch, and the offsets in it say where to resume.

use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use thiserror::Error;

use crate::profile::{self, Profile};

/// A view of the store as it was at one moment ([`Store::snapshot`]).
pub type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

const CF_PROFILES: &str = "profiles";
const CF_OFFSETS: &str = "offsets";
const CF_SEGMENT_SIZES: &str = "segment_sizes";
/// Timer index: partition, due time, profile key → nothing. Ordered by (partition, due), so the
/// due timers of a partition are one short range scan; memory holds none of them.
const CF_TIMERS: &str = "timers";
/// Stream clock per partition (ms).
const CF_CLOCKS: &str = "clocks";
/// Identity aliases: partition, identity value → the profile key it belongs to.
const CF_ALIASES: &str = "aliases";
/// Small records about the store itself: segment definitions applied, re-evaluation progress.
const CF_META: &str = "meta";
/// How many column families there are (ids 0 to this, exclusive, in [`Op`]).
pub const COLUMN_FAMILIES: usize = ALL_CFS.len();
/// The column families' names (the `family` label of the store's compaction metrics).
pub const FAMILIES: [&str; COLUMN_FAMILIES] = ALL_CFS;
const ALL_CFS: [&str; 7] = [
    CF_PROFILES,
    CF_OFFSETS,
    CF_SEGMENT_SIZES,
    CF_TIMERS,
    CF_CLOCKS,
    CF_ALIASES,
    CF_META,
];

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening state at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("state store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt state for a profile in partition {partition}: {detail}")]
    Corrupt { partition: i32, detail: String },
}

/// RocksDB's memory by part, in bytes ([`Store::memory`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreMemory {
    pub memtables: u64,
    pub block_cache: u64,
    pub table_readers: u64,
}

/// RocksDB's background work on the store ([`Store::compaction`]): what an operator watches as
/// the state grows (compactions falling behind the writes slow them down, then stop them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreCompaction {
    /// Every column family's.
    pub families: Vec<FamilyCompaction>,
    /// Compactions running now, every column family together.
    pub running: u64,
    /// 0: writes run; 1: RocksDB delays them (too many level-0 files or bytes pending
    /// compaction); 2: it has stopped them (a family with two full memtables waiting for a
    /// flush, or level-0 files or pending bytes at their stop limit).
    pub write_stall: u8,
}

/// One column family's compaction backlog ([`StoreCompaction`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FamilyCompaction {
    pub name: &'static str,
    /// Bytes RocksDB estimates its compactions have yet to rewrite to bring every level within
    /// its target size.
    pub pending_bytes: u64,
    /// Files in level 0: each read of a key not in the memtables probes every one of them.
    pub level0_files: u64,
}

/// The RocksDB properties [`Store::compaction`] reads.
const PENDING_COMPACTION_BYTES: &str = "rocksdb.estimate-pending-compaction-bytes";
const LEVEL0_FILES: &str = "rocksdb.num-files-at-level0";
const WRITE_STOPPED: &str = "rocksdb.is-write-stopped";
const DELAYED_WRITE_RATE: &str = "rocksdb.actual-delayed-write-rate";
const RUNNING_COMPACTIONS: &str = "rocksdb.num-running-compactions";

/// Tuning that bounds the store's memory.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
    /// fsync the WAL on every commit (survives machine crashes, not only process crashes).
    pub sync_writes: bool,
    /// RocksDB's write-ahead log. Off (with the changelog): writes live in the memtables until
    /// a flush, which writes every column family at once (atomic flush), so the disk always
    /// holds whole commits: a crash falls back to the last flush, and the changelog restores
    /// the rest.
    pub write_ahead_log: bool,
    /// Without the write-ahead log, the longest writes stay unflushed ([`Store::flush_due`]).
    pub flush_interval: std::time::Duration,
    /// LZ4 for level 0 (the files flushes write) too; the levels below always are.
    pub compress_flushes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 128 << 20,
            write_buffer_bytes: 64 << 20,
            sync_writes: true,
            write_ahead_log: true,
            flush_interval: std::time::Duration::from_secs(60),
            compress_flushes: false,
        }
    }
}

/// Timer index entries: (due time, profile key), earliest first.
pub type DueTimers = Vec<(i64, String)>;

pub struct Store {
    db: DB,
    sync_writes: bool,
    write_ahead_log: bool,
    /// Without the write-ahead log: how often the memtables are flushed at least, and when
    /// that was last asked (ms since the store opened).
    flush_every: std::time::Duration,
    last_flush: std::sync::atomic::AtomicU64,
    opened: std::time::Instant,
    /// The memtables' budget and the block cache (not in a read-only store): their usage is
    /// what [`Store::memory`] reports.
    budget: Option<(rocksdb::WriteBufferManager, rocksdb::Cache)>,
}

fn profile_key(partition: i32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    profile_key_into(&mut k, partition, key);
    k
}

/// [`profile_key`] appended to `out`.
fn profile_key_into(out: &mut Vec<u8>, partition: i32, key: &str) {
    out.extend_from_slice(&(partition as u32).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

fn size_key(partition: i32, segment: &str) -> Vec<u8> {
    profile_key(partition, segment)
}

/// Order-preserving encoding of a signed time.
fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn timer_key(partition: i32, due: i64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + key.len());
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k.extend_from_slice(&time_bytes(due));
    k.extend_from_slice(key.as_bytes());
    k
}

/// A profile's timer: (partition, due time ms, profile key).
pub type Timer = (i32, i64, String);

/// Everything one batch changed, committed atomically.
#[derive(Default)]
pub struct Commit {
    /// (partition, profile key, new state).
    pub profiles: Vec<(i32, String, Vec<u8>)>,
    /// (topic, partition, next offset to consume).
    pub offsets: Vec<(String, i32, i64)>,
    /// (partition, segment id, change in members).
    pub segment_deltas: Vec<(i32, String, i64)>,
    /// Timer index entries to remove (a profile's previous timer) and to add.
    pub timers_removed: Vec<Timer>,
    pub timers_added: Vec<Timer>,
    /// (partition, stream clock ms).
    pub clocks: Vec<(i32, i64)>,
    /// Profiles removed (absorbed into another, or deleted).
    pub profiles_deleted: Vec<(i32, String)>,
    /// (partition, identity, profile key it belongs to; `None` removes the alias).
    pub aliases: Vec<(i32, String, Option<String>)>,
    /// Worker-wide meta records written (`None` removes); not in the changelog.
    pub meta: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// A partition's own meta records (its re-evaluation cursor), mirrored with its state.
    pub partition_meta: Vec<(i32, Vec<u8>, Option<Vec<u8>>)>,
    /// (partition, next changelog offset after this batch's records).
    pub changelog: Vec<(i32, i64)>,
}

/// One write of a commit: a column family (its index in the store's list), a key and the new
/// value (`None`: deleted). The changelog carries these, except the timer index's
/// ([`Op::is_derived`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Op {
    pub cf: u8,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Sorts `ops` by column family and key; the writes of one key (a deletion, then a put) keep
/// their order. Sorted as small entries (the column family, the key's first 16 bytes as a
/// number, the position), the ops moved once at the end: sorting the ops themselves compared
/// their keys through pointers into a commit's thousands of heap blocks, and moved 56 bytes at
/// each step (a stable sort of a commit's ops was 2.5 % of the processing threads' samples in
/// the wide bench; this takes half its time, 2.3-2.4 ms against 4.7 for 24 K ops of 8 K
/// profiles and their timers).
fn sort_ops(ops: &mut Vec<Op>) {
    fn head(key: &[u8]) -> u128 {
        let mut b = [0u8; 16];
        let n = key.len().min(16);
        b[..n].copy_from_slice(&key[..n]);
        u128::from_be_bytes(b)
    }
    let mut order: Vec<(u8, u128, u32)> = ops
        .iter()
        .enumerate()
        .map(|(i, o)| (o.cf, head(&o.key), i as u32))
        .collect();
    // Equal heads (a key written twice, keys alike in their first 16 bytes, or a shorter key
    // padded with zeros): the whole keys, then the position, decide.
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| ops[a.2 as usize].key.cmp(&ops[b.2 as usize].key))
            .then(a.2.cmp(&b.2))
    });
    if order.iter().enumerate().all(|(i, e)| e.2 as usize == i) {
        return;
    }
    let mut sorted = Vec::with_capacity(ops.len());
    sorted.extend(order.iter().map(|e| std::mem::take(&mut ops[e.2 as usize])));
    *ops = sorted;
}

/// A RocksDB write batch's header (sequence number and count), and the most a record adds to its
/// key and value (type, column family, the two lengths; each varint at most 5 bytes).
const BATCH_HEADER: usize = 12;
const BATCH_RECORD_OVERHEAD: usize = 16;

/// The timer index's column family id in [`Op`].
pub const TIMERS_CF: u8 = 3;

impl Op {
    /// A write of the timer index: it follows from the profiles (each profile's `next_timer` is
    /// its one entry), so the changelog leaves it out and a restore writes it again from the
    /// profiles it applies ([`Store::derived_timers`]).
    pub fn is_derived(&self) -> bool {
        self.cf == TIMERS_CF
    }
}

/// The column families a changelog carries, with their ids: all but the timer index
/// ([`Op::is_derived`]).
fn mirrored_families() -> impl Iterator<Item = (u8, &'static str)> {
    (0u8..).zip(ALL_CFS).filter(|&(id, _)| id != TIMERS_CF)
}

fn cf_id(name: &str) -> u8 {
    ALL_CFS
        .iter()
        .position(|n| *n == name)
        .expect("a known column family") as u8
}

/// Meta key of a partition's changelog position.
fn changelog_key(partition: i32) -> Vec<u8> {
    let mut k = b"changelog/".to_vec();
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// Adds a segment-size record (partition and segment id → members) to per-segment totals.
fn add_size(totals: &mut BTreeMap<String, i64>, k: &[u8], v: &[u8]) {
    if let (Some(seg), Ok(n)) = (k.get(4..), <[u8; 8]>::try_from(v)) {
        *totals
            .entry(String::from_utf8_lossy(seg).into_owned())
            .or_default() += i64::from_be_bytes(n);
    }
}

/// Meta key of a partition being seeded into the changelog.
fn seeding_key(partition: i32) -> Vec<u8> {
    let mut k = b"seeding/".to_vec();
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// Meta keys that belong to one partition: `<name>/` and the partition (big-endian u32).
const PARTITION_META: [&[u8]; 1] = [b"sweep/"];

/// The partition a record of column family `name` belongs to (`None`: worker-wide).
fn key_partition(name: &str, k: &[u8]) -> Option<i32> {
    let be = |b: &[u8]| Some(u32::from_be_bytes(b.try_into().ok()?) as i32);
    match name {
        CF_OFFSETS => be(k.get(k.len().checked_sub(4)?..)?),
        CF_CLOCKS => be(k),
        CF_META => PARTITION_META
            .iter()
            .find(|p| k.starts_with(p) && k.len() == p.len() + 4)
            .and_then(|p| be(&k[p.len()..])),
        _ => be(k.get(..4)?),
    }
}

impl Store {
    pub fn open(path: &Path, o: &StoreOptions) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // LZ4, but for the files a flush writes (level 0) unless `compress_flushes`: they live
        // until the next compaction, which compresses them into the levels below (a level-0
        // file is never moved down as it is while the two levels' compressions differ), so the
        // state on disk past level 0 is compressed either way. Compressing them was a third of
        // RocksDB's CPU in the wide pass (3 % of the worker's samples). (With RocksDB's dynamic
        // level sizes, index 1 stands for the level level 0 is merged into, and each index
        // after it for the next level down.)
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut levels = [rocksdb::DBCompressionType::Lz4; 7];
        if !o.compress_flushes {
            levels[0] = rocksdb::DBCompressionType::None;
        }
        opts.set_compression_per_level(&levels);
        opts.set_write_buffer_size(o.write_buffer_bytes);
        opts.set_max_write_buffer_number(2);
        // One budget for the memtables of every column family together, about two write
        // buffers: past 7/8 of it RocksDB flushes the family with the oldest memtable (a soft
        // limit: writes do not stall, and memtables being flushed still count). Without it each
        // of the seven families keeps up to two buffers of its own.
        let memtables =
            rocksdb::WriteBufferManager::new_write_buffer_manager(2 * o.write_buffer_bytes, false);
        opts.set_write_buffer_manager(&memtables);
        // The write-ahead log is kept until every column family with data in it has flushed;
        // past this size the families holding the oldest log flush, and it is deleted once they
        // have (RocksDB's own trigger is four times all write buffers: gigabytes of log on disk,
        // and to replay at a restart).
        opts.set_max_total_wal_size(4 * o.write_buffer_bytes as u64);
        // Without the log, the column families are flushed together: the files on disk hold
        // the same whole commits in every family (the offsets and the changelog position with
        // the profiles they belong to).
        opts.set_atomic_flush(!o.write_ahead_log);
        // Most reads of a new shopper find nothing: a bloom filter over the memtable's keys
        // answers them without walking the skip list (2 % of the write buffer).
        opts.set_memtable_prefix_bloom_ratio(0.02);
        opts.set_memtable_whole_key_filtering(true);
        // HyperClockCache: lookups without the LRU cache's mutex (its lookup and lock were 5 %
        // of the worker's samples on new shoppers; 3.5 % less CPU per event measured); entry
        // size estimated by RocksDB (0).
        let cache = rocksdb::Cache::new_hyper_clock_cache(o.block_cache_bytes, 0);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // A hash table at the end of each data block finds a point lookup's key there at once,
        // instead of a binary search over the block's restart points and a walk from one (a
        // third of reading profiles from the files, itself 6 % of the wide pass's samples).
        // About a byte per key more; files written before read as they were.
        table.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
        table.set_data_block_hash_ratio(0.75);
        table.set_cache_index_and_filter_blocks(true);
        opts.set_block_based_table_factory(&table);
        // The timer index is only ever walked in key order (due timers, a partition's range),
        // never looked up by key: it gets no bloom filter, in its memtable or in its files, and
        // no hash index in its data blocks. Each commit adds and deletes about two of its keys
        // per profile written: adding keys to the memtables' filters went from 1.7 to 1.0 % of
        // the processing threads' samples in a wide pass. (Files written before keep their
        // filters on disk, unused, until a compaction rewrites them; their blocks' hash
        // indexes are still read, each block records its own.)
        let mut timers = opts.clone();
        timers.set_memtable_prefix_bloom_ratio(0.0);
        timers.set_memtable_whole_key_filtering(false);
        let mut walked = rocksdb::BlockBasedOptions::default();
        walked.set_block_cache(&cache);
        walked.set_cache_index_and_filter_blocks(true);
        timers.set_block_based_table_factory(&walked);
        // Its level 0 is merged into the level below at 16 files, not RocksDB's 4. The
        // memtables' budget flushes it with the profiles though it takes about a twentieth of
        // their bytes, so its files are small, and each merge rewrites the level below nearly
        // whole (new timers fall all over it): at 4 files its compactions took a quarter of
        // RocksDB's CPU by the end of a 10 M-shopper pass (42.5 s), at 16 about 15 s (with
        // more of its level 0 still to merge then). It is only walked (a scan seeks each
        // level-0 file), never read by key, so more files there cost little. Writes slow down
        // at 40 files and stop at 64 (RocksDB's 20 and 36 would slow them 4 files past the
        // trigger).
        timers.set_level_zero_file_num_compaction_trigger(16);
        timers.set_level_zero_slowdown_writes_trigger(40);
        timers.set_level_zero_stop_writes_trigger(64);
        let cfs = ALL_CFS.map(|name| {
            let o = if name == CF_TIMERS { &timers } else { &opts };
            ColumnFamilyDescriptor::new(name, o.clone())
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Store {
            db,
            sync_writes: o.sync_writes,
            write_ahead_log: o.write_ahead_log,
            flush_every: o.flush_interval,
            last_flush: Default::default(),
            opened: std::time::Instant::now(),
            budget: Some((memtables, cache)),
        })
    }

    /// Opens a store another process may be writing, read-only (as of the moment of opening).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let opts = Options::default();
        let db = DB::open_cf_for_read_only(&opts, path, ALL_CFS, false).map_err(|source| {
            StoreError::Open {
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok(Store {
            db,
            sync_writes: false,
            write_ahead_log: true,
            flush_every: std::time::Duration::MAX,
            last_flush: Default::default(),
            opened: std::time::Instant::now(),
            budget: None,
        })
    }

    /// Partitions this store holds offsets for.
    pub fn partitions(&self) -> Result<Vec<i32>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_OFFSETS), rocksdb::IteratorMode::Start)
        {
            let (k, _) = item?;
            if k.len() >= 4 {
                let p = u32::from_be_bytes(k[k.len() - 4..].try_into().expect("4 bytes")) as i32;
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Finds a profile by its key or any identity linked to it, in whichever partition holds
    /// it: (partition, profile key, profile).
    pub fn find_profile(&self, id: &str) -> Result<Option<(i32, String, Profile)>, StoreError> {
        let partitions = self.partitions()?;
        let mut key = id.to_owned();
        for p in &partitions {
            if let Some(owner) = self.alias(*p, id)? {
                key = owner;
                break;
            }
        }
        for p in partitions {
            if let Some(profile) = self.profile(p, &key)? {
                return Ok(Some((p, key, profile)));
            }
        }
        Ok(None)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    pub fn profile(&self, partition: i32, key: &str) -> Result<Option<Profile>, StoreError> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_PROFILES), profile_key(partition, key))?
        {
            None => Ok(None),
            Some(bytes) => profile::decode(&bytes)
                .map(Some)
                .map_err(|detail| StoreError::Corrupt { partition, detail }),
        }
    }

    /// The profiles of `keys`, in their order, in one batched read: RocksDB looks the keys up
    /// together (sorted, one pass over each memtable and file), cheaper than a `get` each. Each
    /// is handed to `found` as soon as it is decoded (no list of them is built: a batch's
    /// profiles are megabytes, one more copy of each). A profile that cannot be decoded ends
    /// the read with an error; those before it were handed over.
    pub fn read_profiles<'k>(
        &self,
        partition: i32,
        keys: &[&'k str],
        mut found: impl FnMut(&'k str, Option<Profile>),
    ) -> Result<(), StoreError> {
        // Every store key in one buffer (an allocation per key before), then sliced.
        let mut buf = Vec::with_capacity(keys.iter().map(|k| 4 + k.len()).sum());
        let mut ends = Vec::with_capacity(keys.len());
        for k in keys {
            profile_key_into(&mut buf, partition, k);
            ends.push(buf.len());
        }
        let starts = std::iter::once(0).chain(ends.iter().copied());
        let raw: Vec<&[u8]> = starts.zip(&ends).map(|(a, &b)| &buf[a..b]).collect();
        for (key, read) in keys.iter().zip(self.db.batched_multi_get_cf(
            self.cf(CF_PROFILES),
            raw,
            false,
        )) {
            let profile = match read? {
                None => None,
                Some(bytes) => Some(
                    profile::decode(&bytes)
                        .map_err(|detail| StoreError::Corrupt { partition, detail })?,
                ),
            };
            found(key, profile);
        }
        Ok(())
    }

    /// The next offset to consume for a partition, if this store has ever committed one.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_OFFSETS), offset_key(topic, partition))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(i64::from_be_bytes))
    }

    /// Members per segment, summed over `partitions` (a store keeps the state of partitions
    /// that moved to another worker, for when they come back).
    pub fn segment_sizes_in(&self, partitions: &[i32]) -> Result<Vec<(String, i64)>, StoreError> {
        let mut totals = BTreeMap::new();
        for p in partitions {
            for item in self.partition_iter(CF_SEGMENT_SIZES, *p) {
                let (k, v) = item?;
                add_size(&mut totals, &k, &v);
            }
        }
        Ok(totals.into_iter().collect())
    }

    /// Members per segment, summed over every partition held in this store.
    pub fn segment_sizes(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut totals = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_SEGMENT_SIZES), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            add_size(&mut totals, &k, &v);
        }
        Ok(totals.into_iter().collect())
    }

    /// Writes a batch's state, segment sizes and next offsets atomically.
    pub fn commit(&self, mut c: Commit) -> Result<(), StoreError> {
        let ops = self.ops(&mut c)?;
        self.write(ops.iter().flat_map(|(_, ops)| ops), &c.meta, &c.changelog)
    }

    /// The writes of a commit, each with the partition it belongs to (what the changelog
    /// mirrors, but the timer index's), in the order they are applied: by column family and
    /// key, a key's deletion before its put. Segment sizes become absolute values.
    /// The profiles' encoded bytes move out of `c` into the ops (they are the larger part).
    pub fn ops(&self, c: &mut Commit) -> Result<Vec<(i32, Vec<Op>)>, StoreError> {
        // Each partition's list sized ahead (a batch's are thousands of writes: grown by
        // doubling, they were copied several times per commit).
        let mut by: BTreeMap<i32, Vec<Op>> = BTreeMap::new();
        {
            let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
            let mut add = |p: i32| *counts.entry(p).or_default() += 1;
            c.profiles_deleted.iter().for_each(|(p, _)| add(*p));
            c.profiles.iter().for_each(|(p, _, _)| add(*p));
            c.aliases.iter().for_each(|(p, _, _)| add(*p));
            c.partition_meta.iter().for_each(|(p, _, _)| add(*p));
            c.segment_deltas.iter().for_each(|(p, _, _)| add(*p));
            c.offsets.iter().for_each(|(_, p, _)| add(*p));
            c.timers_removed.iter().for_each(|(p, _, _)| add(*p));
            c.timers_added.iter().for_each(|(p, _, _)| add(*p));
            c.clocks.iter().for_each(|(p, _)| add(*p));
            by.extend(counts.into_iter().map(|(p, n)| (p, Vec::with_capacity(n))));
        }
        let mut push = |p: i32, cf: &str, key: Vec<u8>, value: Option<Vec<u8>>| {
            by.entry(p).or_default().push(Op {
                cf: cf_id(cf),
                key,
                value,
            })
        };
        for (p, key) in &c.profiles_deleted {
            push(*p, CF_PROFILES, profile_key(*p, key), None);
        }
        for (p, key, bytes) in c.profiles.drain(..) {
            push(p, CF_PROFILES, profile_key(p, &key), Some(bytes));
        }
        for (p, id, owner) in &c.aliases {
            let v = owner.as_ref().map(|o| o.as_bytes().to_vec());
            push(*p, CF_ALIASES, profile_key(*p, id), v);
        }
        for (p, k, v) in &c.partition_meta {
            push(*p, CF_META, k.clone(), v.clone());
        }
        let mut sizes: BTreeMap<(i32, &str), i64> = BTreeMap::new();
        for (p, segment, delta) in &c.segment_deltas {
            *sizes.entry((*p, segment)).or_default() += delta;
        }
        for ((p, segment), delta) in sizes {
            let k = size_key(p, segment);
            let current = self
                .db
                .get_pinned_cf(self.cf(CF_SEGMENT_SIZES), &k)?
                .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                .map_or(0, i64::from_be_bytes);
            push(
                p,
                CF_SEGMENT_SIZES,
                k,
                Some((current + delta).to_be_bytes().to_vec()),
            );
        }
        for (topic, p, next) in &c.offsets {
            push(
                *p,
                CF_OFFSETS,
                offset_key(topic, *p),
                Some(next.to_be_bytes().to_vec()),
            );
        }
        for (p, due, key) in &c.timers_removed {
            push(*p, CF_TIMERS, timer_key(*p, *due, key), None);
        }
        for (p, due, key) in &c.timers_added {
            push(*p, CF_TIMERS, timer_key(*p, *due, key), Some(Vec::new()));
        }
        for (p, clock) in &c.clocks {
            let k = (*p as u32).to_be_bytes().to_vec();
            push(*p, CF_CLOCKS, k, Some(clock.to_be_bytes().to_vec()));
        }
        // In key order within each column family: RocksDB's memtable inserts a run of ascending
        // keys from where the last one went (its skip list's insert was the largest part of the
        // write in the worker's profile).
        for ops in by.values_mut() {
            sort_ops(ops);
        }
        Ok(by.into_iter().collect())
    }

    /// Writes `ops`, the worker-wide meta records and each partition's changelog position
    /// (stamped with the wall clock) in one atomic batch (with the write-ahead log, fsynced with
    /// `sync_writes`).
    pub fn write<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a Op>,
        meta: &[(Vec<u8>, Option<Vec<u8>>)],
        changelog: &[(i32, i64)],
    ) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut meta = meta.to_vec();
        for (p, next) in changelog {
            let mut v = next.to_be_bytes().to_vec();
            v.extend_from_slice(&now.to_be_bytes());
            meta.push((changelog_key(*p), Some(v)));
        }
        self.write_raw(ops, &meta)
    }

    /// Writes `ops` of a restore in progress past the last batch it read whole, with the
    /// partition's changelog position removed: interrupted here, the next restore starts over.
    pub fn write_unpositioned<'a>(
        &self,
        partition: i32,
        ops: impl IntoIterator<Item = &'a Op>,
    ) -> Result<(), StoreError> {
        self.write_raw(ops, &[(changelog_key(partition), None)])
    }

    /// Marks `partition` as being written to the changelog whole (`true`), or done (`false`).
    pub fn set_seeding(&self, partition: i32, on: bool) -> Result<(), StoreError> {
        self.write_raw([], &[(seeding_key(partition), on.then(Vec::new))])
    }

    /// Whether a seed of `partition` started and did not finish.
    pub fn seeding(&self, partition: i32) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), seeding_key(partition))?
            .is_some())
    }

    fn write_raw<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a Op>,
        meta: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        // Sized ahead: a batch of thousands of profiles grew its buffer by doubling, copying it
        // each time into freshly mapped pages (2 % of the wide workload's samples).
        let ops: Vec<&Op> = ops.into_iter().collect();
        let record =
            |k: &[u8], v: Option<&[u8]>| BATCH_RECORD_OVERHEAD + k.len() + v.map_or(0, <[u8]>::len);
        let bytes = BATCH_HEADER
            + ops
                .iter()
                .map(|o| record(&o.key, o.value.as_deref()))
                .sum::<usize>()
            + meta
                .iter()
                .map(|(k, v)| record(k, v.as_deref()))
                .sum::<usize>();
        let mut batch = WriteBatch::with_capacity_bytes(bytes);
        for op in ops {
            let cf = self.cf(ALL_CFS[op.cf as usize]);
            match &op.value {
                Some(v) => batch.put_cf(cf, &op.key, v),
                None => batch.delete_cf(cf, &op.key),
            }
        }
        let cf = self.cf(CF_META);
        for (k, v) in meta {
            match v {
                Some(v) => batch.put_cf(cf, k, v),
                None => batch.delete_cf(cf, k),
            }
        }
        self.db.write_opt(batch, &self.write_options())?;
        Ok(())
    }

    fn write_options(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        if self.write_ahead_log {
            wo.set_sync(self.sync_writes);
        } else {
            // (RocksDB refuses a synced write without the log.)
            wo.disable_wal(true);
        }
        wo
    }

    /// Without the write-ahead log: whether the memtables are due for a flush (the last one
    /// asked is `flush_interval` old), so a crash never falls back further, nor to a position
    /// older than the changelog keeps deletions for. Called at every batch by every processing
    /// thread: `true` for one of them, which then asks for it ([`Store::flush`], not waited
    /// for; [`Store::flush_failed`] if that fails).
    pub fn flush_due(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.write_ahead_log {
            return false;
        }
        let now = self.opened.elapsed().as_millis() as u64;
        let last = self.last_flush.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.flush_every.as_millis() as u64
            && self
                .last_flush
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// A flush [`Store::flush_due`] called for did not start: the next call asks again.
    pub fn flush_failed(&self) {
        self.last_flush
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether commits go through RocksDB's write-ahead log.
    pub fn write_ahead_log(&self) -> bool {
        self.write_ahead_log
    }

    /// Without the write-ahead log, the longest commits stay unflushed.
    pub fn flush_interval(&self) -> std::time::Duration {
        self.flush_every
    }

    /// Flushes the memtables of every column family to disk (`wait`: until written), as a
    /// stop does so that the next start has nothing to restore.
    pub fn flush(&self, wait: bool) -> Result<(), StoreError> {
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(wait);
        let cfs: Vec<_> = ALL_CFS.iter().map(|n| self.cf(n)).collect();
        self.db.flush_cfs_opt(&cfs, &fo)?;
        Ok(())
    }

    /// The next changelog offset after the last batch of `partition` this store holds, and
    /// when it was written (wall clock ms) (`None`: never written or restored here).
    pub fn changelog_position(&self, partition: i32) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), changelog_key(partition))?
            .filter(|v| v.len() == 16)
            .map(|v| {
                let at = |i: usize| i64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
                (at(0), at(8))
            }))
    }

    /// When this store was last known level with the changelog: the newest stamp of its
    /// changelog positions (a commit's, or an owner's renewal; wall clock ms; `None`: no
    /// position). Read-only, that is how current the state on disk is: without the
    /// write-ahead log, as of the writer's last flush.
    pub fn state_as_of(&self) -> Result<Option<i64>, StoreError> {
        let prefix = changelog_key(0)[..10].to_vec();
        let mut newest = None;
        let from = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_META), from) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if k.len() == prefix.len() + 4 && v.len() == 16 {
                let at = i64::from_be_bytes(v[8..].try_into().expect("8 bytes"));
                newest = newest.max(Some(at));
            }
        }
        Ok(newest)
    }

    /// The value of one record (`cf`: a column family id, as in [`Op`]).
    pub fn get_raw(&self, cf: u8, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let name = ALL_CFS
            .get(cf as usize)
            .ok_or_else(|| StoreError::Corrupt {
                partition: -1,
                detail: format!("column family id {cf}"),
            })?;
        Ok(self.db.get_cf(self.cf(name), key)?)
    }

    /// Whether this store holds anything of `partition` (an offset or a changelog position).
    pub fn has_partition(&self, partition: i32) -> Result<bool, StoreError> {
        Ok(
            self.partitions()?.contains(&partition)
                || self.changelog_position(partition)?.is_some(),
        )
    }

    /// Calls `each` with every record of `partition` as a changelog holds it (the timer index
    /// left out: [`Op::is_derived`]), column family by column family, stopping at the first
    /// error.
    pub fn each_record<E: From<StoreError>>(
        &self,
        partition: i32,
        mut each: impl FnMut(Op) -> Result<(), E>,
    ) -> Result<(), E> {
        for (id, name) in mirrored_families() {
            for item in self.partition_iter(name, partition) {
                let (k, v) = item.map_err(StoreError::from)?;
                if key_partition(name, &k) == Some(partition) {
                    each(Op {
                        cf: id,
                        key: k.to_vec(),
                        value: Some(v.to_vec()),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The records of column family `name` that may belong to `partition`: its key range where
    /// keys start with the partition, else the whole (small) family.
    fn partition_iter(
        &self,
        name: &str,
        partition: i32,
    ) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        self.partition_iter_at(name, partition, None)
    }

    /// [`Self::partition_iter`], as of `snapshot` when given.
    fn partition_iter_at(
        &self,
        name: &str,
        partition: i32,
        snapshot: Option<&Snapshot<'_>>,
    ) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        let from = (partition as u32).to_be_bytes();
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(s) = snapshot {
            opts.set_snapshot(s);
        }
        if matches!(name, CF_OFFSETS | CF_CLOCKS | CF_META) {
            return self
                .db
                .iterator_cf_opt(self.cf(name), opts, rocksdb::IteratorMode::Start);
        }
        if let Some(next) = (partition as u32).checked_add(1) {
            opts.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
        self.db.iterator_cf_opt(self.cf(name), opts, mode)
    }

    /// The store as it is now, to compare with later ([`Self::changed_since`]). RocksDB keeps
    /// what it needs to read it until it is dropped.
    pub fn snapshot(&self) -> Snapshot<'_> {
        self.db.snapshot()
    }

    /// Calls `each` with every record of `partition` whose value differs now from its value in
    /// `then` (the timer index aside: it follows from the profiles; and the store's own
    /// bookkeeping, such as the changelog position), with its value then (`None`: absent then):
    /// the writes that put the partition back as it was. A walk of the partition's records, now
    /// and then side by side, in key order; writes made meanwhile are not seen by it.
    pub fn changed_since(
        &self,
        then: &Snapshot<'_>,
        partition: i32,
        mut each: impl FnMut(Op) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use std::cmp::Ordering;
        for (id, name) in mirrored_families() {
            let mine = |k: &[u8]| key_partition(name, k) == Some(partition);
            let mut now = self.partition_iter_at(name, partition, None);
            let mut before = self.partition_iter_at(name, partition, Some(then));
            let mut a = now.next().transpose()?;
            let mut b = before.next().transpose()?;
            loop {
                let order = match (&a, &b) {
                    (None, None) => break,
                    (Some((x, _)), Some((y, _))) => x.cmp(y),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                };
                let (key, value) = match order {
                    // Written since.
                    Ordering::Equal => {
                        let ((key, v), (_, w)) = (a.take().expect("a"), b.take().expect("b"));
                        a = now.next().transpose()?;
                        b = before.next().transpose()?;
                        if v == w {
                            continue;
                        }
                        (key, Some(w))
                    }
                    // Added since.
                    Ordering::Less => {
                        let (key, _) = a.take().expect("a");
                        a = now.next().transpose()?;
                        (key, None)
                    }
                    // Deleted since.
                    Ordering::Greater => {
                        let (key, w) = b.take().expect("b");
                        b = before.next().transpose()?;
                        (key, Some(w))
                    }
                };
                if mine(&key) {
                    each(Op {
                        cf: id,
                        key: key.into_vec(),
                        value: value.map(<[u8]>::into_vec),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Removes every record of `partition` (before restoring it from the changelog), in one
    /// atomic batch. Writes nothing where the partition holds nothing; flushes the memtables
    /// after a range deletion.
    pub fn wipe_partition(&self, partition: i32) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let mut ranged = false;
        for name in ALL_CFS {
            if !matches!(name, CF_OFFSETS | CF_CLOCKS | CF_META) {
                // One range deletion for the partition's key range, if it holds a key: a range
                // deletion in a memtable turns its bloom filter off for every read until it is
                // flushed (RocksDB's MemTable::Get and MultiGet), so each read of a new
                // shopper's profile walked the skip list (4 % of the processing threads'
                // samples in the wide bench, whose every start restored empty partitions so).
                if self
                    .partition_iter(name, partition)
                    .next()
                    .transpose()?
                    .is_none()
                {
                    continue;
                }
                let from = (partition as u32).to_be_bytes().to_vec();
                let to = match (partition as u32).checked_add(1) {
                    Some(n) => n.to_be_bytes().to_vec(),
                    None => vec![0xFF; 5],
                };
                batch.delete_range_cf(self.cf(name), from, to);
                ranged = true;
                continue;
            }
            for item in self.partition_iter(name, partition) {
                let (k, _) = item?;
                if key_partition(name, &k) == Some(partition)
                    || (name == CF_META && *k == changelog_key(partition)[..])
                {
                    batch.delete_cf(self.cf(name), k);
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.db.write_opt(batch, &self.write_options())?;
        if ranged {
            // Out of the memtables at once (into a table file, whose reads keep their bloom
            // filters): else they would read without theirs until the restore's own writes
            // filled them, all of the restore and the processing after it for a small one.
            // Only for speed: a flush that fails leaves them there, and the restore goes on.
            if let Err(e) = self.flush(true) {
                tracing::warn!(partition, error = %e, "flushing the memtables after clearing the partition failed (reads go slower until they are flushed)");
            }
        }
        Ok(())
    }

    /// The timer index writes that go with `ops` (as a changelog carries them: profiles, and no
    /// timer index): for each profile they write, its entry moves from the stored profile's
    /// `next_timer` to that of the last value written (none for a deletion), read from the
    /// encoding's trailer ([`profile::next_timer`]; earlier versions' state is decoded). `ops`
    /// are not written yet. A value whose timer cannot be read counts as none (reading that
    /// profile reports what is wrong with it).
    pub fn derived_timers(&self, ops: &[Op]) -> Result<Vec<Op>, StoreError> {
        let profiles = cf_id(CF_PROFILES);
        // The last value of each profile written, in first-written order.
        let mut last: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
        let mut at: std::collections::HashMap<&[u8], usize, foldhash::fast::RandomState> =
            Default::default();
        for op in ops.iter().filter(|o| o.cf == profiles) {
            let value = op.value.as_deref();
            match at.get(&op.key[..]) {
                Some(&i) => last[i].1 = value,
                None => {
                    at.insert(&op.key, last.len());
                    last.push((&op.key, value));
                }
            }
        }
        let timer = |v: Option<&[u8]>| v.and_then(|b| profile::next_timer(b).ok().flatten());
        let mut out = Vec::new();
        // The stored profiles, read together (a read each was a fifth of a restore's time).
        let stored =
            self.db
                .batched_multi_get_cf(self.cf(CF_PROFILES), last.iter().map(|(k, _)| *k), false);
        for ((key, value), stored) in last.into_iter().zip(stored) {
            let stored = stored?;
            let (Some(p), Some(name)) = (
                key_partition(CF_PROFILES, key),
                key.get(4..).and_then(|k| std::str::from_utf8(k).ok()),
            ) else {
                continue;
            };
            let before = timer(stored.as_deref());
            let after = timer(value);
            if before == after {
                continue;
            }
            if let Some(due) = before {
                out.push(Op {
                    cf: TIMERS_CF,
                    key: timer_key(p, due, name),
                    value: None,
                });
            }
            if let Some(due) = after {
                out.push(Op {
                    cf: TIMERS_CF,
                    key: timer_key(p, due, name),
                    value: Some(Vec::new()),
                });
            }
        }
        Ok(out)
    }

    /// Timers of `partition` due from `from` to `until` (both included), earliest first, at
    /// most `limit`. The scan starts at `from`'s key: the deletions of timers fired before it
    /// (tombstones until compaction) are not walked through again.
    pub fn due_timers(
        &self,
        partition: i32,
        due: (i64, i64),
        limit: usize,
    ) -> Result<DueTimers, StoreError> {
        Ok(self.due_timers_and_next(partition, due, limit, due.1)?.0)
    }

    /// As [`Self::due_timers`], and the due time of the first timer after `until` if it is due by
    /// `peek` (the scan goes on that far, not to the partition's end: a short way past the
    /// timers moved later and their deletions). None when `limit` timers were taken.
    pub fn due_timers_and_next(
        &self,
        partition: i32,
        (from_time, until): (i64, i64),
        limit: usize,
        peek: i64,
    ) -> Result<(DueTimers, Option<i64>), StoreError> {
        let mut from = (partition as u32).to_be_bytes().to_vec();
        from.extend_from_slice(&time_bytes(from_time));
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_lower_bound(from.clone());
        // Exclusive bound: the first key after every timer due at `peek` (or `until`).
        let mut upper = Vec::with_capacity(12);
        upper.extend_from_slice(&from[..4]);
        match peek.max(until).checked_add(1) {
            Some(next) => upper.extend_from_slice(&time_bytes(next)),
            None => upper = ((partition as u32) + 1).to_be_bytes().to_vec(),
        }
        opts.set_iterate_upper_bound(upper);
        let mut out = Vec::new();
        let mut next = None;
        if limit == 0 {
            return Ok((out, next));
        }
        // A raw iterator: the keys are read in place (the iterator boxed a copy of each key and
        // value it returned).
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_TIMERS), opts);
        it.seek(&from);
        while let Some(k) = it.key() {
            let due =
                (u64::from_be_bytes(k[4..12].try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
            if due > until {
                next = Some(due);
                break;
            }
            out.push((due, String::from_utf8_lossy(&k[12..]).into_owned()));
            if out.len() == limit {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok((out, next))
    }

    /// The profile key an identity of `partition` belongs to, if it is an alias.
    pub fn alias(&self, partition: i32, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_ALIASES), profile_key(partition, id))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// Up to `limit` profile keys of `partition` after `after` (from the first if `None`), in
    /// key order: the cursor of a walk over every profile.
    pub fn profile_keys_after(
        &self,
        partition: i32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = (partition as u32).to_be_bytes();
        let start = match after {
            Some(k) => {
                let mut s = profile_key(partition, k);
                s.push(0); // the first key after `k`
                s
            }
            None => prefix.to_vec(),
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(((partition as u32) + 1).to_be_bytes().to_vec());
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_PROFILES), opts, mode)
            .take(limit)
        {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[4..]).into_owned());
        }
        Ok(out)
    }

    /// Names of the column families holding `needle` in any key or value (tests and audits:
    /// after a deletion, nothing of the shopper may be left).
    pub fn find_bytes(&self, needle: &[u8]) -> Result<Vec<&'static str>, StoreError> {
        let mut found = Vec::new();
        for name in ALL_CFS {
            for item in self
                .db
                .iterator_cf(self.cf(name), rocksdb::IteratorMode::Start)
            {
                let (k, v) = item?;
                let has = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
                if has(&k) || has(&v) {
                    found.push(name);
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The stream clock stored for a partition.
    pub fn clock(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_CLOCKS), (partition as u32).to_be_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(i64::from_be_bytes))
    }

    /// Pending timers (RocksDB's estimate).
    pub fn estimated_timers(&self) -> u64 {
        self.int_property(Some(CF_TIMERS), "rocksdb.estimate-num-keys")
            .unwrap_or(0)
    }

    /// Number of profile keys held (RocksDB's estimate).
    pub fn estimated_profiles(&self) -> u64 {
        self.int_property(Some(CF_PROFILES), "rocksdb.estimate-num-keys")
            .unwrap_or(0)
    }

    /// RocksDB's memory in bytes: the memtables of every column family, the block cache (data,
    /// index and filter blocks) and the table readers kept outside it.
    pub fn memory(&self) -> StoreMemory {
        let table_readers = ALL_CFS
            .iter()
            .filter_map(|name| self.int_property(Some(name), "rocksdb.estimate-table-readers-mem"))
            .sum();
        let (memtables, block_cache) = self.budget.as_ref().map_or((0, 0), |(m, c)| {
            (m.get_usage() as u64, c.get_usage() as u64)
        });
        StoreMemory {
            memtables,
            block_cache,
            table_readers,
        }
    }

    /// RocksDB's compaction backlog and write stalls, from its properties (no statistics need
    /// be kept for them). Read when `/metrics` is scraped: a processing thread blocked in a
    /// stopped write could not report the stop itself.
    pub fn compaction(&self) -> StoreCompaction {
        let int = |cf, property| self.int_property(cf, property).unwrap_or(0);
        let families = ALL_CFS
            .iter()
            .map(|&name| FamilyCompaction {
                name,
                pending_bytes: int(Some(name), PENDING_COMPACTION_BYTES),
                level0_files: int(Some(name), LEVEL0_FILES),
            })
            .collect();
        let write_stall = if int(None, WRITE_STOPPED) != 0 {
            2
        } else if int(None, DELAYED_WRITE_RATE) != 0 {
            1
        } else {
            0
        };
        StoreCompaction {
            families,
            running: int(None, RUNNING_COMPACTIONS),
            write_stall,
        }
    }

    /// An integer property of RocksDB, of column family `cf` or of the whole database (`None`
    /// where RocksDB does not answer it).
    fn int_property(&self, cf: Option<&str>, property: &str) -> Option<u64> {
        match cf {
            Some(name) => self.db.property_int_value_cf(self.cf(name), property),
            None => self.db.property_int_value(property),
        }
        .ok()
        .flatten()
    }

    /// Flushes the memtables and compacts every column family whole (old versions and
    /// deletions dropped): what the state takes once RocksDB's own compactions have caught up.
    pub fn compact(&self) -> Result<(), StoreError> {
        // Every family at once (flushed one by one, without the write-ahead log, the files
        // would hold part of a commit).
        self.flush(true)?;
        for name in ALL_CFS {
            let cf = self.cf(name);
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Bytes on disk in SST files plus memtables.
    pub fn estimated_bytes(&self) -> u64 {
        let p = |name| self.int_property(Some(CF_PROFILES), name).unwrap_or(0);
        p("rocksdb.total-sst-files-size") + p("rocksdb.cur-size-all-mem-tables")
    }

    /// Calls `each` with every profile of `partition` and its key, in key order (tools that
    /// walk every profile: `tailor preview`).
    pub fn each_profile<E: From<StoreError>>(
        &self,
        partition: i32,
        mut each: impl FnMut(&str, Profile) -> Result<(), E>,
    ) -> Result<(), E> {
        for item in self.partition_iter(CF_PROFILES, partition) {
            let (k, v) = item.map_err(StoreError::from)?;
            let profile =
                profile::decode(&v).map_err(|detail| StoreError::Corrupt { partition, detail })?;
            each(&String::from_utf8_lossy(&k[4..]), profile)?;
        }
        Ok(())
    }

    /// Every profile key of a partition (tests and tools; not on the hot path).
    pub fn profile_keys(&self, partition: i32) -> Result<Vec<String>, StoreError> {
        self.profile_keys_after(partition, None, usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    #[test]
    fn ops_sort_by_column_family_and_key_and_a_keys_writes_keep_their_order() {
        // Keys from a two-letter alphabet with zeros, 0-24 bytes long, and keys with the same
        // first 16 bytes: some are another's prefix, some end in zeros; many are written twice.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..50 {
            let mut ops: Vec<Op> = Vec::new();
            for i in 0..(next(400) as usize) {
                let key = if i > 0 && next(4) == 0 {
                    ops[next(i as u64) as usize].key.clone()
                } else if next(3) == 0 {
                    // The same first 16 bytes (a partition and a long shopper id), then 0-8
                    // more: the whole keys decide.
                    let mut k = b"\0\0\0\x02shopper-0000".to_vec();
                    k.extend((0..next(9)).map(|_| [0u8, b'a', b'b'][next(3) as usize]));
                    k
                } else {
                    let len = next(25) as usize;
                    (0..len)
                        .map(|_| [0u8, b'a', b'b'][next(3) as usize])
                        .collect()
                };
                ops.push(Op {
                    cf: next(3) as u8,
                    key,
                    // The position, to see the order of one key's writes.
                    value: Some((i as u32).to_be_bytes().to_vec()),
                });
            }
            let mut expected = ops.clone();
            expected.sort_by(|a, b| (a.cf, &a.key).cmp(&(b.cf, &b.key)));
            sort_ops(&mut ops);
            assert_eq!(ops, expected);
        }
    }

    #[test]
    fn the_timer_index_id_is_its_place_in_the_list() {
        assert_eq!(TIMERS_CF, cf_id(CF_TIMERS));
    }

    #[test]
    fn a_wipe_removes_the_partitions_records_and_writes_nothing_where_it_holds_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let put = |cf: &str, key: Vec<u8>| Op {
            cf: cf_id(cf),
            key,
            value: Some(b"a".to_vec()),
        };
        s.write(
            &[
                put(CF_PROFILES, profile_key(1, "mine")),
                put(CF_ALIASES, profile_key(1, "alias")),
                put(CF_PROFILES, profile_key(2, "other")),
            ],
            &[],
            &[(1, 5)],
        )
        .unwrap();
        // Nothing of partition 3 here: no write at all (a range deletion would turn the
        // memtables' bloom filters off for every read until they are flushed).
        let before = s.db.latest_sequence_number();
        s.wipe_partition(3).unwrap();
        assert_eq!(s.db.latest_sequence_number(), before);
        s.wipe_partition(1).unwrap();
        assert!(s.db.latest_sequence_number() > before);
        // The range deletions it wrote are flushed out of the memtables (RocksDB counts no
        // range deletions there: the memtables hold nothing at all).
        for name in ALL_CFS {
            for property in [
                "rocksdb.num-entries-active-mem-table",
                "rocksdb.num-immutable-mem-table",
            ] {
                let n = s.db.property_int_value_cf(s.cf(name), property).unwrap();
                assert_eq!(n, Some(0), "{name}: {property}");
            }
        }
        let profiles = s.cf(CF_PROFILES);
        assert_eq!(s.db.get_cf(profiles, profile_key(1, "mine")).unwrap(), None);
        assert_eq!(
            s.db.get_cf(s.cf(CF_ALIASES), profile_key(1, "alias"))
                .unwrap(),
            None
        );
        assert_eq!(s.changelog_position(1).unwrap(), None);
        assert!(!s.has_partition(1).unwrap());
        assert_eq!(
            s.db.get_cf(profiles, profile_key(2, "other"))
                .unwrap()
                .as_deref(),
            Some(&b"a"[..])
        );
    }

    #[test]
    fn what_changed_since_a_snapshot_is_the_partitions_records_with_their_values_then() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let op = |cf: &str, key: Vec<u8>, v: Option<&str>| Op {
            cf: cf_id(cf),
            key,
            value: v.map(|v| v.as_bytes().to_vec()),
        };
        let clock = 1u32.to_be_bytes().to_vec();
        let mut offset = b"storefront".to_vec();
        offset.extend_from_slice(&1u32.to_be_bytes());
        let mut sweep = b"sweep/".to_vec();
        sweep.extend_from_slice(&1u32.to_be_bytes());
        s.write(
            &[
                op(CF_PROFILES, profile_key(1, "zz"), Some("a")),
                op(CF_OFFSETS, offset.clone(), Some("10")),
                op(CF_PROFILES, profile_key(1, "kept"), Some("a")),
                op(CF_PROFILES, profile_key(1, "changed"), Some("a")),
                op(CF_PROFILES, profile_key(1, "deleted"), Some("a")),
                op(CF_ALIASES, profile_key(1, "alias"), Some("a")),
                op(CF_PROFILES, profile_key(2, "other"), Some("a")),
                op(CF_CLOCKS, clock.clone(), Some("t0")),
            ],
            &[],
            &[(1, 5)],
        )
        .unwrap();
        let then = s.snapshot();
        s.write_unpositioned(
            1,
            &[
                op(CF_PROFILES, profile_key(1, "kept"), Some("a")),
                op(CF_PROFILES, profile_key(1, "changed"), Some("b")),
                op(CF_PROFILES, profile_key(1, "deleted"), None),
                op(CF_PROFILES, profile_key(1, "added"), Some("b")),
                op(CF_ALIASES, profile_key(1, "alias"), Some("b")),
                op(CF_PROFILES, profile_key(2, "other"), Some("b")),
                op(CF_CLOCKS, clock.clone(), Some("t1")),
                op(CF_TIMERS, timer_key(1, 10, "added"), Some("")),
                // The partition's last key deleted; an offset moved; a sweep begun.
                op(CF_PROFILES, profile_key(1, "zz"), None),
                op(CF_OFFSETS, offset.clone(), Some("20")),
                op(CF_META, sweep.clone(), Some("x")),
            ],
        )
        .unwrap();
        let mut undo = Vec::new();
        s.changed_since(&then, 1, |op| {
            undo.push(op);
            Ok(())
        })
        .unwrap();
        undo.sort_by(|a, b| (a.cf, &a.key).cmp(&(b.cf, &b.key)));
        let mut want = vec![
            op(CF_PROFILES, profile_key(1, "added"), None),
            op(CF_PROFILES, profile_key(1, "changed"), Some("a")),
            op(CF_PROFILES, profile_key(1, "deleted"), Some("a")),
            op(CF_ALIASES, profile_key(1, "alias"), Some("a")),
            op(CF_CLOCKS, clock, Some("t0")),
            op(CF_PROFILES, profile_key(1, "zz"), Some("a")),
            op(CF_OFFSETS, offset, Some("10")),
            op(CF_META, sweep, None),
        ];
        want.sort_by(|a, b| (a.cf, &a.key).cmp(&(b.cf, &b.key)));
        // Neither the other partition's record, nor the timer index, nor the position removed.
        assert_eq!(undo, want);
        drop(then);
        s.write(&undo, &[], &[(1, 5)]).unwrap();
        assert_eq!(
            s.get_raw(cf_id(CF_PROFILES), &profile_key(1, "changed"))
                .unwrap(),
            Some(b"a".to_vec())
        );
    }

    #[test]
    fn commit_is_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile {
            events_total: 3,
            counters: vec![(EventType::PageView, Default::default())],
            ..Default::default()
        };
        {
            let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            s.commit(Commit {
                profiles: vec![(2, "cust-1".into(), profile::encode(&p))],
                offsets: vec![("commerce.storefront".into(), 2, 41)],
                segment_deltas: vec![(2, "vip".into(), 1), (3, "vip".into(), 2)],
                timers_added: vec![
                    (2, 5_000, "b".into()),
                    (2, -7, "a".into()),
                    (2, 9_000, "c".into()),
                    (3, 1, "other-partition".into()),
                ],
                clocks: vec![(2, 4_000)],
                ..Default::default()
            })
            .unwrap();
            s.commit(Commit {
                segment_deltas: vec![(2, "vip".into(), -1)],
                timers_removed: vec![(2, 9_000, "c".into())],
                timers_added: vec![(2, 5_000, "c".into())],
                ..Default::default()
            })
            .unwrap();
        }
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(s.profile(2, "cust-1").unwrap(), Some(p));
        assert_eq!(
            s.profile(1, "cust-1").unwrap(),
            None,
            "partitions are separate key ranges"
        );
        assert_eq!(s.next_offset("commerce.storefront", 2).unwrap(), Some(41));
        assert_eq!(s.next_offset("commerce.storefront", 3).unwrap(), None);
        assert_eq!(s.segment_sizes().unwrap(), vec![("vip".to_string(), 2)]);
        assert_eq!(s.profile_keys(2).unwrap(), vec!["cust-1".to_string()]);
        let due = |until, limit| s.due_timers(2, (i64::MIN, until), limit).unwrap();
        assert_eq!(
            due(5_000, 10),
            vec![(-7, "a".into()), (5_000, "b".into()), (5_000, "c".into())],
            "ordered by due time, the moved timer only at its new time"
        );
        assert_eq!(due(4_999, 10), vec![(-7, "a".to_string())]);
        assert_eq!(due(i64::MAX, 1), vec![(-7, "a".to_string())]);
        assert_eq!(
            s.due_timers(2, (5_000, 5_000), 10).unwrap(),
            vec![(5_000, "b".into()), (5_000, "c".into())],
            "from a floor: nothing before it"
        );
        assert_eq!(s.due_timers(2, (5_001, i64::MAX), 10).unwrap(), vec![]);
        // The next timer after `until`, if due by `peek`.
        let next = |until, limit, peek| s.due_timers_and_next(2, (i64::MIN, until), limit, peek);
        assert_eq!(
            next(0, 10, 5_000).unwrap(),
            (vec![(-7, "a".to_string())], Some(5_000))
        );
        assert_eq!(next(0, 10, 4_999).unwrap(), (vec![(-7, "a".into())], None));
        assert_eq!(
            next(0, 1, 5_000).unwrap(),
            (vec![(-7, "a".into())], None),
            "at the limit the next is not looked for (more may be due)"
        );
        assert_eq!(
            next(5_000, 10, i64::MAX).unwrap().1,
            None,
            "none after 5 000"
        );
        assert_eq!(s.clock(2).unwrap(), Some(4_000));
        assert_eq!(s.clock(3).unwrap(), None);
    }

    /// A run of profiles is read with one `MultiGet` whose keys share one buffer: each key gets
    /// its own profile, whatever the lengths, and a key held only by another partition none.
    #[test]
    fn a_run_of_profiles_reads_each_key_its_own_profile() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let made = |n: u64| Profile {
            events_total: n,
            ..Default::default()
        };
        s.commit(Commit {
            profiles: vec![
                (1, "a".into(), profile::encode(&made(1))),
                (1, "bb-longer-key".into(), profile::encode(&made(2))),
                (1, "".into(), profile::encode(&made(3))),
                (2, "other".into(), profile::encode(&made(4))),
            ],
            ..Default::default()
        })
        .unwrap();
        let mut read = Vec::new();
        s.read_profiles(
            1,
            &["bb-longer-key", "missing", "a", "other", ""],
            |k, p| read.push((k, p.map(|p| p.events_total))),
        )
        .unwrap();
        assert_eq!(
            read,
            vec![
                ("bb-longer-key", Some(2)),
                ("missing", None),
                ("a", Some(1)),
                ("other", None),
                ("", Some(3)),
            ]
        );
    }

    /// A flush writes its profiles uncompressed unless `compress_flushes`; a compaction
    /// compresses them either way. Measured on the files RocksDB lists, with profiles that LZ4
    /// shrinks (the same attributes on every one).
    #[test]
    fn flushes_are_compressed_only_when_asked_and_compactions_always() {
        let p = Profile {
            events_total: 3,
            last_device: Some("desktop".into()),
            recent_changes: (0..20)
                .map(|i| profile::RecentChange {
                    segment: format!("segment-{}", i % 4).into(),
                    entered: i % 2 == 0,
                    at: 1_700_000_000_000,
                    cause: "event".into(),
                })
                .collect(),
            ..Default::default()
        };
        let profiles_bytes = |compress_flushes: bool| {
            let dir = tempfile::tempdir().unwrap();
            let o = StoreOptions {
                compress_flushes,
                ..Default::default()
            };
            let s = Store::open(dir.path(), &o).unwrap();
            s.commit(Commit {
                profiles: (0..2000)
                    .map(|n| (1, format!("cust-{n}"), profile::encode(&p)))
                    .collect(),
                ..Default::default()
            })
            .unwrap();
            s.flush(true).unwrap();
            let size = |s: &Store| -> (u64, Vec<i32>) {
                let files: Vec<_> =
                    s.db.live_files()
                        .unwrap()
                        .into_iter()
                        .filter(|f| f.column_family_name == CF_PROFILES)
                        .collect();
                (
                    files.iter().map(|f| f.size as u64).sum(),
                    files.iter().map(|f| f.level).collect(),
                )
            };
            let flushed = size(&s);
            assert_eq!(flushed.1, [0], "one file, on level 0");
            // Rewritten (not moved to a lower level as it is, which a lone file could be).
            let mut co = rocksdb::CompactOptions::default();
            co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            s.db.compact_range_cf_opt(s.cf(CF_PROFILES), None::<&[u8]>, None::<&[u8]>, &co);
            let compacted = size(&s);
            assert!(!compacted.1.is_empty(), "the profiles are still there");
            assert!(compacted.1.iter().all(|l| *l > 0), "{compacted:?}");
            (flushed.0, compacted.0)
        };
        let (plain, plain_compacted) = profiles_bytes(false);
        let (lz4, lz4_compacted) = profiles_bytes(true);
        assert!(plain > 2 * lz4, "flushed: {plain} bytes, {lz4} compressed");
        assert!(
            plain_compacted < plain / 2 && plain_compacted.abs_diff(lz4_compacted) < lz4 / 4,
            "compacted: {plain_compacted} and {lz4_compacted} bytes"
        );
    }

    /// Without the write-ahead log a commit is in memory until a flush writes every column
    /// family at once: a reader of the files (as `tailor profile` is) sees nothing of it
    /// before, the whole commit after; `flush_due` says when, once per interval.
    #[test]
    fn without_the_log_commits_reach_the_disk_whole_at_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let every = std::time::Duration::from_secs(2);
        let o = StoreOptions {
            write_ahead_log: false,
            flush_interval: every,
            ..Default::default()
        };
        let s = Store::open(dir.path(), &o).unwrap();
        let p = Profile {
            events_total: 2,
            ..Default::default()
        };
        let commit = |n: i64| Commit {
            profiles: vec![(1, format!("cust-{n}"), profile::encode(&p))],
            offsets: vec![("commerce.storefront".into(), 1, n)],
            changelog: vec![(1, n - 3)],
            ..Default::default()
        };
        s.commit(commit(10)).unwrap();
        let on_disk = || Store::open_read_only(dir.path()).unwrap();
        let read = |r: &Store| {
            (
                r.profile(1, "cust-10").unwrap().is_some(),
                r.next_offset("commerce.storefront", 1).unwrap(),
                r.changelog_position(1).unwrap().map(|(n, _)| n),
            )
        };
        assert_eq!(
            read(&on_disk()),
            (false, None, None),
            "no log: nothing on disk yet"
        );
        assert_eq!(on_disk().state_as_of().unwrap(), None);
        // Not due yet: the interval counts from the opening.
        assert!(!s.flush_due());
        std::thread::sleep(every);
        assert!(s.flush_due());
        assert!(!s.flush_due(), "asked once per interval");
        s.flush(false).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while read(&on_disk()).1.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            read(&on_disk()),
            (true, Some(10), Some(7)),
            "the profile, its offset and the position, in every column family at once"
        );
        assert!(on_disk().state_as_of().unwrap().is_some());

        // A later commit, then the flush a stop makes (waited for).
        s.commit(commit(11)).unwrap();
        assert_eq!(read(&on_disk()).1, Some(10));
        s.flush(true).unwrap();
        assert_eq!(read(&on_disk()), (true, Some(11), Some(8)));
        // A flush that did not start is asked for again at once.
        s.flush_failed();
        assert!(s.flush_due());
    }

    #[test]
    fn memory_reports_the_memtables_and_the_block_cache_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let before = s.memory();
        s.commit(Commit {
            profiles: (0..1000)
                .map(|i| (0, format!("shopper-{i}"), vec![7u8; 512]))
                .collect(),
            ..Default::default()
        })
        .unwrap();
        let written = s.memory();
        assert!(
            written.memtables >= before.memtables + 512 * 1000,
            "{before:?} then {written:?}"
        );
        s.compact().unwrap();
        assert_eq!(
            s.profile_keys(0).unwrap().len(),
            1000,
            "read back from the files, through the block cache"
        );
        let read = s.memory();
        assert!(
            read.block_cache > written.block_cache,
            "{written:?} then {read:?}"
        );
        assert!(read.memtables < written.memtables, "flushed: {read:?}");
    }

    #[test]
    fn compaction_reports_the_level_0_files_of_each_family() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        // Every property read is one RocksDB answers (a misspelt name would read as 0).
        for name in ALL_CFS {
            for property in [PENDING_COMPACTION_BYTES, LEVEL0_FILES] {
                assert!(s.int_property(Some(name), property).is_some(), "{property}");
            }
        }
        for property in [WRITE_STOPPED, DELAYED_WRITE_RATE, RUNNING_COMPACTIONS] {
            assert!(s.int_property(None, property).is_some(), "{property}");
        }
        let files = |s: &Store, family: &str| {
            let c = s.compaction();
            c.families
                .iter()
                .find(|f| f.name == family)
                .map(|f| f.level0_files)
                .expect("every column family reported")
        };
        assert_eq!(files(&s, "profiles"), 0);
        // Three flushes, each a level-0 file: below RocksDB's trigger of 4, none merged yet.
        for round in 0..3 {
            s.commit(Commit {
                profiles: (0..100)
                    .map(|i| (0, format!("shopper-{round}-{i}"), vec![7u8; 64]))
                    .collect(),
                ..Default::default()
            })
            .unwrap();
            s.flush(true).unwrap();
        }
        assert_eq!(files(&s, "profiles"), 3, "{:?}", s.compaction());
        let c = s.compaction();
        assert_eq!(c.families.len(), COLUMN_FAMILIES, "{c:?}");
        assert_eq!(c.write_stall, 0, "{c:?}");
        s.compact().unwrap();
        let c = s.compaction();
        assert_eq!(files(&s, "profiles"), 0, "merged down: {c:?}");
        assert!(
            c.families.iter().all(|f| f.pending_bytes == 0),
            "nothing left to compact: {c:?}"
        );
    }

    #[test]
    fn a_second_worker_on_the_same_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let err = Store::open(dir.path(), &StoreOptions::default())
            .err()
            .expect("locked");
        assert!(err.to_string().contains("opening state at"), "{err}");
    }
}
