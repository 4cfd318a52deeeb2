//! What the core hands the event history as it writes: per zstd frame appended to a spool file,
//! where the frame lies and each event's lookup values, already hashed.
//!
//! The core parses every event anyway ([`crate::event`]); hashing its lookup values there costs
//! a few xxh3 calls, where the history would otherwise read the frame back, decompress it and
//! parse every record again. The feed is a cache in memory, never the source of truth: a frame
//! that is not in it (the feed was full, the daemon restarted, the frame is too large to keep
//! as a record chunk) is read from the spool file as before, and a file sealed to gzip before
//! the history reached it is read from its sealed file. So nothing about crash recovery depends
//! on it.
//!
//! The rules of which values an event is found by live in [`LookupHashes`], used by both the
//! core (from its parsed event) and the history (from a canonical record, `index_fields`).
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::{postings, AttrKey, VERBATIM_MAX};

/// One event's lookup values as the index keeps them: the eventID's hash and (lookup key,
/// value hash) pairs, distinct. Inline up to [`INLINE_VALUES`] pairs (a typical event has 5 to
/// 9): made on one thread, dropped on another, so no allocation per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventLookup {
    pub id_hash: u64,
    pub values: LookupValues,
}

/// Lookup values held inline.
pub const INLINE_VALUES: usize = 10;
pub type LookupValues = smallvec::SmallVec<[(AttrKey, u64); INLINE_VALUES]>;

/// Gathers an event's lookup values in any order; [`LookupHashes::finish`] applies the rules
/// that [`super::EventFields::attrs`] applies to extracted fields: ReadOnly is always there,
/// Username is the IAM user name or else an assumed role's session name, each value once.
#[derive(Debug, Default)]
pub struct LookupHashes {
    values: LookupValues,
    user_name: Option<u64>,
    session: Option<u64>,
}

impl LookupHashes {
    /// A value of EventName, EventSource, AccessKeyId, ResourceType or ResourceName.
    pub fn add(&mut self, key: AttrKey, value: &str) {
        self.values.push((key, postings::hash(value.as_bytes())));
    }

    /// `userIdentity.userName`.
    pub fn user_name(&mut self, value: &str) {
        self.user_name = Some(postings::hash(value.as_bytes()));
    }

    /// `userIdentity.arn`: an assumed role's session name stands for the user name.
    pub fn arn(&mut self, arn: &str) {
        self.session = super::session_name(arn).map(|s| postings::hash(s.as_bytes()));
    }

    /// The distinct (key, hash) pairs of the event.
    pub fn finish(mut self, read_only: bool) -> LookupValues {
        self.finish_into(read_only);
        self.values
    }

    /// [`LookupHashes::finish`] in place (for a reused buffer): the pairs stay in `values()`.
    pub(super) fn finish_into(&mut self, read_only: bool) {
        let ro: &[u8] = if read_only { b"true" } else { b"false" };
        self.values.push((AttrKey::ReadOnly, postings::hash(ro)));
        if let Some(u) = self.user_name.or(self.session) {
            self.values.push((AttrKey::Username, u));
        }
        let n = super::keep_distinct(&mut self.values);
        self.values.truncate(n);
    }

    pub(super) fn clear(&mut self) {
        self.values.clear();
        self.user_name = None;
        self.session = None;
    }

    pub(super) fn values(&self) -> &[(AttrKey, u64)] {
        &self.values
    }
}

/// One event of a fed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FedEvent {
    pub time_ms: i64,
    pub lookup: EventLookup,
}

/// One zstd frame appended to a spool file: its bytes `[offset, offset + len)` of the file,
/// its content length, and its events in the order they are in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FedFrame {
    pub offset: u64,
    pub len: u64,
    /// The frame's check sum ([`super::frame_sum`]): the history keeps the frame
    /// in the spool file, and checks it is still there when it reads it back.
    pub sum: u64,
    pub content_len: usize,
    /// The file holds Insight events.
    pub insight: bool,
    pub events: Vec<FedEvent>,
}

/// At most this many events wait in the feed (about 200 bytes each); frames beyond are left
/// out, and the history reads them from the spool file.
pub const FEED_MAX_EVENTS: usize = 1 << 16;

/// The frames written and not yet indexed, per spool file `(trail, seq)`. Shared by the core
/// (which pushes) and the history (which takes).
#[derive(Debug)]
pub struct Feed {
    state: Mutex<FeedState>,
    max_events: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new(FEED_MAX_EVENTS)
    }
}

#[derive(Debug, Default)]
struct FeedState {
    files: HashMap<(String, u64), VecDeque<FedFrame>>,
    events: usize,
    /// Events left out because the feed was full.
    skipped: u64,
    /// When the last frame was pushed (ingest is running).
    last_push: Option<std::time::Instant>,
}

/// What [`Feed::take`] found for a file at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Frames starting at the offset, one after the other.
    Frames(Vec<FedFrame>),
    /// Nothing at the offset; the next frame the feed holds starts here (read up to it from the
    /// file).
    Gap(u64),
    /// Nothing for this file.
    None,
}

impl Feed {
    /// A feed holding at most `max_events` events.
    pub fn new(max_events: usize) -> Feed {
        Feed {
            state: Mutex::default(),
            max_events,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FeedState> {
        // the state stays consistent across a panic (each change is one push or pop)
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand over a frame just written to `(trail, seq)`. Left out (the history reads it from
    /// the file) when the feed is full or the frame is too large to be kept as it is.
    pub fn push(&self, trail: &str, seq: u64, frame: FedFrame) {
        let mut s = self.state();
        s.last_push = Some(std::time::Instant::now());
        let n = frame.events.len();
        if s.events + n > self.max_events
            || frame.content_len > VERBATIM_MAX
            || n >= 1 << super::CHUNK_BITS
        {
            s.skipped += n as u64;
            return;
        }
        s.events += n;
        s.files
            .entry((trail.to_owned(), seq))
            .or_default()
            .push_back(frame);
    }

    /// How long ago the core last pushed a frame (None: never).
    pub fn since_push(&self) -> Option<std::time::Duration> {
        self.state().last_push.map(|t| t.elapsed())
    }

    /// The frames of `(trail, seq)` from `offset` on, consecutive, about `max_events` events
    /// (at least one frame). Frames before `offset` (read from the file meanwhile) are dropped.
    pub fn take(&self, trail: &str, seq: u64, offset: u64, max_events: u64) -> Taken {
        let mut s = self.state();
        let key = (trail.to_owned(), seq);
        let Some(q) = s.files.get_mut(&key) else {
            return Taken::None;
        };
        let mut dropped = 0;
        while q.front().is_some_and(|f| f.offset < offset) {
            dropped += q.pop_front().map_or(0, |f| f.events.len());
        }
        let mut out: Vec<FedFrame> = Vec::new();
        let mut at = offset;
        let mut events = 0u64;
        while let Some(f) = q.front() {
            if f.offset != at || (!out.is_empty() && events + f.events.len() as u64 > max_events) {
                break;
            }
            let Some(f) = q.pop_front() else { break };
            at = f.offset + f.len;
            events += f.events.len() as u64;
            out.push(f);
        }
        let next = q.front().map(|f| f.offset);
        if q.is_empty() {
            s.files.remove(&key);
        }
        s.events -= dropped + events as usize;
        match (out.is_empty(), next) {
            (false, _) => Taken::Frames(out),
            (true, Some(at)) => Taken::Gap(at),
            (true, None) => Taken::None,
        }
    }

    /// Drop whatever waits for `(trail, seq)` (the file was indexed another way, or is gone).
    pub fn forget(&self, trail: &str, seq: u64) {
        let mut s = self.state();
        if let Some(q) = s.files.remove(&(trail.to_owned(), seq)) {
            s.events -= q.iter().map(|f| f.events.len()).sum::<usize>();
        }
    }

    /// Whether frames of `(trail, seq)` wait.
    pub fn has(&self, trail: &str, seq: u64) -> bool {
        self.state().files.contains_key(&(trail.to_owned(), seq))
    }

    /// Drop what waits for files of `trail` that are not `present` in its spool directory and
    /// older than one that is (a newer one may have been made since the directory was listed).
    pub fn forget_gone(&self, trail: &str, present: &std::collections::HashSet<u64>) {
        let newest = present.iter().copied().max().unwrap_or(0);
        let mut s = self.state();
        let gone: Vec<(String, u64)> = s
            .files
            .keys()
            .filter(|(t, seq)| t == trail && *seq < newest && !present.contains(seq))
            .cloned()
            .collect();
        for key in gone {
            if let Some(q) = s.files.remove(&key) {
                s.events -= q.iter().map(|f| f.events.len()).sum::<usize>();
            }
        }
    }

    /// Events waiting, and events left out so far because the feed was full.
    pub fn stats(&self) -> (usize, u64) {
        let s = self.state();
        (s.events, s.skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(offset: u64, len: u64, events: usize) -> FedFrame {
        FedFrame {
            offset,
            len,
            sum: 0,
            content_len: 100,
            insight: false,
            events: (0..events)
                .map(|i| FedEvent {
                    time_ms: i as i64,
                    lookup: EventLookup::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn take_returns_consecutive_frames_gaps_and_drops_stale_ones() {
        let feed = Feed::default();
        assert_eq!(feed.since_push(), None);
        feed.push("t", 1, frame(0, 10, 2));
        // a push tells the indexer that ingest runs
        assert!(feed
            .since_push()
            .is_some_and(|t| t < std::time::Duration::from_secs(5)));
        feed.push("t", 1, frame(10, 5, 3));
        feed.push("t", 1, frame(40, 5, 1)); // 15..40 was left out
        assert_eq!(feed.stats().0, 6);
        assert_eq!(feed.take("t", 2, 0, 100), Taken::None);
        let Taken::Frames(f) = feed.take("t", 1, 0, 100) else {
            panic!("frames expected")
        };
        assert_eq!(f.iter().map(|f| f.offset).collect::<Vec<_>>(), [0, 10]);
        assert_eq!(feed.take("t", 1, 15, 100), Taken::Gap(40));
        // read from the file up to 45: the frame at 40 is stale
        assert_eq!(feed.take("t", 1, 45, 100), Taken::None);
        assert_eq!(feed.stats().0, 0);
    }

    #[test]
    fn budget_full_feed_and_large_frames() {
        let feed = Feed::default();
        feed.push("t", 1, frame(0, 10, 3));
        feed.push("t", 1, frame(10, 10, 3));
        let Taken::Frames(f) = feed.take("t", 1, 0, 4) else {
            panic!("frames expected")
        };
        assert_eq!(f.len(), 1, "the budget stops after the first frame");
        let mut big = frame(20, 10, 1);
        big.content_len = VERBATIM_MAX + 1;
        feed.push("t", 1, big);
        feed.push("t", 1, frame(30, 10, FEED_MAX_EVENTS));
        assert_eq!(feed.stats(), (3, 1 + FEED_MAX_EVENTS as u64));
        feed.forget("t", 1);
        assert_eq!(feed.stats().0, 0);
    }
}
