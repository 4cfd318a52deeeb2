//! The event history: a SQLite index of every spooled event, for CloudTrail's LookupEvents.
//!
//! It is a side path: [`History::index_spool`] tails the spool's files (it never touches the
//! [`crate::spool::Spool`] itself) and may lag; it never slows ingest. The core hands it each
//! frame it writes with the events' lookup values already hashed ([`Feed`]), so indexing a
//! frame costs no reading back, decompressing or parsing; what the feed misses (it is bounded,
//! and empty after a restart) is read from the files. While ingest runs, merging blocks waits
//! ([`History::defer_merges`]). Everything about SQLite
//! lives here, so the process holds one SQLite library (Python never opens the file).
//!
//! Database layout (one file, WAL journal, `synchronous=NORMAL`: a process crash loses nothing
//! committed, a power loss at most the last transactions, which the spool re-indexes):
//! ```text
//! chunks(cid INTEGER PRIMARY KEY, data BLOB, fid INTEGER, at INTEGER, len INTEGER, sum INTEGER)
//!   one zstd frame of canonical records in log-file framing (an optional log header, events
//!   separated by `,\n`, an optional footer: [`frame_events`] reads it). A spool frame of at
//!   most [`VERBATIM_MAX`] bytes is kept where it is: `data` is NULL and the frame is bytes
//!   `[at, at + len)` of the history's file `fid` (xxh3-64 `sum`), a hard link to the spool
//!   file it was indexed from (see `files`). Where links do not work (the spool on another
//!   filesystem) such a frame is stored in `data`, as it is; other events (gzip files,
//!   rebuilds, larger frames) go into new frames of [`LOOSE_EVENTS`] in `data`. An event's
//!   rid = cid << CHUNK_BITS | its position in the chunk.
//! files(fid INTEGER PRIMARY KEY, trail TEXT, seq INTEGER)
//!   `<database>.files/<fid>.zst`: a second name (hard link) of the spool file `(trail, seq)`,
//!   made when the history first indexes it, so its frames are never copied (before, each was
//!   written to the WAL and again to the database: as many bytes as the log files themselves,
//!   twice). The spool appends to a segment, renames it when sealed and removes the name once
//!   delivered and indexed, so the frames indexed stay where they are; the one exception, a torn
//!   tail cut after a power loss (frames the history may have indexed before the group commit's
//!   fsync), is found at open by the frames' sums (`check_open_files`). A file goes (row, then
//!   link) with the last chunk that refers to it; at open, links without a row (a crash between
//!   linking and the commit, or between the commit and the unlink) and rows without a chunk are
//!   removed.
//! blocks, posts
//!   the lookup index: per indexing step one block of sorted postings (hash of the value,
//!   event_time, rid) per lookup key, merged into larger blocks in the background
//!   ([`postings`] describes them); a block owns its chunks and goes with them.
//! progress(trail TEXT, seq INTEGER, offset INTEGER, events INTEGER, done INTEGER,
//!          PRIMARY KEY(trail, seq))
//!   per spool file: the byte offset of the next whole zstd frame not yet indexed, the events
//!   taken so far, and whether the sealed file is wholly indexed; written in the transaction
//!   that inserts the rows it covers.
//! meta(key, value): 'schema' (the version), 'horizon' (expired before this epoch ms)
//! ```
//! A lookup (one attribute or none, a time range, newest first, a limit, a keyset cursor
//! `(event_time, rid)`) reads one bucket of postings per block whose time range can hold a
//! result, newest block first, and stops once no older block can; a `rid` orders events of the
//! same millisecond, so a cursor is stable under concurrent inserts (no duplicates, no gaps).
//! Retention moves a horizon (lookups never return an older event) and removes whole blocks
//! once they hold nothing newer.
//!
//! What is indexed: whole zstd frames of open segments (as soon as they are written, before the
//! group commit's fsync: after a power loss the history may hold events that were never
//! acknowledged, which their agents then resend under the same eventID), sealed zstd files from
//! the offset reached in their segment, and sealed gzip files from the count of events taken. An
//! event routed to several trails is indexed once (the writer remembers the last [`RECENT_IDS`]
//! eventIDs; a copy indexed later still is never returned twice in one page). A stored offset
//! that no longer starts a frame (the spool truncated a torn tail after a power loss) restarts
//! that file from its beginning; events already present are kept. A lookup leaves out the
//! events of a frame whose file is gone or whose bytes no longer match its `sum` (such a torn
//! tail, or the file removed by hand): the history never returns bytes it did not index.
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use jiter::{Jiter, Peek};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{CoreError, Result};
use crate::segment::{self, FOOTER, HEADER, SEPARATOR};
use crate::verify::{self, Compression};

mod feed;
mod postings;
mod row;

pub use feed::{EventLookup, FedEvent, FedFrame, Feed, LookupHashes, FEED_MAX_EVENTS};

/// Bumped when the schema changes (an older file is refused: rebuild it).
pub const SCHEMA_VERSION: i64 = 7;

/// The schema version of the history database at `path`, without changing it: None when there
/// is no file (or it has no version); an error when it is not a SQLite database.
pub fn schema_of(path: &Path) -> Result<Option<i64>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| db_err(path, "open", e))?;
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| db_err(path, "read the schema", e))?;
    if !has_meta {
        return Ok(None);
    }
    conn.query_row("SELECT value FROM meta WHERE key='schema'", [], |r| {
        r.get(0)
    })
    .optional()
    .map_err(|e| db_err(path, "read the schema version", e))
}

/// rid bits of an event's position in its chunk.
pub(crate) const CHUNK_BITS: u32 = 20;
/// The largest spool frame (decompressed bytes) kept as a chunk as it is: a lookup decompresses
/// one chunk per chunk it returns events from (~1 ms for 2 MiB).
pub const VERBATIM_MAX: usize = 2 << 20;
/// Events per chunk made by the history itself.
const LOOSE_EVENTS: usize = 64;
/// zstd level of record chunks (fast: the indexer must keep up with ingest).
const CHUNK_LEVEL: i32 = 1;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Bytes of a spool file read per indexing step (more when one frame is larger).
const READ_BYTES: u64 = 2 << 20;

/// The lookup attributes with postings of their own (besides EventId and every event).
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
    /// The lookup values of this event: (key, value), distinct.
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
        let n = keep_distinct(&mut out);
        out.truncate(n);
        out
    }
}

/// Move the distinct entries of a short list to its front, the first of each in order, and
/// return how many there are (a handful of entries: a linear scan beats hashing them).
fn keep_distinct<T: PartialEq + Copy>(v: &mut [T]) -> usize {
    let mut n = 0;
    for i in 0..v.len() {
        if !v[..n].contains(&v[i]) {
            v[n] = v[i];
            n += 1;
        }
    }
    n
}

fn json_err(e: jiter::JiterError) -> String {
    format!("not valid JSON: {e}")
}

/// A lookup field met while walking a canonical record, reported with its string value
/// (readOnly as "true" or "false"); a member of another type is skipped, as LookupEvents
/// ignores it.
#[derive(Clone, Copy)]
enum Field {
    Id,
    Time,
    Name,
    Source,
    Category,
    ReadOnly,
    UserName,
    Arn,
    AccessKeyId,
    /// A new entry (an object) of `resources` (value ""): its type and ARN follow.
    Resource,
    ResourceType,
    ResourceArn,
}

type Visit<'f> = dyn FnMut(Field, &str) -> std::result::Result<(), String> + 'f;

/// Report the string value at `j` as `field` (skip it when it is not a string).
fn string_member(
    j: &mut Jiter<'_>,
    visit: &mut Visit<'_>,
    field: Field,
) -> std::result::Result<(), String> {
    match j.peek().map_err(json_err)? {
        Peek::String => visit(field, j.known_str().map_err(json_err)?),
        p => j.known_skip(p).map_err(json_err),
    }
}

/// Walk one canonical record (FORMATS.md §1 defaults filled in), reporting its lookup fields to
/// `visit`: the one reading behind [`extract`] (lookups) and [`index_fields`] (indexing). Keys are
/// matched as they are written (a canonical record escapes none of these names).
fn walk(record: &[u8], visit: &mut Visit<'_>) -> std::result::Result<(), String> {
    let mut j = Jiter::new(record);
    let mut key = j.next_object_bytes().map_err(json_err)?.map(<[u8]>::to_vec);
    while let Some(k) = key {
        match k.as_slice() {
            b"eventID" => string_member(&mut j, visit, Field::Id)?,
            b"eventTime" => string_member(&mut j, visit, Field::Time)?,
            b"eventName" => string_member(&mut j, visit, Field::Name)?,
            b"eventSource" => string_member(&mut j, visit, Field::Source)?,
            b"eventCategory" => string_member(&mut j, visit, Field::Category)?,
            b"readOnly" => match j.peek().map_err(json_err)? {
                p @ (Peek::True | Peek::False) => {
                    let b = j.known_bool(p).map_err(json_err)?;
                    visit(Field::ReadOnly, if b { "true" } else { "false" })?
                }
                p => j.known_skip(p).map_err(json_err)?,
            },
            b"userIdentity" if j.peek().map_err(json_err)? == Peek::Object => {
                let mut ik = j.next_object_bytes().map_err(json_err)?.map(<[u8]>::to_vec);
                while let Some(k) = ik {
                    match k.as_slice() {
                        b"userName" => string_member(&mut j, visit, Field::UserName)?,
                        b"arn" => string_member(&mut j, visit, Field::Arn)?,
                        b"accessKeyId" => string_member(&mut j, visit, Field::AccessKeyId)?,
                        _ => j.next_skip().map_err(json_err)?,
                    }
                    ik = j.next_key_bytes().map_err(json_err)?.map(<[u8]>::to_vec);
                }
            }
            b"resources" if j.peek().map_err(json_err)? == Peek::Array => {
                let mut item = j.known_array().map_err(json_err)?;
                while let Some(p) = item {
                    if p == Peek::Object {
                        visit(Field::Resource, "")?;
                        let mut rk = j.next_object_bytes().map_err(json_err)?.map(<[u8]>::to_vec);
                        while let Some(k) = rk {
                            match k.as_slice() {
                                b"type" => string_member(&mut j, visit, Field::ResourceType)?,
                                b"ARN" => string_member(&mut j, visit, Field::ResourceArn)?,
                                _ => j.next_skip().map_err(json_err)?,
                            }
                            rk = j.next_key_bytes().map_err(json_err)?.map(<[u8]>::to_vec);
                        }
                    } else {
                        j.known_skip(p).map_err(json_err)?;
                    }
                    item = j.array_step().map_err(json_err)?;
                }
            }
            _ => j.next_skip().map_err(json_err)?,
        }
        key = j.next_key_bytes().map_err(json_err)?.map(<[u8]>::to_vec);
    }
    Ok(())
}

/// The hash the index keeps of a lookup value (xxh3-64).
pub fn value_hash(value: &[u8]) -> u64 {
    postings::hash(value)
}

/// Epoch milliseconds of an eventTime value.
fn event_time_ms(t: &str) -> std::result::Result<i64, String> {
    segment::parse_time(t)
        .map(|secs| secs.saturating_mul(1000))
        .ok_or_else(|| format!("eventTime {t:?} is not YYYY-MM-DDTHH:MM:SSZ"))
}

/// The session name of an assumed role's ARN (its last part), which stands for the user name.
fn session_name(arn: &str) -> Option<&str> {
    arn.contains(":assumed-role/")
        .then(|| arn.rsplit('/').next())
        .flatten()
        .filter(|s| !s.is_empty())
}

/// Read the lookup fields of one canonical event (defaults filled in, FORMATS.md §1).
pub fn extract(record: &[u8]) -> std::result::Result<EventFields, String> {
    let mut f = EventFields::default();
    let (mut time, mut user_name, mut session) = (None, None, None);
    walk(record, &mut |field, v| {
        let own = |s: &str| Some(s.to_owned());
        match field {
            Field::Id => f.event_id = v.to_owned(),
            Field::Time => time = Some(event_time_ms(v)?),
            Field::Name => f.event_name = v.to_owned(),
            Field::Source => f.event_source = v.to_owned(),
            Field::Category => f.insight = v == "Insight",
            Field::ReadOnly => f.read_only = v == "true",
            Field::UserName => user_name = own(v),
            Field::Arn => session = session_name(v).and_then(own),
            Field::AccessKeyId => f.access_key_id = own(v),
            Field::Resource => f.resources.push((None, None)),
            Field::ResourceType => {
                if let Some(r) = f.resources.last_mut() {
                    r.0 = own(v);
                }
            }
            Field::ResourceArn => {
                if let Some(r) = f.resources.last_mut() {
                    r.1 = own(v);
                }
            }
        }
        Ok(())
    })?;
    if f.event_id.is_empty() {
        return Err("eventID is missing".into());
    }
    f.event_time_ms = time.ok_or("eventTime is missing")?;
    f.username = user_name.or(session);
    Ok(f)
}

/// What indexing needs of one canonical event: the eventID's hash, eventTime, the category and
/// the hashes of its lookup values (as [`EventFields::attrs`] lists them, distinct). The same
/// walk as [`extract`], hashing each string where it lies instead of keeping it.
struct IndexFields {
    id_hash: u64,
    time_ms: i64,
    insight: bool,
}

/// Read `record` for indexing; `values` receives its (lookup key, value hash) pairs.
fn index_fields(
    record: &[u8],
    values: &mut LookupHashes,
) -> std::result::Result<IndexFields, String> {
    values.clear();
    let (mut id, mut time, mut insight, mut read_only) = (None, None, false, false);
    let hash = |s: &str| postings::hash(s.as_bytes());
    walk(record, &mut |field, v| {
        match field {
            Field::Id => id = (!v.is_empty()).then(|| hash(v)),
            Field::Time => time = Some(event_time_ms(v)?),
            Field::Category => insight = v == "Insight",
            Field::ReadOnly => read_only = v == "true",
            Field::UserName => values.user_name(v),
            Field::Arn => values.arn(v),
            Field::Resource => {}
            Field::Name => values.add(AttrKey::EventName, v),
            Field::Source => values.add(AttrKey::EventSource, v),
            Field::AccessKeyId => values.add(AttrKey::AccessKeyId, v),
            Field::ResourceType => values.add(AttrKey::ResourceType, v),
            Field::ResourceArn => values.add(AttrKey::ResourceName, v),
        }
        Ok(())
    })?;
    let id_hash = id.ok_or("eventID is missing")?;
    let time_ms = time.ok_or("eventTime is missing")?;
    values.finish_into(read_only);
    Ok(IndexFields {
        id_hash,
        time_ms,
        insight,
    })
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
    /// Of `events`, those whose lookup values the core handed over ([`Feed`]).
    pub fed: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    offset: u64,
    events: u64,
    done: bool,
}

/// The eventID hashes indexed most recently (an event routed to several trails is indexed once):
/// at most [`RECENT_IDS`], oldest forgotten first.
#[derive(Default)]
struct RecentIds {
    set: ahash::AHashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

/// How many recent eventIDs the writer remembers (~6 MB). The same event reaches every trail's
/// spool in the same batch, and [`History::index_spool`] indexes the trails side by side, so
/// its copies are indexed well within this window.
const RECENT_IDS: usize = 1 << 18;

impl RecentIds {
    /// Remember `h`; false when it was there already.
    fn insert(&mut self, h: u64) -> bool {
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

struct Writer {
    conn: Connection,
    /// The next chunk id.
    next_cid: i64,
    /// The blocks, in bid order (as in the database).
    blocks: Vec<postings::Block>,
    recent: RecentIds,
    /// The `progress` table, cached.
    progress: HashMap<(String, u64), Progress>,
    /// Shared with [`History::covered`].
    covered: std::sync::Arc<Mutex<HashSet<(String, u64)>>>,
    /// What the core handed over (shared with it).
    feed: std::sync::Arc<Feed>,
    /// Leave merging blocks for later ([`History::defer_merges`]).
    defer_merges: bool,
    /// The history's files (`<database>.files`).
    files: PathBuf,
    /// The spool files linked into `files` by this process: (trail, seq) → fid.
    linked: HashMap<(String, u64), i64>,
    /// The fid of the next file linked.
    next_fid: i64,
    /// False once a link failed as unsupported: frames are then stored in the database.
    links_work: bool,
}

/// The history database of one daemon. Thread-safe: indexing and retention are serialized on a
/// writer connection; lookups use their own connection and run beside them (WAL).
pub struct History {
    path: PathBuf,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    /// (trail, seq) of the sealed files wholly indexed (read without waiting for the writer).
    covered: std::sync::Arc<Mutex<HashSet<(String, u64)>>>,
    /// Events older than this (epoch ms) are expired: lookups never return them, even while
    /// their block (which also holds newer events) is still there.
    horizon: std::sync::atomic::AtomicI64,
    feed: std::sync::Arc<Feed>,
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
    // 16 KiB pages (for a new file; an existing one keeps its own): record chunks and postings
    // rows are large, and indexing with them cost ~20% less than with 4 KiB pages
    // (examples/history_index).
    conn.execute_batch(
        "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
         PRAGMA cache_size=-8192;",
    )
    .map_err(|e| db_err(path, "set pragmas", e))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
  cid INTEGER PRIMARY KEY, data BLOB, fid INTEGER, at INTEGER, len INTEGER, sum INTEGER);
CREATE TABLE IF NOT EXISTS files(fid INTEGER PRIMARY KEY, trail TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS progress(
  trail TEXT NOT NULL, seq INTEGER NOT NULL, offset INTEGER NOT NULL, events INTEGER NOT NULL,
  done INTEGER NOT NULL, PRIMARY KEY(trail, seq));
";

/// What a crash between linking a file and committing its chunks, or between removing a
/// file's row and its link, leaves: remove rows no chunk refers to and links without a row.
/// Returns the next fid.
fn tidy_files(conn: &Connection, path: &Path, files: &Path) -> Result<i64> {
    let fail = |e| db_err(path, "tidy the history's files", e);
    conn.execute(
        "DELETE FROM files WHERE NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.fid = files.fid)",
        [],
    )
    .map_err(fail)?;
    let mut st = conn.prepare("SELECT fid FROM files").map_err(fail)?;
    let kept = st
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(fail)?
        .collect::<rusqlite::Result<HashSet<i64>>>()
        .map_err(fail)?;
    let entries = match std::fs::read_dir(files) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return next_fid(conn, path),
        Err(e) => return Err(CoreError::io("list", files, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| CoreError::io("list", files, e))?;
        let name = entry.file_name();
        let fid = name
            .to_str()
            .and_then(|n| n.strip_suffix(".zst"))
            .and_then(|n| n.parse::<i64>().ok());
        if fid.is_some_and(|f| kept.contains(&f)) {
            continue;
        }
        let orphan = entry.path();
        match std::fs::remove_file(&orphan) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CoreError::io("remove", &orphan, e)),
        }
    }
    next_fid(conn, path)
}

/// After a power loss the spool cuts a segment's torn tail and writes other frames where it was,
/// and the history may have indexed frames of that tail (it indexes before the group commit's
/// fsync). So at open, the chunks of every file not wholly indexed are checked against their
/// sums; a file with a chunk that no longer matches is indexed again from its start (its
/// progress reset), and the eventIDs of the lost chunks are returned, to be left out of the
/// recent set: the copies their agents resend are then indexed, not taken for ones already there.
fn check_open_files(
    conn: &Connection,
    path: &Path,
    files: &Path,
    blocks: &[postings::Block],
    progress: &mut HashMap<(String, u64), Progress>,
) -> Result<HashSet<u64>> {
    use std::os::unix::fs::FileExt;
    let fail = |e| db_err(path, "check the history's files", e);
    // every chunk kept in a file not wholly indexed, grouped by file
    let mut st = conn
        .prepare(
            "SELECT c.cid, c.at, c.len, c.sum, f.fid, f.trail, f.seq FROM chunks c \
             JOIN files f ON f.fid = c.fid \
             JOIN progress p ON p.trail = f.trail AND p.seq = f.seq \
             WHERE p.done = 0 ORDER BY f.fid",
        )
        .map_err(fail)?;
    type Kept = (i64, i64, i64, i64, i64, String, i64);
    let kept = st
        .query_map([], |r| Kept::try_from(r))
        .map_err(fail)?
        .collect::<rusqlite::Result<Vec<Kept>>>()
        .map_err(fail)?;
    let mut lost = HashSet::new();
    let mut restart = HashSet::new();
    let mut open: Option<(i64, Option<std::fs::File>)> = None;
    for (cid, at, len, sum, fid, trail, seq) in kept {
        if open.as_ref().is_none_or(|(f, _)| *f != fid) {
            open = Some((fid, std::fs::File::open(file_path(files, fid)).ok()));
        }
        let file = open.as_ref().and_then(|(_, f)| f.as_ref());
        let matches = file.is_some_and(|f| {
            let mut bytes = vec![0u8; len.clamp(0, 1 << 30) as usize];
            f.read_exact_at(&mut bytes, at.max(0) as u64).is_ok() && frame_sum(&bytes) == sum as u64
        });
        if !matches {
            lost.insert(cid);
            restart.insert((trail, seq as u64));
        }
    }
    if lost.is_empty() {
        return Ok(HashSet::new());
    }
    let ids = postings::ids_in_chunks(conn, path, blocks, &lost, CHUNK_BITS)?;
    for (trail, seq) in restart {
        conn.execute(
            "UPDATE progress SET offset=0, events=0 WHERE trail=?1 AND seq=?2",
            params![trail, seq as i64],
        )
        .map_err(fail)?;
        progress.insert((trail, seq), Progress::default());
    }
    Ok(ids)
}

fn next_fid(conn: &Connection, path: &Path) -> Result<i64> {
    conn.query_row("SELECT coalesce(max(fid), 0) + 1 FROM files", [], |r| {
        r.get(0)
    })
    .map_err(|e| db_err(path, "read the last file id", e))
}

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
        Self::open_with_feed(path, Feed::default())
    }

    /// [`History::open`] with a feed of its own (tests: a small one).
    pub fn open_with_feed(path: &Path, feed: Feed) -> Result<History> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CoreError::io("create directory", dir, e))?;
        }
        let conn = open_conn(path)?;
        // Writes are appends (chunks, a block's postings) and merges that read and rewrite a
        // few blocks: a small page cache does (the readers get 8 MiB). WAL checkpoints every
        // ~16 MiB.
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint=4000; PRAGMA journal_size_limit=67108864; \
             PRAGMA cache_size=-8192;",
        )
        .map_err(|e| db_err(path, "set pragmas", e))?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| conn.execute_batch(postings::SCHEMA))
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
            // (checked before the index below: an older `chunks` has no `fid` to index)
            Some(v) => {
                return Err(CoreError::Invalid(format!(
                    "event history {}: schema version {v}, this trailseal reads {SCHEMA_VERSION}: \
                     move the file aside and run `trailseal history rebuild`",
                    path.display()
                )))
            }
        }
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS chunks_fid ON chunks(fid) WHERE fid IS NOT NULL;",
        )
        .map_err(|e| db_err(path, "create schema", e))?;
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
            .query_row("SELECT coalesce(max(cid), 0) + 1 FROM chunks", [], |r| {
                r.get(0)
            })
            .map_err(|e| db_err(path, "read the last chunk id", e))?;
        let blocks = postings::load_blocks(&conn, path)?;
        let files = files_dir(path);
        let next_fid = tidy_files(&conn, path, &files)?;
        let lost = check_open_files(&conn, path, &files, &blocks, &mut progress)?;
        let mut recent = RecentIds::default();
        for h in postings::recent_ids(&conn, path, &blocks, RECENT_IDS)?
            .into_iter()
            .rev()
        {
            if !lost.contains(&h) {
                recent.insert(h);
            }
        }
        let horizon: i64 = conn
            .query_row("SELECT value FROM meta WHERE key='horizon'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| db_err(path, "read the retention horizon", e))?
            .unwrap_or(i64::MIN);
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
        let feed = std::sync::Arc::new(feed);
        Ok(History {
            path: path.to_path_buf(),
            writer: Mutex::new(Writer {
                conn,
                next_cid,
                blocks,
                recent,
                progress,
                covered: covered.clone(),
                feed: feed.clone(),
                defer_merges: false,
                files,
                linked: HashMap::new(),
                next_fid,
                links_work: true,
            }),
            reader: Mutex::new(reader),
            covered,
            horizon: std::sync::atomic::AtomicI64::new(horizon),
            feed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The feed for the core to hand over what it writes to the spool this history indexes
    /// ([`crate::spool::Spool::feed_history`]).
    pub fn feed(&self) -> std::sync::Arc<Feed> {
        self.feed.clone()
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
        // Every trail gets its share of the budget, so that a lagging history indexes the
        // trails side by side: an event routed to several trails is then met again soon, within
        // the window of eventIDs the writer remembers.
        let share = max_events.div_ceil(trails.len().max(1) as u64).max(1);
        for trail in trails {
            let dir = spool_dir.join(&trail);
            let sources = list_sources(&dir)?;
            let present: HashSet<u64> = sources.keys().copied().collect();
            let mut taken = 0;
            for (seq, source) in sources {
                if taken >= share {
                    report.more = true;
                    break;
                }
                let r = w.index_file(&self.path, &trail, seq, &source, share - taken)?;
                taken += r.events;
                report.events += r.events;
                report.inserted += r.inserted;
                report.fed += r.fed;
                report.more |= r.more;
            }
            w.prune(&self.path, &trail, &present)?;
            self.feed.forget_gone(&trail, &present);
        }
        Ok(report)
    }

    /// Leave merging blocks for later (while ingest keeps the CPU busy: merging rewrites every
    /// posting once more), or merge again after each step. Lookups stay right either way, only
    /// slower while many small blocks wait; [`History::merge`] catches up.
    pub fn defer_merges(&self, defer: bool) -> Result<()> {
        self.writer()?.defer_merges = defer;
        Ok(())
    }

    /// Run up to `max_steps` merge steps (each merges a few blocks, in its own transaction);
    /// returns whether more are waiting.
    pub fn merge(&self, max_steps: usize) -> Result<bool> {
        let mut w = self.writer()?;
        for _ in 0..max_steps {
            if !w.merge_once(&self.path)? {
                return Ok(false);
            }
        }
        Ok(true)
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
        let inserted = w
            .commit_events(
                &self.path,
                &[Piece::Loose(split.events.clone())],
                None,
                None,
            )?
            .unwrap_or(0);
        Ok((split.events.len() as u64, inserted))
    }

    /// Expire events older than `cutoff_ms`: lookups stop returning them at once, and blocks
    /// holding nothing newer are removed, oldest first, until at least `max_rows` events went.
    /// Returns how many events were removed.
    pub fn expire(&self, cutoff_ms: i64, max_rows: u64) -> Result<u64> {
        use std::sync::atomic::Ordering;
        let p = &self.path;
        let mut w = self.writer()?;
        let horizon = self.horizon.load(Ordering::SeqCst).max(cutoff_ms);
        let mut old: Vec<postings::Block> = w
            .blocks
            .iter()
            .filter(|b| b.max_time < horizon)
            .copied()
            .collect();
        old.sort_unstable_by_key(|b| b.max_time);
        let tx = w.conn.transaction().map_err(|e| db_err(p, "begin", e))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES('horizon', ?1)",
            [horizon],
        )
        .map_err(|e| db_err(p, "save the retention horizon", e))?;
        let mut removed = 0u64;
        let mut gone = HashSet::new();
        let mut unused = Vec::new();
        for b in &old {
            if removed >= max_rows {
                break;
            }
            unused.extend(postings::delete_block(&tx, p, b)?);
            removed += b.events as u64;
            gone.insert(b.bid);
        }
        tx.commit().map_err(|e| db_err(p, "commit", e))?;
        self.horizon.store(horizon, Ordering::SeqCst);
        w.blocks.retain(|b| !gone.contains(&b.bid));
        // the rows went with the last chunks that referred to them; now the links (a lookup
        // that read such a chunk's row before leaves its events out)
        w.linked.retain(|_, fid| !unused.contains(fid));
        // every one is tried; one that cannot be removed is removed at the next open (no row)
        let mut failed = None;
        for fid in unused {
            let file = file_path(&w.files, fid);
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed = failed.or(Some(CoreError::io("remove", &file, e))),
            }
        }
        failed.map_or(Ok(removed), Err)
    }

    /// Number of events in the history (not expired).
    pub fn count(&self) -> Result<u64> {
        let conn = self.reader()?;
        let tx = conn
            .unchecked_transaction()
            .map_err(|e| db_err(&self.path, "begin", e))?;
        let blocks = postings::load_blocks(&tx, &self.path)?;
        let horizon = self.horizon.load(std::sync::atomic::Ordering::SeqCst);
        postings::count_since(&tx, &self.path, &blocks, horizon)
    }

    /// Run a lookup: up to `limit` events newest first, and the cursor of the next page when more
    /// remain.
    pub fn lookup(&self, q: &Query) -> Result<Page> {
        let p = &self.path;
        let conn = self.reader()?;
        // one snapshot: a merge or an expiry committed meanwhile must not change the blocks
        let tx = conn
            .unchecked_transaction()
            .map_err(|e| db_err(p, "begin", e))?;
        let horizon = self.horizon.load(std::sync::atomic::Ordering::SeqCst);
        let start = q.start_ms.unwrap_or(i64::MIN).max(horizon);
        let end = q.end_ms.unwrap_or(i64::MAX);
        let after = q.after.unwrap_or((i64::MAX, i64::MAX));
        let (key, hash) = match &q.attribute {
            None => (postings::ALL, 0),
            Some(Attribute::EventId(id)) => (postings::EVENT_ID, postings::hash(id.as_bytes())),
            Some(Attribute::Other(k, v)) => (*k as i64, postings::hash(v.as_bytes())),
        };
        let blocks = postings::load_blocks(&tx, p)?;
        let mut rows = postings::scan(
            &tx,
            p,
            &blocks,
            postings::post_key(key, q.insight),
            hash,
            (start, end),
            after,
            q.limit + 1,
        )?;
        let more = rows.len() > q.limit;
        rows.truncate(q.limit);
        let Records { by_rid, lost } = load_records(&tx, p, rows.iter().map(|r| r.1))?;
        let mut found = Vec::with_capacity(rows.len());
        let mut ids = HashSet::new();
        for &(_, rid) in &rows {
            if lost.contains(&(rid >> CHUNK_BITS)) {
                continue;
            }
            let record = by_rid.get(&rid).ok_or_else(|| {
                CoreError::Invalid(format!(
                    "event history {}: the record of row {rid} is missing (run `trailseal \
                     history rebuild`)",
                    p.display()
                ))
            })?;
            let fields = extract(record).map_err(|m| {
                CoreError::Invalid(format!("event history {}: row {rid}: {m}", p.display()))
            })?;
            // the postings hold hashes: a collision is caught here
            let matches = match &q.attribute {
                None => true,
                Some(Attribute::EventId(id)) => fields.event_id == *id,
                Some(Attribute::Other(k, v)) => fields.attrs().contains(&(*k, v.as_str())),
            };
            if !matches || !ids.insert(fields.event_id.clone()) {
                continue;
            }
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
        // the cursor is the last posting read, even when its event was left out
        let next = if more { rows.last().copied() } else { None };
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
    /// When the last poke came (a delivered file: ingest is running).
    last_poke: Option<std::time::Instant>,
    stop: bool,
    error: Option<String>,
    indexed: u64,
    /// Of the events read, those the core handed over ([`Feed`]).
    fed: u64,
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
            st.last_poke = Some(std::time::Instant::now());
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

    /// Events read as the core handed them over (the others were read back from the spool).
    pub fn fed(&self) -> u64 {
        self.shared.state.lock().map(|st| st.fed).unwrap_or(0)
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

/// Ingest counts as running when a group commit fed the history (or a delivered file poked the
/// indexer) this recently.
const BUSY_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

fn indexer_loop(
    history: &History,
    spool_dir: &Path,
    poll: std::time::Duration,
    batch: u64,
    shared: &IndexerShared,
) {
    // ingest runs: a group commit fed the history, or a delivered file poked it, just now
    let busy_now = |st: &IndexerState| {
        st.last_poke.is_some_and(|t| t.elapsed() < BUSY_WINDOW)
            || history.feed().since_push().is_some_and(|t| t < BUSY_WINDOW)
    };
    loop {
        let r = loop {
            // While ingest runs, merging waits: it rewrites every posting once more.
            let busy = match shared.state.lock() {
                Ok(st) => busy_now(&st),
                Err(_) => return,
            };
            if let Err(e) = history.defer_merges(busy) {
                break Err(e);
            }
            match history.index_spool(spool_dir, batch) {
                Ok(r) if r.more => {
                    let Ok(mut st) = shared.state.lock() else {
                        return;
                    };
                    st.indexed += r.inserted;
                    st.fed += r.fed;
                    if st.stop {
                        return;
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
                st.fed += r.fed;
                st.error = None;
            }
            Err(e) => st.error = Some(e.to_string()),
        }
        // Idle: merge what waited, a step at a time, until ingest pokes again.
        if !busy_now(&st) && !st.poked && !st.stop && st.error.is_none() {
            drop(st);
            let more = history.defer_merges(false).and_then(|()| history.merge(1));
            st = match shared.state.lock() {
                Ok(st) => st,
                Err(_) => return,
            };
            match more {
                Ok(true) if !st.stop => continue,
                Ok(_) => {}
                Err(e) => st.error = Some(e.to_string()),
            }
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

/// Decompress one stored chunk.
fn decompress_chunk(path: &Path, cid: i64, data: &[u8]) -> Result<Vec<u8>> {
    let size = zstd::zstd_safe::get_frame_content_size(data)
        .ok()
        .flatten()
        .unwrap_or(0)
        .min(1 << 30) as usize;
    let out = if size > 0 {
        zstd::bulk::decompress(data, size)
    } else {
        zstd::stream::decode_all(data)
    };
    out.map_err(|e| {
        CoreError::Invalid(format!(
            "event history {}: record chunk {cid} does not decompress: {e} (stop the daemon and \
             run `trailseal history rebuild`)",
            path.display()
        ))
    })
}

/// What [`load_records`] found: records by rid (absent when their chunk is gone), and the
/// chunks kept in a file that is gone or whose bytes changed (their events are left out).
struct Records {
    by_rid: HashMap<i64, Vec<u8>>,
    lost: HashSet<i64>,
}

/// The records of events `rids`. Chunks are read one at a time, so a lookup holds at most one
/// decompressed chunk.
fn load_records(
    conn: &Connection,
    path: &Path,
    rids: impl Iterator<Item = i64>,
) -> Result<Records> {
    use std::os::unix::fs::FileExt;
    let fail = |e| db_err(path, "read records", e);
    let mut by_chunk: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for rid in rids {
        by_chunk.entry(rid >> CHUNK_BITS).or_default().push(rid);
    }
    let mut st = conn
        .prepare_cached("SELECT data, fid, at, len, sum FROM chunks WHERE cid=?1")
        .map_err(fail)?;
    let files = files_dir(path);
    let mut open: Option<(i64, std::fs::File)> = None;
    let mut out = HashMap::new();
    let mut lost = HashSet::new();
    type Row = (
        Option<Vec<u8>>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    for (cid, rids) in by_chunk {
        let row: Option<Row> = st
            .query_row([cid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
            .map_err(fail)?;
        let data = match row {
            None => continue,
            Some((Some(data), ..)) => data,
            Some((None, Some(fid), Some(at), Some(len), Some(sum))) => {
                if open.as_ref().is_none_or(|(f, _)| *f != fid) {
                    let file = file_path(&files, fid);
                    open = match std::fs::File::open(&file) {
                        Ok(f) => Some((fid, f)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            lost.insert(cid); // expired meanwhile, or removed by hand
                            continue;
                        }
                        Err(e) => return Err(CoreError::io("open", &file, e)),
                    };
                }
                let Some((_, f)) = &open else { continue };
                let mut data = vec![0u8; len.max(0) as usize];
                match f.read_exact_at(&mut data, at as u64) {
                    Ok(()) if frame_sum(&data) == sum as u64 => data,
                    Ok(()) => {
                        lost.insert(cid);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        lost.insert(cid);
                        continue;
                    }
                    Err(e) => return Err(CoreError::io("read", file_path(&files, fid), e)),
                }
            }
            Some(_) => {
                return Err(CoreError::Invalid(format!(
                    "event history {}: record chunk {cid} has neither bytes nor a file (stop the \
                     daemon and run `trailseal history rebuild`)",
                    path.display()
                )))
            }
        };
        let content = decompress_chunk(path, cid, &data)?;
        let events = frame_events(&content, content.starts_with(HEADER)).map_err(|()| {
            CoreError::Invalid(format!(
                "event history {}: record chunk {cid} is not a piece of a log file (stop the \
                 daemon and run `trailseal history rebuild`)",
                path.display()
            ))
        })?;
        for rid in rids {
            let pos = (rid & ((1 << CHUNK_BITS) - 1)) as usize;
            if let Some(record) = events.get(pos) {
                out.insert(rid, record.to_vec());
            }
        }
    }
    Ok(Records { by_rid: out, lost })
}

/// Events to index, as found.
enum Piece<'a> {
    /// A zstd frame read from a spool file (bytes `[at, at + compressed.len())`) and its events.
    Frame {
        compressed: &'a [u8],
        at: u64,
        content_len: usize,
        events: Vec<&'a [u8]>,
    },
    /// Events without a frame of their own (a gzip file, a rebuilt log file).
    Loose(Vec<&'a [u8]>),
    /// A zstd frame of a spool file and its events' lookup values, as the core handed them over
    /// ([`Feed`]): the frame's bytes are not read at all while the file can be linked.
    Fed(&'a FedFrame),
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::Frame { events, .. } | Piece::Loose(events) => events.len(),
            Piece::Fed(frame) => frame.events.len(),
        }
    }
}

/// The spool file the pieces of one [`insert_events`] call come from.
struct SpoolFile<'a> {
    trail: &'a str,
    seq: u64,
    file: &'a Path,
}

/// How a spool file came to be linked into the history's files by an [`insert_events`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Linked {
    /// Not needed, or linked before.
    #[default]
    Before,
    /// As file `fid` (a `files` row in the call's transaction).
    Now(i64),
    /// Links do not work here: the frames went into the database.
    Unsupported,
    /// The file is gone from where it was listed (sealed meanwhile): nothing was written.
    Gone,
}

/// What [`insert_events`] wrote, for the writer to take over once it is committed.
struct Inserted {
    next_cid: i64,
    block: Option<postings::Block>,
    ids: Vec<u64>,
    linked: Linked,
}

/// The check sum of a frame kept in a spool file (`chunks.sum`): xxh3-64 of its bytes.
pub fn frame_sum(frame: &[u8]) -> u64 {
    postings::hash(frame)
}

/// The history's file `fid` (a second name of a spool file).
fn file_path(files: &Path, fid: i64) -> PathBuf {
    files.join(format!("{fid}.zst"))
}

/// The directory of the files of the history database `db`: `<db>.files`.
pub fn files_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".files");
    PathBuf::from(name)
}

/// Link errors that mean links do not work between the spool and the history (another
/// filesystem, or one without hard links): EPERM, EXDEV, EMLINK, EOPNOTSUPP.
fn links_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(1 | 18 | 31 | 95))
}

/// Give `file` the name `files/<fid>.zst` and make the name durable; Ok(false) when the file is
/// gone, Err(None) when links do not work here.
fn link_file(files: &Path, fid: i64, file: &Path) -> std::result::Result<bool, Option<CoreError>> {
    std::fs::create_dir_all(files)
        .map_err(|e| Some(CoreError::io("create directory", files, e)))?;
    let name = file_path(files, fid);
    let mut attempt = std::fs::hard_link(file, &name);
    if matches!(&attempt, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) {
        // left by a crash before its row was committed: no chunk refers to it
        std::fs::remove_file(&name).map_err(|e| Some(CoreError::io("remove", &name, e)))?;
        attempt = std::fs::hard_link(file, &name);
    }
    match attempt {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) if links_unsupported(&e) => return Err(None),
        Err(e) => return Err(Some(CoreError::io("link", &name, e))),
    }
    segment::fsync_dir(files).map_err(Some)?;
    Ok(true)
}

/// Insert events: their record chunks and one block of postings (an eventID indexed recently
/// is skipped). A frame of `spool` is kept in the spool file, linked into the history's files
/// when the first chunk needs it (so a file whose events were all indexed already, from another
/// trail's copy, is never linked).
fn insert_events(
    conn: &Connection,
    path: &Path,
    pieces: &[Piece<'_>],
    w: &Writer,
    spool: Option<&SpoolFile<'_>>,
) -> Result<Inserted> {
    let fail = |e| db_err(path, "insert", e);
    let mut put_chunk = conn
        .prepare_cached(
            "INSERT INTO chunks(cid, data, fid, at, len, sum) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(fail)?;
    let mut fid = spool.and_then(|s| w.linked.get(&(s.trail.to_owned(), s.seq)).copied());
    let mut linked = if w.links_work {
        Linked::Before
    } else {
        Linked::Unsupported
    };
    // Store the frame `[at, at + len)` of the spool file (`bytes`, when read): as a reference
    // while the file can be linked, else as bytes. Ok(false): the file is gone.
    let mut put_frame =
        |cid: i64, at: u64, len: u64, sum: Option<u64>, bytes: Option<&[u8]>| -> Result<bool> {
            let Some(spool) = spool else {
                return Err(CoreError::Invalid(
                    "internal: a frame without its file".into(),
                ));
            };
            if fid.is_none() && linked == Linked::Before {
                let new = w.next_fid;
                match link_file(&w.files, new, spool.file) {
                    Ok(true) => {
                        conn.execute(
                            "INSERT INTO files(fid, trail, seq) VALUES(?1, ?2, ?3)",
                            params![new, spool.trail, spool.seq as i64],
                        )
                        .map_err(fail)?;
                        fid = Some(new);
                        linked = Linked::Now(new);
                    }
                    Ok(false) => return Ok(false),
                    Err(None) => linked = Linked::Unsupported,
                    Err(Some(e)) => return Err(e),
                }
            }
            if let Some(fid) = fid {
                let sum = sum.unwrap_or_else(|| frame_sum(bytes.unwrap_or_default()));
                put_chunk
                    .execute(params![
                        cid,
                        None::<&[u8]>,
                        fid,
                        at as i64,
                        len as i64,
                        sum as i64
                    ])
                    .map_err(fail)?;
                return Ok(true);
            }
            let read;
            let data = match bytes {
                Some(b) => b,
                None => match read_range(spool.file, at, at + len)? {
                    Some(b) => {
                        read = b;
                        &read
                    }
                    None => return Ok(false),
                },
            };
            put_chunk
                .execute(params![
                    cid,
                    data,
                    None::<i64>,
                    None::<i64>,
                    None::<i64>,
                    None::<i64>
                ])
                .map_err(fail)?;
            Ok(true)
        };
    let first_cid = w.next_cid;
    let mut next_cid = w.next_cid;
    let mut ids = ahash::AHashSet::new();
    let events: usize = pieces.iter().map(Piece::len).sum();
    let mut posts = postings::NewPosts::with_room(events);
    // Take one event (its lookup values hashed): its postings under `rid`; false when its
    // eventID was indexed already.
    let mut take_hashed = |f: &IndexFields, values: &[(AttrKey, u64)], rid: i64| -> bool {
        if w.recent.set.contains(&f.id_hash) || !ids.insert(f.id_hash) {
            return false;
        }
        let post = |key: i64, hash: u64| postings::Post {
            key: postings::post_key(key, f.insight),
            hash,
            time: f.time_ms,
            rid,
        };
        posts.push(post(postings::ALL, 0));
        posts.push(post(postings::EVENT_ID, f.id_hash));
        for &(k, h) in values {
            posts.push(post(k as i64, h));
        }
        true
    };
    let mut values = LookupHashes::default();
    // Read one record's lookup values into `values`.
    let read = |record: &[u8], values: &mut LookupHashes| -> Result<IndexFields> {
        index_fields(record, values).map_err(|m| {
            CoreError::Invalid(format!(
                "event history {}: cannot index an event: {m}",
                path.display()
            ))
        })
    };
    let gone = |next_cid| Inserted {
        next_cid,
        block: None,
        ids: Vec::new(),
        linked: Linked::Gone,
    };
    let mut loose: Vec<&[u8]> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Frame {
                compressed,
                at,
                content_len,
                events,
            } if *content_len <= VERBATIM_MAX && events.len() < 1 << CHUNK_BITS => {
                let mut new = 0;
                for (pos, record) in events.iter().enumerate() {
                    let f = read(record, &mut values)?;
                    let rid = next_cid << CHUNK_BITS | pos as i64;
                    new += usize::from(take_hashed(&f, values.values(), rid));
                }
                if new > 0 {
                    let len = compressed.len() as u64;
                    if !put_frame(next_cid, *at, len, None, Some(*compressed))? {
                        return Ok(gone(next_cid));
                    }
                    next_cid += 1;
                }
            }
            Piece::Fed(frame) => {
                let mut new = 0;
                for (pos, e) in frame.events.iter().enumerate() {
                    let f = IndexFields {
                        id_hash: e.lookup.id_hash,
                        time_ms: e.time_ms,
                        insight: frame.insight,
                    };
                    let rid = next_cid << CHUNK_BITS | pos as i64;
                    new += usize::from(take_hashed(&f, &e.lookup.values, rid));
                }
                if new > 0 {
                    if !put_frame(next_cid, frame.offset, frame.len, Some(frame.sum), None)? {
                        return Ok(gone(next_cid));
                    }
                    next_cid += 1;
                }
            }
            Piece::Frame { events, .. } | Piece::Loose(events) => loose.extend(events),
        }
    }
    if !loose.is_empty() {
        let zerr = |e: std::io::Error| {
            CoreError::Invalid(format!(
                "event history {}: cannot compress records: {e}",
                path.display()
            ))
        };
        // one compression context for the call (making one per chunk costs as much as compressing)
        let mut zc = zstd::bulk::Compressor::new(CHUNK_LEVEL).map_err(zerr)?;
        let mut chunk: Vec<u8> = Vec::new();
        let mut pos = 0i64;
        for (i, record) in loose.iter().enumerate() {
            let f = read(record, &mut values)?;
            if take_hashed(&f, values.values(), next_cid << CHUNK_BITS | pos) {
                // framed like a log file's later frame: each event after a separator
                chunk.extend_from_slice(SEPARATOR);
                chunk.extend_from_slice(record);
                pos += 1;
            }
            if pos > 0 && (pos as usize == LOOSE_EVENTS || i + 1 == loose.len()) {
                let data = zc.compress(&chunk).map_err(zerr)?;
                put_chunk
                    .execute(params![
                        next_cid,
                        data,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>
                    ])
                    .map_err(fail)?;
                chunk.clear();
                next_cid += 1;
                pos = 0;
            }
        }
    }
    let inserted = ids.len() as i64;
    let block = if inserted > 0 {
        let bid = w.blocks.last().map_or(1, |b| b.bid + 1);
        Some(postings::write_block(
            conn,
            path,
            bid,
            inserted,
            (first_cid, next_cid - 1),
            &mut posts,
        )?)
    } else {
        None
    };
    Ok(Inserted {
        next_cid,
        block,
        ids: ids.into_iter().collect(),
        linked,
    })
}

/// Bytes `[start, end)` of `file`; None when it is gone or shorter.
fn read_range(file: &Path, start: u64, end: u64) -> Result<Option<Vec<u8>>> {
    let mut f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CoreError::io("open", file, e)),
    };
    let mut bytes = vec![0u8; (end - start) as usize];
    match f
        .seek(SeekFrom::Start(start))
        .and_then(|_| f.read_exact(&mut bytes))
    {
        Ok(()) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(CoreError::io("read", file, e)),
    }
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
    /// Insert `pieces` of the spool file `(trail, seq)` (at `file`, when they hold frames of it)
    /// and save its progress; returns the events inserted, None when `file` is gone from there
    /// (sealed meanwhile: nothing was saved).
    fn save(
        &mut self,
        path: &Path,
        (trail, seq, file): (&str, u64, Option<&Path>),
        progress: Progress,
        pieces: &[Piece<'_>],
    ) -> Result<Option<u64>> {
        let spool = file.map(|file| SpoolFile { trail, seq, file });
        let Some(inserted) =
            self.commit_events(path, pieces, Some((trail, seq, progress)), spool.as_ref())?
        else {
            return Ok(None); // the file moved meanwhile: nothing saved
        };
        self.progress.insert((trail.to_owned(), seq), progress);
        if let Ok(mut covered) = self.covered.lock() {
            if progress.done {
                covered.insert((trail.to_owned(), seq));
            } else {
                covered.remove(&(trail.to_owned(), seq));
            }
        }
        Ok(Some(inserted))
    }

    /// Insert `events` (and a file's progress) in one transaction, then merge blocks (each
    /// merge in a transaction of its own); None (nothing written) when the spool file is gone
    /// from where it was listed. On an error, the writer's view of the blocks is read again from
    /// the database.
    fn commit_events(
        &mut self,
        path: &Path,
        pieces: &[Piece<'_>],
        progress: Option<(&str, u64, Progress)>,
        spool: Option<&SpoolFile<'_>>,
    ) -> Result<Option<u64>> {
        let r = self.try_commit_events(path, pieces, progress, spool);
        if r.is_err() {
            self.reload(path)?;
        }
        r
    }

    fn try_commit_events(
        &mut self,
        path: &Path,
        pieces: &[Piece<'_>],
        progress: Option<(&str, u64, Progress)>,
        spool: Option<&SpoolFile<'_>>,
    ) -> Result<Option<u64>> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| db_err(path, "begin", e))?;
        let done = insert_events(&tx, path, pieces, self, spool)?;
        if done.linked == Linked::Gone {
            return Ok(None); // the transaction rolls back
        }
        if let Some((trail, seq, p)) = progress {
            tx.execute(
                "INSERT OR REPLACE INTO progress(trail, seq, offset, events, done) \
                 VALUES(?1, ?2, ?3, ?4, ?5)",
                params![trail, seq as i64, p.offset as i64, p.events as i64, p.done],
            )
            .map_err(|e| db_err(path, "save progress", e))?;
        }
        tx.commit().map_err(|e| db_err(path, "commit", e))?;
        match (done.linked, spool) {
            (Linked::Unsupported, _) => self.links_work = false,
            (Linked::Now(fid), Some(s)) => {
                self.next_fid = fid + 1;
                self.linked.insert((s.trail.to_owned(), s.seq), fid);
            }
            _ => {}
        }
        self.next_cid = done.next_cid;
        let inserted = done.ids.len() as u64;
        for h in done.ids {
            self.recent.insert(h);
        }
        if let Some(b) = done.block {
            self.blocks.push(b);
        }
        if !self.defer_merges {
            while self.merge_once(path)? {}
        }
        Ok(Some(inserted))
    }

    /// One merge step in a transaction of its own; false when nothing is left to merge.
    fn merge_once(&mut self, path: &Path) -> Result<bool> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| db_err(path, "begin", e))?;
        let merged = postings::merge_step(&tx, path, &mut self.blocks);
        match merged {
            Ok(true) => {
                tx.commit().map_err(|e| db_err(path, "commit", e))?;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                drop(tx);
                self.reload(path)?;
                Err(e)
            }
        }
    }

    /// Read the blocks and the next chunk and file ids again (after a failed transaction).
    fn reload(&mut self, path: &Path) -> Result<()> {
        self.blocks = postings::load_blocks(&self.conn, path)?;
        self.next_fid = next_fid(&self.conn, path)?;
        self.next_cid = self
            .conn
            .query_row("SELECT coalesce(max(cid), 0) + 1 FROM chunks", [], |r| {
                r.get(0)
            })
            .map_err(|e| db_err(path, "read the last chunk id", e))?;
        Ok(())
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
            self.feed.forget(trail, seq);
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
                    self.save(path, (trail, seq, None), prog, &[])?;
                    return Ok(report);
                }
                if *compression == Compression::Gzip {
                    // One member: decompress it whole and take the events not yet taken.
                    self.feed.forget(trail, seq);
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
                    let pieces = [Piece::Loose(events.to_vec())];
                    let saved = self.save(path, (trail, seq, None), prog, &pieces)?;
                    report.inserted = saved.unwrap_or(0);
                    return Ok(report);
                }
                (log, true)
            }
            Source::Open(seg) => (seg, false),
        };
        // What the core handed over: no reading back, decompressing and parsing.
        let mut stop_at = None;
        match self.feed.take(trail, seq, prog.offset, budget) {
            feed::Taken::Frames(frames) => {
                let end = frames.last().map_or(prog.offset, |f| f.offset + f.len);
                let pieces: Vec<Piece<'_>> = frames.iter().map(Piece::Fed).collect();
                let taken: usize = pieces.iter().map(Piece::len).sum();
                prog.offset = end;
                prog.events += taken as u64;
                if let Source::Sealed { event_count, .. } = source {
                    prog.done = prog.events >= *event_count;
                }
                report.events = taken as u64;
                report.fed = taken as u64;
                report.more = taken as u64 >= budget || self.feed.has(trail, seq);
                match self.save(path, (trail, seq, Some(file)), prog, &pieces)? {
                    Some(n) => report.inserted = n,
                    // moved (sealed) before it was linked: read it where it went, next time
                    None => return Ok(IndexReport::default()),
                }
                return Ok(report);
            }
            feed::Taken::Gap(at) => stop_at = Some(at),
            feed::Taken::None => {}
        }
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
        // grown until it holds a whole frame; up to where the feed takes over.
        let limit = stop_at.map_or(len, |at| at.clamp(prog.offset, len));
        let avail = limit - prog.offset;
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
        let truncated = (bytes.len() as u64) < len - prog.offset;
        // (compressed start, length, content) of each whole frame
        let mut decoded: Vec<(usize, usize, Vec<u8>)> = Vec::new();
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
            let Ok(content) = decompress_chunk(path, 0, &rest[..n]) else {
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
            decoded.push((pos, n, content));
            pos += n;
        }
        if restart && prog.offset != 0 {
            self.save(path, (trail, seq, None), Progress::default(), &[])?;
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
        let pieces: Vec<Piece<'_>> = decoded
            .iter()
            .enumerate()
            .map(|(i, (at, n, content))| Piece::Frame {
                compressed: &bytes[*at..*at + *n],
                at: prog.offset + *at as u64,
                content_len: content.len(),
                events: frame_events(content, prog.offset == 0 && i == 0).unwrap_or_default(),
            })
            .collect();
        let taken: usize = pieces.iter().map(Piece::len).sum();
        let start_offset = prog.offset;
        prog.offset += pos as u64;
        prog.events += taken as u64;
        if let Source::Sealed { event_count, .. } = source {
            prog.done = prog.events >= *event_count;
        }
        report.more = (pos < bytes.len() && frames_events >= budget) || (truncated && pos > 0);
        if prog.offset != start_offset || prog.done {
            report.events = taken as u64;
            match self.save(path, (trail, seq, Some(file)), prog, &pieces)? {
                Some(n) => report.inserted = n,
                None => return Ok(IndexReport::default()), // moved before it was linked
            }
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
            self.linked.remove(&(trail.to_owned(), seq));
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
    use crate::spool::{temp, LogCompression, Part, Spool, SpoolConfig, TempDir, TrailSpec};
    const FEED_MAX: usize = feed::FEED_MAX_EVENTS;

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
    fn index_fields_hash_what_extract_reads() {
        let mut values = LookupHashes::default();
        for i in 0..40 {
            let e = event(i);
            let f = extract(e.as_bytes()).expect("extract");
            let x = index_fields(e.as_bytes(), &mut values).expect("index fields");
            assert_eq!(x.id_hash, postings::hash(f.event_id.as_bytes()));
            assert_eq!((x.time_ms, x.insight), (f.event_time_ms, f.insight));
            let mut want: Vec<(AttrKey, u64)> = f
                .attrs()
                .into_iter()
                .map(|(k, v)| (k, postings::hash(v.as_bytes())))
                .collect();
            let mut got = values.values().to_vec();
            want.sort_by_key(|(k, h)| (*k as i64, *h));
            got.sort_by_key(|(k, h)| (*k as i64, *h));
            assert_eq!(got, want, "event {i}");
        }
        assert!(index_fields(b"{\"eventTime\":\"2026-01-01T00:00:00Z\"}", &mut values).is_err());
        assert!(index_fields(b"{\"eventID\":\"x\",\"eventTime\":\"soon\"}", &mut values).is_err());
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

    /// Events whose lookup values test the rules: escapes, an assumed role, a user name that is
    /// not a string, resources without a type or ARN, no userIdentity, readOnly given or
    /// inferred, Insight.
    fn varied_events() -> Vec<String> {
        let mut v: Vec<String> = (0..40).map(event).collect();
        v.extend(
            [
                r#"{"eventName":"Get\u00e9\"x\"","eventSource":"s\\3","eventID":"v1","userIdentity":{"userName":"b\u00f6b","accessKeyId":"AK\n"}}"#,
                r#"{"eventName":"ListBuckets","eventSource":"s3","eventID":"v2","userIdentity":{"userName":7,"arn":"arn:aws:sts::1:assumed-role/R/s\u0065ss"}}"#,
                r#"{"eventName":"PutObject","eventSource":"s3","eventID":"v3","readOnly":true,"resources":[{"ARN":"arn:only"},{"type":"T::only"},{}]}"#,
                r#"{"eventName":"DescribeX","eventSource":"ec2","eventID":"v4","readOnly":false,"eventCategory":"Insight","userIdentity":{"arn":"arn:aws:iam::1:user/alice"}}"#,
                r#"{"eventName":"X","eventSource":"y","eventID":"v5","userIdentity":{"type":"Root"},"resources":[]}"#,
                r#"{"eventName":"X","eventSource":"y","eventID":"v6","userIdentity":{"arn":"arn:aws:sts::1:assumed-role/R/"}}"#,
                r#"{"eventName":"X","eventSource":"y","userIdentity":{"userName":"u","accessKeyId":5}}"#,
            ]
            .map(str::to_owned),
        );
        v
    }

    #[test]
    fn the_core_hashes_what_index_fields_reads() {
        let ctx = crate::event::EventContext {
            account_id: "111122223333",
            region: "us-east-1",
            max_event_bytes: 1 << 20,
            receipt: None,
            received_at_secs: 1_767_225_600,
            index: true,
        };
        let mut values = LookupHashes::default();
        let sorted = |mut v: Vec<(AttrKey, u64)>| {
            v.sort_by_key(|(k, h)| (*k as i64, *h));
            v
        };
        for (i, line) in varied_events().iter().enumerate() {
            let mut out = Vec::new();
            let meta =
                crate::event::process_event(line.as_bytes(), &ctx, &mut out).expect("accepted");
            let lookup = meta.lookup.expect("lookup values");
            let f = index_fields(&out, &mut values).expect("index fields");
            assert_eq!(lookup.id_hash, f.id_hash, "event {i}");
            assert_eq!(
                (meta.event_time * 1000, meta.insight),
                (f.time_ms, f.insight)
            );
            assert_eq!(
                sorted(lookup.values.to_vec()),
                sorted(values.values().to_vec()),
                "event {i}: {line}"
            );
        }
        let mut no_index = ctx;
        no_index.index = false;
        let meta =
            crate::event::process_event(varied_events()[0].as_bytes(), &no_index, &mut vec![])
                .expect("accepted");
        assert_eq!(meta.lookup, None);
    }

    /// Index 400 events of two trails (one gzip) in steps, sealing on the way; the core feeds the
    /// history when `feed` (a feed of that many events at most) is given.
    fn index_in_steps(tag: &str, feed_events: Option<usize>) -> (TempDir, History, u64) {
        let dir = temp(tag);
        let mut gz = spec("gz");
        gz.compression = LogCompression::Gzip(6);
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main"), gz];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = match feed_events {
            Some(n) => History::open_with_feed(&dir.0.join("history.db"), Feed::new(n)),
            None => History::open(&dir.0.join("history.db")),
        }
        .expect("open history");
        if feed_events.is_some() {
            spool.feed_history(Some(h.feed()));
        }
        let mut fed = 0;
        let mut index = |h: &History| {
            while {
                let r = h.index_spool(&dir.0.join("spool"), 120).expect("index");
                fed += r.fed;
                r.more
            } {}
        };
        for (i, range) in [0..90, 90..100, 100..230, 230..260, 260..400]
            .into_iter()
            .enumerate()
        {
            feed(&mut spool, range);
            if i == 2 {
                for (t, key) in [("main", "k1"), ("gz", "k2")] {
                    spool
                        .seal(t, "111122223333", "us-east-1", false, key)
                        .expect("seal");
                }
            }
            if i != 1 {
                index(&h);
            }
        }
        drop(spool);
        (dir, h, fed)
    }

    #[test]
    fn fed_and_read_back_histories_agree() {
        let (_d1, read_back, fed) = index_in_steps("history-read-back", None);
        assert_eq!(fed, 0);
        let queries = [
            q(None, 1000),
            q(
                Some(Attribute::Other(AttrKey::EventName, "GetObject".into())),
                1000,
            ),
            q(
                Some(Attribute::Other(AttrKey::Username, "sess-b".into())),
                1000,
            ),
            q(
                Some(Attribute::Other(
                    AttrKey::ResourceName,
                    "arn:aws:s3:::b2".into(),
                )),
                1000,
            ),
            q(
                Some(Attribute::Other(AttrKey::AccessKeyId, "AKIA9".into())),
                1000,
            ),
            q(Some(Attribute::EventId("id-231".into())), 1000),
            Query {
                insight: true,
                ..q(None, 1000)
            },
        ];
        let want: Vec<Vec<String>> = queries
            .iter()
            .map(|q| ids(&read_back.lookup(q).expect("lookup").0))
            .collect();
        assert_eq!(want[0].len(), 360, "every non-Insight event, once");
        // a feed that holds everything, and one that holds at most one step's frames (the
        // history reads the rest back from the files)
        for (tag, cap) in [("history-fed", FEED_MAX), ("history-fed-small", 100)] {
            let (_d, h, fed) = index_in_steps(tag, Some(cap));
            assert!(fed > 0, "{tag}: nothing was fed");
            assert!(
                fed < 800,
                "{tag}: the gzip file sealed before indexing is read back"
            );
            assert_eq!(h.count().expect("count"), 400, "{tag}");
            for (q, want) in queries.iter().zip(&want) {
                let got = ids(&h.lookup(q).expect("lookup").0);
                assert_eq!(&got, want, "{tag}: {q:?}");
            }
        }
    }

    #[test]
    fn lagging_trails_are_indexed_side_by_side() {
        let dir = temp("history-share");
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("a"), spec("b")];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = History::open(&dir.0.join("history.db")).expect("open history");
        for step in 0..10 {
            feed(&mut spool, step * 10..step * 10 + 10);
        }
        // a budget of 20 events (two frames of 9 or 10): one frame from each trail, so trail b's
        // copies of trail a's events are met at once, not after all of trail a
        let r = h.index_spool(&dir.0.join("spool"), 20).expect("index");
        assert!(r.more);
        let w = h.writer().expect("writer");
        let trails: HashSet<&str> = w.progress.keys().map(|(t, _)| t.as_str()).collect();
        assert_eq!(trails, HashSet::from(["a", "b"]));
        drop(w);
        while h.index_spool(&dir.0.join("spool"), 20).expect("index").more {}
        assert_eq!(h.count().expect("count"), 100);
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

    /// (chunks holding bytes, chunks kept in files, rows of files, links in the files dir)
    fn storage(h: &History) -> (i64, i64, i64, usize) {
        let (inline, kept, files): (i64, i64, i64) = h
            .reader()
            .expect("reader")
            .query_row(
                "SELECT (SELECT count(*) FROM chunks WHERE data IS NOT NULL), \
                 (SELECT count(*) FROM chunks WHERE fid IS NOT NULL), (SELECT count(*) FROM files)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("count");
        let links = std::fs::read_dir(files_dir(h.path())).map_or(0, |d| d.count());
        (inline, kept, files, links)
    }

    #[test]
    fn frames_stay_in_spool_files_linked_into_the_history() {
        let dir = temp("history-links");
        let spool_dir = dir.0.join("spool");
        let mut cfg = SpoolConfig::new(spool_dir.clone(), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main"), spec("copy")];
        let mut spool = Spool::open(cfg).expect("open spool");
        let db = dir.0.join("history.db");
        let h = History::open(&db).expect("open history");
        spool.feed_history(Some(h.feed()));
        feed(&mut spool, 0..100);
        feed(&mut spool, 100..150);
        h.index_spool(&spool_dir, 1_000_000).expect("index");
        // one frame per batch and stream (Insight events have a stream of their own); the copy
        // trail's events were all indexed from the main trail: its files are never linked
        let (inline, kept, files, links) = storage(&h);
        assert_eq!(
            (inline, files, links),
            (0, 2, 2),
            "{kept} chunks kept in files"
        );
        assert!(kept >= 2);
        // not fed (the feed is empty after a restart): read back, kept the same way
        let h2_db = dir.0.join("read-back.db");
        let h2 = History::open(&h2_db).expect("open history");
        h2.index_spool(&spool_dir, 1_000_000).expect("index");
        assert_eq!(storage(&h2), (0, kept, 2, 2));
        // sealed, delivered and removed from the spool: the history still reads them
        for (t, key) in [("main", "k1"), ("copy", "k2")] {
            let f = spool
                .seal(t, "111122223333", "us-east-1", false, key)
                .expect("seal")
                .expect("sealed");
            for h in [&h, &h2] {
                h.index_spool(&spool_dir, 1_000_000).expect("index");
                assert!(h.covered(t, f.seq).expect("covered"));
            }
            spool.remove_sealed(t, f.seq).expect("remove");
        }
        for h in [&h, &h2] {
            let (found, _) = h.lookup(&q(None, 1000)).expect("lookup");
            assert_eq!(found.len(), 135, "every non-Insight event, once");
            let (found, _) = h
                .lookup(&q(Some(Attribute::EventId("id-42".into())), 10))
                .expect("lookup");
            assert_eq!(ids(&found), ["id-42"]);
        }
        // a crash between the steps leaves a link without a row: gone at the next open
        let stray = files_dir(&db).join("999.zst");
        std::fs::write(&stray, b"left over").expect("write");
        drop(h);
        let h = History::open(&db).expect("reopen");
        assert!(!stray.exists());
        let (_, _, files, links) = storage(&h);
        assert_eq!((files, links), (2, 2));
        // a frame whose bytes changed is left out of lookups (no error, nothing else lost)
        let (fid, at): (i64, i64) = h
            .reader()
            .expect("reader")
            .query_row(
                "SELECT fid, at FROM chunks WHERE fid IS NOT NULL ORDER BY cid LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("first chunk");
        let file = file_path(&files_dir(&db), fid);
        let mut bytes = std::fs::read(&file).expect("read");
        bytes[at as usize + 20] ^= 1;
        std::fs::write(file.with_extension("tmp"), &bytes).expect("write");
        std::fs::rename(file.with_extension("tmp"), &file).expect("replace");
        let (found, _) = h.lookup(&q(None, 1000)).expect("lookup");
        assert!(!found.is_empty() && found.len() < 135, "{}", found.len());
        // expired: the rows and the links go with the last chunks that refer to them
        let late = 1_900_000_000_000;
        while h.expire(late, 1_000).expect("expire") > 0 {}
        assert_eq!(storage(&h), (0, 0, 0, 0));
    }

    #[test]
    fn frames_go_into_the_database_where_links_do_not_work() {
        use std::os::unix::fs::MetadataExt;
        // the spool on another filesystem (tmpfs) than the history
        let shm = Path::new("/dev/shm");
        let dir = temp("history-no-links");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        if dev(shm).is_none() || dev(shm) == dev(&dir.0) {
            eprintln!("no second filesystem at /dev/shm: nothing to test here");
            return;
        }
        let spool_dir = TempDir(shm.join(dir.0.file_name().expect("name")));
        let mut cfg = SpoolConfig::new(spool_dir.0.clone(), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main")];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = History::open(&dir.0.join("history.db")).expect("open history");
        spool.feed_history(Some(h.feed()));
        feed(&mut spool, 0..100);
        h.index_spool(&spool_dir.0, 1_000_000).expect("index");
        feed(&mut spool, 100..150);
        let f = spool
            .seal("main", "111122223333", "us-east-1", false, "k")
            .expect("seal")
            .expect("sealed");
        h.index_spool(&spool_dir.0, 1_000_000).expect("index");
        assert!(h.covered("main", f.seq).expect("covered"));
        spool.remove_sealed("main", f.seq).expect("remove");
        let (inline, kept, files, links) = storage(&h);
        assert_eq!((kept, files, links), (0, 0, 0));
        assert!(inline >= 2);
        let (found, _) = h.lookup(&q(None, 1000)).expect("lookup");
        assert_eq!(found.len(), 135);
    }

    #[test]
    fn events_of_a_torn_tail_resent_after_a_power_loss_are_found() {
        let dir = temp("history-torn");
        let spool_dir = dir.0.join("spool");
        let db = dir.0.join("history.db");
        let open_spool = || {
            let mut cfg = SpoolConfig::new(spool_dir.clone(), vec![], "111122223333", "us-east-1");
            cfg.trails = vec![spec("main")];
            Spool::open(cfg).expect("open spool")
        };
        let mut spool = open_spool();
        let h = History::open(&db).expect("open history");
        spool.feed_history(Some(h.feed()));
        feed(&mut spool, 0..10);
        feed(&mut spool, 10..20);
        h.index_spool(&spool_dir, 1_000_000).expect("index");
        // a power loss: the second frame never reached the disk; the daemon starts again, the
        // spool cuts the tail, the agents resend those events in other batches
        let seg = spool
            .open_segments()
            .into_iter()
            .find(|s| !s.insight)
            .expect("segment")
            .path;
        drop(spool);
        drop(h);
        let bytes = std::fs::read(&seg).expect("read");
        let first = zstd::zstd_safe::find_frame_compressed_size(&bytes).expect("frame");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .and_then(|f| f.set_len(first as u64))
            .expect("truncate");
        let mut spool = open_spool();
        let h = History::open(&db).expect("reopen history");
        spool.feed_history(Some(h.feed()));
        feed(&mut spool, 10..15);
        feed(&mut spool, 15..20);
        while h.index_spool(&spool_dir, 1_000_000).expect("index").more {}
        for i in (0..20).filter(|i| i % 10 != 9) {
            let (found, _) = h
                .lookup(&q(Some(Attribute::EventId(format!("id-{i}"))), 50))
                .expect("lookup");
            assert_eq!(ids(&found), [format!("id-{i}")], "id-{i}");
        }
        let (found, _) = h.lookup(&q(None, 100)).expect("lookup");
        assert_eq!(found.len(), 18, "each event once");
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
        // the frame the spool lost is left out (its bytes are other events now)
        let (found, _) = h
            .lookup(&q(Some(Attribute::EventId("id-15".into())), 50))
            .expect("lookup");
        assert!(found.is_empty());
        let (found, _) = h
            .lookup(&q(Some(Attribute::EventId("id-5".into())), 50))
            .expect("lookup");
        assert_eq!(ids(&found), ["id-5"]);
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
        // retention: nothing before minute 10 is found or counted once the horizon moved
        let cutoff = 1_767_225_600_000 + 600_000;
        while h.expire(cutoff, 100).expect("expire") >= 100 {}
        assert_eq!(h.count().expect("count"), 400);
        assert_eq!(
            count(Attribute::parse("Username", "alice").expect("key")),
            (600..1000usize)
                .filter(|i| i % 10 != 9 && i.is_multiple_of(3))
                .count()
        );
        assert_eq!(
            count(Attribute::EventId("id-5".into())),
            0,
            "an expired event is never returned"
        );
        // a cutoff past every event: the blocks (one per stream) go whole, chunks included
        let late = 1_767_225_600_000 + 3_600_000;
        let mut removed = 0;
        loop {
            let n = h.expire(late, 100).expect("expire");
            removed += n;
            if n < 100 {
                break;
            }
        }
        assert_eq!(removed, 1000);
        let (blocks, chunks): (i64, i64) = h
            .reader()
            .expect("reader")
            .query_row(
                "SELECT (SELECT count(*) FROM blocks), (SELECT count(*) FROM chunks)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("count");
        assert_eq!((blocks, chunks), (0, 0));
        assert_eq!(h.count().expect("count"), 0);
        // the horizon survives reopening
        drop(h);
        let h = History::open(&dir.0.join("history.db")).expect("reopen");
        assert_eq!(h.horizon.load(std::sync::atomic::Ordering::SeqCst), late);
    }

    #[test]
    fn small_steps_merge_into_blocks_and_lookups_agree() {
        let dir = temp("history-merge");
        let mut cfg = SpoolConfig::new(dir.0.join("spool"), vec![], "111122223333", "us-east-1");
        cfg.trails = vec![spec("main")];
        let mut spool = Spool::open(cfg).expect("open spool");
        let h = History::open(&dir.0.join("history.db")).expect("open history");
        // 200 indexing steps of 10 events: 200 level-0 blocks, merged as they come
        for step in 0..200 {
            feed(&mut spool, step * 10..step * 10 + 10);
            h.index_spool(&dir.0.join("spool"), 1_000_000)
                .expect("index");
        }
        let levels: Vec<i64> = {
            let w = h.writer().expect("writer");
            assert_eq!(
                w.blocks,
                postings::load_blocks(&w.conn, h.path()).expect("blocks")
            );
            w.blocks.iter().map(|b| b.level).collect()
        };
        // two files per step (Insight events have their own): 400 = 6 * 64 + 2 * 8
        assert_eq!(levels, vec![2, 2, 2, 2, 2, 2, 1, 1]);
        assert_eq!(h.count().expect("count"), 2000);
        let all = |a: Option<Attribute>| {
            let mut got = Vec::new();
            let mut query = q(a, 13);
            loop {
                let (found, next) = h.lookup(&query).expect("lookup");
                got.extend(ids(&found));
                match next {
                    Some(n) => query.after = Some(n),
                    None => return got,
                }
            }
        };
        let mut want: Vec<(i64, usize)> = (0..2000)
            .filter(|i| i % 10 != 9)
            .map(|i| (extract(event(i).as_bytes()).expect("x").event_time_ms, i))
            .collect();
        want.sort_by(|a, b| b.cmp(a));
        let got = all(None);
        assert_eq!(got.len(), want.len());
        let mut uniq = got.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), want.len());
        assert_eq!(
            all(Attribute::parse("Username", "alice")).len(),
            (0..2000usize)
                .filter(|i| i % 10 != 9 && i.is_multiple_of(3))
                .count()
        );
        for i in [0usize, 1234, 1998] {
            assert_eq!(
                all(Some(Attribute::EventId(format!("id-{i}")))),
                vec![format!("id-{i}")]
            );
        }
        // reopening reads the blocks and remembers the eventIDs: nothing is indexed twice
        drop(h);
        let h = History::open(&dir.0.join("history.db")).expect("reopen");
        assert_eq!(h.writer().expect("writer").recent.order.len(), 2000);
        assert_eq!(h.count().expect("count"), 2000);
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
        assert_eq!(schema_of(&path).expect("schema"), Some(SCHEMA_VERSION - 1));
        assert_eq!(schema_of(&dir.0.join("none.db")).expect("schema"), None);
        std::fs::write(
            dir.0.join("junk.db"),
            b"not a database, not at all".repeat(200),
        )
        .expect("write");
        assert!(schema_of(&dir.0.join("junk.db")).is_err());
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
