//! The spool: one batch of NDJSON lines in, one [`BatchResult`] out; sealing; recovery at open.
//! This is what the Python binding exposes as `trailseal._core.Core`.
//!
//! On-disk layout (one directory per trail under `spool_dir`; see also `segment` and `dedup`):
//! ```text
//! <trail>/open/<name>.seg(.json)   open segments and their metadata
//! <trail>/sealed/<name>.log        sealed log files (compressed bytes as delivered)
//! <trail>/sealed/<name>.json       their manifests (the SealedFile fields)
//! <trail>/heads.json               {"last_seq": N, "streams": [{"account","region","seq","chain_end"}]}
//! dedup.ids                        the eventID journal
//! spool.lock                       empty; flock'd (exclusive) by the one open Spool
//! ```
//! Seal order (each step durable before the next): closing frame + fsync; eventIDs appended to
//! `dedup.ids`; manifest written atomically; `.seg` renamed to `sealed/<name>.log`; `.seg.json`
//! removed; `heads.json` replaced; directories fsync'd. Recovery at open finishes or undoes a seal
//! cut short at any step: a closed segment with a manifest is moved, one without is reopened; a
//! chain head is the one of the highest seq among `heads.json` and the manifests in `sealed/`.
//!
//! A gzip trail (`TrailSpec::compression`) seals differently, in two parts. Under the spool
//! (`Spool::seal_start`): the closing frame, the eventIDs, the manifest (compression "gzip"),
//! `heads.json`. Then, without the spool (`PendingGzip::run`, so ingest goes on): the segment is
//! transcoded into `open/<name>.gz.tmp` (one gzip member, fsync'd), the manifest rewritten with
//! the member's size, the member renamed to `sealed/<name>.log` and `sealed/` fsync'd, and only
//! then are `.seg` and `.seg.json` removed. A manifest whose log is not there yet is not listed by
//! `sealed_files`. Recovery of a closed segment with a gzip manifest: when `sealed/<name>.log` is
//! there, the segment files are removed; else the transcode is done again (leftover `.tmp` files
//! are removed first) and the manifest rewritten.
//!
//! Routing: each trail has event selectors (`select`), evaluated in the parallel per-event stage
//! into a bit mask (so at most [`MAX_TRAILS`] trails); `route` (in the in-order step, after dedup)
//! turns the mask into trail indices and drops, for a trail with `multi_region = false`, events
//! whose awsRegion is not the spool's home region. An event no trail takes is counted in
//! `BatchResult::unrouted` and written nowhere.
//!
//! After an I/O error in `process`, `seal` or `sync` the spool refuses further work (the disk
//! state is consistent, the in-memory state may not be): open a new one to recover.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::chain::{self, ChainValue};
use crate::dedup::Dedup;
use crate::error::{CoreError, Result};
use crate::event::{self, EventContext, EventMeta, Receipt, Reject};
use crate::history::{FedEvent, FedFrame, Feed};
use crate::lines;
use crate::segment::{self, fsync_dir, write_atomic, Batch, Recovered, Segment, SegmentMeta};
use crate::select::{EventFields, Selectors};

/// Most trails one spool holds (routing uses a 64-bit mask per event).
pub const MAX_TRAILS: usize = 64;

/// How a trail's sealed log files are compressed (FORMATS.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCompression {
    /// The segment's zstd frames as they are.
    Zstd,
    /// Transcoded at seal into one gzip member at this deflate level (1-9).
    Gzip(u32),
}

impl LogCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            LogCompression::Zstd => "zstd",
            LogCompression::Gzip(_) => "gzip",
        }
    }
}

/// One trail's settings that the spool needs.
#[derive(Debug, Clone)]
pub struct TrailSpec {
    pub name: String,
    pub selectors: Selectors,
    /// false: only events whose awsRegion is the spool's home region (`SpoolConfig::region`).
    pub multi_region: bool,
    pub compression: LogCompression,
}

impl TrailSpec {
    /// A trail with the defaults: all management events, every region, zstd.
    pub fn new(name: impl Into<String>) -> TrailSpec {
        TrailSpec {
            name: name.into(),
            selectors: Selectors::default(),
            multi_region: true,
            compression: LogCompression::Zstd,
        }
    }
}

impl From<String> for TrailSpec {
    fn from(name: String) -> Self {
        TrailSpec::new(name)
    }
}

impl From<&str> for TrailSpec {
    fn from(name: &str) -> Self {
        TrailSpec::new(name)
    }
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub spool_dir: PathBuf,
    pub trails: Vec<TrailSpec>,
    pub account_id: String,
    pub region: String,
    pub max_event_bytes: usize,
    pub add_receipt: bool,
    pub dedup_capacity: usize,
    pub zstd_level: i32,
}

impl SpoolConfig {
    /// Trails by name, each with the defaults of [`TrailSpec::new`].
    pub fn new(
        spool_dir: impl Into<PathBuf>,
        trails: Vec<String>,
        account_id: &str,
        region: &str,
    ) -> Self {
        SpoolConfig {
            spool_dir: spool_dir.into(),
            trails: trails.into_iter().map(TrailSpec::new).collect(),
            account_id: account_id.into(),
            region: region.into(),
            max_event_bytes: 262_144,
            add_receipt: true,
            dedup_capacity: 1_000_000,
            zstd_level: 3,
        }
    }
}

/// One source's slice of a batch.
#[derive(Debug, Clone)]
pub struct Part {
    /// End offset (exclusive) in the batch data; parts cover the data in order.
    pub end: usize,
    pub peer: String,
    pub agent: Option<String>,
    pub received_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// Events newly written to at least one trail.
    pub accepted: u64,
    /// Valid, new events no trail's selectors took: acknowledged, written nowhere.
    pub unrouted: u64,
    pub duplicates: u64,
    /// Per part: how many of `duplicates` it held (an HTTP request reports its own).
    pub duplicates_per_part: Vec<u64>,
    pub rejected: u64,
    /// (part index, line number in the part from 1, code, message), in input order.
    pub errors: Vec<(usize, u64, &'static str, String)>,
    /// Per part: non-blank lines.
    pub lines: Vec<u64>,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSegmentInfo {
    pub trail: String,
    pub account: String,
    pub region: String,
    pub insight: bool,
    pub seq: u64,
    pub path: PathBuf,
    pub event_count: u64,
    pub uncompressed_bytes: u64,
    pub opened_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFile {
    pub trail: String,
    pub account: String,
    pub region: String,
    /// Insight events (delivered under `CloudTrail-Insight/`), else the stream's other events.
    pub insight: bool,
    pub seq: u64,
    pub object_key: String,
    pub path: PathBuf,
    pub manifest_path: PathBuf,
    pub sha256: String,
    pub event_count: u64,
    pub oldest_event_time: String,
    pub newest_event_time: String,
    pub chain_start: String,
    pub chain_end: String,
    pub compression: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
}

impl SealedFile {
    fn to_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "trail": self.trail, "account": self.account, "region": self.region, "seq": self.seq,
            "insight": self.insight,
            "object_key": self.object_key,
            "path": self.path.to_string_lossy(), "manifest_path": self.manifest_path.to_string_lossy(),
            "sha256": self.sha256, "event_count": self.event_count,
            "oldest_event_time": self.oldest_event_time, "newest_event_time": self.newest_event_time,
            "chain_start": self.chain_start, "chain_end": self.chain_end,
            "compression": self.compression,
            "compressed_bytes": self.compressed_bytes, "uncompressed_bytes": self.uncompressed_bytes,
        });
        let mut out = v.to_string().into_bytes();
        out.push(b'\n');
        out
    }

    /// Read a manifest; `path` and `manifest_path` are taken from where it lies now.
    fn from_manifest(manifest_path: &Path) -> Result<SealedFile> {
        let bytes = std::fs::read(manifest_path)
            .map_err(|e| CoreError::io("read manifest", manifest_path, e))?;
        let corrupt = |message: String| CoreError::Corrupt {
            path: manifest_path.to_path_buf(),
            message,
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("manifest is not JSON ({e})")))?;
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| corrupt(format!("manifest lacks string {k:?}")))
        };
        let n = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| corrupt(format!("manifest lacks integer {k:?}")))
        };
        Ok(SealedFile {
            trail: s("trail")?,
            account: s("account")?,
            region: s("region")?,
            insight: v.get("insight").and_then(serde_json::Value::as_bool) == Some(true),
            seq: n("seq")?,
            object_key: s("object_key")?,
            path: manifest_path.with_extension("log"),
            manifest_path: manifest_path.to_path_buf(),
            sha256: s("sha256")?,
            event_count: n("event_count")?,
            oldest_event_time: s("oldest_event_time")?,
            newest_event_time: s("newest_event_time")?,
            chain_start: s("chain_start")?,
            chain_end: s("chain_end")?,
            compression: s("compression")?,
            compressed_bytes: n("compressed_bytes")?,
            uncompressed_bytes: n("uncompressed_bytes")?,
        })
    }
}

/// (account, region, insight): each has its own segments and chain.
type StreamKey = (String, String, bool);
/// heads.json: last_seq and the streams' heads.
type HeadsFile = (u64, Vec<(StreamKey, Head)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    chain: ChainValue,
    seq: u64,
}

struct Trail {
    name: String,
    /// false after [`Spool::set_logging`] turned it off: routing skips the trail.
    logging: bool,
    multi_region: bool,
    compression: LogCompression,
    dir: PathBuf,
    open_dir: PathBuf,
    sealed_dir: PathBuf,
    heads: HashMap<StreamKey, Head>,
    open: HashMap<StreamKey, Segment>,
    next_seq: u64,
}

pub struct Spool {
    cfg: SpoolConfig,
    /// `spool.lock`, exclusively locked while this Spool lives (released when it is dropped).
    _lock: std::fs::File,
    trails: Vec<Trail>,
    /// Each trail's selectors, in trail order (shared with the per-event stage).
    selectors: Vec<Selectors>,
    dedup: Dedup,
    compressor: zstd::bulk::Compressor<'static>,
    notes: Vec<String>,
    dirty_dirs: HashSet<PathBuf>,
    failed: Option<String>,
    /// Where the event history takes what is written ([`Spool::feed_history`]).
    feed: Option<std::sync::Arc<Feed>>,
    /// The slices' canonical output buffers and the streams' content buffers, kept from one
    /// batch to the next.
    slice_buffers: Buffers,
    content_buffers: Buffers,
}

/// Large byte buffers kept from one batch for the next. Fresh buffers of several MiB were
/// mapped anew for each batch and faulted in page by page as they filled, much of it on the
/// sequential path (most of the core's page faults: BENCHMARKS.md, session 6). At most `keep`
/// buffers of at most [`Buffers::MAX_KEPT`] bytes each are kept.
#[derive(Debug)]
struct Buffers {
    spare: std::sync::Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl Buffers {
    /// A buffer larger than this (a batch of huge events) is not kept.
    const MAX_KEPT: usize = 64 << 20;

    fn new(keep: usize) -> Buffers {
        Buffers {
            spare: std::sync::Mutex::default(),
            keep,
        }
    }

    /// An empty buffer with room for `capacity` bytes (kept buffers were emptied by `give`).
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self
            .spare
            .lock()
            .ok()
            .and_then(|mut spare| spare.pop())
            .unwrap_or_default();
        buf.reserve(capacity);
        buf
    }

    /// Keep `buf` for a later [`Buffers::take`] (dropped when enough are kept).
    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > Self::MAX_KEPT {
            return;
        }
        buf.clear();
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < self.keep {
                spare.push(buf);
            }
        }
    }
}

/// Files and directories to fsync, taken by [`Spool::prepare_sync`] (see there).
pub struct PendingSync {
    files: Vec<(PathBuf, std::fs::File)>,
    dirs: Vec<PathBuf>,
}

impl PendingSync {
    /// fsync the segments, then the directories (segments created since the last sync).
    pub fn run(self) -> Result<()> {
        for (path, f) in &self.files {
            f.sync_data()
                .map_err(|e| CoreError::io("fsync segment", path, e))?;
        }
        for d in &self.dirs {
            fsync_dir(d)?;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn check_trail_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "trail name {name:?} is not valid: use 1-128 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

/// Take the spool's exclusive lock (`<spool_dir>/spool.lock`, flock): two spools on one directory
/// would interleave appends, reuse seqs and undo each other's recovery.
fn lock_spool(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("spool.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CoreError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(CoreError::Invalid(format!(
            "spool {} is in use by another trailseal (the lock on {} is held): stop the other \
             daemon, or drop the other Core, before opening this spool",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(CoreError::io("lock", &path, e)),
    }
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| CoreError::io("create directory", path, e))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| CoreError::io("list directory", dir, e))? {
        out.push(
            entry
                .map_err(|e| CoreError::io("list directory", dir, e))?
                .path(),
        );
    }
    out.sort();
    Ok(out)
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io("remove", path, e)),
    }
}

impl Trail {
    fn heads_path(&self) -> PathBuf {
        self.dir.join("heads.json")
    }

    fn write_heads(&self) -> Result<()> {
        let mut streams: Vec<_> = self.heads.iter().collect();
        streams.sort_by(|a, b| a.0.cmp(b.0));
        let streams: Vec<serde_json::Value> = streams
            .into_iter()
            .map(|((account, region, insight), h)| {
                let mut v = serde_json::json!({"account": account, "region": region, "seq": h.seq,
                                               "chain_end": chain::to_hex(&h.chain)});
                if *insight {
                    v["insight"] = serde_json::Value::Bool(true);
                }
                v
            })
            .collect();
        let last_seq = self.next_seq.saturating_sub(1);
        let mut bytes = serde_json::json!({"last_seq": last_seq, "streams": streams})
            .to_string()
            .into_bytes();
        bytes.push(b'\n');
        write_atomic(&self.heads_path(), &bytes)
    }

    /// Parse heads.json: Ok(None) when missing, Err(message) when unreadable.
    fn read_heads(path: &Path) -> Result<Option<std::result::Result<HeadsFile, String>>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CoreError::io("read", path, e)),
        };
        let parse = || -> std::result::Result<HeadsFile, String> {
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            let last_seq = v
                .get("last_seq")
                .and_then(|x| x.as_u64())
                .ok_or("no integer last_seq")?;
            let mut out = Vec::new();
            for s in v
                .get("streams")
                .and_then(|x| x.as_array())
                .ok_or("no array streams")?
            {
                let get = |k: &str| {
                    s.get(k)
                        .and_then(|x| x.as_str())
                        .ok_or(format!("a stream lacks {k:?}"))
                };
                let chain =
                    chain::from_hex(get("chain_end")?).ok_or("a chain_end is not 64 hex digits")?;
                let seq = s
                    .get("seq")
                    .and_then(|x| x.as_u64())
                    .ok_or("a stream lacks \"seq\"")?;
                let insight = s.get("insight").and_then(serde_json::Value::as_bool) == Some(true);
                out.push((
                    (
                        get("account")?.to_owned(),
                        get("region")?.to_owned(),
                        insight,
                    ),
                    Head { chain, seq },
                ));
            }
            Ok((last_seq, out))
        };
        Ok(Some(parse()))
    }

    /// Open (creating) the trail's directories and recover its state.
    fn open(
        spool_dir: &Path,
        spec: &TrailSpec,
        dedup: &mut Dedup,
        notes: &mut Vec<String>,
    ) -> Result<Trail> {
        let name = spec.name.as_str();
        check_trail_name(name)?;
        let dir = spool_dir.join(name);
        let existed = dir.exists();
        let open_dir = dir.join("open");
        let sealed_dir = dir.join("sealed");
        mkdir(&open_dir)?;
        mkdir(&sealed_dir)?;
        let mut t = Trail {
            name: name.to_owned(),
            logging: true,
            multi_region: spec.multi_region,
            compression: spec.compression,
            dir: dir.clone(),
            open_dir: open_dir.clone(),
            sealed_dir: sealed_dir.clone(),
            heads: HashMap::new(),
            open: HashMap::new(),
            next_seq: 1,
        };
        // Leftover temporary files of interrupted atomic writes.
        for d in [&dir, &open_dir, &sealed_dir] {
            for p in list_dir(d)? {
                if file_name(&p).ends_with(".tmp") {
                    remove(&p)?;
                }
            }
        }
        let mut max_seq = 0u64;
        let mut heads_dirty = false;
        let heads_path = t.heads_path();
        match Trail::read_heads(&heads_path)? {
            Some(Ok((last_seq, heads))) => {
                max_seq = last_seq;
                for (k, h) in heads {
                    max_seq = max_seq.max(h.seq);
                    t.heads.insert(k, h);
                }
            }
            Some(Err(message)) => {
                let aside = dir.join(format!("heads.json.corrupt-{}", now_ms()));
                std::fs::rename(&heads_path, &aside)
                    .map_err(|e| CoreError::io("move aside corrupt", &heads_path, e))?;
                notes.push(format!(
                    "{}: unreadable ({message}); moved to {}. Chain heads were rebuilt from the files \
                     still in the spool; any other stream that has delivered files restarts its \
                     chain from zero",
                    heads_path.display(),
                    aside.display()
                ));
                heads_dirty = true;
            }
            None if existed => {
                notes.push(format!(
                    "{}: missing. Chain heads were rebuilt from the files still in the spool; any \
                     other stream that has delivered files restarts its chain from zero",
                    heads_path.display()
                ));
                heads_dirty = true;
            }
            None => heads_dirty = true,
        }
        // Sealed files: manifests, and logs without one (left by an interrupted removal).
        let mut manifests: HashMap<String, SealedFile> = HashMap::new();
        let mut logs: HashSet<String> = HashSet::new();
        for p in list_dir(&sealed_dir)? {
            let n = file_name(&p);
            if let Some(stem) = n.strip_suffix(".json") {
                manifests.insert(stem.to_owned(), SealedFile::from_manifest(&p)?);
            } else if let Some(stem) = n.strip_suffix(".log") {
                logs.insert(stem.to_owned());
            }
        }
        // Open segments.
        let mut finished: Vec<String> = Vec::new();
        for p in list_dir(&open_dir)? {
            let n = file_name(&p).to_owned();
            if let Some(stem) = n.strip_suffix(".seg") {
                if !open_dir.join(format!("{stem}.seg.json")).exists() {
                    let aside = open_dir.join(format!("{stem}.seg.orphan"));
                    std::fs::rename(&p, &aside).map_err(|e| CoreError::io("move aside", &p, e))?;
                    notes.push(format!(
                        "{}: segment without metadata (its chain start is unknown); moved to {}. \
                         Inspect it by hand",
                        p.display(),
                        aside.display()
                    ));
                }
                continue;
            }
            let Some(stem) = n.strip_suffix(".seg.json") else {
                continue;
            };
            let stem = stem.to_owned();
            match Segment::recover(&p, notes)? {
                Recovered::Empty => {
                    remove(&open_dir.join(format!("{stem}.seg")))?;
                    remove(&p)?;
                    notes.push(format!(
                        "{}: segment held no whole event; removed",
                        p.display()
                    ));
                }
                Recovered::Closed(seg) => {
                    max_seq = max_seq.max(seg.meta.seq);
                    if let Some(manifest) = manifests.get_mut(&stem) {
                        let dest = sealed_dir.join(format!("{stem}.log"));
                        if manifest.compression == "zstd" {
                            std::fs::rename(&seg.data_path, &dest)
                                .map_err(|e| CoreError::io("move sealed segment to", &dest, e))?;
                        } else if !logs.contains(&stem) {
                            // gzip: the transcode did not reach sealed/; do it again
                            let level = match spec.compression {
                                LogCompression::Gzip(level) => level,
                                LogCompression::Zstd => segment::DEFAULT_GZIP_LEVEL,
                            };
                            finish_gzip(&seg, &open_dir, &dest, manifest, level)?;
                        }
                        remove(&seg.data_path)?;
                        remove(&seg.meta_path)?;
                        logs.insert(stem.clone());
                        finished.push(stem.clone());
                        notes.push(format!("{}: finished an interrupted seal", dest.display()));
                    } else {
                        let seg = seg.reopen(notes)?;
                        t.add_open(seg, dedup)?;
                    }
                }
                Recovered::Open(seg) => {
                    max_seq = max_seq.max(seg.meta.seq);
                    t.add_open(seg, dedup)?;
                }
            }
        }
        for (stem, m) in &manifests {
            if !logs.contains(stem) {
                remove(&m.manifest_path)?;
                notes.push(format!(
                    "{}: manifest without its log file (removal interrupted); removed",
                    m.manifest_path.display()
                ));
                continue;
            }
            max_seq = max_seq.max(m.seq);
            let key = (m.account.clone(), m.region.clone(), m.insight);
            let chain = chain::from_hex(&m.chain_end).ok_or_else(|| CoreError::Corrupt {
                path: m.manifest_path.clone(),
                message: format!("chain_end {:?} is not 64 hex digits", m.chain_end),
            })?;
            let newer = t.heads.get(&key).is_none_or(|h| h.seq < m.seq);
            if newer {
                t.heads.insert(key, Head { chain, seq: m.seq });
                heads_dirty = true;
            }
        }
        for stem in logs.iter().filter(|s| !manifests.contains_key(*s)) {
            let p = sealed_dir.join(format!("{stem}.log"));
            remove(&p)?;
            notes.push(format!(
                "{}: log file without manifest (removal interrupted); removed",
                p.display()
            ));
        }
        t.next_seq = max_seq + 1;
        if heads_dirty || !finished.is_empty() {
            t.write_heads()?;
        }
        fsync_dir(&open_dir)?;
        fsync_dir(&sealed_dir)?;
        Ok(t)
    }

    fn add_open(&mut self, seg: Segment, dedup: &mut Dedup) -> Result<()> {
        for id in &seg.event_ids {
            dedup.insert(id);
        }
        let key = (
            seg.meta.account.clone(),
            seg.meta.region.clone(),
            seg.meta.insight,
        );
        if let Some(other) = self.open.get(&key) {
            return Err(CoreError::Corrupt {
                path: seg.data_path.clone(),
                message: format!(
                    "a second open segment for account {} region {}{} (the other is {}); seal or move one aside",
                    key.0,
                    key.1,
                    if key.2 { " (Insight events)" } else { "" },
                    other.data_path.display()
                ),
            });
        }
        self.open.insert(key, seg);
        Ok(())
    }

    fn chain_head(&self, key: &StreamKey) -> ChainValue {
        self.heads.get(key).map_or(chain::ZERO, |h| h.chain)
    }
}

/// What [`Spool::seal_start`] did: a sealed file, or a gzip seal whose transcode is still to run.
#[allow(clippy::large_enum_variant)] // one per seal, moved once: its size does not matter
pub enum Sealing {
    Done(SealedFile),
    Gzip(PendingGzip),
}

/// The second half of a gzip trail's seal (see [`Spool::seal_start`]): the closed segment's
/// transcode, run without the spool.
pub struct PendingGzip {
    seg: Segment,
    open_dir: PathBuf,
    dest: PathBuf,
    sealed: SealedFile,
    level: u32,
}

impl PendingGzip {
    /// The closed segment's path (`open/<name>.seg`), being sealed.
    pub fn segment_path(&self) -> &Path {
        &self.seg.data_path
    }

    /// Transcode, rewrite the manifest with the member's size, move the member to `sealed/`,
    /// then remove the segment's files. On an error call [`Spool::seal_failed`]: reopening the
    /// spool finishes the seal.
    pub fn run(mut self) -> Result<SealedFile> {
        finish_gzip(
            &self.seg,
            &self.open_dir,
            &self.dest,
            &mut self.sealed,
            self.level,
        )?;
        remove(&self.seg.data_path)?;
        remove(&self.seg.meta_path)?;
        fsync_dir(&self.open_dir)?;
        Ok(self.sealed)
    }
}

/// The gzip part of sealing `seg` (closed, fsync'd) into `dest`: transcode into
/// `<open_dir>/<name>.gz.tmp` (checking the content against the SHA-256 taken while it was
/// written), write the manifest (`sealed` with compression "gzip" and the member's size), move
/// the member to `dest` and fsync its directory. The segment's own files are left to the caller.
fn finish_gzip(
    seg: &Segment,
    open_dir: &Path,
    dest: &Path,
    sealed: &mut SealedFile,
    level: u32,
) -> Result<()> {
    let tmp = open_dir.join(format!("{}.gz.tmp", seg.meta.name()));
    remove(&tmp)?;
    let (size, sha256) = segment::transcode_gzip(&seg.data_path, &tmp, level)?;
    crash_point("gzip-transcoded")?;
    if sha256 != sealed.sha256 {
        remove(&tmp)?;
        return Err(CoreError::Corrupt {
            path: seg.data_path.clone(),
            message: format!(
                "content SHA-256 {sha256} differs from {} taken while it was written (the \
                 segment changed on disk); move it aside and check the disk",
                sealed.sha256
            ),
        });
    }
    sealed.compression = "gzip".into();
    sealed.compressed_bytes = size;
    write_atomic(&sealed.manifest_path, &sealed.to_json())?;
    crash_point("gzip-manifest")?;
    std::fs::rename(&tmp, dest).map_err(|e| CoreError::io("move gzip log file to", dest, e))?;
    if let Some(dir) = dest.parent() {
        fsync_dir(dir)?;
    }
    crash_point("gzip-moved")
}

#[cfg(test)]
thread_local! {
    /// Tests: the crash point at which the next seal stops with an error, as a crash would.
    static CRASH_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Tests stop a seal here (see `CRASH_AT`); a no-op otherwise.
#[cfg(test)]
fn crash_point(name: &'static str) -> Result<()> {
    if CRASH_AT.with(|c| c.get()) == Some(name) {
        CRASH_AT.with(|c| c.set(None));
        return Err(CoreError::Invalid(format!("test crash at {name}")));
    }
    Ok(())
}

#[cfg(not(test))]
#[inline]
fn crash_point(_name: &'static str) -> Result<()> {
    Ok(())
}

/// The routing bits of one event: bit `i` set when trail `i`'s selectors take it. Runs in the
/// parallel per-event stage, on fields borrowed from the parsed event.
fn select_trails(selectors: &[Selectors], fields: &EventFields<'_>) -> u64 {
    selectors.iter().enumerate().fold(0u64, |mask, (i, s)| {
        mask | (u64::from(s.matches(fields)) << i)
    })
}

/// Trails an accepted event goes to (indices into the spool's trails, ascending): those whose
/// selectors took it (`event.routes`), less the single-region trails when its awsRegion is not
/// the home region.
fn route(trails: &[Trail], home_region: &str, event: &EventMeta, out: &mut Vec<usize>) {
    out.clear();
    let mut mask = event.routes;
    while mask != 0 {
        let i = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        if let Some(t) = trails.get(i) {
            if t.logging && (t.multi_region || event.region == *home_region) {
                out.push(i);
            }
        }
    }
}

/// One non-blank line of a batch: its part, its number in the part (from 1), its text.
struct Line<'a> {
    part: usize,
    lineno: u64,
    text: &'a [u8],
}

/// What the per-event stage made of one line. (Nearly every line is an `Event`, whose lookup
/// values are inline on purpose: boxing them would allocate per event.)
#[allow(clippy::large_enum_variant)]
enum Outcome {
    /// Accepted by validation: its canonical bytes end at `end` in the slice's buffer (and start
    /// where the previous event's end), `hash` is their SHA-256.
    Event {
        part: usize,
        end: usize,
        hash: [u8; 32],
        meta: EventMeta,
    },
    Rejected {
        part: usize,
        lineno: u64,
        reject: Reject,
    },
}

/// The per-event stage's output for a contiguous slice of the batch's lines.
struct Staged {
    buf: Vec<u8>,
    outcomes: Vec<Outcome>,
}

/// One stream's share of a batch, and its log file's running SHA-256 after it.
struct StreamBatch {
    trail: usize,
    account: String,
    region: String,
    insight: bool,
    batch: Batch,
    hasher: Sha256,
    /// Bytes of `batch.content` already fed to `hasher`.
    hashed: usize,
    /// For the event history's feed: each event's lookup values and where it ends in
    /// `batch.content`.
    fed: Vec<FedEvent>,
    ends: Vec<usize>,
    /// `batch.content` up to here is cut into `frames`.
    cut: usize,
    /// The frames cut so far, in order: their content's range in `batch.content` and, once
    /// compressed, their bytes.
    frames: Vec<(std::ops::Range<usize>, Option<Vec<u8>>)>,
}

impl StreamBatch {
    /// Cut the content not cut yet into frames of at most `target` bytes, between events.
    fn cut_frames(&mut self, target: usize) {
        let mut start = self.cut;
        for piece in segment::frame_pieces(&self.batch.content[self.cut..], target) {
            self.frames.push((start..start + piece.len(), None));
            start += piece.len();
        }
        self.cut = start;
    }
}

/// Events waiting in the history's feed beyond which ingest stops using the calling thread for
/// the per-event stage, so that the idle-priority indexer gets CPU: three quarters of the feed,
/// so that it catches up before frames are left out (and read back from the files later), while
/// a load of a few seconds never reaches it (BENCHMARKS.md, session 6).
const FEED_CATCH_UP_EVENTS: usize = crate::history::FEED_MAX_EVENTS / 4 * 3;
/// Batches with fewer lines than this are staged on the calling thread.
const MIN_PARALLEL_LINES: usize = 64;
/// Slices per thread in the per-event stage (more than one evens out uneven events).
const SLICES_PER_THREAD: usize = 8;
/// Smallest frame content a batch is cut into for parallel compression (smaller frames compress
/// worse and gain little); the sequencer cuts a frame as soon as a stream has gathered this much.
const MIN_PARALLEL_FRAME: usize = 1 << 20;
/// Largest frame content a large batch is cut into: the event history keeps frames up to this
/// size as they are (a lookup decompresses one to read a record).
const MAX_PARALLEL_FRAME: usize = crate::history::VERBATIM_MAX;

fn stage_slice(
    lines: &[Line<'_>],
    contexts: &[EventContext<'_>],
    selectors: &[Selectors],
    buffers: &Buffers,
) -> Staged {
    let bytes: usize = lines.iter().map(|l| l.text.len()).sum();
    let mut out = Staged {
        buf: buffers.take(bytes + bytes / 4 + 1024),
        outcomes: Vec::with_capacity(lines.len()),
    };
    for line in lines {
        let start = out.buf.len();
        let select = |fields: &EventFields<'_>| select_trails(selectors, fields);
        match event::process_event_selecting(line.text, &contexts[line.part], &mut out.buf, &select)
        {
            Ok(meta) => out.outcomes.push(Outcome::Event {
                part: line.part,
                end: out.buf.len(),
                hash: chain::event_hash(&out.buf[start..]),
                meta,
            }),
            Err(reject) => out.outcomes.push(Outcome::Rejected {
                part: line.part,
                lineno: line.lineno,
                reject,
            }),
        }
    }
    out
}

/// What takes the staged slices in input order (the [`Sequencer`]).
trait InOrder {
    fn take(&mut self, staged: Staged);
    /// Called while the next slice is not staged yet: do one piece of deferrable work and say
    /// whether there was any.
    fn idle(&mut self) -> bool;
}

/// The per-event stage over all lines, over contiguous slices: each slice is handed to
/// `consumer` on the calling thread in input order as soon as it and every slice before it are
/// done, so the sequential work overlaps the parallel one. Slices are claimed in input order from
/// one counter, by one less rayon worker than there are threads (on the global pool, driven from
/// a helper thread) and by the calling thread itself: between slices it takes what is ready, and
/// when nothing is, it does the consumer's deferrable work or stages the next unclaimed slice.
/// So it never sleeps while there is work, and it takes each slice right when it is ready (a
/// calling thread that only waited had to be woken for every slice, and on two busy cores it
/// often got its CPU milliseconds later, leaving it a backlog to take alone at the end).
/// Without `caller_stages` the calling thread only takes slices and does deferrable work, and
/// every thread of the pool stages: the cores then idle now and then, which an idle-priority
/// thread (the event history's indexer) needs to keep up. With one thread, or a small batch,
/// everything runs on the calling thread. Each slice's output buffer comes from `buffers` (the
/// consumer hands it back).
fn stage_in_order(
    lines: &[Line<'_>],
    contexts: &[EventContext<'_>],
    selectors: &[Selectors],
    buffers: &Buffers,
    caller_stages: bool,
    consumer: &mut impl InOrder,
) {
    let threads = rayon::current_num_threads().max(1);
    if lines.len() < MIN_PARALLEL_LINES || threads == 1 {
        consumer.take(stage_slice(lines, contexts, selectors, buffers));
        return;
    }
    let per_slice = lines.len().div_ceil(threads * SLICES_PER_THREAD).max(16);
    let slices = lines.len().div_ceil(per_slice);
    let slice = |i: usize| &lines[i * per_slice..((i + 1) * per_slice).min(lines.len())];
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Staged)>();
    // In input order, so slices finish about in order and the consumer follows right behind
    // (rayon's splitting would finish the second half early and leave it all to the consumer at
    // the end, the workers idle).
    let claimed = std::sync::atomic::AtomicUsize::new(0);
    let claim = || {
        let i = claimed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (i < slices).then_some(i)
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            rayon::scope(|workers| {
                let workers_n = if caller_stages { threads - 1 } else { threads };
                for _ in 0..workers_n.min(slices) {
                    let tx = tx.clone();
                    let claim = &claim;
                    workers.spawn(move |_| {
                        while let Some(i) = claim() {
                            // the receiver lives until every sender is gone
                            let _ =
                                tx.send((i, stage_slice(slice(i), contexts, selectors, buffers)));
                        }
                    });
                }
            });
            drop(tx);
        });
        let mut pending: Vec<Option<Staged>> = (0..slices).map(|_| None).collect();
        let mut next = 0usize;
        while next < slices {
            while let Ok((i, staged)) = rx.try_recv() {
                pending[i] = Some(staged);
            }
            if let Some(ready) = pending[next].take() {
                consumer.take(ready);
                next += 1;
                continue;
            }
            if consumer.idle() {
                continue;
            }
            if caller_stages {
                if let Some(i) = claim() {
                    pending[i] = Some(stage_slice(slice(i), contexts, selectors, buffers));
                    continue;
                }
            }
            // every slice is claimed and the next one is still being staged by a worker
            match rx.recv() {
                Ok((i, staged)) => pending[i] = Some(staged),
                Err(_) => break, // every sender gone: a worker panicked (the scope raises it)
            }
        }
    });
}

/// Hand `feed` the frames just appended at `at` to the segment `(trail, seq)`: `frames` are
/// their bytes, `lens` each frame's (content, compressed) lengths, `events` the events of the
/// batch and `ends` where each one ends in the batch's content.
#[allow(clippy::too_many_arguments)]
fn feed_frames(
    feed: &Feed,
    trail: &str,
    seq: u64,
    at: u64,
    insight: bool,
    frames: &[u8],
    lens: &[(usize, usize)],
    events: Vec<FedEvent>,
    ends: &[usize],
) {
    let mut events = events.into_iter();
    let (mut offset, mut content_end, mut taken) = (at, 0usize, 0usize);
    for &(content_len, len) in lens {
        content_end += content_len;
        let n = ends[taken..].partition_point(|&e| e <= content_end);
        taken += n;
        let start = (offset - at) as usize;
        feed.push(
            trail,
            seq,
            FedFrame {
                offset,
                len: len as u64,
                sum: crate::history::frame_sum(&frames[start..start + len]),
                content_len,
                insight,
                events: events.by_ref().take(n).collect(),
            },
        );
        offset += len as u64;
    }
}

/// The sequential part of `process`, fed the staged slices in input order. While it waits for
/// the next slice it compresses the frames its streams have filled so far, so that compression
/// overlaps the per-event stage instead of following it.
struct Sequencer<'a> {
    dedup: &'a mut Dedup,
    trails: &'a [Trail],
    home_region: &'a str,
    streams: Vec<StreamBatch>,
    targets: Vec<usize>,
    room: usize,
    res: &'a mut BatchResult,
    zstd_level: i32,
    /// The first compression error (the batch then fails as a whole).
    error: Option<CoreError>,
    /// Where slice buffers go back once taken, and stream content buffers come from.
    slice_buffers: &'a Buffers,
    content_buffers: &'a Buffers,
}

impl InOrder for Sequencer<'_> {
    fn take(&mut self, staged: Staged) {
        self.take_slice(staged);
        // Cut what a stream has gathered into frames once there is enough for a good one.
        for s in &mut self.streams {
            if s.batch.content.len() - s.cut >= MIN_PARALLEL_FRAME {
                s.cut_frames(MAX_PARALLEL_FRAME);
            }
        }
    }

    fn idle(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        for s in &mut self.streams {
            if let Some((range, out)) = s.frames.iter_mut().find(|(_, out)| out.is_none()) {
                match segment::compress_frame_here(self.zstd_level, &s.batch.content[range.clone()])
                {
                    Ok(frame) => *out = Some(frame),
                    Err(e) => self.error = Some(e),
                }
                return true;
            }
        }
        false
    }
}

impl Sequencer<'_> {
    fn take_slice(&mut self, staged: Staged) {
        let Staged { buf, outcomes } = staged;
        self.take_outcomes(&buf, outcomes);
        self.slice_buffers.give(buf);
    }

    fn take_outcomes(&mut self, buf: &[u8], outcomes: Vec<Outcome>) {
        let res = &mut *self.res;
        let mut event_start = 0usize;
        for outcome in outcomes {
            let (part, end, hash, meta) = match outcome {
                Outcome::Rejected {
                    part,
                    lineno,
                    reject,
                } => {
                    res.rejected += 1;
                    res.errors
                        .push((part, lineno, reject.code.as_str(), reject.message));
                    continue;
                }
                Outcome::Event {
                    part,
                    end,
                    hash,
                    meta,
                } => (part, end, hash, meta),
            };
            let canonical = &buf[event_start..end];
            event_start = end;
            if !self.dedup.insert(&meta.event_id) {
                res.duplicates += 1;
                if let Some(count) = res.duplicates_per_part.get_mut(part) {
                    *count += 1;
                }
                continue;
            }
            route(self.trails, self.home_region, &meta, &mut self.targets);
            if self.targets.is_empty() {
                res.unrouted += 1;
                continue;
            }
            res.accepted += 1;
            let mut id = Some(meta.event_id);
            let mut lookup = meta.lookup;
            for (k, &ti) in self.targets.iter().enumerate() {
                // the last trail takes the eventID (and lookup values) itself, the others a copy
                let last = k + 1 == self.targets.len();
                let id = if last {
                    id.take().unwrap_or_default()
                } else {
                    id.clone().unwrap_or_default()
                };
                let lookup = if last { lookup.take() } else { lookup.clone() };
                let found = self.streams.iter().position(|s| {
                    s.trail == ti
                        && meta.account == *s.account
                        && meta.region == *s.region
                        && s.insight == meta.insight
                });
                let si = match found {
                    Some(si) => si,
                    None => {
                        let trail = &self.trails[ti];
                        let key = (
                            meta.account.as_str().to_string(),
                            meta.region.as_str().to_string(),
                            meta.insight,
                        );
                        let content = self.content_buffers.take(self.room);
                        let (batch, hasher) = match trail.open.get(&key) {
                            Some(seg) => {
                                (Batch::new_in(seg.chain_end, false, content), seg.hasher())
                            }
                            None => (
                                Batch::new_in(trail.chain_head(&key), true, content),
                                Sha256::new(),
                            ),
                        };
                        self.streams.push(StreamBatch {
                            trail: ti,
                            account: key.0,
                            region: key.1,
                            insight: key.2,
                            batch,
                            hasher,
                            hashed: 0,
                            fed: Vec::new(),
                            ends: Vec::new(),
                            cut: 0,
                            frames: Vec::new(),
                        });
                        self.streams.len() - 1
                    }
                };
                let stream = &mut self.streams[si];
                stream.batch.push(canonical, &hash, id, meta.event_time);
                // the log file's running hash, over exactly the bytes just appended
                stream.hasher.update(&stream.batch.content[stream.hashed..]);
                stream.hashed = stream.batch.content.len();
                if let Some(lookup) = lookup {
                    stream.fed.push(FedEvent {
                        time_ms: meta.event_time.saturating_mul(1000),
                        lookup,
                    });
                    stream.ends.push(stream.batch.content.len());
                }
            }
        }
    }
}

impl Spool {
    /// Open (creating) the spool and recover every trail.
    pub fn open(cfg: SpoolConfig) -> Result<Spool> {
        if cfg.trails.is_empty() {
            return Err(CoreError::Invalid(
                "no trails: give at least one trail name".into(),
            ));
        }
        if cfg.trails.len() > MAX_TRAILS {
            return Err(CoreError::Invalid(format!(
                "{} trails: one spool holds at most {MAX_TRAILS}",
                cfg.trails.len()
            )));
        }
        let mut seen = HashSet::new();
        for t in &cfg.trails {
            if !seen.insert(&t.name) {
                return Err(CoreError::Invalid(format!(
                    "trail {:?} is listed twice",
                    t.name
                )));
            }
            if let LogCompression::Gzip(level) = t.compression {
                if !(1..=9).contains(&level) {
                    return Err(CoreError::Invalid(format!(
                        "trail {:?}: gzip level {level} is not 1 to 9",
                        t.name
                    )));
                }
            }
        }
        mkdir(&cfg.spool_dir)?;
        let lock = lock_spool(&cfg.spool_dir)?;
        let mut dedup = Dedup::open(&cfg.spool_dir.join("dedup.ids"), cfg.dedup_capacity)?;
        let mut notes = Vec::new();
        let mut trails = Vec::new();
        for spec in &cfg.trails {
            trails.push(Trail::open(&cfg.spool_dir, spec, &mut dedup, &mut notes)?);
        }
        let selectors = cfg.trails.iter().map(|t| t.selectors.clone()).collect();
        fsync_dir(&cfg.spool_dir)?;
        let compressor = segment::compressor(cfg.zstd_level)?;
        Ok(Spool {
            cfg,
            _lock: lock,
            trails,
            selectors,
            dedup,
            compressor,
            notes,
            dirty_dirs: HashSet::new(),
            failed: None,
            feed: None,
            // a batch's slices, and a few streams' contents
            slice_buffers: Buffers::new(4 * SLICES_PER_THREAD),
            content_buffers: Buffers::new(4),
        })
    }

    /// Hand the event history each frame written from now on, with its events' lookup values
    /// (hashed while the events are built): it then indexes them without reading them back
    /// ([`crate::history::Feed`]). None stops it.
    pub fn feed_history(&mut self, feed: Option<std::sync::Arc<Feed>>) {
        self.feed = feed;
    }

    pub fn recovery_notes(&self) -> &[String] {
        &self.notes
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(CoreError::Invalid(format!(
                "the spool stopped after an earlier error ({why}); open it again to recover"
            ))),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    /// Process one batch (see `_core.pyi`).
    pub fn process(&mut self, data: &[u8], parts: &[Part]) -> Result<BatchResult> {
        self.process_pieces(&[data], parts)
    }

    /// [`Spool::process`] over data in pieces (as received, without joining them first): the
    /// parts' end offsets count through the pieces in order, and no part spans two pieces.
    pub fn process_pieces(&mut self, pieces: &[&[u8]], parts: &[Part]) -> Result<BatchResult> {
        self.check()?;
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        // each part's bytes, within one piece
        let mut part_data: Vec<&[u8]> = Vec::with_capacity(parts.len());
        let (mut start, mut piece, mut piece_start) = (0usize, 0usize, 0usize);
        for (i, p) in parts.iter().enumerate() {
            if p.end < start || p.end > total {
                return Err(CoreError::Invalid(format!(
                    "part {i} ends at offset {} but must end between {start} and {total} (the data length)",
                    p.end
                )));
            }
            // move to the piece holding the part's first byte (an empty part: where it starts)
            while piece < pieces.len()
                && piece_start + pieces[piece].len() <= start
                && p.end > start
            {
                piece_start += pieces[piece].len();
                piece += 1;
            }
            let in_piece = pieces.get(piece).copied().unwrap_or_default();
            if p.end > piece_start + in_piece.len() {
                return Err(CoreError::Invalid(format!(
                    "part {i} (bytes {start}..{}) spans two pieces of the data",
                    p.end
                )));
            }
            part_data.push(&in_piece[start - piece_start..p.end - piece_start]);
            start = p.end;
        }
        if start != total {
            return Err(CoreError::Invalid(format!(
                "the parts cover {start} bytes but the data holds {total}"
            )));
        }
        let mut res = BatchResult {
            lines: vec![0; parts.len()],
            duplicates_per_part: vec![0; parts.len()],
            ..BatchResult::default()
        };
        // each part's receipt, rendered once for all its events
        let receipts: Vec<Option<Vec<u8>>> = parts
            .iter()
            .map(|p| {
                self.cfg.add_receipt.then(|| {
                    Receipt {
                        received_at: &segment::format_time_ms(p.received_at_ms),
                        peer: &p.peer,
                        agent: p.agent.as_deref(),
                    }
                    .canonical()
                })
            })
            .collect();
        let contexts: Vec<EventContext<'_>> = parts
            .iter()
            .zip(&receipts)
            .map(|(part, receipt)| EventContext {
                account_id: &self.cfg.account_id,
                region: &self.cfg.region,
                max_event_bytes: self.cfg.max_event_bytes,
                receipt: receipt.as_deref(),
                received_at_secs: part.received_at_ms.div_euclid(1000),
                index: self.feed.is_some(),
            })
            .collect();
        let mut lines = Vec::with_capacity(total / 1024 + 16);
        for (pi, data) in part_data.iter().enumerate() {
            let mut lineno = 0u64;
            for text in lines::non_blank(data) {
                lineno += 1;
                lines.push(Line {
                    part: pi,
                    lineno,
                    text,
                });
            }
            res.lines[pi] = lineno;
        }

        // 1. parse, validate, fill defaults, canonicalize and hash every event: in parallel over
        // contiguous slices of the lines, each with its own output buffer; meanwhile, on this
        // thread and in input order, as slices complete:
        // 2. dedup, routing, the chain, appending to each stream's batch and its content hash.
        // Room for every event of the batch in any one stream (canonical events grow by their
        // defaults and receipt): the stream buffers rarely regrow; untouched pages cost nothing.
        let room = total + lines.len() * 640 + segment::HEADER.len();
        // The calling thread stages slices too unless the history's feed is backing up: then
        // ingest leaves the cores some idle moments for the idle-priority indexer to catch up.
        let caller_stages = self
            .feed
            .as_ref()
            .is_none_or(|f| f.stats().0 < FEED_CATCH_UP_EVENTS);
        let mut seq = Sequencer {
            dedup: &mut self.dedup,
            trails: &self.trails,
            home_region: &self.cfg.region,
            streams: Vec::new(),
            targets: Vec::new(),
            room,
            res: &mut res,
            zstd_level: self.cfg.zstd_level,
            error: None,
            slice_buffers: &self.slice_buffers,
            content_buffers: &self.content_buffers,
        };
        stage_in_order(
            &lines,
            &contexts,
            &self.selectors,
            &self.slice_buffers,
            caller_stages,
            &mut seq,
        );
        if let Some(e) = seq.error {
            return self.fail(Err(e));
        }
        let streams = seq.streams;
        drop(contexts);

        // 3. compress every stream's frames in parallel; then write.
        let r = self.append_all(streams);
        let (u, c) = self.fail(r)?;
        res.uncompressed_bytes += u;
        res.compressed_bytes += c;
        Ok(res)
    }

    /// Append each stream's batch (its frames cut between events), creating segments as needed
    /// (in the order the streams were first touched, which is the order their seqs are taken).
    /// Every frame is compressed in parallel (the content hashes were taken while sequencing).
    fn append_all(&mut self, mut streams: Vec<StreamBatch>) -> Result<(u64, u64)> {
        if streams.is_empty() {
            return Ok((0, 0));
        }
        for s in &streams {
            let trail = &mut self.trails[s.trail];
            let key = (s.account.clone(), s.region.clone(), s.insight);
            if !trail.open.contains_key(&key) {
                let meta = SegmentMeta {
                    trail: trail.name.clone(),
                    account: key.0.clone(),
                    region: key.1.clone(),
                    insight: key.2,
                    seq: trail.next_seq,
                    chain_start: trail.chain_head(&key),
                    opened_at_ms: now_ms(),
                };
                trail.next_seq += 1;
                let seg = Segment::create(&trail.open_dir, meta)?;
                self.dirty_dirs.insert(trail.open_dir.clone());
                trail.open.insert(key, seg);
            }
        }
        // The frames not cut while sequencing: a large rest is cut into about one frame per
        // thread (never less than MIN_PARALLEL_FRAME bytes each, nor more than
        // MAX_PARALLEL_FRAME, as many as a multiple of the threads) so that they compress in
        // parallel, with every frame cut before and not compressed yet.
        let threads = rayon::current_num_threads().max(1);
        for s in &mut streams {
            let len = s.batch.content.len() - s.cut;
            let mut target = len.div_ceil(threads).max(MIN_PARALLEL_FRAME);
            if target > MAX_PARALLEL_FRAME {
                let n = len.div_ceil(MAX_PARALLEL_FRAME).next_multiple_of(threads);
                target = len.div_ceil(n).max(MIN_PARALLEL_FRAME);
            }
            s.cut_frames(target);
        }
        let level = self.cfg.zstd_level;
        let todo: Vec<(usize, usize)> = streams
            .iter()
            .enumerate()
            .flat_map(|(si, s)| {
                s.frames
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, out))| out.is_none())
                    .map(move |(fi, _)| (si, fi))
            })
            .collect();
        let compressed: Vec<Vec<u8>> = todo
            .par_iter()
            .map(|&(si, fi)| {
                let s = &streams[si];
                segment::compress_frame_here(level, &s.batch.content[s.frames[fi].0.clone()])
            })
            .collect::<Result<_>>()?;
        for (&(si, fi), frame) in todo.iter().zip(compressed) {
            streams[si].frames[fi].1 = Some(frame);
        }
        // each stream's frames, written with one write; (content length, compressed length)
        type Frames = (Vec<u8>, Vec<(usize, usize)>);
        let mut per_stream: Vec<Frames> = Vec::with_capacity(streams.len());
        for s in &mut streams {
            let size = s.frames.iter().flat_map(|(_, out)| out).map(Vec::len).sum();
            let (mut bytes, mut lens) = (Vec::with_capacity(size), Vec::new());
            for (range, out) in s.frames.drain(..) {
                let frame = out.ok_or_else(|| {
                    CoreError::Invalid("internal: a frame left uncompressed".into())
                })?;
                lens.push((range.len(), frame.len()));
                bytes.extend_from_slice(&frame);
            }
            per_stream.push((bytes, lens));
        }
        let (mut uncompressed, mut compressed) = (0u64, 0u64);
        for (s, (frames, lens)) in streams.into_iter().zip(per_stream) {
            let trail = &mut self.trails[s.trail];
            let key = (s.account, s.region, s.insight);
            let seg = trail
                .open
                .get_mut(&key)
                .ok_or_else(|| CoreError::Invalid("internal: open segment vanished".into()))?;
            uncompressed += s.batch.content.len() as u64;
            compressed += frames.len() as u64;
            let at = seg.compressed_bytes;
            let content = seg.append_hashed(&frames, s.batch, s.hasher)?;
            self.content_buffers.give(content);
            if let Some(feed) = &self.feed {
                if !s.fed.is_empty() {
                    feed_frames(
                        feed,
                        &trail.name,
                        seg.meta.seq,
                        at,
                        key.2,
                        &frames,
                        &lens,
                        s.fed,
                        &s.ends,
                    );
                }
            }
        }
        Ok((uncompressed, compressed))
    }

    /// fsync every segment written and every directory changed since the last sync.
    pub fn sync(&mut self) -> Result<()> {
        let pending = self.prepare_sync()?;
        let r = pending.run();
        self.fail(r)
    }

    /// The first half of [`Spool::sync`], for callers that fsync without holding the spool:
    /// collect (and mark clean) what was written since the last sync, as handles of their own, so
    /// that the next `process` may run while [`PendingSync::run`] fsyncs. Whoever acknowledges
    /// must run the syncs one at a time, in the order they were prepared (a later prepare finds
    /// nothing that an earlier, still running one took), and call [`Spool::sync_failed`] on error.
    pub fn prepare_sync(&mut self) -> Result<PendingSync> {
        self.check()?;
        let mut files = Vec::new();
        let mut opened = Ok(());
        'trails: for t in &mut self.trails {
            for seg in t.open.values_mut().filter(|s| s.dirty) {
                // fsync flushes the file (inode), whichever descriptor it is called on
                match std::fs::File::open(&seg.data_path) {
                    Ok(f) => files.push((seg.data_path.clone(), f)),
                    Err(e) => {
                        opened = Err(CoreError::io("open to fsync", &seg.data_path, e));
                        break 'trails;
                    }
                }
                seg.dirty = false;
            }
        }
        self.fail(opened)?;
        Ok(PendingSync {
            files,
            dirs: self.dirty_dirs.drain().collect(),
        })
    }

    /// Record that a [`PendingSync`] failed: the spool refuses further work.
    pub fn sync_failed(&mut self, e: &CoreError) {
        self.failed = Some(e.to_string());
    }

    fn trail_index(&self, trail: &str) -> Result<usize> {
        self.trails
            .iter()
            .position(|t| t.name == trail)
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "no trail {trail:?} in this spool (its trails are {:?})",
                    self.cfg.trails.iter().map(|t| &t.name).collect::<Vec<_>>()
                ))
            })
    }

    pub fn open_segments(&self) -> Vec<OpenSegmentInfo> {
        let mut out: Vec<OpenSegmentInfo> = self
            .trails
            .iter()
            .flat_map(|t| t.open.values())
            .filter(|s| s.event_count > 0)
            .map(|s| OpenSegmentInfo {
                trail: s.meta.trail.clone(),
                account: s.meta.account.clone(),
                region: s.meta.region.clone(),
                insight: s.meta.insight,
                seq: s.meta.seq,
                path: s.data_path.clone(),
                event_count: s.event_count,
                uncompressed_bytes: s.uncompressed_bytes,
                opened_at_ms: s.meta.opened_at_ms,
            })
            .collect();
        out.sort_by(|a, b| (&a.trail, a.seq).cmp(&(&b.trail, b.seq)));
        out
    }

    /// Seal the stream's open segment (see the module docs for the order of steps): for a gzip
    /// trail, [`Spool::seal_start`] and then [`PendingGzip::run`] in one call.
    pub fn seal(
        &mut self,
        trail: &str,
        account: &str,
        region: &str,
        insight: bool,
        object_key: &str,
    ) -> Result<Option<SealedFile>> {
        match self.seal_start(trail, account, region, insight, object_key)? {
            None => Ok(None),
            Some(Sealing::Done(sealed)) => Ok(Some(sealed)),
            Some(Sealing::Gzip(pending)) => {
                let r = pending.run();
                self.fail(r).map(Some)
            }
        }
    }

    /// The part of a seal that needs the spool: for a zstd trail all of it; for a gzip trail
    /// closing the segment, its eventIDs, the manifest and the chain head, leaving the transcode
    /// to [`PendingGzip::run`], which needs no `&mut Spool` (the closed segment belongs to the
    /// caller alone), so ingest goes on meanwhile. Until it has run, [`Spool::sealed_files`]
    /// does not list the file; if it never runs (a crash), the next open finishes it.
    pub fn seal_start(
        &mut self,
        trail: &str,
        account: &str,
        region: &str,
        insight: bool,
        object_key: &str,
    ) -> Result<Option<Sealing>> {
        self.check()?;
        let ti = self.trail_index(trail)?;
        let key = (account.to_owned(), region.to_owned(), insight);
        let Some(seg) = self.trails[ti].open.remove(&key) else {
            return Ok(None);
        };
        let r = self.seal_segment(ti, key, seg, object_key);
        self.fail(r).map(Some)
    }

    /// Record that a [`PendingGzip`] failed: the spool refuses further work (reopen to recover).
    pub fn seal_failed(&mut self, e: &CoreError) {
        self.failed = Some(e.to_string());
    }

    fn seal_segment(
        &mut self,
        ti: usize,
        key: StreamKey,
        mut seg: Segment,
        object_key: &str,
    ) -> Result<Sealing> {
        seg.close(&mut self.compressor)?;
        self.dedup
            .persist(seg.event_ids.iter().map(String::as_str))?;
        let t = &mut self.trails[ti];
        let name = seg.meta.name();
        let path = t.sealed_dir.join(format!("{name}.log"));
        let manifest_path = t.sealed_dir.join(format!("{name}.json"));
        let mut sealed = SealedFile {
            trail: t.name.clone(),
            account: seg.meta.account.clone(),
            region: seg.meta.region.clone(),
            insight: seg.meta.insight,
            seq: seg.meta.seq,
            object_key: object_key.to_owned(),
            path: path.clone(),
            manifest_path: manifest_path.clone(),
            sha256: seg.sha256_hex(),
            event_count: seg.event_count,
            oldest_event_time: segment::format_time(seg.oldest),
            newest_event_time: segment::format_time(seg.newest),
            chain_start: chain::to_hex(&seg.meta.chain_start),
            chain_end: chain::to_hex(&seg.chain_end),
            compression: "zstd".into(),
            compressed_bytes: seg.compressed_bytes,
            uncompressed_bytes: seg.uncompressed_bytes,
        };
        let level = match t.compression {
            LogCompression::Zstd => {
                write_atomic(&manifest_path, &sealed.to_json())?;
                std::fs::rename(&seg.data_path, &path)
                    .map_err(|e| CoreError::io("move sealed segment to", &path, e))?;
                remove(&seg.meta_path)?;
                None
            }
            LogCompression::Gzip(level) => {
                // The manifest says "gzip" before the transcode: from here on, recovery finishes
                // the seal (redoes the transcode) instead of reopening the segment, so the
                // stream's next segment may be opened and chained on at once.
                sealed.compression = "gzip".into();
                write_atomic(&manifest_path, &sealed.to_json())?;
                crash_point("gzip-started")?;
                Some(level)
            }
        };
        t.heads.insert(
            key,
            Head {
                chain: seg.chain_end,
                seq: seg.meta.seq,
            },
        );
        t.write_heads()?;
        fsync_dir(&t.open_dir)?;
        fsync_dir(&t.sealed_dir)?;
        Ok(match level {
            None => Sealing::Done(sealed),
            Some(level) => Sealing::Gzip(PendingGzip {
                open_dir: t.open_dir.clone(),
                dest: path,
                seg,
                sealed,
                level,
            }),
        })
    }

    pub fn sealed_files(&self, trail: &str) -> Result<Vec<SealedFile>> {
        let t = &self.trails[self.trail_index(trail)?];
        let mut out = Vec::new();
        for p in list_dir(&t.sealed_dir)? {
            // A manifest without its log is a gzip seal whose transcode has not run yet.
            if file_name(&p).ends_with(".json") && p.with_extension("log").exists() {
                out.push(SealedFile::from_manifest(&p)?);
            }
        }
        out.sort_by_key(|s| s.seq);
        Ok(out)
    }

    /// Delete a delivered sealed file and its manifest (no error if already gone).
    pub fn remove_sealed(&mut self, trail: &str, seq: u64) -> Result<()> {
        let t = &self.trails[self.trail_index(trail)?];
        let prefix = format!("{seq:012}-");
        for p in list_dir(&t.sealed_dir)? {
            let n = file_name(&p);
            if n.starts_with(&prefix) && n.ends_with(".json") {
                // Manifest first: a log without a manifest is removed at the next open.
                remove(&p)?;
                remove(&p.with_extension("log"))?;
            }
        }
        fsync_dir(&t.sealed_dir)
    }
    /// Add a trail at run time, or change an existing one's selectors, `multi_region` and
    /// compression. Takes effect from the next `process`; an open segment stays where it is (a
    /// changed compression applies when it is sealed). A new trail's directory is created and
    /// recovered like at open (a trail removed and added again continues its chains).
    pub fn upsert_trail(&mut self, spec: TrailSpec) -> Result<()> {
        self.check()?;
        check_trail_name(&spec.name)?;
        if let LogCompression::Gzip(level) = spec.compression {
            if !(1..=9).contains(&level) {
                return Err(CoreError::Invalid(format!(
                    "trail {:?}: gzip level {level} is not 1 to 9",
                    spec.name
                )));
            }
        }
        if let Some(i) = self.trails.iter().position(|t| t.name == spec.name) {
            let t = &mut self.trails[i];
            t.multi_region = spec.multi_region;
            t.compression = spec.compression;
            self.selectors[i] = spec.selectors.clone();
            self.cfg.trails[i] = spec;
            return Ok(());
        }
        if self.trails.len() >= MAX_TRAILS {
            return Err(CoreError::Invalid(format!(
                "trail {:?}: one spool holds at most {MAX_TRAILS} trails",
                spec.name
            )));
        }
        let t = Trail::open(&self.cfg.spool_dir, &spec, &mut self.dedup, &mut self.notes)?;
        fsync_dir(&self.cfg.spool_dir)?;
        self.trails.push(t);
        self.selectors.push(spec.selectors.clone());
        self.cfg.trails.push(spec);
        Ok(())
    }

    /// Turn routing to a trail on or off (CloudTrail's StartLogging / StopLogging). While off,
    /// no event is written to it; what it already holds is sealed and delivered as usual.
    pub fn set_logging(&mut self, trail: &str, on: bool) -> Result<()> {
        let i = self.trail_index(trail)?;
        self.trails[i].logging = on;
        Ok(())
    }

    /// Remove a trail that holds nothing any more (no open segment, no sealed file): its spool
    /// directory is deleted. Refused otherwise: seal and deliver first.
    pub fn remove_trail(&mut self, trail: &str) -> Result<()> {
        self.check()?;
        let i = self.trail_index(trail)?;
        if self.trails.len() == 1 {
            return Err(CoreError::Invalid(format!(
                "trail {trail:?} is the spool's last trail; it keeps at least one"
            )));
        }
        let t = &self.trails[i];
        if t.open.values().any(|s| s.event_count > 0) {
            return Err(CoreError::Invalid(format!(
                "trail {trail:?} still has an open segment: seal it first"
            )));
        }
        if !self.sealed_files(trail)?.is_empty() {
            return Err(CoreError::Invalid(format!(
                "trail {trail:?} still has sealed files to deliver"
            )));
        }
        let dir = t.dir.clone();
        self.trails.remove(i);
        self.selectors.remove(i);
        self.cfg.trails.remove(i);
        std::fs::remove_dir_all(&dir).map_err(|e| CoreError::io("remove", &dir, e))?;
        fsync_dir(&self.cfg.spool_dir)
    }
}

/// A directory under the system temp dir, removed when dropped (the unit tests' spools).
#[cfg(test)]
pub(crate) struct TempDir(pub(crate) PathBuf);

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
pub(crate) fn temp(tag: &str) -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    TempDir(std::env::temp_dir().join(format!(
        "trailseal-spool-{tag}-{}-{nanos}",
        std::process::id()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{self, Compression};

    const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];

    /// 1,200 lines over three streams: large events (so a stream's batch is cut into several
    /// frames), every 37th line invalid, every 50th blank, eventIDs repeating after 900 lines.
    fn lines() -> Vec<Vec<u8>> {
        (0..1200usize)
            .map(|i| {
                if i % 50 == 49 {
                    b" \t\r".to_vec()
                } else if i % 37 == 36 {
                    format!("{{\"eventName\":\"Bad{i}\"").into_bytes()
                } else {
                    format!(
                        "{{\"eventName\":\"GetObject\",\"eventSource\":\"s3.amazonaws.com\",\
                         \"eventTime\":\"2026-01-01T00:{:02}:00Z\",\"eventID\":\"id-{}\",\
                         \"awsRegion\":\"{}\",\"requestParameters\":{{\"n\":{i},\"pad\":\"{}\"}}}}",
                        i % 60,
                        i % 900,
                        REGIONS[i % 3],
                        "x".repeat(5000 + i)
                    )
                    .into_bytes()
                }
            })
            .collect()
    }

    /// Totals, the (code, message) of every error in order, and per region the sealed file's
    /// sha256, chain end and event count (after checking it with `verify_log`).
    type Outcome = (
        (u64, u64, u64),
        Vec<(String, String)>,
        Vec<(String, String, u64)>,
    );

    fn run(tag: &str, batch_lines: usize) -> Outcome {
        run_fed(tag, batch_lines, None)
    }

    fn run_fed(tag: &str, batch_lines: usize, feed: Option<std::sync::Arc<Feed>>) -> Outcome {
        let dir = temp(tag);
        let mut spool = Spool::open(SpoolConfig::new(
            &dir.0,
            vec!["main".into()],
            "111122223333",
            "us-east-1",
        ))
        .expect("open");
        spool.feed_history(feed);
        let (mut totals, mut errors) = ((0, 0, 0), Vec::new());
        for chunk in lines().chunks(batch_lines) {
            // two parts per batch, from the same peer at the same time
            let mut data = Vec::new();
            let mut parts = Vec::new();
            for half in chunk.chunks(chunk.len().div_ceil(2)) {
                for line in half {
                    data.extend_from_slice(line);
                    data.push(b'\n');
                }
                parts.push(Part {
                    end: data.len(),
                    peer: "unix:uid=1,pid=2".into(),
                    agent: None,
                    received_at_ms: 1_767_225_600_000,
                });
            }
            let r = spool.process(&data, &parts).expect("process");
            totals.0 += r.accepted;
            totals.1 += r.duplicates;
            totals.2 += r.rejected;
            errors.extend(r.errors.into_iter().map(|e| (e.2.to_owned(), e.3)));
            spool.sync().expect("sync");
        }
        let mut sealed = Vec::new();
        for region in REGIONS {
            let f = spool
                .seal("main", "111122223333", region, false, "key")
                .expect("seal")
                .expect("a segment");
            let data = std::fs::read(&f.path).expect("read sealed file");
            let report = verify::verify_log(&data, Compression::Zstd, &chain::ZERO);
            assert_eq!(report.problems, Vec::<String>::new(), "{region}");
            assert_eq!(report.sha256, f.sha256, "{region}");
            assert_eq!(report.chain_end, f.chain_end, "{region}");
            assert_eq!(report.event_count, f.event_count, "{region}");
            sealed.push((f.sha256, f.chain_end, f.event_count));
        }
        (totals, errors, sealed)
    }

    #[test]
    fn buffers_come_back_empty_and_only_so_many_are_kept() {
        let pool = Buffers::new(2);
        let mut a = pool.take(100);
        assert!(a.is_empty() && a.capacity() >= 100);
        a.extend_from_slice(b"left over");
        let a_ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(10);
        // the kept buffer, emptied
        assert!(b.is_empty() && b.as_ptr() == a_ptr);
        for _ in 0..3 {
            pool.give(vec![0u8; 16]);
        }
        pool.give(Vec::with_capacity(Buffers::MAX_KEPT + 1));
        let kept = pool.spare.lock().map(|s| s.len()).unwrap_or(0);
        assert_eq!(kept, 2);
    }

    #[test]
    fn a_backed_up_history_feed_changes_who_stages_not_the_output() {
        // a feed holding FEED_CATCH_UP_EVENTS waiting events (of another trail):
        // the calling thread leaves the per-event stage to the pool's workers
        let feed = std::sync::Arc::new(Feed::default());
        let waiting = crate::history::FedEvent {
            time_ms: 0,
            lookup: crate::history::EventLookup::default(),
        };
        feed.push(
            "elsewhere",
            1,
            crate::history::FedFrame {
                offset: 0,
                len: 10,
                sum: 0,
                content_len: 10,
                insight: false,
                events: vec![waiting; FEED_CATCH_UP_EVENTS],
            },
        );
        assert_eq!(feed.stats().0, FEED_CATCH_UP_EVENTS);
        assert_eq!(run_fed("backed-up", 1200, Some(feed)), run("not-fed", 1200));
    }

    #[test]
    fn parallel_batches_match_sequential_ones() {
        // one batch of 1,200 lines (parallel stage, several frames per stream) against batches
        // of 20 lines (below MIN_PARALLEL_LINES: staged on the calling thread, one frame each)
        let big = run("big", 1200);
        let small = run("small", 20);
        assert_eq!(big, small);
        let ((accepted, duplicates, rejected), errors, sealed) = big;
        assert_eq!(rejected, 32);
        assert_eq!(errors.len(), 32);
        assert!(errors.iter().all(|(code, _)| code == "InvalidJson"));
        assert_eq!(accepted + duplicates + rejected, 1200 - 24);
        assert!(duplicates > 0);
        assert_eq!(sealed.iter().map(|s| s.2).sum::<u64>(), accepted);
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;
    use crate::verify::{self, Compression};

    const HOME: &str = "us-east-1";

    fn spec(name: &str, selectors: &str, multi_region: bool, gzip: bool) -> TrailSpec {
        TrailSpec {
            name: name.into(),
            selectors: Selectors::from_json(selectors).expect("valid selectors"),
            multi_region,
            compression: if gzip {
                LogCompression::Gzip(6)
            } else {
                LogCompression::Zstd
            },
        }
    }

    fn trails() -> Vec<TrailSpec> {
        vec![
            spec("all", "{}", true, false),
            spec(
                "writes",
                r#"{"advanced_event_selectors":[{"Name":"w","FieldSelectors":[
                    {"Field":"eventCategory","Equals":["Management"]},
                    {"Field":"readOnly","Equals":["false"]},
                    {"Field":"eventSource","Equals":["ec2.amazonaws.com","iam.amazonaws.com"]}]}]}"#,
                true,
                true,
            ),
            spec(
                "data",
                r#"{"event_selectors":[{"ReadWriteType":"All","IncludeManagementEvents":false,
                    "DataResources":[{"Type":"AWS::S3::Object","Values":["arn:aws:s3:::logs/in/"]}]}]}"#,
                true,
                false,
            ),
            spec("home", "{}", false, false),
        ]
    }

    /// (eventID, line, trails that must hold it)
    fn events() -> Vec<(&'static str, String, Vec<&'static str>)> {
        let ev = |id: &str, extra: &str| {
            format!(r#"{{"eventID":"{id}","eventTime":"2026-01-01T00:00:00Z"{extra}}}"#)
        };
        vec![
            (
                "run",
                ev(
                    "run",
                    r#","eventName":"RunInstances","eventSource":"ec2.amazonaws.com""#,
                ),
                vec!["all", "writes", "home"],
            ),
            (
                "describe",
                ev(
                    "describe",
                    r#","eventName":"DescribeInstances","eventSource":"ec2.amazonaws.com""#,
                ),
                vec!["all", "home"],
            ),
            (
                "s3-write",
                ev(
                    "s3-write",
                    r#","eventName":"CreateBucket","eventSource":"s3.amazonaws.com""#,
                ),
                vec!["all", "home"],
            ),
            (
                "iam-eu",
                ev(
                    "iam-eu",
                    r#","eventName":"CreateUser","eventSource":"iam.amazonaws.com","awsRegion":"eu-west-1""#,
                ),
                vec!["all", "writes"],
            ),
            (
                "put-in",
                ev(
                    "put-in",
                    r#","eventName":"PutObject","eventSource":"s3.amazonaws.com","eventCategory":"Data","resources":[{"type":"AWS::S3::Bucket","ARN":"arn:aws:s3:::logs"},{"type":"AWS::S3::Object","ARN":"arn:aws:s3:::logs/in/a.txt"}]"#,
                ),
                vec!["data"],
            ),
            (
                "put-out",
                ev(
                    "put-out",
                    r#","eventName":"PutObject","eventSource":"s3.amazonaws.com","eventCategory":"Data","resources":[{"type":"AWS::S3::Object","ARN":"arn:aws:s3:::logs/out/a.txt"}]"#,
                ),
                vec![],
            ),
            (
                "insight",
                ev(
                    "insight",
                    r#","eventName":"RunInstances","eventSource":"ec2.amazonaws.com","eventCategory":"Insight","eventType":"AwsCloudTrailInsight""#,
                ),
                vec![],
            ),
        ]
    }

    fn process(spool: &mut Spool, lines: &[String]) -> BatchResult {
        let mut data = lines.join("\n");
        data.push('\n');
        let part = Part {
            end: data.len(),
            peer: "unix:uid=1,pid=2".into(),
            agent: None,
            received_at_ms: 1_767_225_600_000,
        };
        let r = spool.process(data.as_bytes(), &[part]).expect("process");
        spool.sync().expect("sync");
        r
    }

    /// Seal every open segment; per trail, the eventIDs of its sealed files (each file checked).
    fn seal_all(spool: &mut Spool) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for seg in spool.open_segments() {
            let f = spool
                .seal(&seg.trail, &seg.account, &seg.region, seg.insight, "key")
                .expect("seal")
                .expect("a segment");
            out.entry(f.trail.clone())
                .or_default()
                .extend(check_sealed(&f));
        }
        out
    }

    fn check_sealed(f: &SealedFile) -> Vec<String> {
        let data = std::fs::read(&f.path).expect("read sealed file");
        let compression = if f.compression == "gzip" {
            assert!(data.starts_with(&segment::GZIP_HEADER), "{}", f.trail);
            Compression::Gzip
        } else {
            Compression::Zstd
        };
        assert_eq!(f.compressed_bytes, data.len() as u64);
        let start = chain::from_hex(&f.chain_start).expect("hex");
        let report = verify::verify_log(&data, compression, &start);
        assert_eq!(report.problems, Vec::<String>::new(), "{}", f.trail);
        assert_eq!(report.sha256, f.sha256);
        assert_eq!(report.chain_end, f.chain_end);
        report.event_ids
    }

    #[test]
    fn duplicates_are_counted_per_part() {
        let dir = temp("dup-parts");
        let mut spool = Spool::open(SpoolConfig::new(
            &dir.0,
            vec!["x".into()],
            "111122223333",
            HOME,
        ))
        .expect("open");
        let line = |id: &str| {
            format!(r#"{{"eventID":"{id}","eventName":"GetThing","eventSource":"s.example"}}"#)
        };
        let first = format!("{}\n", line("a"));
        let part = |end: usize| Part {
            end,
            peer: "tcp:127.0.0.1:1".into(),
            agent: None,
            received_at_ms: 1_767_225_600_000,
        };
        let r = spool
            .process(first.as_bytes(), &[part(first.len())])
            .expect("process");
        assert_eq!(r.duplicates_per_part, vec![0]);
        // part 0: a new event and a duplicate; part 1: an invalid line; part 2: two duplicates
        let p0 = format!("{}\n{}\n", line("b"), line("a"));
        let p1 = "{not json\n".to_owned();
        let p2 = format!("{}\n{}\n", line("a"), line("b"));
        let data = format!("{p0}{p1}{p2}");
        let ends = [p0.len(), p0.len() + p1.len(), data.len()];
        let parts: Vec<Part> = ends.iter().map(|&e| part(e)).collect();
        let r = spool.process(data.as_bytes(), &parts).expect("process");
        assert_eq!((r.accepted, r.duplicates, r.rejected), (1, 3, 1));
        assert_eq!(r.duplicates_per_part, vec![1, 0, 2]);
    }

    #[test]
    fn each_event_goes_to_the_trails_that_select_it() {
        let dir = temp("select");
        let mut spool = Spool::open(SpoolConfig {
            trails: trails(),
            ..SpoolConfig::new(&dir.0, vec!["x".into()], "111122223333", HOME)
        })
        .expect("open");
        let evs = events();
        let lines: Vec<String> = evs.iter().map(|e| e.1.clone()).collect();
        let r = process(&mut spool, &lines);
        assert_eq!(r.errors, vec![]);
        assert_eq!((r.accepted, r.unrouted, r.duplicates), (5, 2, 0));
        // a resent event is a duplicate, whether or not a trail took it
        let again = process(&mut spool, &lines[4..]);
        assert_eq!(
            (again.accepted, again.unrouted, again.duplicates),
            (0, 0, 3)
        );
        let mut got = seal_all(&mut spool);
        for name in ["all", "writes", "data", "home"] {
            let mut want: Vec<&str> = evs
                .iter()
                .filter(|e| e.2.contains(&name))
                .map(|e| e.0)
                .collect();
            want.sort_unstable();
            let mut have = got.remove(name).unwrap_or_default();
            have.sort_unstable();
            assert_eq!(have, want, "trail {name}");
        }
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn insight_events_have_their_own_segments_chain_and_sealed_files() {
        let dir = temp("insight");
        let selectors = r#"{"advanced_event_selectors":[
            {"Name":"m","FieldSelectors":[{"Field":"eventCategory","Equals":["Management"]}]},
            {"Name":"i","FieldSelectors":[{"Field":"eventCategory","Equals":["Insight"]}]}]}"#;
        let cfg = || SpoolConfig {
            trails: vec![spec("t", selectors, true, false)],
            ..SpoolConfig::new(&dir.0, vec!["x".into()], "111122223333", HOME)
        };
        let evs = events();
        let (run, insight) = (evs[0].1.clone(), evs[6].1.clone());
        let mut spool = Spool::open(cfg()).expect("open");
        let r = process(&mut spool, &[run.clone(), insight.clone()]);
        assert_eq!(r.accepted, 2);
        let open = spool.open_segments();
        assert_eq!(
            open.iter().map(|s| s.insight).collect::<Vec<_>>(),
            vec![false, true]
        );
        assert!(open[1].path.to_string_lossy().ends_with("+insight.seg"));
        let mut by_kind: HashMap<bool, SealedFile> = HashMap::new();
        for seg in spool.open_segments() {
            let f = spool
                .seal(&seg.trail, &seg.account, &seg.region, seg.insight, "key")
                .expect("seal")
                .expect("a segment");
            assert_eq!(check_sealed(&f).len(), 1);
            by_kind.insert(f.insight, f);
        }
        assert_eq!(check_sealed(&by_kind[&true]), vec!["insight"]);
        assert_eq!(check_sealed(&by_kind[&false]), vec!["run"]);
        // each kind chains on from its own head, also after a reopen
        drop(spool);
        let mut spool = Spool::open(cfg()).expect("reopen");
        let again = |id: &str, line: &str| {
            line.replace("\"run\"", &format!("\"{id}\""))
                .replace("\"insight\"", &format!("\"{id}\""))
        };
        process(
            &mut spool,
            &[again("run-2", &run), again("insight-2", &insight)],
        );
        for seg in spool.open_segments() {
            let f = spool
                .seal(&seg.trail, &seg.account, &seg.region, seg.insight, "key")
                .expect("seal")
                .expect("a segment");
            assert_eq!(f.chain_start, by_kind[&f.insight].chain_end, "{f:?}");
            let manifest = std::fs::read_to_string(&f.manifest_path).expect("manifest");
            assert!(
                manifest.contains(&format!("\"insight\":{}", f.insight)),
                "{manifest}"
            );
        }
        let heads = std::fs::read_to_string(dir.0.join("t").join("heads.json")).expect("heads");
        assert_eq!(heads.matches("\"insight\":true").count(), 1, "{heads}");
    }

    #[test]
    fn trails_are_added_changed_stopped_and_removed_at_run_time() {
        let dir = temp("runtime-trails");
        let mut spool = Spool::open(SpoolConfig {
            trails: vec![spec("all", "{}", true, false)],
            ..SpoolConfig::new(&dir.0, vec!["x".into()], "111122223333", HOME)
        })
        .expect("open");
        let evs = events();
        let line = |i: usize| vec![evs[i].1.clone()];
        process(&mut spool, &line(0)); // run: all
        let w = trails().remove(1);
        spool.upsert_trail(w).expect("add writes");
        process(&mut spool, &line(3)); // iam-eu: all + writes
        spool.set_logging("all", false).expect("stop all");
        process(&mut spool, &line(1)); // describe: nobody now
        spool.set_logging("all", true).expect("start all");
        // writes now takes every management event, and only the home region
        spool
            .upsert_trail(spec("writes", "{}", false, false))
            .expect("change writes");
        process(&mut spool, &line(2)); // s3-write: all + writes
        let err = spool.remove_trail("writes").expect_err("open segment");
        assert!(err.to_string().contains("open segment"), "{err}");
        let mut got = seal_all(&mut spool);
        let mut all = got.remove("all").unwrap_or_default();
        all.sort_unstable();
        assert_eq!(all, vec!["iam-eu", "run", "s3-write"]);
        let mut writes = got.remove("writes").unwrap_or_default();
        writes.sort_unstable();
        assert_eq!(writes, vec!["iam-eu", "s3-write"]);
        // the segment opened as gzip was sealed as zstd: the compression in force at seal
        let sealed = spool.sealed_files("writes").expect("list");
        assert!(sealed.iter().all(|f| f.compression == "zstd"), "{sealed:?}");
        let err = spool.remove_trail("writes").expect_err("sealed files");
        assert!(err.to_string().contains("sealed files"), "{err}");
        for f in sealed {
            spool.remove_sealed("writes", f.seq).expect("remove sealed");
        }
        spool.remove_trail("writes").expect("remove");
        assert!(!dir.0.join("writes").exists());
        assert!(spool.sealed_files("writes").is_err());
        let err = spool.remove_trail("all").expect_err("last trail");
        assert!(err.to_string().contains("last trail"), "{err}");
        // a new batch still routes by index correctly after the removal
        spool
            .upsert_trail(spec("later", "{}", true, false))
            .expect("add later");
        process(&mut spool, &line(4)); // put-in: a data event, neither trail takes it
        let r = process(&mut spool, &[evs[0].1.replace("\"run\"", "\"run-2\"")]);
        assert_eq!(r.accepted, 1);
        let got = seal_all(&mut spool);
        assert_eq!(got.get("all"), Some(&vec!["run-2".to_owned()]));
        assert_eq!(got.get("later"), Some(&vec!["run-2".to_owned()]));
    }

    #[test]
    fn route_expands_the_mask_and_keeps_home_region_trails_home() {
        let dir = temp("mask");
        let spool = Spool::open(SpoolConfig {
            trails: trails(),
            ..SpoolConfig::new(&dir.0, vec!["x".into()], "111122223333", HOME)
        })
        .expect("open");
        let meta = |region: &str, routes: u64| EventMeta {
            event_id: "e".into(),
            event_time: 0,
            account: "111122223333".into(),
            region: region.into(),
            routes,
            insight: false,
            lookup: None,
        };
        let mut out = Vec::new();
        route(&spool.trails, HOME, &meta(HOME, 0b1011), &mut out);
        assert_eq!(out, vec![0, 1, 3]);
        route(&spool.trails, HOME, &meta("eu-west-1", 0b1011), &mut out);
        assert_eq!(out, vec![0, 1]);
        route(&spool.trails, HOME, &meta(HOME, u64::MAX), &mut out);
        assert_eq!(out, vec![0, 1, 2, 3]);
        route(&spool.trails, HOME, &meta(HOME, 0), &mut out);
        assert!(out.is_empty());
    }

    /// A gzip seal cut short at each step is finished or undone at the next open: exactly one
    /// sealed file with every event, and the chain goes on from it.
    #[test]
    fn gzip_seal_cut_short_recovers() {
        for point in [
            "gzip-started",
            "gzip-transcoded",
            "gzip-manifest",
            "gzip-moved",
        ] {
            let dir = temp(point);
            let cfg = SpoolConfig {
                trails: vec![spec("g", "{}", true, true)],
                ..SpoolConfig::new(&dir.0, vec!["x".into()], "111122223333", HOME)
            };
            let line = |i: usize| {
                format!(
                    r#"{{"eventID":"{point}-{i}","eventName":"RunInstances","eventSource":"ec2.amazonaws.com","requestParameters":{{"pad":"{}"}}}}"#,
                    "y".repeat(i * 7)
                )
            };
            let mut spool = Spool::open(cfg.clone()).expect("open");
            let lines: Vec<String> = (0..200).map(line).collect();
            assert_eq!(process(&mut spool, &lines).accepted, 200);
            CRASH_AT.with(|c| c.set(Some(point)));
            spool
                .seal("g", "111122223333", HOME, false, "key")
                .expect_err("crashed");
            drop(spool);

            let mut spool = Spool::open(cfg.clone()).expect("reopen");
            let mut ids: Vec<String> = Vec::new();
            // the manifest was written before the transcode: every point finishes the seal
            let sealed = spool.sealed_files("g").expect("sealed");
            assert!(spool.open_segments().is_empty(), "{point}");
            assert_eq!(sealed.len(), 1, "{point}");
            assert_eq!(sealed[0].compression, "gzip");
            ids.extend(check_sealed(&sealed[0]));
            assert_eq!(ids.len(), 200, "{point}");
            let leftovers: Vec<PathBuf> = list_dir(&dir.0.join("g/open")).expect("ls");
            assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
            // resent: all duplicates; new events chain on from the sealed file
            assert_eq!(process(&mut spool, &lines).duplicates, 200, "{point}");
            process(&mut spool, &[line(1000)]);
            let next = spool
                .seal("g", "111122223333", HOME, false, "key")
                .expect("seal")
                .expect("a segment");
            assert_eq!(next.chain_start, sealed[0].chain_end, "{point}");
            check_sealed(&next);
        }
    }

    /// A gzip seal's transcode runs without the spool: meanwhile the stream takes new events and
    /// may seal again (chained on), the pending file is not listed, and once it has run both
    /// files are whole; a crash before it runs is finished at the next open.
    #[test]
    fn gzip_transcode_runs_outside_the_spool() {
        let dir = temp("gzip-pending");
        let cfg = SpoolConfig {
            trails: vec![spec("g", "{}", true, true)],
            ..SpoolConfig::new(&dir.0, vec!["x".into()], "111122223333", HOME)
        };
        let line = |i: usize| {
            format!(
                r#"{{"eventID":"p-{i}","eventName":"RunInstances","eventSource":"ec2.amazonaws.com"}}"#
            )
        };
        let mut spool = Spool::open(cfg.clone()).expect("open");
        let first: Vec<String> = (0..100).map(line).collect();
        assert_eq!(process(&mut spool, &first).accepted, 100);
        let Some(Sealing::Gzip(pending)) = spool
            .seal_start("g", "111122223333", HOME, false, "k1")
            .expect("seal_start")
        else {
            panic!("a gzip trail's seal leaves the transcode pending");
        };
        assert!(pending.segment_path().exists());
        assert!(spool.sealed_files("g").expect("sealed").is_empty());
        // ingest goes on: new events, a second seal of the same stream, both while pending
        let second: Vec<String> = (100..150).map(line).collect();
        assert_eq!(process(&mut spool, &first).duplicates, 100);
        assert_eq!(process(&mut spool, &second).accepted, 50);
        let Some(Sealing::Gzip(pending2)) = spool
            .seal_start("g", "111122223333", HOME, false, "k2")
            .expect("seal_start")
        else {
            panic!("pending");
        };
        let b = pending2.run().expect("run second");
        let a = pending.run().expect("run first");
        assert_eq!(b.chain_start, a.chain_end);
        assert_eq!(check_sealed(&a).len(), 100);
        assert_eq!(check_sealed(&b).len(), 50);
        let listed = spool.sealed_files("g").expect("sealed");
        assert_eq!(
            listed.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [a.seq, b.seq]
        );
        assert_eq!(listed[0].compressed_bytes, a.compressed_bytes);

        // a pending transcode that never runs (a crash) is finished at the next open
        let third: Vec<String> = (150..170).map(line).collect();
        assert_eq!(process(&mut spool, &third).accepted, 20);
        let Some(Sealing::Gzip(lost)) = spool
            .seal_start("g", "111122223333", HOME, false, "k3")
            .expect("seal_start")
        else {
            panic!("pending");
        };
        drop(lost);
        drop(spool);
        let spool = Spool::open(cfg).expect("reopen");
        let listed = spool.sealed_files("g").expect("sealed");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[2].chain_start, b.chain_end);
        assert_eq!(listed[2].compression, "gzip");
        assert_eq!(check_sealed(&listed[2]).len(), 20);
        assert!(spool.open_segments().is_empty());
    }
}
