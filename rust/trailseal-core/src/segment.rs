//! Open segments: append-only files of zstd frames that become log files (FORMATS.md §4).
//!
//! On-disk layout (under `<spool_dir>/<trail>/open/`):
//! - `<name>.seg.json`: `{"trail","account","region","seq","chain_start","opened_at_ms"}`, written
//!   atomically (tmp, fsync, rename, fsync dir) *before* `<name>.seg` is created;
//! - `<name>.seg`: concatenated zstd frames, each single-segment (window log [`WINDOW_LOG`], so no
//!   window descriptor), with content size and checksum, no dictionary ID; a batch's content is
//!   cut between events into frames of at most [`MAX_FRAME_CONTENT`] bytes. Decoded and
//!   concatenated they are a prefix of the log document
//!   `{"Records":[\n` event (`,\n` event)* `\n]}\n`: the first frame starts with the header, each
//!   later batch's frame holds `,\n`-prefixed events, and sealing appends the closing frame
//!   `\n]}\n` (so a segment whose content ends with it was closed).
//!
//! `<name>` is `<seq:012>-<account>-<region>` (region escaped to be a safe file name).
//! Invariants: every whole frame was written by one `append` and ends at an event boundary; a torn tail (crash mid-write) is an
//! incomplete or undecodable last frame, and recovery truncates the file to the last whole frame.
//! Canonical events hold no raw newline, so the content splits into events on `\n`.
//!
//! A gzip trail's closed segment is transcoded at seal by [`transcode_gzip`] into exactly one gzip
//! member (FORMATS.md §4) in the canonical form `verify::strict_gzip` accepts: the fixed header
//! [`GZIP_HEADER`], one raw deflate stream (zero padding bits after its final block), CRC-32 and
//! size, nothing after.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::chain::{self, ChainValue};
use crate::error::{CoreError, Result};

pub const HEADER: &[u8] = b"{\"Records\":[\n";
pub const SEPARATOR: &[u8] = b",\n";
pub const FOOTER: &[u8] = b"\n]}\n";

// ---------------------------------------------------------------------------------------------
// small file-system helpers

/// fsync a directory (so that creations, renames and removals in it are durable).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CoreError::io("fsync directory", dir, e))
}

/// Replace `path` atomically with `bytes`: write `<path>.tmp`, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| CoreError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| CoreError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| CoreError::io("fsync", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| CoreError::io("rename into place", path, e))?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// A file-name-safe form of an account or region: `[A-Za-z0-9._-]` kept, other bytes `%XX`;
/// long names are shortened with a hash suffix.
pub fn file_name_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 64 {
        let digest = Sha256::digest(s.as_bytes());
        out.truncate(40);
        out.push('~');
        out.push_str(&hex::encode(&digest[..8]));
    }
    out
}

/// `<seq:012>-<account>-<region>`, with `+insight` for an Insight stream (`+` is escaped in
/// the account and region parts, so the suffix is unambiguous).
pub fn segment_name(seq: u64, account: &str, region: &str, insight: bool) -> String {
    format!(
        "{seq:012}-{}-{}{}",
        file_name_part(account),
        file_name_part(region),
        if insight { "+insight" } else { "" }
    )
}

// ---------------------------------------------------------------------------------------------
// event times

const TIME_FORMAT: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const RECEIPT_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// `YYYY-MM-DDTHH:MM:SSZ` of epoch seconds.
pub fn format_time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(TIME_FORMAT).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of epoch milliseconds.
pub fn format_time_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(RECEIPT_FORMAT).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// Epoch seconds of a stored eventTime `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(text: &str) -> Option<i64> {
    time::PrimitiveDateTime::parse(text, TIME_FORMAT)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

// ---------------------------------------------------------------------------------------------
// content: the log document and its events

/// The events of a (possibly unfinished) log document, and whether it was closed.
#[derive(Debug)]
pub struct Split<'a> {
    pub events: Vec<&'a [u8]>,
    pub closed: bool,
}

/// Split content that is a prefix of a log document (ending after an event, or closed) into its
/// events. Errors say what is wrong with the layout.
pub fn split_events(content: &[u8]) -> std::result::Result<Split<'_>, String> {
    if !content.starts_with(HEADER) {
        return Err("content does not start with {\"Records\":[ and a newline".into());
    }
    let closed = content.len() >= HEADER.len() + FOOTER.len() - 1 && content.ends_with(FOOTER);
    if content == b"{\"Records\":[\n]}\n" {
        return Ok(Split {
            events: Vec::new(),
            closed: true,
        });
    }
    let body_end = if closed {
        content.len() - FOOTER.len()
    } else {
        content.len()
    };
    if body_end < HEADER.len() {
        return Err("content is shorter than its header".into());
    }
    let body = &content[HEADER.len()..body_end];
    if body.is_empty() {
        return Ok(Split {
            events: Vec::new(),
            closed,
        });
    }
    let pieces: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let last = pieces.len() - 1;
    let mut events = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.into_iter().enumerate() {
        let ev = if i < last {
            match piece.strip_suffix(b",") {
                Some(ev) => ev,
                None => return Err(format!("event {}: line does not end with a comma", i + 1)),
            }
        } else {
            piece
        };
        if ev.is_empty() {
            return Err(format!("event {}: empty line", i + 1));
        }
        events.push(ev);
    }
    Ok(Split { events, closed })
}

/// eventID and eventTime (epoch seconds) of a canonical event.
pub fn event_id_and_time(event: &[u8]) -> std::result::Result<(String, i64), String> {
    let v: serde_json::Value =
        serde_json::from_slice(event).map_err(|e| format!("not valid JSON: {e}"))?;
    let id = v
        .get("eventID")
        .and_then(|x| x.as_str())
        .ok_or("eventID is missing or not a string")?
        .to_owned();
    let t = v
        .get("eventTime")
        .and_then(|x| x.as_str())
        .ok_or("eventTime is missing")?;
    let secs =
        parse_time(t).ok_or_else(|| format!("eventTime {t:?} is not YYYY-MM-DDTHH:MM:SSZ"))?;
    Ok((id, secs))
}

// ---------------------------------------------------------------------------------------------
// metadata

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    pub trail: String,
    pub account: String,
    pub region: String,
    /// The stream's Insight events (their own log files and chain), else its other events.
    pub insight: bool,
    pub seq: u64,
    pub chain_start: ChainValue,
    pub opened_at_ms: i64,
}

impl SegmentMeta {
    pub fn name(&self) -> String {
        segment_name(self.seq, &self.account, &self.region, self.insight)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::json!({
            "trail": self.trail,
            "account": self.account,
            "region": self.region,
            "seq": self.seq,
            "chain_start": chain::to_hex(&self.chain_start),
            "opened_at_ms": self.opened_at_ms,
        });
        if self.insight {
            v["insight"] = serde_json::Value::Bool(true);
        }
        let mut out = v.to_string().into_bytes();
        out.push(b'\n');
        out
    }

    pub fn from_json(bytes: &[u8], path: &Path) -> Result<SegmentMeta> {
        let corrupt = |message: String| CoreError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("segment metadata is not JSON ({e})")))?;
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| corrupt(format!("segment metadata lacks string {k:?}")))
        };
        let chain_hex = s("chain_start")?;
        Ok(SegmentMeta {
            trail: s("trail")?,
            account: s("account")?,
            region: s("region")?,
            insight: v.get("insight").and_then(serde_json::Value::as_bool) == Some(true),
            seq: v
                .get("seq")
                .and_then(|x| x.as_u64())
                .ok_or_else(|| corrupt("segment metadata lacks integer \"seq\"".into()))?,
            chain_start: chain::from_hex(&chain_hex).ok_or_else(|| {
                corrupt(format!("chain_start {chain_hex:?} is not 64 hex digits"))
            })?,
            opened_at_ms: v
                .get("opened_at_ms")
                .and_then(|x| x.as_i64())
                .ok_or_else(|| corrupt("segment metadata lacks integer \"opened_at_ms\"".into()))?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// the open segment

/// What one `process` call appends to one stream: the frame's uncompressed content and the
/// running values after it.
#[derive(Debug)]
pub struct Batch {
    pub content: Vec<u8>,
    pub count: u64,
    pub oldest: i64,
    pub newest: i64,
    pub chain_end: ChainValue,
    pub ids: Vec<String>,
}

impl Batch {
    /// An empty batch continuing a segment (or starting one when `first`).
    pub fn new(chain: ChainValue, first: bool) -> Batch {
        Batch::new_in(chain, first, Vec::new())
    }

    /// [`Batch::new`] with its content built in `buffer` (emptied first): a buffer kept from an
    /// earlier batch has its pages in memory already.
    pub fn new_in(chain: ChainValue, first: bool, mut content: Vec<u8>) -> Batch {
        content.clear();
        if first {
            content.extend_from_slice(HEADER);
        }
        Batch {
            content,
            count: 0,
            oldest: i64::MAX,
            newest: i64::MIN,
            chain_end: chain,
            ids: Vec::new(),
        }
    }

    /// Add one canonical event (its SHA-256 already computed).
    pub fn push(&mut self, canonical: &[u8], hash: &[u8; 32], id: impl Into<String>, time: i64) {
        let starts_segment = self.content.len() == HEADER.len() && self.content == HEADER;
        if !starts_segment {
            self.content.extend_from_slice(SEPARATOR);
        }
        self.content.extend_from_slice(canonical);
        self.chain_end = chain::step_hashed(&self.chain_end, hash);
        self.count += 1;
        self.oldest = self.oldest.min(time);
        self.newest = self.newest.max(time);
        self.ids.push(id.into());
    }
}

/// zstd window log of every frame: frames are single-segment (RFC 8878 §3.1.1.1.2: the frame
/// content size stands in for the window descriptor), which needs content ≤ window.
pub const WINDOW_LOG: u32 = 24;
/// Largest content put into one frame when a batch can be split (between events): below the
/// window, so every frame is single-segment. One event larger than this gets a frame of its own
/// with a window to fit it.
pub const MAX_FRAME_CONTENT: usize = 8 << 20;

/// Compress one frame (single-segment, content size and checksum included, no dictionary).
pub fn compress_frame(c: &mut zstd::bulk::Compressor<'static>, content: &[u8]) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| CoreError::Invalid(format!("zstd compression failed: {e}"));
    let window = 1usize << WINDOW_LOG;
    if content.len() <= window {
        return c.compress(content).map_err(err);
    }
    // ceil(log2(len)): the smallest window that still makes the frame single-segment
    let log = (usize::BITS - (content.len() - 1).leading_zeros()).min(30);
    c.set_parameter(zstd::stream::raw::CParameter::WindowLog(log))
        .map_err(err)?;
    let frame = c.compress(content).map_err(err);
    c.set_parameter(zstd::stream::raw::CParameter::WindowLog(WINDOW_LOG))
        .map_err(err)?;
    frame
}

/// Compress one batch's content as one or more frames, cut between events so that each holds at
/// most [`MAX_FRAME_CONTENT`] bytes (or one larger event). Each frame's content ends at an event
/// boundary, so a torn tail after any whole frame still recovers to whole events.
pub fn compress_frames(c: &mut zstd::bulk::Compressor<'static>, content: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let cut = frame_cut(rest, MAX_FRAME_CONTENT);
        out.extend_from_slice(&compress_frame(c, &rest[..cut])?);
        rest = &rest[cut..];
    }
    Ok(out)
}

/// Cut one batch's content into the contents of its frames: between events, each at most
/// `target` bytes (clamped to [`MAX_FRAME_CONTENT`]) or one larger event. A smaller `target` than
/// the maximum lets the frames of a large batch be compressed in parallel.
pub fn frame_pieces(content: &[u8], target: usize) -> Vec<&[u8]> {
    let max = target.clamp(1, MAX_FRAME_CONTENT);
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let cut = frame_cut(rest, max);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// Compress one frame with this thread's compressor for `level` (made on first use and kept:
/// creating a zstd context per frame would cost more than compressing a small frame).
pub fn compress_frame_here(level: i32, content: &[u8]) -> Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = match &mut *slot {
            Some((l, c)) if *l == level => c,
            other => &mut other.insert((level, compressor(level)?)).1,
        };
        compress_frame(c, content)
    })
}

/// Length of the next frame's content: all of `rest` when it fits in `max`, else up to the last
/// `,\n` separator within `max` bytes (the first one after, for an event longer than `max`).
/// Canonical events hold no raw newline, so `,\n` only ever separates events.
fn frame_cut(rest: &[u8], max: usize) -> usize {
    if rest.len() <= max {
        return rest.len();
    }
    let is_separator = |i: usize| rest[i] == b'\n' && rest[i - 1] == b',';
    // i >= 2: a cut at 0 (content starting with the separator) would make an empty frame
    (2..=max)
        .rev()
        .find(|&i| is_separator(i))
        .or_else(|| (max + 1..rest.len()).find(|&i| is_separator(i)))
        .map_or(rest.len(), |i| i - 1)
}

/// A zstd compressor configured as segments need: checksum and content size on, window log
/// [`WINDOW_LOG`] (so every frame up to that size is single-segment).
pub fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    let err = |e: std::io::Error| CoreError::Invalid(format!("zstd level {level}: {e}"));
    let mut c = zstd::bulk::Compressor::new(level).map_err(err)?;
    c.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))
        .map_err(err)?;
    c.set_parameter(zstd::stream::raw::CParameter::ContentSizeFlag(true))
        .map_err(err)?;
    c.set_parameter(zstd::stream::raw::CParameter::WindowLog(WINDOW_LOG))
        .map_err(err)?;
    c.set_parameter(zstd::stream::raw::CParameter::DictIdFlag(false))
        .map_err(err)?;
    Ok(c)
}

/// The gzip header trailseal writes: no flags, MTIME 0, XFL 0, OS 255 ("unknown").
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];
/// Default deflate level of gzip log files (zlib's default).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;

/// Transcode the zstd frames of the closed segment `src` into one gzip member written to `dst`
/// (created, must not exist; fsync'd), streaming. Returns the member's size and the lower-case
/// hex SHA-256 of the content (which the caller compares with the segment's).
pub fn transcode_gzip(src: &Path, dst: &Path, level: u32) -> Result<(u64, String)> {
    let input = File::open(src).map_err(|e| CoreError::io("open segment", src, e))?;
    let mut decoder = zstd::stream::read::Decoder::new(input)
        .map_err(|e| CoreError::io("start decoding segment", src, e))?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| CoreError::io("create", dst, e))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, out);
    writer
        .write_all(&GZIP_HEADER)
        .map_err(|e| CoreError::io("write", dst, e))?;
    let mut deflate = flate2::write::DeflateEncoder::new(writer, flate2::Compression::new(level));
    let mut crc = flate2::Crc::new();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CoreError::io("decode segment", src, e)),
        };
        crc.update(&buf[..n]);
        hasher.update(&buf[..n]);
        deflate
            .write_all(&buf[..n])
            .map_err(|e| CoreError::io("write", dst, e))?;
    }
    let mut writer = deflate
        .finish()
        .map_err(|e| CoreError::io("write", dst, e))?;
    writer
        .write_all(&crc.sum().to_le_bytes())
        .and_then(|()| writer.write_all(&crc.amount().to_le_bytes()))
        .map_err(|e| CoreError::io("write", dst, e))?;
    let file = writer
        .into_inner()
        .map_err(|e| CoreError::io("write", dst, e.into_error()))?;
    file.sync_all()
        .map_err(|e| CoreError::io("fsync", dst, e))?;
    let size = file
        .metadata()
        .map_err(|e| CoreError::io("stat", dst, e))?
        .len();
    Ok((size, hex::encode(hasher.finalize())))
}

pub struct Segment {
    pub meta: SegmentMeta,
    pub data_path: PathBuf,
    pub meta_path: PathBuf,
    file: File,
    hasher: Sha256,
    pub event_count: u64,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
    /// Epoch seconds; meaningful when `event_count > 0`.
    pub oldest: i64,
    pub newest: i64,
    pub chain_end: ChainValue,
    pub event_ids: Vec<String>,
    /// Written since the last fsync.
    pub dirty: bool,
}

/// What recovery found in an open segment.
pub enum Recovered {
    /// An open segment, ready for appends (its torn tail, if any, truncated).
    Open(Segment),
    /// Closed (content ends with the closing frame) but not moved to `sealed/`.
    Closed(Segment),
    /// Metadata without a data file, or a data file without a single whole frame: nothing in it.
    Empty,
}

impl Segment {
    /// Create a new segment: metadata atomically first, then the (empty) data file. The caller
    /// must fsync `open_dir` before acknowledging anything written to it.
    pub fn create(open_dir: &Path, meta: SegmentMeta) -> Result<Segment> {
        let name = meta.name();
        let meta_path = open_dir.join(format!("{name}.seg.json"));
        let data_path = open_dir.join(format!("{name}.seg"));
        write_atomic(&meta_path, &meta.to_json())?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&data_path)
            .map_err(|e| CoreError::io("create segment", &data_path, e))?;
        let chain_end = meta.chain_start;
        Ok(Segment {
            meta,
            data_path,
            meta_path,
            file,
            hasher: Sha256::new(),
            event_count: 0,
            uncompressed_bytes: 0,
            compressed_bytes: 0,
            oldest: i64::MAX,
            newest: i64::MIN,
            chain_end,
            event_ids: Vec::new(),
            dirty: true,
        })
    }

    /// Append one compressed frame holding `batch.content`. On a write error the file is cut back
    /// to its previous length (best effort) and the error returned.
    pub fn append(&mut self, frame: &[u8], batch: Batch) -> Result<()> {
        self.write_frame(frame)?;
        self.hasher.update(&batch.content);
        self.uncompressed_bytes += batch.content.len() as u64;
        self.event_count += batch.count;
        self.oldest = self.oldest.min(batch.oldest);
        self.newest = self.newest.max(batch.newest);
        self.chain_end = batch.chain_end;
        self.event_ids.extend(batch.ids);
        Ok(())
    }

    /// The running SHA-256 of the content so far (to be continued over a batch's content and
    /// handed back to [`Segment::append_hashed`]).
    pub fn hasher(&self) -> Sha256 {
        self.hasher.clone()
    }

    /// [`Segment::append`] for a batch whose content the caller already hashed: `hasher` is
    /// [`Segment::hasher`] continued over `batch.content` (so hashing can run while the batch is
    /// built). `frames` are the batch's compressed frames in order, written with one `write`.
    /// Returns the batch's content buffer, for the next batch to build its content in.
    pub fn append_hashed(
        &mut self,
        frames: &[u8],
        batch: Batch,
        hasher: Sha256,
    ) -> Result<Vec<u8>> {
        self.write_frame(frames)?;
        self.hasher = hasher;
        self.uncompressed_bytes += batch.content.len() as u64;
        self.event_count += batch.count;
        self.oldest = self.oldest.min(batch.oldest);
        self.newest = self.newest.max(batch.newest);
        self.chain_end = batch.chain_end;
        self.event_ids.extend(batch.ids);
        Ok(batch.content)
    }

    fn write_frame(&mut self, frame: &[u8]) -> Result<()> {
        if let Err(e) = self.file.write_all(frame) {
            let _ = self.file.set_len(self.compressed_bytes);
            return Err(CoreError::io("append to segment", &self.data_path, e));
        }
        self.compressed_bytes += frame.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Append the closing frame and fsync: the content is now the whole log document.
    pub fn close(&mut self, c: &mut zstd::bulk::Compressor<'static>) -> Result<()> {
        let frame = compress_frame(c, FOOTER)?;
        self.write_frame(&frame)?;
        self.hasher.update(FOOTER);
        self.uncompressed_bytes += FOOTER.len() as u64;
        self.sync()
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| CoreError::io("fsync segment", &self.data_path, e))?;
        self.dirty = false;
        Ok(())
    }

    /// Lower-case hex SHA-256 of the content so far.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Recover the segment whose metadata is at `meta_path`. `notes` receives what was done.
    pub fn recover(meta_path: &Path, notes: &mut Vec<String>) -> Result<Recovered> {
        let meta_bytes = std::fs::read(meta_path)
            .map_err(|e| CoreError::io("read segment metadata", meta_path, e))?;
        let meta = SegmentMeta::from_json(&meta_bytes, meta_path)?;
        let name = meta_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg.json"))
            .ok_or_else(|| CoreError::Corrupt {
                path: meta_path.to_path_buf(),
                message: "segment metadata file name does not end in .seg.json".into(),
            })?
            .to_owned();
        let data_path = meta_path.with_file_name(format!("{name}.seg"));
        let bytes = match std::fs::read(&data_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovered::Empty),
            Err(e) => return Err(CoreError::io("read segment", &data_path, e)),
        };
        // Walk the frames; the first one that is incomplete or does not decode starts the torn tail.
        let mut content = Vec::new();
        let mut pos = 0usize;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let Ok(n) = zstd::zstd_safe::find_frame_compressed_size(rest) else {
                break;
            };
            if n == 0 || n > rest.len() {
                break;
            }
            let Ok(decoded) = zstd::stream::decode_all(&rest[..n]) else {
                break;
            };
            content.extend_from_slice(&decoded);
            pos += n;
        }
        let corrupt = |message: String| CoreError::Corrupt {
            path: data_path.clone(),
            message: format!("{message}; move the segment aside to start without it"),
        };
        let open = |path: &Path| {
            OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| CoreError::io("open segment", path, e))
        };
        if pos < bytes.len() {
            let file = open(&data_path)?;
            file.set_len(pos as u64)
                .map_err(|e| CoreError::io("truncate torn tail of", &data_path, e))?;
            file.sync_all()
                .map_err(|e| CoreError::io("fsync", &data_path, e))?;
            notes.push(format!(
                "{}: dropped a torn tail of {} bytes after the last whole zstd frame at offset {pos} \
                 (written but never acknowledged)",
                data_path.display(),
                bytes.len() - pos
            ));
        }
        if content.is_empty() {
            return Ok(Recovered::Empty);
        }
        let split = split_events(&content).map_err(corrupt)?;
        let mut seg = Segment {
            file: open(&data_path)?,
            data_path: data_path.clone(),
            meta_path: meta_path.to_path_buf(),
            hasher: Sha256::new(),
            event_count: 0,
            uncompressed_bytes: 0,
            compressed_bytes: pos as u64,
            oldest: i64::MAX,
            newest: i64::MIN,
            chain_end: meta.chain_start,
            event_ids: Vec::with_capacity(split.events.len()),
            dirty: false,
            meta,
        };
        for (i, ev) in split.events.iter().enumerate() {
            let (id, t) =
                event_id_and_time(ev).map_err(|m| corrupt(format!("event {}: {m}", i + 1)))?;
            seg.chain_end = chain::step(&seg.chain_end, ev);
            seg.oldest = seg.oldest.min(t);
            seg.newest = seg.newest.max(t);
            seg.event_ids.push(id);
        }
        seg.event_count = split.events.len() as u64;
        if split.events.is_empty() {
            return Ok(Recovered::Empty);
        }
        seg.hasher.update(&content);
        seg.uncompressed_bytes = content.len() as u64;
        if split.closed {
            return Ok(Recovered::Closed(seg));
        }
        Ok(Recovered::Open(seg))
    }

    /// Undo a close whose seal never completed: drop the closing frame so the segment is open again.
    pub fn reopen(mut self, notes: &mut Vec<String>) -> Result<Segment> {
        let bytes = std::fs::read(&self.data_path)
            .map_err(|e| CoreError::io("read segment", &self.data_path, e))?;
        // find the start of the last frame
        let mut pos = 0usize;
        let mut last = 0usize;
        while pos < bytes.len() {
            let n = zstd::zstd_safe::find_frame_compressed_size(&bytes[pos..]).map_err(|_| {
                CoreError::Corrupt {
                    path: self.data_path.clone(),
                    message: format!("undecodable zstd frame at offset {pos}"),
                }
            })?;
            last = pos;
            pos += n;
        }
        self.file
            .set_len(last as u64)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| CoreError::io("truncate closing frame of", &self.data_path, e))?;
        self.compressed_bytes = last as u64;
        self.uncompressed_bytes -= FOOTER.len() as u64;
        // recompute the running hash without the footer
        let content = zstd::stream::decode_all(&bytes[..last])
            .map_err(|e| CoreError::io("decode segment", &self.data_path, e))?;
        self.hasher = Sha256::new();
        self.hasher.update(&content);
        notes.push(format!(
            "{}: was closed but its seal did not complete (no manifest); reopened it",
            self.data_path.display()
        ));
        Ok(self)
    }
}
