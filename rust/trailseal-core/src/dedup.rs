//! The persisted eventID window (FORMATS.md §1, idempotency).
//!
//! In memory: the last `capacity` eventIDs, a `HashSet` for lookups (aHash: several times faster
//! than SipHash on short IDs, and keyed per process so senders cannot aim collisions at it) and a
//! FIFO for eviction.
//!
//! On disk: `<spool_dir>/dedup.ids`, a journal of one eventID per line (`\n`-terminated; a `\` or
//! a newline inside an ID is escaped as `\\` / `\n`). IDs are appended (and fsync'd) when the log
//! file holding them is sealed; the IDs of still-open segments are recovered from the segments
//! themselves. When the journal grows past 2 × capacity lines it is rewritten atomically with the
//! current window. A torn last line (no `\n`) is ignored: its file was not sealed, so its IDs come
//! back from the open segment.
use std::collections::{HashSet, VecDeque};

use ahash::RandomState;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{CoreError, Result};
use crate::segment::write_atomic;

pub struct Dedup {
    capacity: usize,
    set: HashSet<Arc<str>, RandomState>,
    fifo: VecDeque<Arc<str>>,
    path: PathBuf,
    journal_lines: usize,
}

fn escape(id: &str, out: &mut Vec<u8>) {
    let mut rest = id.as_bytes();
    // the text up to each `\` or newline in one piece (an ID rarely holds either)
    while let Some(i) = memchr::memchr2(b'\\', b'\n', rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(if rest[i] == b'\\' { b"\\\\" } else { b"\\n" });
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'\n');
}

fn unescape(line: &[u8]) -> String {
    let mut out = Vec::with_capacity(line.len());
    let mut it = line.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(&other) => out.push(other),
                None => out.push(b'\\'),
            }
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Dedup {
    /// Load the journal at `path` (missing: empty window).
    pub fn open(path: &Path, capacity: usize) -> Result<Dedup> {
        let mut d = Dedup {
            capacity,
            set: HashSet::with_hasher(RandomState::new()),
            fifo: VecDeque::new(),
            path: path.to_path_buf(),
            journal_lines: 0,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let complete = match bytes.iter().rposition(|&b| b == b'\n') {
                    Some(i) => &bytes[..=i],
                    None => &bytes[..0],
                };
                for line in complete.split(|&b| b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    d.journal_lines += 1;
                    d.insert(&unescape(line));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CoreError::io("read the dedup journal", path, e)),
        }
        Ok(d)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Add an ID to the window (evicting the oldest past capacity). Returns false if it was
    /// already there. A capacity of 0 disables deduplication (every ID is new).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        // one lookup for a new ID (the common case); a duplicate costs a wasted allocation
        let id: Arc<str> = Arc::from(id);
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.fifo.push_back(id);
        while self.fifo.len() > self.capacity {
            if let Some(old) = self.fifo.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Append IDs to the journal and fsync it; compact it when it outgrew 2 × capacity.
    pub fn persist<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut buf = Vec::new();
        let mut n = 0usize;
        for id in ids {
            escape(id, &mut buf);
            n += 1;
        }
        if n == 0 || self.capacity == 0 {
            return Ok(());
        }
        if self.journal_lines + n > 2 * self.capacity.max(1) {
            return self.compact();
        }
        let created = !self.path.exists();
        let mut f: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| CoreError::io("open the dedup journal", &self.path, e))?;
        f.write_all(&buf)
            .map_err(|e| CoreError::io("append to the dedup journal", &self.path, e))?;
        f.sync_data()
            .map_err(|e| CoreError::io("fsync the dedup journal", &self.path, e))?;
        if created {
            if let Some(dir) = self.path.parent() {
                crate::segment::fsync_dir(dir)?;
            }
        }
        self.journal_lines += n;
        Ok(())
    }

    /// Rewrite the journal with exactly the current window (atomic).
    pub fn compact(&mut self) -> Result<()> {
        let mut buf = Vec::with_capacity(self.fifo.len() * 40);
        for id in &self.fifo {
            escape(id, &mut buf);
        }
        write_atomic(&self.path, &buf)?;
        self.journal_lines = self.fifo.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_evicts_oldest() {
        let dir = tempdir();
        let mut d = Dedup::open(&dir.join("dedup.ids"), 2).expect("open");
        assert!(d.insert("a"));
        assert!(!d.insert("a"));
        assert!(d.insert("b"));
        assert!(d.insert("c"));
        assert!(!d.contains("a"));
        assert!(d.contains("b") && d.contains("c"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn persists_and_compacts() {
        let dir = tempdir();
        let path = dir.join("dedup.ids");
        let mut d = Dedup::open(&path, 3).expect("open");
        for id in ["x", "we\\ird\nid", "z"] {
            d.insert(id);
        }
        d.persist(["x", "we\\ird\nid", "z"]).expect("persist");
        let d2 = Dedup::open(&path, 3).expect("reopen");
        assert!(d2.contains("we\\ird\nid") && d2.contains("x") && d2.contains("z"));
        // Grow past 2 × capacity: the journal is compacted to the window.
        for i in 0..10 {
            let id = format!("id{i}");
            d.insert(&id);
            d.persist([id.as_str()]).expect("persist");
        }
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.lines().count() <= 6, "journal not compacted: {text:?}");
        let d3 = Dedup::open(&path, 3).expect("reopen");
        assert!(d3.contains("id9") && d3.contains("id8") && d3.contains("id7"));
        assert!(!d3.contains("x"));
        // A torn last line is ignored.
        std::fs::write(&path, b"a\nb\npart").expect("write");
        let d4 = Dedup::open(&path, 3).expect("reopen");
        assert!(d4.contains("a") && d4.contains("b") && !d4.contains("part"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "trailseal-dedup-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
