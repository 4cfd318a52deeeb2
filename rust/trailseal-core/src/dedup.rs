//! The persisted eventID window (FORMATS.md §1, idempotency).
//!
//! In memory: the last `capacity` eventIDs as 128-bit keyed hashes (xxh3-128, seeded at random
//! per process so that senders cannot aim collisions at it; two IDs meeting by chance among a
//! million is a ~1e-27 event), a `HashSet` for lookups and a FIFO for eviction: 16 bytes per ID
//! in each, no allocation per event (an `Arc<str>` per ID took ~100 bytes and two allocations).
//!
//! On disk: `<spool_dir>/dedup.ids`, a journal of one eventID per line (`\n`-terminated; a `\` or
//! a newline inside an ID is escaped as `\\` / `\n`). IDs are appended (and fsync'd) when the log
//! file holding them is sealed; the IDs of still-open segments are recovered from the segments
//! themselves, so the journal only ever holds sealed IDs. When it grows past 2 × capacity lines it
//! is rewritten atomically with its last `capacity` lines (streamed: memory stays bounded). A
//! torn last line (no `\n`: a crash during an append) is cut off at open: its file was not
//! sealed, so its IDs come back from the open segment.
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// Hashes a `u128` key (already a keyed hash) by its low 64 bits.
#[derive(Default)]
struct Low64(u64);

impl Hasher for Low64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // not reached for u128 keys; fold whatever comes in
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub struct Dedup {
    capacity: usize,
    seed: u64,
    set: HashSet<u128, BuildHasherDefault<Low64>>,
    fifo: VecDeque<u128>,
    path: PathBuf,
    journal_lines: usize,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> CoreError + 'a {
    move |e| CoreError::io(what, path, e)
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
    /// Load the journal at `path` (missing: empty window), cutting off a torn last line.
    pub fn open(path: &Path, capacity: usize) -> Result<Dedup> {
        let mut d = Dedup {
            capacity,
            seed: std::hash::BuildHasher::hash_one(&ahash::RandomState::new(), 0x7e1d_u64),
            set: HashSet::default(),
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
                if complete.len() < bytes.len() {
                    // the next append must not glue its first ID onto the torn piece
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| CoreError::io("open the dedup journal", path, e))?;
                    f.set_len(complete.len() as u64)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| CoreError::io("cut the dedup journal's torn line", path, e))?;
                }
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

    fn key(&self, id: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), self.seed)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(&self.key(id))
    }

    /// Add an ID to the window (evicting the oldest past capacity). Returns false if it was
    /// already there. A capacity of 0 disables deduplication (every ID is new).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key = self.key(id);
        if !self.set.insert(key) {
            return false;
        }
        self.fifo.push_back(key);
        while self.fifo.len() > self.capacity {
            if let Some(old) = self.fifo.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Append the IDs of a sealed file to the journal and fsync it; when that would grow it past
    /// 2 × capacity lines, rewrite it with its last `capacity` lines instead.
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
            return self.compact(&buf, n);
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

    /// Rewrite the journal (atomically, streamed) as its last `capacity` lines, counting the `n`
    /// lines of `appended` after it: only sealed IDs, as in the journal (the window in memory
    /// also holds IDs of open segments, which a crash may still cut off).
    fn compact(&mut self, appended: &[u8], n: usize) -> Result<()> {
        let path = &self.path;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let keep = self.capacity.min(self.journal_lines + n);
        let mut skip = (self.journal_lines + n) - keep;
        let mut out = BufWriter::new(File::create(&tmp).map_err(io("create", &tmp))?);
        match File::open(path) {
            Ok(f) => {
                let mut old = BufReader::new(f);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let read = old
                        .read_until(b'\n', &mut line)
                        .map_err(io("read the dedup journal", path))?;
                    if read == 0 || line.last() != Some(&b'\n') {
                        break; // the end (a torn line was cut off at open)
                    }
                    if skip > 0 {
                        skip -= 1;
                    } else {
                        out.write_all(&line).map_err(io("write", &tmp))?;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CoreError::io("read the dedup journal", path, e)),
        }
        let mut rest = appended;
        while skip > 0 {
            match memchr::memchr(b'\n', rest) {
                Some(i) => rest = &rest[i + 1..],
                None => rest = &[],
            }
            skip -= 1;
        }
        out.write_all(rest).map_err(io("write", &tmp))?;
        let f = out
            .into_inner()
            .map_err(|e| CoreError::io("write", &tmp, e.into_error()))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
        if let Some(dir) = path.parent() {
            crate::segment::fsync_dir(dir)?;
        }
        self.journal_lines = keep;
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

    #[test]
    fn compaction_keeps_only_sealed_ids_and_is_bounded() {
        let dir = tempdir();
        let path = dir.join("dedup.ids");
        let mut d = Dedup::open(&path, 4).expect("open");
        let mut sealed = Vec::new();
        for i in 0..7 {
            let id = format!("s{i}");
            d.insert(&id);
            d.persist([id.as_str()]).expect("persist");
            sealed.push(id);
        }
        // in the window but in an open segment only (a crash may still cut it off)
        assert!(d.insert("open-1"));
        // two more sealed IDs take the journal past 2 × capacity: compacted to its last 4
        for id in ["s7", "s8"] {
            d.insert(id);
        }
        d.persist(["s7", "s8"]).expect("persist");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "s5\ns6\ns7\ns8\n");
        assert!(!text.contains("open-1"));
        assert!(!dir.join("dedup.ids.tmp").exists());
        // the window in memory is unchanged by it
        assert!(d.contains("open-1") && d.contains("s8") && !d.contains("s4"));
        // appends go on after the compacted lines, and compact again in time
        for i in 9..20 {
            let id = format!("s{i}");
            d.insert(&id);
            d.persist([id.as_str()]).expect("persist");
            let lines = std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count();
            assert!(lines <= 8, "{lines} lines");
        }
        let d2 = Dedup::open(&path, 4).expect("reopen");
        assert!(d2.contains("s19") && d2.contains("s16") && !d2.contains("s15"));
        // a batch larger than the capacity keeps its last `capacity` IDs
        let many: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        let mut d3 = Dedup::open(&path, 4).expect("reopen");
        d3.persist(many.iter().map(String::as_str))
            .expect("persist");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "m6\nm7\nm8\nm9\n"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_before_the_next_append() {
        let dir = tempdir();
        let path = dir.join("dedup.ids");
        std::fs::write(&path, b"a\nb\npar").expect("write");
        let mut d = Dedup::open(&path, 10).expect("open");
        assert!(d.contains("a") && d.contains("b") && !d.contains("par"));
        assert_eq!(std::fs::read(&path).expect("read"), b"a\nb\n");
        d.persist(["c"]).expect("persist");
        let d2 = Dedup::open(&path, 10).expect("reopen");
        assert!(d2.contains("c") && !d2.contains("parc"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn ids_differing_anywhere_are_different() {
        let dir = tempdir();
        let mut d = Dedup::open(&dir.join("dedup.ids"), 1000).expect("open");
        let base = "11111111-2222-3333-4444-555555555555";
        assert!(d.insert(base));
        for i in 0..base.len() {
            let mut other = base.as_bytes().to_vec();
            other[i] ^= 1;
            assert!(d.insert(std::str::from_utf8(&other).expect("utf8")));
        }
        assert!(!d.insert(base));
        assert!(d.insert("") && !d.insert(""));
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
