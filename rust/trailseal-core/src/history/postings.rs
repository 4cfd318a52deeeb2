//! The event history's lookup index: postings in blocks.
//!
//! Every indexing step writes one **block**: the events it added, their records in chunks (see
//! the parent module) and, per lookup key, sorted postings `(hash, event_time, rid)`. Nothing is
//! inserted at a random place: a block's rows go after the previous block's, so indexing costs a
//! few sequential row writes per thousand events instead of ~10 random B-tree inserts per event.
//! Small blocks are merged into larger ones in the background (an LSM-like tier: the newest
//! [`FANOUT`] blocks of one level become one block of the next level, up to
//! [`MAX_MERGED_EVENTS`] events), so a lookup reads a bounded number of blocks.
//!
//! ```text
//! blocks(bid INTEGER PRIMARY KEY, events, min_time, max_time, bits, cid_lo, cid_hi, level)
//!   events: events in the block; min/max_time: their eventTime range (epoch ms);
//!   bits: the block's bucket bits; cid_lo..=cid_hi: its record chunks (no other block's);
//!   level: 0 for a new block, n + 1 for a merge of level-n blocks, FINAL_LEVEL when too big
//!   to merge further. Blocks are ordered by bid (the order they were indexed in).
//! posts(bid, key, bucket, data BLOB), UNIQUE(bid, key, bucket)
//!   key = lookup attribute << 1 | insight (attribute 0: every event, 8: EventId, else
//!   [`super::AttrKey`]); bucket = the top `bits` bits of the value's hash (0 when bits = 0).
//!   data: the bucket's postings, sorted by hash ascending, then event_time descending, in the
//!   compact form of [`super::row`] (each distinct hash once, time and rid as deltas).
//! ```
//! A value's hash is xxh3-64 of its UTF-8 bytes (a stable, specified function): a lookup checks
//! the record it reads, so a hash collision costs a read, never a wrong result.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{db_err, row};
use crate::error::{CoreError, Result};

/// The key of every event (lookups without an attribute).
pub const ALL: i64 = 0;
/// The key of the eventID.
pub const EVENT_ID: i64 = 8;

/// Blocks merged into one.
pub const FANOUT: usize = 8;
/// A merge that would exceed this many events is not made: those blocks stay as they are.
pub const MAX_MERGED_EVENTS: i64 = 1 << 16;
/// The level of a block that is never merged again.
pub const FINAL_LEVEL: i64 = 1_000;
/// Entries per bucket a block aims at for a key whose values are all distinct (an eventID).
const BUCKET_ENTRIES: i64 = 32;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blocks(
  bid INTEGER PRIMARY KEY, events INTEGER NOT NULL, min_time INTEGER NOT NULL,
  max_time INTEGER NOT NULL, bits INTEGER NOT NULL, cid_lo INTEGER NOT NULL,
  cid_hi INTEGER NOT NULL, level INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS posts(
  bid INTEGER NOT NULL, key INTEGER NOT NULL, bucket INTEGER NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS posts_at ON posts(bid, key, bucket);
";

/// The posting key of a lookup attribute code for events of one category.
pub fn post_key(attribute: i64, insight: bool) -> i64 {
    attribute << 1 | i64::from(insight)
}

/// The hash of a value (or an eventID) as postings hold it.
pub fn hash(value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(value)
}

/// One posting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Post {
    pub key: i64,
    pub hash: u64,
    pub time: i64,
    pub rid: i64,
}

/// One row of `blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub bid: i64,
    pub events: i64,
    pub min_time: i64,
    pub max_time: i64,
    pub bits: u32,
    pub cid_lo: i64,
    pub cid_hi: i64,
    pub level: i64,
}

/// Bucket bits for a block of `events`: about [`BUCKET_ENTRIES`] distinct values per bucket.
fn bucket_bits(events: i64) -> u32 {
    let mut bits = 0;
    while bits < 24 && (events >> bits) > BUCKET_ENTRIES {
        bits += 1;
    }
    bits
}

fn bucket(hash: u64, bits: u32) -> i64 {
    if bits == 0 {
        0
    } else {
        (hash >> (64 - bits)) as i64
    }
}

/// A posting's order within its key: hash ascending, then event_time descending (events of one
/// millisecond in any order).
fn order(p: &Post) -> u128 {
    let time_up = (p.time as u64) ^ (1 << 63);
    (u128::from(p.hash) << 64) | u128::from(!time_up)
}

/// The error of a postings row that cannot be read.
fn damaged(path: &Path) -> CoreError {
    CoreError::Invalid(format!(
        "event history {}: a postings row is damaged (stop the daemon and run `trailseal \
         history rebuild`)",
        path.display()
    ))
}

/// Every block, in bid order.
pub fn load_blocks(conn: &Connection, path: &Path) -> Result<Vec<Block>> {
    let fail = |e| db_err(path, "read blocks", e);
    let mut st = conn
        .prepare_cached(
            "SELECT bid, events, min_time, max_time, bits, cid_lo, cid_hi, level FROM blocks \
             ORDER BY bid",
        )
        .map_err(fail)?;
    let rows = st
        .query_map([], |r| {
            Ok(Block {
                bid: r.get(0)?,
                events: r.get(1)?,
                min_time: r.get(2)?,
                max_time: r.get(3)?,
                bits: r.get::<_, i64>(4)?.clamp(0, 63) as u32,
                cid_lo: r.get(5)?,
                cid_hi: r.get(6)?,
                level: r.get(7)?,
            })
        })
        .map_err(fail)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(fail)
}

/// A new block's postings, grouped by key as they are added (keys are small numbers).
#[derive(Debug, Default)]
pub struct NewPosts {
    by_key: Vec<Vec<Post>>,
    /// Room each key's postings get at first (about one per event).
    room: usize,
}

impl NewPosts {
    /// For about `events` events (each key's postings then rarely regrow).
    pub fn with_room(events: usize) -> NewPosts {
        NewPosts {
            by_key: Vec::new(),
            room: events,
        }
    }

    pub fn push(&mut self, p: Post) {
        let k = usize::try_from(p.key).unwrap_or(0);
        if k >= self.by_key.len() {
            let room = self.room;
            self.by_key.resize_with(k + 1, || Vec::with_capacity(room));
        }
        self.by_key[k].push(p);
    }
}

/// Sort one key's new postings (added in event order) in [`order`]: a stable counting sort by
/// the hash's top bits, the postings of each bucket taken newest added first, then each bucket
/// sorted stably. A bucket of one value (most of the postings of a value shared by many events)
/// is then ordered already, or nearly so (events arrive about in time order), which the stable
/// sort finds in one pass; a bucket of distinct values holds a few postings. (Sorting each key's
/// postings as a whole was a third of indexing's instructions.)
fn sort_new(posts: &mut Vec<Post>, scratch: &mut Vec<Post>, starts: &mut Vec<usize>) {
    let n = posts.len();
    if n < 64 {
        posts.reverse();
        posts.sort_by_key(order);
        return;
    }
    // about 4 postings per bucket for distinct values, at most 2^16 buckets
    let bits = (usize::BITS - 1 - n.leading_zeros())
        .saturating_sub(2)
        .clamp(1, 16);
    let top = |p: &Post| bucket(p.hash, bits) as usize;
    starts.clear();
    starts.resize((1 << bits) + 1, 0);
    for p in posts.iter() {
        starts[top(p) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    scratch.clear();
    scratch.resize(n, Post::default());
    // each bucket filled from its end, the postings taken in event order: newest added first
    for p in posts.iter() {
        let b = top(p);
        starts[b + 1] -= 1;
        scratch[starts[b + 1]] = *p;
    }
    // starts[b + 1] is now where bucket b starts (and bucket b + 1, or the end, where it ends)
    starts.push(n);
    for w in starts[1..].windows(2) {
        if w[1] - w[0] > 1 {
            scratch[w[0]..w[1]].sort_by_key(order);
        }
    }
    std::mem::swap(posts, scratch);
}

/// Write the postings of block `bid` for one key, sorted in [`order`], `bits` bucket bits.
fn write_rows(conn: &Connection, path: &Path, bid: i64, bits: u32, posts: &[Post]) -> Result<()> {
    let fail = |e| db_err(path, "write postings", e);
    let mut ins = conn
        .prepare_cached("INSERT INTO posts(bid, key, bucket, data) VALUES(?1, ?2, ?3, ?4)")
        .map_err(fail)?;
    // A bucket is the top bits of the hash: hash order is bucket order too.
    let mut rest: &[Post] = posts;
    let mut data = Vec::new();
    while let Some(first) = rest.first() {
        let at = (first.key, bucket(first.hash, bits));
        let n = rest
            .iter()
            .position(|p| bucket(p.hash, bits) != at.1)
            .unwrap_or(rest.len());
        row::encode(&rest[..n], &mut data);
        ins.execute(params![bid, at.0, at.1, data]).map_err(fail)?;
        rest = &rest[n..];
    }
    Ok(())
}

fn insert_block(conn: &Connection, path: &Path, b: &Block) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO blocks(bid, events, min_time, max_time, bits, cid_lo, cid_hi, level) \
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            b.bid, b.events, b.min_time, b.max_time, b.bits, b.cid_lo, b.cid_hi, b.level
        ])
    })
    .map_err(|e| db_err(path, "write a block", e))?;
    Ok(())
}

/// Write a new level-0 block of `events` events with their postings (`posts`: one [`ALL`] and
/// one [`EVENT_ID`] posting per event, one per distinct lookup value).
pub fn write_block(
    conn: &Connection,
    path: &Path,
    bid: i64,
    events: i64,
    cids: (i64, i64),
    posts: &mut NewPosts,
) -> Result<Block> {
    let (min_time, max_time) = posts
        .by_key
        .iter()
        .flatten()
        .fold((i64::MAX, i64::MIN), |(lo, hi), p| {
            (lo.min(p.time), hi.max(p.time))
        });
    let block = Block {
        bid,
        events,
        min_time,
        max_time,
        bits: bucket_bits(events),
        cid_lo: cids.0,
        cid_hi: cids.1,
        level: 0,
    };
    let (mut scratch, mut starts) = (Vec::new(), Vec::new());
    for group in &mut posts.by_key {
        sort_new(group, &mut scratch, &mut starts);
        write_rows(conn, path, bid, block.bits, group)?;
    }
    insert_block(conn, path, &block)?;
    Ok(block)
}

/// One merge step over `blocks` (in bid order, kept up to date): when the newest [`FANOUT`] or
/// more blocks share a level, the oldest [`FANOUT`] of them become one block of the next level
/// (or, when that would exceed [`MAX_MERGED_EVENTS`], are marked final). Returns whether it
/// changed anything (call again until it does not). Run it in a transaction.
pub fn merge_step(conn: &Connection, path: &Path, blocks: &mut Vec<Block>) -> Result<bool> {
    let Some(last) = blocks.last() else {
        return Ok(false);
    };
    let level = last.level;
    if level >= FINAL_LEVEL {
        return Ok(false);
    }
    let start = blocks
        .iter()
        .rposition(|b| b.level != level)
        .map_or(0, |i| i + 1);
    if blocks.len() - start < FANOUT {
        return Ok(false);
    }
    let group = &blocks[start..start + FANOUT];
    let (lo, hi) = (group[0].bid, group[FANOUT - 1].bid);
    let events: i64 = group.iter().map(|b| b.events).sum();
    let fail = |e| db_err(path, "merge blocks", e);
    if events > MAX_MERGED_EVENTS {
        conn.execute(
            "UPDATE blocks SET level=?1 WHERE bid BETWEEN ?2 AND ?3",
            params![FINAL_LEVEL, lo, hi],
        )
        .map_err(fail)?;
        for b in &mut blocks[start..start + FANOUT] {
            b.level = FINAL_LEVEL;
        }
        return Ok(true);
    }
    let merged = Block {
        bid: lo,
        events,
        min_time: group.iter().map(|b| b.min_time).min().unwrap_or(0),
        max_time: group.iter().map(|b| b.max_time).max().unwrap_or(0),
        bits: bucket_bits(events),
        cid_lo: group.iter().map(|b| b.cid_lo).min().unwrap_or(0),
        cid_hi: group.iter().map(|b| b.cid_hi).max().unwrap_or(0),
        level: level + 1,
    };
    let keys: Vec<i64> = conn
        .prepare_cached("SELECT DISTINCT key FROM posts WHERE bid BETWEEN ?1 AND ?2")
        .map_err(fail)?
        .query_map(params![lo, hi], |r| r.get(0))
        .map_err(fail)?
        .collect::<rusqlite::Result<_>>()
        .map_err(fail)?;
    // one key at a time: the largest (every event) holds 24 bytes per event
    for key in keys {
        let mut posts = Vec::new();
        {
            let mut st = conn
                .prepare_cached("SELECT data FROM posts WHERE bid BETWEEN ?1 AND ?2 AND key=?3")
                .map_err(fail)?;
            let mut rows = st.query(params![lo, hi, key]).map_err(fail)?;
            while let Some(row) = rows.next().map_err(fail)? {
                let data = row
                    .get_ref(0)
                    .and_then(|v| Ok(v.as_blob()?))
                    .map_err(fail)?;
                row::decode(data, None, &mut |hash, time, rid| {
                    posts.push(Post {
                        key,
                        hash,
                        time,
                        rid,
                    });
                    true
                })
                .map_err(|_| damaged(path))?;
            }
        }
        conn.execute(
            "DELETE FROM posts WHERE bid BETWEEN ?1 AND ?2 AND key=?3",
            params![lo, hi, key],
        )
        .map_err(fail)?;
        // sorted runs one after the other: a stable sort finds and merges them
        posts.sort_by_key(order);
        write_rows(conn, path, merged.bid, merged.bits, &posts)?;
    }
    conn.execute(
        "DELETE FROM blocks WHERE bid BETWEEN ?1 AND ?2",
        params![lo, hi],
    )
    .map_err(fail)?;
    insert_block(conn, path, &merged)?;
    blocks.splice(start..start + FANOUT, [merged]);
    Ok(true)
}

/// Remove a block: its postings, its record chunks and its row, and the rows of the history's
/// files no chunk refers to any more. Returns those files' fids (for the caller to remove once
/// the transaction is committed).
pub fn delete_block(conn: &Connection, path: &Path, b: &Block) -> Result<Vec<i64>> {
    let fail = |e| db_err(path, "remove a block", e);
    conn.execute("DELETE FROM posts WHERE bid=?1", [b.bid])
        .map_err(fail)?;
    let mut st = conn
        .prepare_cached(
            "SELECT DISTINCT fid FROM chunks WHERE cid BETWEEN ?1 AND ?2 AND fid IS NOT NULL",
        )
        .map_err(fail)?;
    let fids = st
        .query_map(params![b.cid_lo, b.cid_hi], |r| r.get::<_, i64>(0))
        .map_err(fail)?
        .collect::<rusqlite::Result<Vec<i64>>>()
        .map_err(fail)?;
    conn.execute(
        "DELETE FROM chunks WHERE cid BETWEEN ?1 AND ?2",
        params![b.cid_lo, b.cid_hi],
    )
    .map_err(fail)?;
    conn.execute("DELETE FROM blocks WHERE bid=?1", [b.bid])
        .map_err(fail)?;
    let mut unused = Vec::new();
    for fid in fids {
        let used: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM chunks WHERE fid=?1)",
                [fid],
                |r| r.get(0),
            )
            .map_err(fail)?;
        if !used {
            conn.execute("DELETE FROM files WHERE fid=?1", [fid])
                .map_err(fail)?;
            unused.push(fid);
        }
    }
    Ok(unused)
}

/// Call `f(hash, time, rid)` for each posting of `key` in block `b` whose hash is `hash` (every
/// posting of the block's buckets for `key` when `hash` is None), newest first per hash (events
/// of one millisecond in any order); `f` returns false to stop.
fn each_post(
    conn: &Connection,
    path: &Path,
    b: &Block,
    key: i64,
    hash: Option<u64>,
    mut f: impl FnMut(u64, i64, i64) -> bool,
) -> Result<()> {
    let fail = |e| db_err(path, "read postings", e);
    match hash {
        Some(h) => {
            let mut st = conn
                .prepare_cached("SELECT data FROM posts WHERE bid=?1 AND key=?2 AND bucket=?3")
                .map_err(fail)?;
            let read = st
                .query_row(params![b.bid, key, bucket(h, b.bits)], |r| {
                    let data = r.get_ref(0)?.as_blob()?;
                    Ok(row::decode(data, Some(h), &mut f).is_ok())
                })
                .optional()
                .map_err(fail)?;
            if read == Some(false) {
                return Err(damaged(path));
            }
        }
        None => {
            let mut st = conn
                .prepare_cached("SELECT data FROM posts WHERE bid=?1 AND key=?2")
                .map_err(fail)?;
            let mut rows = st.query(params![b.bid, key]).map_err(fail)?;
            while let Some(row) = rows.next().map_err(fail)? {
                let data = row
                    .get_ref(0)
                    .and_then(|v| Ok(v.as_blob()?))
                    .map_err(fail)?;
                if !row::decode(data, None, &mut f).map_err(|_| damaged(path))? {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The newest `want` postings `(event_time, rid)` of `key` with `hash`, with event_time in
/// `start..=end` and `(event_time, rid) < after`, newest first. Blocks are read newest first and
/// the scan stops at the first block that cannot hold anything newer than what it has.
#[allow(clippy::too_many_arguments)]
pub fn scan(
    conn: &Connection,
    path: &Path,
    blocks: &[Block],
    key: i64,
    hash: u64,
    (start, end): (i64, i64),
    after: (i64, i64),
    want: usize,
) -> Result<Vec<(i64, i64)>> {
    let mut candidates: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.max_time >= start && b.min_time <= end && b.min_time <= after.0)
        .collect();
    candidates.sort_unstable_by_key(|b| Reverse((b.max_time, b.bid)));
    let mut best: BinaryHeap<Reverse<(i64, i64)>> = BinaryHeap::with_capacity(want + 1);
    for b in candidates {
        if best.len() >= want && best.peek().is_some_and(|Reverse(m)| b.max_time < m.0) {
            break;
        }
        each_post(conn, path, b, key, Some(hash), |_, t, r| {
            if t > end || (t, r) >= after {
                return true;
            }
            if t < start {
                return false;
            }
            if best.len() >= want {
                match best.peek() {
                    // older than the oldest kept: so is the rest of this hash's run
                    Some(Reverse(m)) if t < m.0 => return false,
                    Some(Reverse(m)) if (t, r) <= *m => return true,
                    _ => {
                        best.pop();
                    }
                }
            }
            best.push(Reverse((t, r)));
            true
        })?;
    }
    let mut out: Vec<(i64, i64)> = best.into_iter().map(|Reverse(x)| x).collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    Ok(out)
}

/// Events in `blocks` with eventTime at or after `horizon` (both categories).
pub fn count_since(conn: &Connection, path: &Path, blocks: &[Block], horizon: i64) -> Result<u64> {
    let mut n = 0u64;
    for b in blocks {
        if b.min_time >= horizon {
            n += b.events as u64;
        } else if b.max_time >= horizon {
            for insight in [false, true] {
                each_post(conn, path, b, post_key(ALL, insight), None, |_, t, _| {
                    n += u64::from(t >= horizon);
                    true
                })?;
            }
        }
    }
    Ok(n)
}

/// Call `f(hash, rid)` for each eventID posting of block `b` (both categories); `f` returns false
/// to stop. Returns whether it went through them all.
fn each_event_id(
    conn: &Connection,
    path: &Path,
    b: &Block,
    mut f: impl FnMut(u64, i64) -> bool,
) -> Result<bool> {
    let mut all = true;
    for insight in [false, true] {
        each_post(
            conn,
            path,
            b,
            post_key(EVENT_ID, insight),
            None,
            |h, _, rid| {
                all = f(h, rid);
                all
            },
        )?;
        if !all {
            break;
        }
    }
    Ok(all)
}

/// The eventID hashes of the events held by the chunks `cids` (an event's chunk is its rid >>
/// `chunk_bits`).
pub fn ids_in_chunks(
    conn: &Connection,
    path: &Path,
    blocks: &[Block],
    cids: &HashSet<i64>,
    chunk_bits: u32,
) -> Result<HashSet<u64>> {
    let mut out = HashSet::new();
    let holds = |b: &&Block| cids.iter().any(|c| (b.cid_lo..=b.cid_hi).contains(c));
    for b in blocks.iter().filter(holds) {
        each_event_id(conn, path, b, |h, rid| {
            if cids.contains(&(rid >> chunk_bits)) {
                out.insert(h);
            }
            true
        })?;
    }
    Ok(out)
}

/// The eventID hashes of the newest blocks, newest block first, at most `cap`.
pub fn recent_ids(
    conn: &Connection,
    path: &Path,
    blocks: &[Block],
    cap: usize,
) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for b in blocks.iter().rev() {
        let all = each_event_id(conn, path, b, |h, _| {
            out.push(h);
            out.len() < cap
        })?;
        if !all {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bits_keep_buckets_small() {
        assert_eq!(bucket_bits(0), 0);
        assert_eq!(bucket_bits(32), 0);
        assert_eq!(bucket_bits(33), 1);
        assert_eq!(bucket_bits(4_000), 7);
        assert_eq!(bucket_bits(1 << 18), 13);
        assert_eq!(bucket(u64::MAX, 0), 0);
        assert_eq!(bucket(u64::MAX, 7), 127);
    }

    #[test]
    fn hash_is_stable() {
        // xxh3-64 of "" is fixed by its specification
        assert_eq!(hash(b""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn new_postings_sort_like_a_full_sort() {
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let (mut scratch, mut starts) = (Vec::new(), Vec::new());
        for n in [0usize, 1, 63, 64, 65, 1000, 5000, 70_000] {
            for distinct in [1u64, 2, 7, 1 << 40] {
                // times about ascending (as events arrive), some out of order, some equal
                let mut posts: Vec<Post> = (0..n)
                    .map(|i| Post {
                        key: 3,
                        hash: if distinct == 1 << 40 {
                            next()
                        } else {
                            hash(&(next() % distinct).to_le_bytes())
                        },
                        time: i as i64 * 10 - (next() % 50) as i64,
                        rid: i as i64,
                    })
                    .collect();
                let mut want = posts.clone();
                want.sort_by_key(|p| (order(p), p.rid));
                sort_new(&mut posts, &mut scratch, &mut starts);
                assert!(posts.is_sorted_by_key(order), "n {n}, distinct {distinct}");
                posts.sort_by_key(|p| (order(p), p.rid));
                assert_eq!(posts, want, "n {n}, distinct {distinct}");
            }
        }
    }
}
