//! Segments: append, close, and recovery from a torn tail at many offsets.
use std::path::{Path, PathBuf};

use trailseal_core::chain::{self, ChainValue};
use trailseal_core::segment::{self, Batch, Recovered, Segment, SegmentMeta};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("trailseal-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(i: usize) -> (Vec<u8>, String, i64) {
    let id = format!("id-{i:04}");
    let secs = 1_767_225_600 + i as i64 * 7 % 50;
    let t = segment::format_time(secs);
    let ev = format!(r#"{{"eventID":"{id}","eventName":"Get{i}","eventTime":"{t}","n":{i}}}"#);
    (ev.into_bytes(), id, secs)
}

fn meta() -> SegmentMeta {
    SegmentMeta {
        trail: "t".into(),
        account: "111122223333".into(),
        region: "us-east-1".into(),
        insight: false,
        seq: 7,
        chain_start: chain::step(&chain::ZERO, b"earlier"),
        opened_at_ms: 1_767_225_600_000,
    }
}

/// Write `batches` batches of 3 events; return, after each frame, (file length, events so far,
/// chain end).
fn write_segment(dir: &Path, batches: usize) -> (Segment, Vec<(u64, u64, ChainValue)>) {
    let mut c = segment::compressor(3).expect("compressor");
    let mut seg = Segment::create(dir, meta()).expect("create");
    let mut bounds = Vec::new();
    let mut n = 0;
    for b in 0..batches {
        let mut batch = Batch::new(seg.chain_end, b == 0);
        for _ in 0..3 {
            let (ev, id, t) = event(n);
            batch.push(&ev, &chain::event_hash(&ev), &id, t);
            n += 1;
        }
        let frame = segment::compress_frame(&mut c, &batch.content).expect("compress");
        seg.append(&frame, batch).expect("append");
        seg.sync().expect("sync");
        bounds.push((seg.compressed_bytes, seg.event_count, seg.chain_end));
    }
    (seg, bounds)
}

fn expected_content(events: usize) -> Vec<u8> {
    let mut out = segment::HEADER.to_vec();
    for i in 0..events {
        if i > 0 {
            out.extend_from_slice(b",\n");
        }
        out.extend_from_slice(&event(i).0);
    }
    out
}

#[test]
fn content_is_the_log_document_prefix_and_closes() {
    let dir = TempDir::new("seg-doc");
    let (mut seg, _) = write_segment(&dir.0, 3);
    let mut c = segment::compressor(3).expect("compressor");
    seg.close(&mut c).expect("close");
    let bytes = std::fs::read(&seg.data_path).expect("read");
    let content = zstd::stream::decode_all(&bytes[..]).expect("decode");
    let mut want = expected_content(9);
    want.extend_from_slice(b"\n]}\n");
    assert_eq!(content, want);
    assert_eq!(seg.uncompressed_bytes, want.len() as u64);
    use sha2::Digest;
    assert_eq!(seg.sha256_hex(), hex::encode(sha2::Sha256::digest(&want)));
    // Four frames: three batches and the closing frame.
    let mut pos = 0;
    let mut frames = 0;
    while pos < bytes.len() {
        pos += zstd::zstd_safe::find_frame_compressed_size(&bytes[pos..]).expect("frame");
        frames += 1;
    }
    assert_eq!(frames, 4);
}

#[test]
fn torn_tail_at_many_offsets_keeps_exactly_the_whole_frames() {
    let dir = TempDir::new("seg-torn");
    let (seg, bounds) = write_segment(&dir.0, 4);
    let data = std::fs::read(&seg.data_path).expect("read");
    let meta_json = std::fs::read(&seg.meta_path).expect("read meta");
    drop(seg);
    let mut checked = 0;
    for cut in (0..=data.len()).step_by(5).chain([data.len() - 1]) {
        let case = dir.0.join(format!("cut{cut}"));
        std::fs::create_dir_all(&case).expect("mkdir");
        let name = meta().name();
        let meta_path = case.join(format!("{name}.seg.json"));
        std::fs::write(&meta_path, &meta_json).expect("write meta");
        std::fs::write(case.join(format!("{name}.seg")), &data[..cut]).expect("write seg");
        let whole: Vec<_> = bounds.iter().filter(|b| b.0 as usize <= cut).collect();
        let mut notes = Vec::new();
        match Segment::recover(&meta_path, &mut notes).expect("recover") {
            Recovered::Open(seg) => {
                let last = whole.last().expect("a whole frame");
                assert_eq!(seg.compressed_bytes, last.0, "cut at {cut}");
                assert_eq!(seg.event_count, last.1, "cut at {cut}");
                assert_eq!(seg.chain_end, last.2, "cut at {cut}");
                let on_disk = std::fs::metadata(&seg.data_path).expect("stat").len();
                assert_eq!(on_disk, last.0, "file not truncated at cut {cut}");
                assert_eq!(seg.event_ids.len() as u64, last.1);
                assert_eq!(seg.event_ids[0], "id-0000");
                let torn = cut as u64 != last.0;
                assert_eq!(notes.len(), usize::from(torn), "cut {cut}: {notes:?}");
                if torn {
                    assert!(notes[0].contains(&format!("{} bytes", cut as u64 - last.0)));
                }
            }
            Recovered::Empty => assert!(whole.is_empty(), "cut at {cut} lost whole frames"),
            Recovered::Closed(_) => panic!("cut at {cut}: an unclosed segment came back closed"),
        }
        std::fs::remove_dir_all(&case).expect("cleanup");
        checked += 1;
    }
    assert!(checked > 20);
}

#[test]
fn appending_after_recovery_continues_the_document() {
    let dir = TempDir::new("seg-continue");
    let (seg, bounds) = write_segment(&dir.0, 2);
    let meta_path = seg.meta_path.clone();
    let data_path = seg.data_path.clone();
    drop(seg);
    // Tear the second frame in half.
    let len = std::fs::metadata(&data_path).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&data_path)
        .expect("open");
    f.set_len(bounds[0].0 + (len - bounds[0].0) / 2)
        .expect("truncate");
    drop(f);
    let mut notes = Vec::new();
    let Recovered::Open(mut seg) = Segment::recover(&meta_path, &mut notes).expect("recover")
    else {
        panic!("not open")
    };
    assert_eq!(seg.event_count, 3);
    let mut c = segment::compressor(3).expect("compressor");
    let mut batch = Batch::new(seg.chain_end, false);
    for i in 3..6 {
        let (ev, id, t) = event(i);
        batch.push(&ev, &chain::event_hash(&ev), &id, t);
    }
    let frame = segment::compress_frame(&mut c, &batch.content).expect("compress");
    seg.append(&frame, batch).expect("append");
    seg.close(&mut c).expect("close");
    let content =
        zstd::stream::decode_all(&std::fs::read(&data_path).expect("read")[..]).expect("decode");
    let mut want = expected_content(6);
    want.extend_from_slice(b"\n]}\n");
    assert_eq!(content, want);
    // Recovery of a closed segment says so, and reopen drops the closing frame.
    drop(seg);
    let Recovered::Closed(seg) = Segment::recover(&meta_path, &mut notes).expect("recover") else {
        panic!("not closed")
    };
    let seg = seg.reopen(&mut notes).expect("reopen");
    assert_eq!(seg.event_count, 6);
    let content =
        zstd::stream::decode_all(&std::fs::read(&data_path).expect("read")[..]).expect("decode");
    assert_eq!(content, expected_content(6));
    use sha2::Digest;
    assert_eq!(
        seg.sha256_hex(),
        hex::encode(sha2::Sha256::digest(&content))
    );
}

#[test]
fn metadata_without_data_is_empty() {
    let dir = TempDir::new("seg-nodata");
    let m = meta();
    let meta_path = dir.0.join(format!("{}.seg.json", m.name()));
    std::fs::write(&meta_path, m.to_json()).expect("write");
    let mut notes = Vec::new();
    assert!(matches!(
        Segment::recover(&meta_path, &mut notes).expect("recover"),
        Recovered::Empty
    ));
}

#[test]
fn file_names_are_safe() {
    assert_eq!(
        segment::segment_name(3, "111122223333", "us-east-1", false),
        "000000000003-111122223333-us-east-1"
    );
    assert_eq!(segment::file_name_part("../x y"), "..%2Fx%20y");
    assert!(segment::file_name_part(&"é".repeat(100)).len() <= 64);
}
