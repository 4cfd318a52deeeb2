//! Spool: a seal cut short at each step is finished or undone at the next open, without loss
//! or duplication, and chain heads survive.
use std::path::{Path, PathBuf};

use trailseal_core::segment;
use trailseal_core::spool::{Part, Spool, SpoolConfig};
use trailseal_core::verify::{verify_log, Compression};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("trailseal-{tag}-{}-{nanos}", std::process::id()));
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ACCOUNT: &str = "111122223333";
const REGION: &str = "us-east-1";

fn open(dir: &Path) -> Spool {
    Spool::open(SpoolConfig::new(dir, vec!["t".into()], ACCOUNT, REGION)).expect("open spool")
}

fn send(spool: &mut Spool, ids: &[&str]) -> u64 {
    let data: String = ids
        .iter()
        .map(|id| format!("{{\"eventName\":\"PutObject\",\"eventSource\":\"s3.amazonaws.com\",\"eventID\":\"{id}\"}}\n"))
        .collect();
    let part = Part {
        end: data.len(),
        peer: "unix:uid=0,pid=1".into(),
        agent: None,
        received_at_ms: 1_767_225_600_000,
    };
    let r = spool.process(data.as_bytes(), &[part]).expect("process");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    spool.sync().expect("sync");
    r.accepted
}

fn open_files(dir: &Path) -> (PathBuf, PathBuf) {
    let mut seg = None;
    for e in std::fs::read_dir(dir.join("t/open")).expect("ls") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "seg") {
            seg = Some(p);
        }
    }
    let seg = seg.expect("an open segment");
    let meta = PathBuf::from(format!("{}.json", seg.display()));
    (seg, meta)
}

#[test]
fn closed_without_manifest_is_reopened() {
    let dir = TempDir::new("spool-closed");
    let mut spool = open(&dir.0);
    assert_eq!(send(&mut spool, &["a", "b"]), 2);
    drop(spool);
    // Crash after the closing frame, before the manifest.
    let (seg, _) = open_files(&dir.0);
    let mut c = segment::compressor(3).expect("compressor");
    let frame = segment::compress_frame(&mut c, segment::FOOTER).expect("compress");
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes.extend_from_slice(&frame);
    std::fs::write(&seg, &bytes).expect("write");
    let mut spool = open(&dir.0);
    assert!(
        spool
            .recovery_notes()
            .iter()
            .any(|n| n.contains("reopened")),
        "{:?}",
        spool.recovery_notes()
    );
    assert_eq!(spool.open_segments()[0].event_count, 2);
    assert_eq!(send(&mut spool, &["a", "c"]), 1);
    let sealed = spool
        .seal("t", ACCOUNT, REGION, false, "k")
        .expect("seal")
        .expect("a file");
    let report = verify_log(
        &std::fs::read(&sealed.path).expect("read"),
        Compression::Zstd,
        &[0; 32],
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.event_ids, ["a", "b", "c"]);
    assert_eq!(report.chain_end, sealed.chain_end);
    assert_eq!(report.sha256, sealed.sha256);
}

#[test]
fn manifest_written_but_not_moved_is_finished() {
    let dir = TempDir::new("spool-finish");
    let mut spool = open(&dir.0);
    send(&mut spool, &["a", "b"]);
    let (seg, meta) = open_files(&dir.0);
    let meta_json = std::fs::read(&meta).expect("read meta");
    let heads_before = std::fs::read(dir.0.join("t/heads.json")).expect("heads");
    let first = spool
        .seal("t", ACCOUNT, REGION, false, "k1")
        .expect("seal")
        .expect("file");
    drop(spool);
    // Put the state back to "manifest written, segment still open, heads not updated".
    std::fs::rename(&first.path, &seg).expect("move back");
    std::fs::write(&meta, meta_json).expect("meta back");
    std::fs::write(dir.0.join("t/heads.json"), heads_before).expect("heads back");
    let mut spool = open(&dir.0);
    assert!(
        spool
            .recovery_notes()
            .iter()
            .any(|n| n.contains("finished")),
        "{:?}",
        spool.recovery_notes()
    );
    let files = spool.sealed_files("t").expect("list");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].sha256, first.sha256);
    assert!(Path::new(&files[0].path).exists());
    assert!(spool.open_segments().is_empty());
    // Not duplicated, and the chain continues from the finished file.
    assert_eq!(send(&mut spool, &["a", "b", "c"]), 1);
    let second = spool
        .seal("t", ACCOUNT, REGION, false, "k2")
        .expect("seal")
        .expect("file");
    assert_eq!(second.chain_start, first.chain_end);
    assert!(second.seq > first.seq);
}

#[test]
fn metadata_without_data_is_dropped_and_seq_keeps_growing() {
    let dir = TempDir::new("spool-meta");
    let mut spool = open(&dir.0);
    send(&mut spool, &["a"]);
    let first = spool
        .seal("t", ACCOUNT, REGION, false, "k1")
        .expect("seal")
        .expect("file");
    spool.remove_sealed("t", first.seq).expect("remove");
    send(&mut spool, &["b"]);
    let (seg, meta) = open_files(&dir.0);
    drop(spool);
    std::fs::remove_file(&seg).expect("rm");
    let mut spool = open(&dir.0);
    assert!(!meta.exists());
    assert!(spool.open_segments().is_empty());
    send(&mut spool, &["c"]);
    let next = spool
        .seal("t", ACCOUNT, REGION, false, "k2")
        .expect("seal")
        .expect("file");
    assert!(next.seq > first.seq);
    assert_eq!(next.chain_start, first.chain_end);
}
