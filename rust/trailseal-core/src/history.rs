//! The event history: a SQLite index of every spooled event, for CloudTrail's LookupEvents.
//!
//! It is a side path: [`History::index_spool`] tails the spool's files (it never touches the
//! [`crate::spool::Spool`] itself) and may lag; it never slows ingest. Everything about SQLite
//! lives here, so the process holds one SQLite library (Python never opens the file).
//!
//! Database layout (one file, WAL journal, `synchronous=NORMAL`: a process crash loses nothing
//! committed, a power loss at most the last transactions, which the spool re-indexes):
//! ```text
//! events(rid INTEGER PRIMARY KEY, id_hash INTEGER, event_id TEXT, event_time INTEGER -- epoch ms
//!        insight INTEGER)
//!   index events_by_id(id_hash)          -- [`hash64`] of the eventID, unique with event_id
//!   index events_by_time(insight, event_time)                  -- no lookup attribute; retention
//!   rid = cid << CHUNK_BITS | position: the record is in chunk cid at that position
//! chunks(cid INTEGER PRIMARY KEY, data BLOB)
//!   the canonical records of up to 2^CHUNK_BITS consecutively inserted events, joined by '\n'
//!   (a canonical record holds no raw newline), zstd-compressed as one frame; removed with its
//!   last event
//! vals(id INTEGER PRIMARY KEY, h INTEGER, key INTEGER, value TEXT)
//!   index vals_by_hash(h)                                   -- [`hash64`] of (key, value)
//!   each distinct (lookup attribute, value) once; removed with its last event
//! attrs(vid INTEGER, insight INTEGER, event_time INTEGER, rid INTEGER,
//!       PRIMARY KEY(vid, insight, event_time, rid)) WITHOUT ROWID
//!   one row per lookup attribute of an event (EventName, ReadOnly, Username, EventSource,
//!   AccessKeyId; ResourceType and ResourceName once per distinct resource entry); integers
//!   only, so an insert compares no strings (the writer caches value ids)
//!   The eventID and value indexes hold 8-byte hashes, not the strings: their inserts land on
//!   random pages, and small entries keep those pages few (in the page cache, fewer WAL pages).
//! progress(trail TEXT, seq INTEGER, offset INTEGER, events INTEGER, done INTEGER,
//!          PRIMARY KEY(trail, seq))
//!   per spool file: the byte offset of the next whole zstd frame not yet indexed, the events
//!   taken so far, and whether the sealed file is wholly indexed; written in the transaction
//!   that inserts the rows it covers.
//! ```
//! Every lookup (one attribute or none, a time range, newest first, a limit, a keyset cursor
//! `(event_time, rid)`) is one backward range scan of an index; a row's `rid` orders events of the
//! same millisecond, so a cursor is stable under concurrent inserts (no duplicates, no gaps).
//!
//! What is indexed: whole zstd frames of open segments (as soon as they are written, before the
//! group commit's fsync: after a power loss the history may hold events that were never
//! acknowledged, which their agents then resend under the same eventID), sealed zstd files from
//! the offset reached in their segment, and sealed gzip files from the count of events taken. An
//! event routed to several trails is indexed once (its eventID is unique). A stored offset that no
//! longer starts a frame (the spool truncated a torn tail after a power loss) restarts that file
//! from its beginning; rows already present are kept.
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use jiter::{Jiter, Peek};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{CoreError, Result};
use crate::segment::{self, FOOTER, HEADER, SEPARATOR};
use crate::verify::{self, Compression};

/// Bumped when the schema changes (an older file is refused: rebuild it).
const SCHEMA_VERSION: i64 = 4;

/// Events per record chunk: 2^CHUNK_BITS (a lookup decompresses one chunk per event it returns
/// from a chunk not yet read).
const CHUNK_BITS: u32 = 6;
const CHUNK_EVENTS: i64 = 1 << CHUNK_BITS;
/// zstd level of record chunks (fast: the indexer must keep up with ingest).
const CHUNK_LEVEL: i32 = 1;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Bytes of a spool file read per indexing step (more when one frame is larger).
const READ_BYTES: u64 = 2 << 20;

/// The lookup attributes kept in `attrs` (EventId is the `events` table's own unique key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrKey {
    EventName = 1,
    ReadOnly = 2,
    Username = 3,
    ResourceType = 4,
    ResourceName = 5,
    EventSource = 6,
    AccessKeyId = 7,
}

/// A LookupEvents attribute: CloudTrail's `AttributeKey` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    EventId(String),
    Other(AttrKey, String),
}

impl Attribute {
    /// CloudTrail's `AttributeKey` and its value; None for an unknown key.
    pub fn parse(key: &str, value: &str) -> Option<Attribute> {
        let k = match key {
            "EventId" => return Some(Attribute::EventId(value.to_owned())),
            "EventName" => AttrKey::EventName,
            "ReadOnly" => AttrKey::ReadOnly,
            "Username" => AttrKey::Username,
            "ResourceType" => AttrKey::ResourceType,
            "ResourceName" => AttrKey::ResourceName,
            "EventSource" => AttrKey::EventSource,
            "AccessKeyId" => AttrKey::AccessKeyId,
            _ => return None,
        };
        Some(Attribute::Other(k, value.to_owned()))
    }
}

/// What LookupEvents reports of an event, read from its canonical record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFields {
    pub event_id: String,
    /// Epoch milliseconds of `eventTime`.
    pub event_time_ms: i64,
    pub event_name: String,
    pub event_source: String,
    pub read_only: bool,
    /// `userIdentity.userName`, else the session name of an assumed role (last part of its ARN).
    pub username: Option<String>,
    pub access_key_id: Option<String>,
    /// `eventCategory` is "Insight".
    pub insight: bool,
    /// `(type, ARN)` of each entry of `resources`.
    pub resources: Vec<(Option<String>, Option<String>)>,
}

impl EventFields {
    /// The `attrs` rows of this event: (key, value), distinct.
    fn attrs(&self) -> Vec<(AttrKey, &str)> {
        let mut out: Vec<(AttrKey, &str)> = vec![
            (AttrKey::EventName, self.event_name.as_str()),
            (
                AttrKey::ReadOnly,
                if self.read_only { "true" } else { "false" },
            ),
            (AttrKey::EventSource, self.event_source.as_str()),
        ];
        if let Some(u) = &self.username {
            out.push((AttrKey::Username, u));
        }
        if let Some(k) = &self.access_key_id {
            out.push((AttrKey::AccessKeyId, k));
        }
        for (t, arn) in &self.resources {
            if let Some(t) = t {
                out.push((AttrKey::ResourceType, t));
            }
            if let Some(a) = arn {
                out.push((AttrKey::ResourceName, a));
            }
        }
        let mut seen = HashSet::new();
        out.retain(|x| seen.insert(*x));
        out
    }
}

fn json_err(e: jiter::JiterError) -> String {
    format!("not valid JSON: {e}")
}

/// A string member's value, or None (and skipped) when it is not a string.
fn opt_str(j: &mut Jiter<'_>) -> std::result::Result<Option<String>, String> {
    match j.peek().map_err(json_err)? {
        Peek::String => Ok(Some(j.known_str().map_err(json_err)?.to_owned())),
        p => {
            j.known_skip(p).map_err(json_err)?;
            Ok(None)
        }
    }
}

enum Top {
    Id,
    Time,
    Name,
    Source,
    ReadOnly,
    Category,
    Identity,
    Resources,
    Other,
}

fn top(k: &str) -> Top {
    match k {
        "eventID" => Top::Id,
        "eventTime" => Top::Time,
        "eventName" => Top::Name,
        "eventSource" => Top::Source,
        "readOnly" => Top::ReadOnly,
        "eventCategory" => Top::Category,
        "userIdentity" => Top::Identity,
        "resources" => Top::Resources,
        _ => Top::Other,
    }
}

/// Read the lookup fields of one canonical event (defaults filled in, FORMATS.md §1).
pub fn extract(record: &[u8]) -> std::result::Result<EventFields, String> {
    let mut f = EventFields::default();
    let mut time: Option<String> = None;
    let mut user_name: Option<String> = None;
    let mut arn: Option<String> = None;
    let mut j = Jiter::new(record);
    let mut key = j.next_object().map_err(json_err)?.map(top);
    while let Some(k) = key {
        match k {
            Top::Id => f.event_id = opt_str(&mut j)?.unwrap_or_default(),
            Top::Time => time = opt_str(&mut j)?,
            Top::Name => f.event_name = opt_str(&mut j)?.unwrap_or_default(),
            Top::Source => f.event_source = opt_str(&mut j)?.unwrap_or_default(),
            Top::Category => f.insight = opt_str(&mut j)?.as_deref() == Some("Insight"),
            Top::ReadOnly => match j.peek().map_err(json_err)? {
                p @ (Peek::True | Peek::False) => {
                    f.read_only = j.known_bool(p).map_err(json_err)?
                }
                p => j.known_skip(p).map_err(json_err)?,
            },
            Top::Identity => {
                if j.peek().map_err(json_err)? == Peek::Object {
                    let mut ik = j.known_object().map_err(json_err)?.map(str::to_owned);
                    while let Some(k) = ik {
                        match k.as_str() {
                            "userName" => user_name = opt_str(&mut j)?,
                            "arn" => arn = opt_str(&mut j)?,
                            "accessKeyId" => f.access_key_id = opt_str(&mut j)?,
                            _ => j.next_skip().map_err(json_err)?,
                        }
                        ik = j.next_key().map_err(json_err)?.map(str::to_owned);
                    }
                } else {
                    j.next_skip().map_err(json_err)?;
                }
            }
            Top::Resources => {
                let p = j.peek().map_err(json_err)?;
                if p == Peek::Array {
                    let mut item = j.known_array().map_err(json_err)?;
                    while let Some(p) = item {
                        if p == Peek::Object {
                            let (mut t, mut a) = (None, None);
                            let mut rk = j.known_object().map_err(json_err)?.map(str::to_owned);
                            while let Some(k) = rk {
                                match k.as_str() {
                                    "type" => t = opt_str(&mut j)?,
                                    "ARN" => a = opt_str(&mut j)?,
                                    _ => j.next_skip().map_err(json_err)?,
                                }
                                rk = j.next_key().map_err(json_err)?.map(str::to_owned);
                            }
                            f.resources.push((t, a));
                        } else {
                            j.known_skip(p).map_err(json_err)?;
                        }
                        item = j.array_step().map_err(json_err)?;
                    }
                } else {
                    j.known_skip(p).map_err(json_err)?;
                }
            }
            Top::Other => j.next_skip().map_err(json_err)?,
        }
        key = j.next_key().map_err(json_err)?.map(top);
    }
    if f.event_id.is_empty() {
        return Err("eventID is missing".into());
    }
    let t = time.ok_or("eventTime is missing")?;
    f.event_time_ms = segment::parse_time(&t)
        .ok_or_else(|| format!("eventTime {t:?} is not YYYY-MM-DDTHH:MM:SSZ"))?
        .saturating_mul(1000);
    f.username = user_name.or_else(|| {
        arn.as_deref()
            .filter(|a| a.contains(":assumed-role/"))
            .and_then(|a| a.rsplit('/').next())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    });
    Ok(f)
}

/// One LookupEvents query. `after` is the cursor of the previous page (its last event's
/// `(event_time_ms, rid)`); results are strictly older in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub attribute: Option<Attribute>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub insight: bool,
    pub limit: usize,
    pub after: Option<(i64, i64)>,
}

/// One event found by a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub rid: i64,
    pub fields: EventFields,
    /// The record's canonical JSON text.
    pub record: String,
}

/// A page of lookup results and the cursor of the next page (None: no more).
pub type Page = (Vec<Found>, Option<(i64, i64)>);

/// What one [`History::index_spool`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Events read from the spool (including ones already in the history from another trail).
    pub events: u64,
    /// Events newly added to the history.
    pub inserted: u64,
    /// The call stopped at its `max_events` budget: more is waiting.
    pub more: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    offset: u64,
    events: u64,
    done: bool,
}

/// Value ids of the writer, per attribute key (cleared when it grows past [`VALUE_CACHE`]).
#[derive(Default)]
struct ValueIds(ahash::AHashMap<(i64, String), i64>);

const VALUE_CACHE: usize = 20_000;

/// A stable 64-bit hash (the first 8 bytes of SHA-256): what the eventID and value indexes hold.
fn hash64(parts: &[&[u8]]) -> i64 {
    use sha2::Digest;
    let mut d = sha2::Sha256::new();
    for p in parts {
        d.update(p);
    }
    let out = d.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    i64::from_le_bytes(b)
}

fn value_hash(key: i64, value: &str) -> i64 {
    hash64(&[&[key as u8], value.as_bytes()])
}

impl ValueIds {
    /// The id of (key, value), created when `create` (else None when it is not there).
    fn get(
        &mut self,
        conn: &Connection,
        path: &Path,
        key: i64,
        value: &str,
        create: bool,
    ) -> Result<Option<i64>> {
        let k = (key, value.to_owned());
        if let Some(id) = self.0.get(&k) {
            return Ok(Some(*id));
        }
        let fail = |e| db_err(path, "attribute values", e);
        let h = value_hash(key, value);
        let found: Option<i64> = conn
            .prepare_cached("SELECT id FROM vals WHERE h=?1 AND key=?2 AND value=?3")
            .map_err(fail)?
            .query_row(params![h, key, value], |r| r.get(0))
            .optional()
            .map_err(fail)?;
        let id = match (found, create) {
            (Some(id), _) => id,
            (None, false) => return Ok(None),
            (None, true) => {
                conn.prepare_cached("INSERT INTO vals(h, key, value) VALUES(?1, ?2, ?3)")
                    .map_err(fail)?
                    .execute(params![h, key, value])
                    .map_err(fail)?;
                conn.last_insert_rowid()
            }
        };
        if self.0.len() >= VALUE_CACHE {
            self.0.clear();
        }
        self.0.insert(k, id);
        Ok(Some(id))
    }
}

struct Writer {
    conn: Connection,
    vals: ValueIds,
    /// The next chunk id.
    next_cid: i64,
    /// The `progress` table, cached.
    progress: HashMap<(String, u64), Progress>,
    /// Shared with [`History::covered`].
    covered: std::sync::Arc<Mutex<HashSet<(String, u64)>>>,
}

/// The history database of one daemon. Thread-safe: indexing and retention are serialized on a
/// writer connection; lookups use their own connection and run beside them (WAL).
pub struct History {
    path: PathBuf,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    /// (trail, seq) of the sealed files wholly indexed (read without waiting for the writer).
    covered: std::sync::Arc<Mutex<HashSet<(String, u64)>>>,
}

fn db_err(path: &Path, what: &str, e: rusqlite::Error) -> CoreError {
    CoreError::Invalid(format!(
        "event history {}: {what}: {e} (stop the daemon and run `trailseal history rebuild` if \
         the file is damaged)",
        path.display()
    ))
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| db_err(path, "open", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| db_err(path, "set busy timeout", e))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-8192;",
    )
    .map_err(|e| db_err(path, "set pragmas", e))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events(
  rid INTEGER PRIMARY KEY,
  id_hash INTEGER NOT NULL,
  event_id TEXT NOT NULL,
  event_time INTEGER NOT NULL,
  insight INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(cid INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_time ON events(insight, event_time);
CREATE INDEX IF NOT EXISTS events_by_id ON events(id_hash);
CREATE TABLE IF NOT EXISTS vals(
  id INTEGER PRIMARY KEY, h INTEGER NOT NULL, key INTEGER NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS vals_by_hash ON vals(h);
CREATE TABLE IF NOT EXISTS attrs(
  vid INTEGER NOT NULL, insight INTEGER NOT NULL, event_time INTEGER NOT NULL,
  rid INTEGER NOT NULL, PRIMARY KEY(vid, insight, event_time, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress(
  trail TEXT NOT NULL, seq INTEGER NOT NULL, offset INTEGER NOT NULL, events INTEGER NOT NULL,
  done INTEGER NOT NULL, PRIMARY KEY(trail, seq));
";

/// A spool file to index.
enum Source {
    /// An open segment (`.seg`): zstd frames, growing.
    Open(PathBuf),
    /// A sealed log file and its manifest's compression and event count.
    Sealed {
        log: PathBuf,
        compression: Compression,
        event_count: u64,
    },
}

impl History {
    /// Open (creating if needed) the history database at `path`.
    pub fn open(path: &Path) -> Result<History> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CoreError::io("create directory", dir, e))?;
        }
        let conn = open_conn(path)?;
        // Checkpoint every ~40 MiB of WAL rather than 4 MiB: attribute pages written again and
        // again between checkpoints are copied into the database once. A 24 MiB page cache
        // keeps the eventID and value indexes (8-byte hashes, random) in memory up to about a
        // million events, and the daemon's peak RSS under 300 MB (readers get 8 MiB).
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint=10000; PRAGMA journal_size_limit=67108864; \
             PRAGMA cache_size=-24576;",
        )
        .map_err(|e| db_err(path, "set pragmas", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| db_err(path, "create schema", e))?;
        let version: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key='schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| db_err(path, "read schema version", e))?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('schema', ?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(|e| db_err(path, "write schema version", e))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(CoreError::Invalid(format!(
                    "event history {}: schema version {v}, this trailseal reads {SCHEMA_VERSION}: \
                     move the file aside and run `trailseal history rebuild`",
                    path.display()
                )))
            }
        }
        let mut progress = HashMap::new();
        {
            let mut st = conn
                .prepare("SELECT trail, seq, offset, events, done FROM progress")
                .map_err(|e| db_err(path, "read progress", e))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64),
                        Progress {
                            offset: r.get::<_, i64>(2)? as u64,
                            events: r.get::<_, i64>(3)? as u64,
                            done: r.get::<_, i64>(4)? != 0,
                        },
                    ))
                })
                .map_err(|e| db_err(path, "read progress", e))?;
            for row in rows {
                let (k, v) = row.map_err(|e| db_err(path, "read progress", e))?;
                progress.insert(k, v);
            }
        }
        let next_cid: i64 = conn
            .query_row(
                "SELECT max(coalesce((SELECT max(cid) FROM chunks), 0), \
                 coalesce((SELECT max(rid) FROM events), 0) >> ?1) + 1",
                [CHUNK_BITS],
                |r| r.get(0),
            )
            .map_err(|e| db_err(path, "read the last chunk id", e))?;
        let reader = open_conn(path)?;
        reader
            .execute_batch("PRAGMA query_only=1;")
            .map_err(|e| db_err(path, "set query_only", e))?;
        let covered = std::sync::Arc::new(Mutex::new(
            progress
                .iter()
                .filter(|(_, p)| p.done)
                .map(|(k, _)| k.clone())
                .collect::<HashSet<_>>(),
        ));
        Ok(History {
            path: path.to_path_buf(),
            writer: Mutex::new(Writer {
                conn,
                vals: ValueIds::default(),
                next_cid,
                progress,
                covered: covered.clone(),
            }),
            reader: Mutex::new(reader),
            covered,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>> {
        self.writer
            .lock()
            .map_err(|_| CoreError::Invalid("event history: a writer thread panicked".into()))
    }

    fn reader(&self) -> Result<MutexGuard<'_, Connection>> {
        self.reader
            .lock()
            .map_err(|_| CoreError::Invalid("event history: a reader thread panicked".into()))
    }

    /// Index what is new in the spool at `spool_dir` (every trail directory in it), at most about
    /// `max_events` events (whole frames: it may go over by one frame).
    pub fn index_spool(&self, spool_dir: &Path, max_events: u64) -> Result<IndexReport> {
        let mut w = self.writer()?;
        let mut report = IndexReport::default();
        let entries = match std::fs::read_dir(spool_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(CoreError::io("list", spool_dir, e)),
        };
        let mut trails = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CoreError::io("list", spool_dir, e))?;
            if entry.path().is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    trails.push(name.to_owned());
                }
            }
        }
        trails.sort();
        for trail in trails {
            let dir = spool_dir.join(&trail);
            let sources = list_sources(&dir)?;
            let present: HashSet<u64> = sources.keys().copied().collect();
            for (seq, source) in sources {
                if report.events >= max_events {
                    report.more = true;
                    return Ok(report);
                }
                let budget = max_events - report.events;
                let r = w.index_file(&self.path, &trail, seq, &source, budget)?;
                report.events += r.events;
                report.inserted += r.inserted;
                report.more |= r.more;
            }
            w.prune(&self.path, &trail, &present)?;
        }
        Ok(report)
    }

    /// Whether the trail's sealed file `seq` is wholly indexed (so the uploader may remove it).
    pub fn covered(&self, trail: &str, seq: u64) -> Result<bool> {
        let covered = self
            .covered
            .lock()
            .map_err(|_| CoreError::Invalid("event history: a writer thread panicked".into()))?;
        Ok(covered.contains(&(trail.to_owned(), seq)))
    }

    /// Index a delivered log file's bytes (`trailseal history rebuild`). Returns (events, inserted).
    pub fn add_log(&self, data: &[u8], compression: Compression) -> Result<(u64, u64)> {
        let content = verify::decompress(data, compression).map_err(CoreError::Invalid)?;
        let split = segment::split_events(&content).map_err(CoreError::Invalid)?;
        let mut w = self.writer()?;
        let Writer {
            conn,
            vals,
            next_cid,
            ..
        } = &mut *w;
        let tx = conn
            .transaction()
            .map_err(|e| db_err(&self.path, "begin", e))?;
        let inserted = insert_events(&tx, &self.path, &split.events, vals, next_cid)?;
        tx.commit().map_err(|e| db_err(&self.path, "commit", e))?;
        Ok((split.events.len() as u64, inserted))
    }

    /// Delete up to `max_rows` events older than `cutoff_ms` (oldest first); returns how many.
    pub fn expire(&self, cutoff_ms: i64, max_rows: u64) -> Result<u64> {
        let p = &self.path;
        let mut w = self.writer()?;
        let Writer { conn, vals, .. } = &mut *w;
        let tx = conn.transaction().map_err(|e| db_err(p, "begin", e))?;
        let mut old = Vec::new();
        {
            let mut st = tx
                .prepare_cached(
                    "SELECT rid, event_time, insight FROM events \
                     WHERE insight IN (0, 1) AND event_time < ?1 ORDER BY event_time LIMIT ?2",
                )
                .map_err(|e| db_err(p, "find expired events", e))?;
            let rows = st
                .query_map(params![cutoff_ms, max_rows as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| db_err(p, "find expired events", e))?;
            for row in rows {
                old.push(row.map_err(|e| db_err(p, "find expired events", e))?);
            }
        }
        let chunks = Chunks::load(&tx, p, old.iter().map(|o| o.0))?;
        {
            let mut del_attr = tx
                .prepare_cached(
                    "DELETE FROM attrs WHERE vid=?1 AND insight=?2 AND event_time=?3 AND rid=?4",
                )
                .map_err(|e| db_err(p, "expire", e))?;
            let mut touched = HashSet::new();
            let mut del_event = tx
                .prepare_cached("DELETE FROM events WHERE rid=?1")
                .map_err(|e| db_err(p, "expire", e))?;
            for (rid, time, insight) in &old {
                if let Some(Ok(f)) = chunks.record(*rid).map(extract) {
                    for (k, v) in f.attrs() {
                        if let Some(vid) = vals.get(&tx, p, k as i64, v, false)? {
                            del_attr
                                .execute(params![vid, insight, time, rid])
                                .map_err(|e| db_err(p, "expire", e))?;
                            touched.insert(vid);
                        }
                    }
                }
                del_event
                    .execute([rid])
                    .map_err(|e| db_err(p, "expire", e))?;
            }
            // values no event has any more (e.g. an S3 object's ARN) go too
            let mut unused = tx
                .prepare_cached(
                    "DELETE FROM vals WHERE id=?1 AND NOT EXISTS (SELECT 1 FROM attrs WHERE vid=?1)",
                )
                .map_err(|e| db_err(p, "expire", e))?;
            let mut gone = false;
            for vid in touched {
                gone |= unused.execute([vid]).map_err(|e| db_err(p, "expire", e))? > 0;
            }
            if gone {
                vals.0.clear();
            }
            // chunks whose every event went
            let mut unused = tx
                .prepare_cached(
                    "DELETE FROM chunks WHERE cid=?1 AND NOT EXISTS \
                     (SELECT 1 FROM events WHERE rid BETWEEN ?2 AND ?3)",
                )
                .map_err(|e| db_err(p, "expire", e))?;
            for cid in chunks.0.keys() {
                let first = cid << CHUNK_BITS;
                unused
                    .execute(params![cid, first, first + CHUNK_EVENTS - 1])
                    .map_err(|e| db_err(p, "expire", e))?;
            }
        }
        tx.commit().map_err(|e| db_err(p, "commit", e))?;
        Ok(old.len() as u64)
    }

    /// Number of events in the history.
    pub fn count(&self) -> Result<u64> {
        let r = self.reader()?;
        r.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| db_err(&self.path, "count", e))
    }

    /// Run a lookup: up to `limit` events newest first, and the cursor of the next page when more
    /// remain.
    pub fn lookup(&self, q: &Query) -> Result<Page> {
        let p = &self.path;
        let conn = self.reader()?;
        let start = q.start_ms.unwrap_or(i64::MIN);
        let end = q.end_ms.unwrap_or(i64::MAX);
        let (at, ar) = q.after.unwrap_or((i64::MAX, i64::MAX));
        let insight = i64::from(q.insight);
        let want = q.limit as i64 + 1;
        let mut rows: Vec<i64> = Vec::new();
        let map = |r: &rusqlite::Row<'_>| r.get::<_, i64>(0);
        let fail = |e| db_err(p, "lookup", e);
        match &q.attribute {
            None => {
                let mut st = conn
                    .prepare_cached(
                        "SELECT rid FROM events WHERE insight=?1 \
                         AND event_time BETWEEN ?2 AND ?3 AND (event_time, rid) < (?4, ?5) \
                         ORDER BY event_time DESC, rid DESC LIMIT ?6",
                    )
                    .map_err(fail)?;
                for r in st
                    .query_map(params![insight, start, end, at, ar, want], map)
                    .map_err(fail)?
                {
                    rows.push(r.map_err(fail)?);
                }
            }
            Some(Attribute::EventId(id)) => {
                let mut st = conn
                    .prepare_cached(
                        "SELECT rid FROM events INDEXED BY events_by_id WHERE id_hash=?7 AND event_id=?1 AND insight=?2 \
                         AND event_time BETWEEN ?3 AND ?4 AND (event_time, rid) < (?5, ?6)",
                    )
                    .map_err(fail)?;
                for r in st
                    .query_map(
                        params![id, insight, start, end, at, ar, hash64(&[id.as_bytes()])],
                        map,
                    )
                    .map_err(fail)?
                {
                    rows.push(r.map_err(fail)?);
                }
            }
            Some(Attribute::Other(key, value)) => {
                let vid: Option<i64> = conn
                    .prepare_cached("SELECT id FROM vals WHERE h=?1 AND key=?2 AND value=?3")
                    .map_err(fail)?
                    .query_row(
                        params![value_hash(*key as i64, value), *key as i64, value],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(fail)?;
                if let Some(vid) = vid {
                    let mut st = conn
                        .prepare_cached(
                            "SELECT a.rid FROM attrs a WHERE a.vid=?1 AND a.insight=?2 AND a.event_time BETWEEN ?3 AND ?4 \
                             AND (a.event_time, a.rid) < (?5, ?6) \
                             ORDER BY a.event_time DESC, a.rid DESC LIMIT ?7",
                        )
                        .map_err(fail)?;
                    for r in st
                        .query_map(params![vid, insight, start, end, at, ar, want], map)
                        .map_err(fail)?
                    {
                        rows.push(r.map_err(fail)?);
                    }
                }
            }
        }
        let more = rows.len() > q.limit;
        rows.truncate(q.limit);
        let chunks = Chunks::load(&conn, p, rows.iter().copied())?;
        let mut found = Vec::with_capacity(rows.len());
        for rid in rows {
            let record = chunks.record(rid).ok_or_else(|| {
                CoreError::Invalid(format!(
                    "event history {}: the record of row {rid} is missing (run `trailseal \
                     history rebuild`)",
                    p.display()
                ))
            })?;
            let fields = extract(record).map_err(|m| {
                CoreError::Invalid(format!("event history {}: row {rid}: {m}", p.display()))
            })?;
            let record = String::from_utf8(record.to_vec()).map_err(|_| {
                CoreError::Invalid(format!(
                    "event history {}: row {rid} is not UTF-8",
                    p.display()
                ))
            })?;
            found.push(Found {
                rid,
                fields,
                record,
            });
        }
        let next = if more {
            found.last().map(|f| (f.fields.event_time_ms, f.rid))
        } else {
            None
        };
        Ok((found, next))
    }
}

/// A background thread that indexes the spool every `poll` (or when poked), so that the caller
/// never waits on the history: the daemon lowers its CPU priority (by [`Indexer::tid`]) so that
/// indexing takes only CPU that ingest leaves idle. It never calls into Python.
pub struct Indexer {
    shared: std::sync::Arc<IndexerShared>,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: u64,
}

struct IndexerShared {
    state: Mutex<IndexerState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct IndexerState {
    poked: bool,
    stop: bool,
    error: Option<String>,
    indexed: u64,
}

impl Indexer {
    /// Start the thread. `batch`: events per [`History::index_spool`] call.
    pub fn spawn(
        history: std::sync::Arc<History>,
        spool_dir: PathBuf,
        poll: std::time::Duration,
        batch: u64,
    ) -> Result<Indexer> {
        let shared = std::sync::Arc::new(IndexerShared {
            state: Mutex::new(IndexerState::default()),
            wake: std::sync::Condvar::new(),
        });
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("history-indexer".into())
            .spawn(move || {
                let _ = tid_tx.send(current_tid());
                indexer_loop(&history, &spool_dir, poll, batch, &s);
            })
            .map_err(|e| CoreError::io("start the history indexer thread", "", e))?;
        let tid = tid_rx.recv().unwrap_or(0);
        Ok(Indexer {
            shared,
            thread: Some(thread),
            tid,
        })
    }

    /// The thread's Linux thread id (0 when unknown).
    pub fn tid(&self) -> u64 {
        self.tid
    }

    /// Index soon.
    pub fn poke(&self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.poked = true;
            self.shared.wake.notify_all();
        }
    }

    /// The last indexing error, if the last attempt failed.
    pub fn error(&self) -> Option<String> {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|st| st.error.clone())
    }

    /// Events newly added since the thread started.
    pub fn indexed(&self) -> u64 {
        self.shared.state.lock().map(|st| st.indexed).unwrap_or(0)
    }

    /// Stop the thread after its current call and wait for it.
    pub fn stop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn indexer_loop(
    history: &History,
    spool_dir: &Path,
    poll: std::time::Duration,
    batch: u64,
    shared: &IndexerShared,
) {
    loop {
        let r = loop {
            match history.index_spool(spool_dir, batch) {
                Ok(r) if r.more => {
                    if let Ok(mut st) = shared.state.lock() {
                        st.indexed += r.inserted;
                        if st.stop {
                            return;
                        }
                    }
                }
                other => break other,
            }
        };
        let Ok(mut st) = shared.state.lock() else {
            return;
        };
        match r {
            Ok(r) => {
                st.indexed += r.inserted;
                st.error = None;
            }
            Err(e) => st.error = Some(e.to_string()),
        }
        if !st.poked && !st.stop {
            st = match shared.wake.wait_timeout(st, poll) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
        st.poked = false;
        if st.stop {
            return;
        }
    }
}

/// The calling thread's Linux thread id, from `/proc/thread-self` (0 elsewhere).
fn current_tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The sealed and open files of one trail directory, by seq (a sealed file wins over a segment
/// of the same seq caught mid-seal).
fn list_sources(dir: &Path) -> Result<std::collections::BTreeMap<u64, Source>> {
    let mut out = std::collections::BTreeMap::new();
    let seq_of = |name: &str| name.get(..12).and_then(|s| s.parse::<u64>().ok());
    let open_dir = dir.join("open");
    if let Ok(entries) = std::fs::read_dir(&open_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let (true, Some(seq)) = (name.ends_with(".seg"), seq_of(name)) {
                out.insert(seq, Source::Open(entry.path()));
            }
        }
    }
    let sealed_dir = dir.join("sealed");
    if let Ok(entries) = std::fs::read_dir(&sealed_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let (true, Some(seq)) = (name.ends_with(".json"), seq_of(name)) else {
                continue;
            };
            let manifest = entry.path();
            let log = manifest.with_extension("log");
            if !log.exists() {
                continue; // a gzip seal still transcoding: its segment is still in open/
            }
            let Ok(bytes) = std::fs::read(&manifest) else {
                continue; // removed by the uploader meanwhile
            };
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| CoreError::Corrupt {
                    path: manifest.clone(),
                    message: format!("manifest is not JSON ({e})"),
                })?;
            let compression = v
                .get("compression")
                .and_then(|c| c.as_str())
                .and_then(Compression::parse)
                .unwrap_or(Compression::Zstd);
            let event_count = v.get("event_count").and_then(|c| c.as_u64()).unwrap_or(0);
            out.insert(
                seq,
                Source::Sealed {
                    log,
                    compression,
                    event_count,
                },
            );
        }
    }
    Ok(out)
}

/// Decompressed record chunks, by chunk id.
struct Chunks(HashMap<i64, Vec<u8>>);

impl Chunks {
    /// Read and decompress the chunks holding the events `rids`.
    fn load(conn: &Connection, path: &Path, rids: impl Iterator<Item = i64>) -> Result<Chunks> {
        let fail = |e| db_err(path, "read records", e);
        let mut out = HashMap::new();
        let mut st = conn
            .prepare_cached("SELECT data FROM chunks WHERE cid=?1")
            .map_err(fail)?;
        for rid in rids {
            let cid = rid >> CHUNK_BITS;
            if out.contains_key(&cid) {
                continue;
            }
            let data: Option<Vec<u8>> =
                st.query_row([cid], |r| r.get(0)).optional().map_err(fail)?;
            if let Some(data) = data {
                let raw = zstd::bulk::decompress(&data, 1 << 30).map_err(|e| {
                    CoreError::Invalid(format!(
                        "event history {}: record chunk {cid} does not decompress: {e} (stop the \
                         daemon and run `trailseal history rebuild`)",
                        path.display()
                    ))
                })?;
                out.insert(cid, raw);
            }
        }
        Ok(Chunks(out))
    }

    /// The canonical record of event `rid`, if its chunk was loaded.
    fn record(&self, rid: i64) -> Option<&[u8]> {
        let chunk = self.0.get(&(rid >> CHUNK_BITS))?;
        let pos = (rid & (CHUNK_EVENTS - 1)) as usize;
        chunk.split(|b| *b == b'\n').nth(pos)
    }
}

/// Insert canonical events, their record chunks and their attribute rows; returns how many were
/// new (an eventID already there is skipped). The attribute rows of the whole call are inserted
/// sorted by key: neighbouring inserts then touch the same B-tree pages.
fn insert_events(
    conn: &Connection,
    path: &Path,
    records: &[&[u8]],
    vals: &mut ValueIds,
    next_cid: &mut i64,
) -> Result<u64> {
    let fail = |e| db_err(path, "insert", e);
    let mut ins = conn
        .prepare_cached(
            "INSERT INTO events(rid, id_hash, event_id, event_time, insight) \
             VALUES(?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(fail)?;
    let mut seen = conn
        .prepare_cached("SELECT 1 FROM events WHERE id_hash=?1 AND event_id=?2")
        .map_err(fail)?;
    let mut put_chunk = conn
        .prepare_cached("INSERT INTO chunks(cid, data) VALUES(?1, ?2)")
        .map_err(fail)?;
    let zerr = |e: std::io::Error| {
        CoreError::Invalid(format!(
            "event history {}: cannot compress records: {e}",
            path.display()
        ))
    };
    // one compression context for the call (making one per chunk costs as much as compressing)
    let mut zc = zstd::bulk::Compressor::new(CHUNK_LEVEL).map_err(zerr)?;
    let mut flush = |cid: &mut i64, chunk: &mut Vec<u8>| -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let data = zc.compress(chunk).map_err(|e| {
            CoreError::Invalid(format!(
                "event history {}: cannot compress records: {e}",
                path.display()
            ))
        })?;
        put_chunk.execute(params![*cid, data]).map_err(fail)?;
        chunk.clear();
        *cid += 1;
        Ok(())
    };
    let mut fields = Vec::with_capacity(records.len());
    let mut chunk: Vec<u8> = Vec::new();
    let mut pos = 0i64;
    for record in records {
        let f = extract(record).map_err(|m| {
            CoreError::Invalid(format!(
                "event history {}: cannot index an event: {m}",
                path.display()
            ))
        })?;
        let rid = (*next_cid << CHUNK_BITS) | pos;
        let h = hash64(&[f.event_id.as_bytes()]);
        if !seen.exists(params![h, f.event_id]).map_err(fail)? {
            ins.execute(params![rid, h, f.event_id, f.event_time_ms, f.insight])
                .map_err(fail)?;
            if pos > 0 {
                chunk.push(b'\n');
            }
            chunk.extend_from_slice(record);
            fields.push((rid, f));
            pos += 1;
            if pos == CHUNK_EVENTS {
                flush(next_cid, &mut chunk)?;
                pos = 0;
            }
        }
    }
    flush(next_cid, &mut chunk)?;
    let mut rows: Vec<(i64, bool, i64, i64)> = Vec::with_capacity(fields.len() * 10);
    for (rid, f) in &fields {
        for (k, v) in f.attrs() {
            if let Some(vid) = vals.get(conn, path, k as i64, v, true)? {
                rows.push((vid, f.insight, f.event_time_ms, *rid));
            }
        }
    }
    rows.sort_unstable();
    let mut attr = conn
        .prepare_cached("INSERT OR IGNORE INTO attrs VALUES(?1, ?2, ?3, ?4)")
        .map_err(fail)?;
    for (vid, insight, time, rid) in rows {
        attr.execute(params![vid, insight, time, rid])
            .map_err(fail)?;
    }
    Ok(fields.len() as u64)
}

/// The events of one decoded frame. `first`: the frame starts the file (so the log header).
/// Returns the events and whether the frame closed the document; Err when the frame is not where
/// a frame of this file can start (a stale offset).
fn frame_events(content: &[u8], first: bool) -> std::result::Result<Vec<&[u8]>, ()> {
    let mut c = content;
    if first {
        c = c.strip_prefix(HEADER).ok_or(())?;
        if c == &FOOTER[1..] {
            return Ok(Vec::new());
        }
    } else if c == FOOTER {
        return Ok(Vec::new());
    } else {
        c = c.strip_prefix(SEPARATOR).ok_or(())?;
    }
    if let Some(rest) = c.strip_suffix(FOOTER) {
        c = rest;
    }
    if c.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut rest = c;
    loop {
        let (piece, last) = match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let piece = rest[..i].strip_suffix(b",").ok_or(())?;
                rest = &rest[i + 1..];
                (piece, false)
            }
            None => (rest, true),
        };
        if piece.is_empty() {
            return Err(());
        }
        out.push(piece);
        if last {
            return Ok(out);
        }
    }
}

impl Writer {
    fn save(
        &mut self,
        path: &Path,
        trail: &str,
        seq: u64,
        progress: Progress,
        events: &[&[u8]],
    ) -> Result<u64> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_err(path, "begin", e))?;
        let inserted = insert_events(&tx, path, events, &mut self.vals, &mut self.next_cid)?;
        tx.execute(
            "INSERT OR REPLACE INTO progress(trail, seq, offset, events, done) \
             VALUES(?1, ?2, ?3, ?4, ?5)",
            params![
                trail,
                seq as i64,
                progress.offset as i64,
                progress.events as i64,
                progress.done
            ],
        )
        .map_err(|e| db_err(path, "save progress", e))?;
        tx.commit().map_err(|e| db_err(path, "commit", e))?;
        self.progress.insert((trail.to_owned(), seq), progress);
        if let Ok(mut covered) = self.covered.lock() {
            if progress.done {
                covered.insert((trail.to_owned(), seq));
            } else {
                covered.remove(&(trail.to_owned(), seq));
            }
        }
        Ok(inserted)
    }

    fn index_file(
        &mut self,
        path: &Path,
        trail: &str,
        seq: u64,
        source: &Source,
        budget: u64,
    ) -> Result<IndexReport> {
        let mut prog = self
            .progress
            .get(&(trail.to_owned(), seq))
            .copied()
            .unwrap_or_default();
        let mut report = IndexReport::default();
        if prog.done {
            return Ok(report);
        }
        let (file, sealed) = match source {
            Source::Sealed {
                event_count,
                compression,
                log,
            } => {
                if prog.events >= *event_count {
                    prog.done = true;
                    self.save(path, trail, seq, prog, &[])?;
                    return Ok(report);
                }
                if *compression == Compression::Gzip {
                    // One member: decompress it whole and take the events not yet taken.
                    let data = match std::fs::read(log) {
                        Ok(d) => d,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
                        Err(e) => return Err(CoreError::io("read", log, e)),
                    };
                    let content = verify::decompress(&data, Compression::Gzip).map_err(|m| {
                        CoreError::Corrupt {
                            path: log.clone(),
                            message: m,
                        }
                    })?;
                    let split =
                        segment::split_events(&content).map_err(|m| CoreError::Corrupt {
                            path: log.clone(),
                            message: m,
                        })?;
                    let skip = (prog.events as usize).min(split.events.len());
                    let events = &split.events[skip..];
                    prog.events = split.events.len() as u64;
                    prog.done = true;
                    report.events = events.len() as u64;
                    report.inserted = self.save(path, trail, seq, prog, events)?;
                    return Ok(report);
                }
                (log, true)
            }
            Source::Open(seg) => (seg, false),
        };
        let mut f = match std::fs::File::open(file) {
            Ok(f) => f,
            // moved (sealed) or removed meanwhile: the next call sees where it went
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(CoreError::io("open", file, e)),
        };
        let len = f
            .metadata()
            .map_err(|e| CoreError::io("stat", file, e))?
            .len();
        if !sealed && prog.offset == len {
            return Ok(report); // nothing new
        }
        if prog.offset > len {
            prog = Progress::default(); // the file was truncated (torn tail after a power loss)
        }
        // Read a bounded piece (a lagging history would otherwise hold a whole file in memory),
        // grown until it holds a whole frame.
        let avail = len - prog.offset;
        let mut cap = READ_BYTES.min(avail);
        let bytes = loop {
            let mut bytes = Vec::new();
            f.seek(SeekFrom::Start(prog.offset))
                .and_then(|_| (&mut f).take(cap).read_to_end(&mut bytes))
                .map_err(|e| CoreError::io("read", file, e))?;
            let whole = matches!(
                zstd::zstd_safe::find_frame_compressed_size(&bytes),
                Ok(n) if n > 0 && n <= bytes.len()
            );
            if whole || cap >= avail || bytes.len() < cap as usize {
                break bytes;
            }
            cap = cap.saturating_mul(2).min(avail);
        };
        let truncated = (bytes.len() as u64) < avail;
        let mut decoded: Vec<Vec<u8>> = Vec::new();
        let mut pos = 0usize;
        let mut frames_events = 0u64;
        let mut restart = false;
        while pos < bytes.len() && frames_events < budget {
            let rest = &bytes[pos..];
            if rest.len() >= 4 && rest[..4] != ZSTD_MAGIC {
                restart = true;
                break;
            }
            let n = match zstd::zstd_safe::find_frame_compressed_size(rest) {
                Ok(n) if n > 0 && n <= rest.len() => n,
                _ => break, // a frame still being written
            };
            let Ok(content) = zstd::stream::decode_all(&rest[..n]) else {
                break;
            };
            let first = prog.offset == 0 && pos == 0;
            match frame_events(&content, first) {
                Ok(evs) => frames_events += evs.len() as u64,
                Err(()) => {
                    restart = true;
                    break;
                }
            }
            decoded.push(content);
            pos += n;
        }
        if restart && prog.offset != 0 {
            self.save(path, trail, seq, Progress::default(), &[])?;
            return self.index_file(path, trail, seq, source, budget);
        }
        if restart {
            return Err(CoreError::Corrupt {
                path: file.clone(),
                message: format!(
                    "byte {}: not a zstd frame of a log file (the event history cannot index it)",
                    prog.offset + pos as u64
                ),
            });
        }
        let mut events: Vec<&[u8]> = Vec::new();
        for (i, content) in decoded.iter().enumerate() {
            let first = prog.offset == 0 && i == 0;
            events.extend(frame_events(content, first).unwrap_or_default());
        }
        let start_offset = prog.offset;
        prog.offset += pos as u64;
        prog.events += events.len() as u64;
        if let Source::Sealed { event_count, .. } = source {
            prog.done = prog.events >= *event_count;
        }
        report.more = (pos < bytes.len() && frames_events >= budget) || (truncated && pos > 0);
        if prog.offset != start_offset || prog.done {
            report.events = events.len() as u64;
            report.inserted = self.save(path, trail, seq, prog, &events)?;
        }
        Ok(report)
    }

    /// Forget wholly indexed files that are no longer in the spool.
    fn prune(&mut self, path: &Path, trail: &str, present: &HashSet<u64>) -> Result<()> {
        let gone: Vec<u64> = self
            .progress
            .iter()
            .filter(|((t, seq), p)| t == trail && p.done && !present.contains(seq))
            .map(|((_, seq), _)| *seq)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_err(path, "begin", e))?;
        for seq in &gone {
            tx.execute(
                "DELETE FROM progress WHERE trail=?1 AND seq=?2",
                params![trail, *seq as i64],
            )
            .map_err(|e| db_err(path, "prune progress", e))?;
        }
        tx.commit().map_err(|e| db_err(path, "commit", e))?;
        for seq in gone {
            self.progress.remove(&(trail.to_owned(), seq));
            if let Ok(mut covered) = self.covered.lock() {
                covered.remove(&(trail.to_owned(), seq));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{temp, LogCompression, Part, Spool, SpoolConfig, TrailSpec};

    fn event(i: usize) -> String {
        let who = if i.is_multiple_of(3) {
            format!(
                r#""userIdentity":{{"type":"IAMUser","userName":"alice","accessKeyId":"AKIA{i}"}}"#
            )
        } else {
            r#""userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/sess-b"}"#
                .to_owned()
        };
        let res = if i.is_multiple_of(4) {
            r#","resources":[{"type":"AWS::S3::Bucket","ARN":"arn:aws:s3:::b1"},{"type":"AWS::S3::Bucket","ARN":"arn:aws:s3:::b2"}]"#
        } else {
            ""
        };
        let cat = if i % 10 == 9 {
            r#","eventCategory":"Insight""#
        } else {
            ""
        };
        let name = if i.is_multiple_of(2) {
            "GetObject"
        } else {
            "PutObject"
        };
        format!(
            r#"{{"eventName":"{name}","eventSource":"s3.amazonaws.com","eventTime":"2026-01-01T00:{:02}:{:02}Z","eventID":"id-{i}",{who}{res}{cat}}}"#,
            (i / 60) % 60,
            i % 60
        )
    }

    fn feed(spool: &mut Spool, range: std::ops::Range<usize>) {
        let mut data = Vec::new();
        for i in range {
            data.extend_from_slice(event(i).as_bytes());
            data.push(b'\n');
        }
        let parts = [Part {
            end: data.len(),
            peer: "test".into(),
            agent: None,
            received_at_ms: 1_767_225_600_000,
        }];
        let r = spool.process(&data, &parts).expect("process");
        assert_eq!(r.rejected, 0, "{:?}", r.errors);
        spool.sync().expect("sync");
    }

    /// A trail that takes management and Insight events.
    fn spec(name: &str) -> TrailSpec {
        let mut t = TrailSpec::new(name);
        t.selectors = crate::select::Selectors::from_json(
            r#"{"advanced_event_selectors":[
                {"Name":"m","FieldSelectors":[{"Field":"eventCategory","Equals":["Management"]}]},
                {"Name":"i","FieldSelectors":[{"Field":"eventCategory","Equals":["Insight"]}]}]}"#,
        )
        .expect("selectors");
        t
    }

    fn ids(found: &[Found]) -> Vec<String> {
        found.iter().map(|f| f.fields.event_id.clone()).collect()
    }

    fn q(attribute: Option<Attribute>, limit: usize) -> Query {
        Query {
            attribute,
            start_ms: None,
            end_ms: None,
            insight: false,
            limit,
            after: None,
        }
    }

    #[test]
    fn extract_reads_lookup_fields() {
        let f = extract(event(4).as_bytes()).expect("extract");
        assert_eq!(f.event_id, "id-4");
        assert_eq!(f.event_name, "GetObject");
        assert_eq!(f.username.as_deref(), Some("sess-b"));
        assert_eq!(f.access_key_id, None);
        assert_eq!(f.resources.len(), 2);
        assert!(!f.insight);
        assert_eq!(f.event_time_ms, 1_767_225_604_000);
        let f = extract(event(9).as_bytes()).expect("extract");
        assert_eq!(f.username.as_deref(), Some("alice"));
        assert_eq!(f.access_key_id.as_deref(), Some("AKIA9"));
        assert!(f.insight);
        assert!(extract(b"{\"eventTime\":\"2026-01-01T00:00:00Z\"}").is_err());
    }

    #[test]
    fn indexes_open_sealed_and_gzip_files_once() {
        let dir = temp("history-index");
        let mut gz = spec("gz");
        gz.compression = LogCompression::Gzip(6);
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main"), gz];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = History::open(&dir.0.join("history.db")).expect("open history");
        feed(&mut spool, 0..100);
        let r = h
            .index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        // both trails take every event: read twice, stored once
        assert_eq!((r.events, r.inserted), (200, 100));
        assert_eq!(h.count().expect("count"), 100);
        let main = spool
            .seal("main", "111122223333", "us-east-1", false, "k1")
            .expect("seal")
            .expect("sealed");
        let gzf = spool
            .seal("gz", "111122223333", "us-east-1", false, "k2")
            .expect("seal")
            .expect("sealed");
        assert!(!h.covered("main", main.seq).expect("covered"));
        feed(&mut spool, 100..150);
        h.index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        assert!(h.covered("main", main.seq).expect("covered"));
        assert!(h.covered("gz", gzf.seq).expect("covered"));
        assert_eq!(h.count().expect("count"), 150);
        // nothing new: nothing read
        let r = h
            .index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        assert_eq!(r.events, 0);
        // a budget stops early and says so
        feed(&mut spool, 150..160);
        feed(&mut spool, 160..170);
        let r = h.index_spool(&dir.0.join("spool"), 5).expect("index");
        assert!(r.more);
        while h.index_spool(&dir.0.join("spool"), 5).expect("index").more {}
        assert_eq!(h.count().expect("count"), 170);
        // delivered files are forgotten; progress survives reopening
        spool.remove_sealed("main", main.seq).expect("remove");
        drop(h);
        let h = History::open(&dir.0.join("history.db")).expect("reopen");
        h.index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        assert_eq!(h.count().expect("count"), 170);
        assert!(!h.covered("main", main.seq).expect("covered"));
    }

    #[test]
    fn gzip_file_sealed_before_indexing_is_read_from_the_member() {
        let dir = temp("history-gzip");
        let mut gz = spec("gz");
        gz.compression = LogCompression::Gzip(6);
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![gz];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = History::open(&dir.0.join("history.db")).expect("open history");
        feed(&mut spool, 0..30);
        h.index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        feed(&mut spool, 30..60);
        let f = spool
            .seal("gz", "111122223333", "us-east-1", false, "k")
            .expect("seal")
            .expect("sealed");
        h.index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        assert!(h.covered("gz", f.seq).expect("covered"));
        assert_eq!(h.count().expect("count"), 60);
    }

    #[test]
    fn stale_offset_restarts_the_file() {
        let dir = temp("history-stale");
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main")];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = History::open(&dir.0.join("history.db")).expect("open history");
        feed(&mut spool, 0..10);
        feed(&mut spool, 10..20);
        h.index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        // a power loss: the segment loses its last frame, then other events are appended
        let seg = spool.open_segments()[0].path.clone();
        drop(spool);
        let bytes = std::fs::read(&seg).expect("read");
        let first = zstd::zstd_safe::find_frame_compressed_size(&bytes).expect("frame");
        std::fs::write(&seg, &bytes[..first]).expect("truncate");
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main")];
        let mut spool = Spool::open(cfg).expect("reopen spool");
        feed(&mut spool, 100..200);
        h.index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        for i in 100..200 {
            let (found, _) = h
                .lookup(&q(Some(Attribute::EventId(format!("id-{i}"))), 50))
                .expect("lookup");
            let insight = i % 10 == 9;
            assert_eq!(found.len(), usize::from(!insight), "id-{i}");
        }
    }

    #[test]
    fn lookup_filters_orders_pages_and_expires() {
        let dir = temp("history-lookup");
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main")];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = History::open(&dir.0.join("history.db")).expect("open history");
        feed(&mut spool, 0..1000);
        h.index_spool(&dir.0.join("spool"), 1_000_000)
            .expect("index");
        let all: Vec<String> = {
            let mut v: Vec<(i64, usize)> = (0..1000)
                .filter(|i| i % 10 != 9)
                .map(|i| (extract(event(i).as_bytes()).expect("x").event_time_ms, i))
                .collect();
            v.sort_by(|a, b| b.cmp(a));
            v.into_iter().map(|(_, i)| format!("id-{i}")).collect()
        };
        // paging through everything: newest first, no duplicates, no gaps
        let mut got = Vec::new();
        let mut query = q(None, 7);
        loop {
            let (found, next) = h.lookup(&query).expect("lookup");
            got.extend(ids(&found));
            match next {
                Some(n) => query.after = Some(n),
                None => break,
            }
        }
        assert_eq!(got.len(), all.len());
        let times: Vec<i64> = got
            .iter()
            .map(|id| {
                let i: usize = id[3..].parse().expect("n");
                extract(event(i).as_bytes()).expect("x").event_time_ms
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]));
        let mut uniq = got.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), all.len());
        // one attribute each
        let count = |a: Attribute| {
            let (found, _) = h.lookup(&q(Some(a), 1000)).expect("lookup");
            found.len()
        };
        let non_insight =
            |p: &dyn Fn(usize) -> bool| (0..1000).filter(|i| i % 10 != 9 && p(*i)).count();
        assert_eq!(
            count(Attribute::parse("Username", "alice").expect("key")),
            non_insight(&|i| i.is_multiple_of(3))
        );
        assert_eq!(
            count(Attribute::parse("Username", "sess-b").expect("key")),
            non_insight(&|i| i % 3 != 0)
        );
        assert_eq!(
            count(Attribute::parse("ResourceName", "arn:aws:s3:::b2").expect("key")),
            non_insight(&|i| i.is_multiple_of(4))
        );
        // two resources of one type: found once
        assert_eq!(
            count(Attribute::parse("ResourceType", "AWS::S3::Bucket").expect("key")),
            non_insight(&|i| i.is_multiple_of(4))
        );
        assert_eq!(
            count(Attribute::parse("ReadOnly", "true").expect("key")),
            non_insight(&|i| i.is_multiple_of(2))
        );
        assert_eq!(
            count(Attribute::parse("AccessKeyId", "AKIA3").expect("key")),
            1
        );
        assert_eq!(
            count(Attribute::parse("EventName", "Nope").expect("key")),
            0
        );
        assert!(Attribute::parse("Bogus", "x").is_none());
        // Insight events only with insight = true
        let mut iq = q(None, 1000);
        iq.insight = true;
        assert_eq!(h.lookup(&iq).expect("lookup").0.len(), 100);
        // inclusive time range
        let mut tq = q(None, 1000);
        tq.start_ms = Some(1_767_225_600_000 + 10_000);
        tq.end_ms = Some(1_767_225_600_000 + 19_000);
        let n = h.lookup(&tq).expect("lookup").0.len();
        assert_eq!(n, non_insight(&|i| (10..=19).contains(&(i % 3600))));
        // every lookup is an index range scan (no table scan, no sort)
        let conn = h.reader().expect("reader");
        for sql in [
            "SELECT a.rid FROM attrs a WHERE a.vid=1 \
             AND a.insight=0 AND a.event_time BETWEEN 0 AND 9 AND (a.event_time, a.rid) < (5, 5) \
             ORDER BY a.event_time DESC, a.rid DESC LIMIT 51",
            "SELECT rid FROM events WHERE insight=0 AND event_time BETWEEN 0 AND 9 \
             AND (event_time, rid) < (5, 5) ORDER BY event_time DESC, rid DESC LIMIT 51",
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("prepare")
                .query_map([], |r| r.get::<_, String>(3))
                .expect("plan")
                .map(|r| r.expect("row"))
                .collect();
            let plan = plan.join("; ");
            assert!(
                !plan.contains("TEMP B-TREE") && plan.contains("USING"),
                "{plan}"
            );
            assert!(
                !plan.contains("SCAN e") && !plan.contains("SCAN events"),
                "{plan}"
            );
        }
        drop(conn);
        // retention: everything before minute 10 goes, in small steps
        let cutoff = 1_767_225_600_000 + 600_000;
        while h.expire(cutoff, 100).expect("expire") == 100 {}
        assert_eq!(h.count().expect("count"), 400);
        assert_eq!(
            count(Attribute::parse("Username", "alice").expect("key")),
            (600..1000usize)
                .filter(|i| i % 10 != 9 && i.is_multiple_of(3))
                .count()
        );
        let left: i64 = h
            .reader()
            .expect("reader")
            .query_row(
                "SELECT count(*) FROM attrs WHERE event_time < ?1",
                [cutoff],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(left, 0);
        let orphans: i64 = h
            .reader()
            .expect("reader")
            .query_row(
                "SELECT count(*) FROM vals WHERE id NOT IN (SELECT vid FROM attrs)",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(orphans, 0);
        let (chunks, orphans): (i64, i64) = h
            .reader()
            .expect("reader")
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS \
                 (SELECT 1 FROM events WHERE rid >> ?1 = c.cid)) FROM chunks c",
                [CHUNK_BITS],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("count");
        assert!(chunks > 0);
        assert_eq!(orphans, 0);
    }

    #[test]
    fn an_older_schema_is_refused() {
        let dir = temp("history-schema");
        let path = dir.0.join("history.db");
        drop(History::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("sqlite");
        conn.execute(
            "UPDATE meta SET value=?1 WHERE key='schema'",
            [SCHEMA_VERSION - 1],
        )
        .expect("downgrade");
        drop(conn);
        let Err(e) = History::open(&path) else {
            panic!("an older schema was opened");
        };
        assert!(e.to_string().contains("trailseal history rebuild"), "{e}");
    }

    #[test]
    fn indexer_thread_keeps_up_and_stops() {
        let dir = temp("history-indexer");
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main")];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = std::sync::Arc::new(History::open(&dir.0.join("history.db")).expect("open"));
        let mut ix = Indexer::spawn(
            h.clone(),
            dir.0.join("spool"),
            std::time::Duration::from_secs(30),
            7,
        )
        .expect("spawn");
        assert!(ix.tid() > 0);
        feed(&mut spool, 0..50);
        let f = spool
            .seal("main", "111122223333", "us-east-1", false, "k")
            .expect("seal")
            .expect("sealed");
        ix.poke(); // without it the next look would be 30 s away
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !h.covered("main", f.seq).expect("covered") || h.count().expect("count") < 50 {
            assert!(std::time::Instant::now() < deadline, "not indexed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(h.count().expect("count"), 50);
        assert_eq!(ix.indexed(), 50);
        assert!(ix.error().is_none());
        ix.stop();
    }
}
