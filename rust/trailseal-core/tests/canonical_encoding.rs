//! The compressed wrapper of a log file is canonical, so that every flipped bit of a delivered
//! file shows: the spool writes only single-segment zstd frames (a big batch is cut between
//! events), `verify_log` rejects any other frame header, skippable frames and any gzip member not
//! written exactly as trailseal writes it; and a spool directory is locked by the one Spool
//! using it.
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::Digest;
use trailseal_core::chain;
use trailseal_core::segment;
use trailseal_core::spool::{Part, Spool, SpoolConfig};
use trailseal_core::verify::{encoding_problems, strict_gzip, verify_log, Compression};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "trailseal-enc-{tag}-{}-{nanos}",
            std::process::id()
        ));
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

fn open(dir: &Path) -> trailseal_core::Result<Spool> {
    Spool::open(SpoolConfig::new(dir, vec!["t".into()], ACCOUNT, REGION))
}

/// Process `n` events of about `pad` bytes each in one batch.
fn send(spool: &mut Spool, tag: &str, n: usize, pad: usize) {
    let filler = "x".repeat(pad);
    let data: String = (0..n)
        .map(|i| {
            format!(
                "{{\"eventName\":\"PutObject\",\"eventSource\":\"s3.amazonaws.com\",\
                 \"eventID\":\"{tag}-{i}\",\"requestParameters\":{{\"pad\":\"{filler}\"}}}}\n"
            )
        })
        .collect();
    let part = Part {
        end: data.len(),
        peer: "unix:uid=0,pid=1".into(),
        agent: None,
        received_at_ms: 1_700_000_000_000,
    };
    let r = spool.process(data.as_bytes(), &[part]).expect("process");
    assert_eq!(r.accepted, n as u64, "{:?}", r.errors);
}

/// Byte offsets of the frames of a zstd file.
fn frame_offsets(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        out.push(pos);
        pos += zstd::zstd_safe::find_frame_compressed_size(&data[pos..]).expect("frame");
    }
    out
}

/// A sealed log file of `n` events (and its chain start).
fn sealed_file(tag: &str, batches: &[(usize, usize)]) -> Vec<u8> {
    let dir = TempDir::new(tag);
    let mut spool = open(&dir.0).expect("open spool");
    for (i, &(n, pad)) in batches.iter().enumerate() {
        send(&mut spool, &format!("{tag}{i}"), n, pad);
    }
    let sealed = spool
        .seal("t", ACCOUNT, REGION, false, "k")
        .expect("seal")
        .expect("a segment");
    std::fs::read(&sealed.path).expect("read sealed")
}

#[test]
fn spool_writes_single_segment_frames_and_cuts_big_batches_between_events() {
    // one batch of ~10 MiB (over MAX_FRAME_CONTENT), then a small one, then the closing frame
    let data = sealed_file("big", &[(2000, 5000), (3, 10)]);
    assert_eq!(
        encoding_problems(&data, Compression::Zstd),
        Vec::<String>::new()
    );
    let offsets = frame_offsets(&data);
    assert!(offsets.len() >= 4, "frames at {offsets:?}");
    for &o in &offsets {
        assert_eq!(
            data[o + 4] & 0x20,
            0x20,
            "frame at {o} is not single-segment"
        );
        let n = zstd::zstd_safe::find_frame_compressed_size(&data[o..]).expect("frame");
        let content = zstd::stream::decode_all(&data[o..o + n]).expect("frame decodes");
        // a large batch is cut into frames the event history keeps as they are
        assert!(content.len() <= trailseal_core::history::VERBATIM_MAX);
        // every frame ends at an event boundary: after a whole event, or the closing frame
        assert!(
            content.ends_with(b"}") || content == segment::FOOTER,
            "frame at {o} ends mid-event"
        );
    }
    let r = verify_log(&data, Compression::Zstd, &chain::ZERO);
    assert_eq!(r.problems, Vec::<String>::new());
    assert_eq!(r.event_count, 2003);
}

/// Bit flips of a zstd file that `verify_log` does not notice (no problem, same hash, chain, count).
fn unnoticed_flips(data: &[u8]) -> Vec<(usize, u8)> {
    let good = verify_log(data, Compression::Zstd, &chain::ZERO);
    assert_eq!(good.problems, Vec::<String>::new());
    let mut copy = data.to_vec();
    let mut unnoticed = Vec::new();
    for i in 0..data.len() {
        for bit in 0..8 {
            copy[i] ^= 1 << bit;
            let r = verify_log(&copy, Compression::Zstd, &chain::ZERO);
            if r.problems.is_empty()
                && r.sha256 == good.sha256
                && r.chain_end == good.chain_end
                && r.event_count == good.event_count
            {
                unnoticed.push((i, bit));
            }
            copy[i] ^= 1 << bit;
        }
    }
    unnoticed
}

/// Every flipped bit of a sealed file shows, except (a known limit, see the `verify` docs) the
/// few bits of the last, unused state update of an FSE-coded Huffman weight table: those sit
/// in the first two bytes of the weights' bitstream, right after its FSE table description.
#[test]
fn every_flipped_bit_of_a_small_sealed_file_shows() {
    let data = sealed_file("flip", &[(3, 20), (2, 5)]);
    let unnoticed = unnoticed_flips(&data);
    for &o in &frame_offsets(&data) {
        let n = zstd::zstd_safe::find_frame_compressed_size(&data[o..]).expect("frame");
        let in_frame: Vec<_> = unnoticed
            .iter()
            .filter(|(i, _)| (o..o + n).contains(i))
            .collect();
        let Some(&&(first, _)) = in_frame.first() else {
            continue;
        };
        assert!(
            in_frame.iter().all(|(i, _)| *i <= first + 1),
            "unnoticed flips spread over more than two bytes: {in_frame:?}"
        );
        // the byte before them ends a Huffman weight table description (an FSE NCount), so the
        // flips sit at the start of that table's bitstream
        let header = data[o + 4];
        let blocks = o + 5 + [1, 2, 4, 8][usize::from(header >> 6)] + 3;
        assert_eq!(
            data[blocks] & 3,
            2,
            "compressed literals with a Huffman tree"
        );
        assert!(data[blocks + 3 + usize::from((data[blocks] >> 2) & 3 >= 2)] < 128);
        assert!(first > blocks + 4, "{in_frame:?}");
    }
    assert!(unnoticed.len() <= 16, "{unnoticed:?}");
}

fn canonical_frame(content: &[u8]) -> Vec<u8> {
    let mut c = segment::compressor(3).expect("compressor");
    segment::compress_frame(&mut c, content).expect("compress")
}

#[test]
fn frame_header_bits_are_checked_and_name_the_offset() {
    let first = canonical_frame(b"{\"Records\":[\n{\"a\":1}");
    let second = canonical_frame(segment::FOOTER);
    let at = first.len();
    for (bit, what) in [
        (0x10u8, "unused bit"),
        (0x08, "reserved bit"),
        (0x01, "dictionary ID"),
    ] {
        let mut data = [first.clone(), second.clone()].concat();
        data[at + 4] |= bit;
        let problems = encoding_problems(&data, Compression::Zstd);
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("byte offset {at}")) && p.contains(what)),
            "{what}: {problems:?}"
        );
    }
    let mut data = [first.clone(), second.clone()].concat();
    data[at + 4] &= !0x04;
    let problems = encoding_problems(&data, Compression::Zstd);
    assert!(
        problems.iter().any(|p| p.contains("no content checksum")),
        "{problems:?}"
    );
}

#[test]
fn frames_with_a_window_descriptor_or_without_checksum_are_rejected() {
    // what a plain streaming encoder writes: window descriptor, no content size, no checksum
    let content = vec![b'a'; 3 << 20];
    let plain = zstd::stream::encode_all(&content[..], 3).expect("compress");
    let problems = encoding_problems(&plain, Compression::Zstd);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("byte offset 0") && p.contains("window descriptor")),
        "{problems:?}"
    );
    // and a frame above the default window, written by trailseal, has none
    assert_eq!(
        encoding_problems(&canonical_frame(&content), Compression::Zstd),
        Vec::<String>::new()
    );
}

#[test]
fn non_minimal_content_size_field_is_rejected() {
    let content = vec![b'b'; 300];
    let frame = canonical_frame(&content);
    assert_eq!(frame[4] >> 6, 1, "300 bytes take the 2-byte size field");
    // rewrite the size as a 4-byte field: still decodes, but is not how trailseal writes it
    let mut wide = frame[..4].to_vec();
    wide.push((frame[4] & 0x3f) | 0x80);
    wide.extend_from_slice(&300u32.to_le_bytes());
    wide.extend_from_slice(&frame[7..]);
    assert_eq!(
        zstd::stream::decode_all(&wide[..]).expect("decodes"),
        content
    );
    let problems = encoding_problems(&wide, Compression::Zstd);
    assert!(
        problems.iter().any(|p| p.contains("fewest")),
        "{problems:?}"
    );
}

#[test]
fn skippable_frames_are_rejected() {
    let frame = canonical_frame(b"{\"Records\":[\n]}\n");
    let mut data = frame.clone();
    data.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 0xaa, 0xbb]);
    let problems = encoding_problems(&data, Compression::Zstd);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("skippable") && p.contains(&format!("byte offset {}", frame.len()))),
        "{problems:?}"
    );
}

/// One gzip member as trailseal writes it (flate2's header is exactly trailseal's at level 6).
fn gzip(content: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(content).expect("gzip");
    enc.finish().expect("gzip")
}

#[test]
fn gzip_members_must_be_exactly_trailseals() {
    let content = b"{\"Records\":[\n{\"eventID\":\"a\"}\n]}\n".repeat(3);
    let good = gzip(&content);
    assert_eq!(&good[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    assert_eq!(strict_gzip(&good).expect("canonical"), content);
    for (i, what) in [(4, "MTIME"), (8, "XFL"), (9, "OS"), (3, "flags")] {
        let mut bad = good.clone();
        bad[i] ^= 1;
        let e = strict_gzip(&bad).expect_err(what);
        assert!(e.contains("gzip header"), "{what}: {e}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(strict_gzip(&trailing).is_err());
    let mut two = good.clone();
    two.extend_from_slice(&good);
    assert!(strict_gzip(&two)
        .expect_err("two members")
        .contains("followed by"));
    // every single flipped bit is an encoding problem or changes the content
    let sha = hex::encode(sha2::Sha256::digest(&content));
    let mut copy = good.clone();
    for i in 0..good.len() {
        for bit in 0..8 {
            copy[i] ^= 1 << bit;
            let r = verify_log(&copy, Compression::Gzip, &chain::ZERO);
            assert!(
                !r.problems.is_empty() || r.sha256 != sha,
                "flipping bit {bit} of byte {i} goes unnoticed"
            );
            copy[i] ^= 1 << bit;
        }
    }
}

#[test]
fn a_second_spool_on_the_same_directory_is_refused() {
    let dir = TempDir::new("lock");
    let first = open(&dir.0).expect("first spool");
    let err = match open(&dir.0) {
        Ok(_) => panic!("a second spool opened on a locked directory"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("in use by another trailseal"), "{err}");
    assert!(err.contains("spool.lock"), "{err}");
    drop(first);
    open(&dir.0).expect("the lock is released when the spool is dropped");
}
