//! verify_log: a good file passes; tampering is caught or shows in the chain end / hash.
use std::io::Write;

use trailseal_core::chain;
use trailseal_core::verify::{verify_log, Compression};

fn events() -> Vec<String> {
    (0..4)
        .map(|i| {
            format!(
                r#"{{"eventID":"e{i}","eventName":"PutObject","eventTime":"2026-01-01T00:00:0{i}Z","n":{i}}}"#
            )
        })
        .collect()
}

fn document(evs: &[String]) -> Vec<u8> {
    format!("{{\"Records\":[\n{}\n]}}\n", evs.join(",\n")).into_bytes()
}

/// A frame as the spool writes it (single-segment, checksummed: the only kind verify_log accepts).
fn zstd(content: &[u8]) -> Vec<u8> {
    let mut c = trailseal_core::segment::compressor(3).expect("compressor");
    trailseal_core::segment::compress_frame(&mut c, content).expect("compress")
}

fn gzip(content: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(content).expect("gzip");
    enc.finish().expect("gzip")
}

fn start() -> chain::ChainValue {
    chain::step(&chain::ZERO, b"before")
}

#[test]
fn good_file_in_several_frames() {
    let evs = events();
    let doc = document(&evs);
    let mut data = zstd(&doc[..30]);
    data.extend(zstd(&doc[30..]));
    let r = verify_log(&data, Compression::Zstd, &start());
    assert_eq!(r.problems, Vec::<String>::new());
    assert_eq!(r.event_count, 4);
    assert_eq!(r.event_ids, vec!["e0", "e1", "e2", "e3"]);
    assert_eq!(r.oldest_event_time.as_deref(), Some("2026-01-01T00:00:00Z"));
    assert_eq!(r.newest_event_time.as_deref(), Some("2026-01-01T00:00:03Z"));
    let mut c = start();
    for e in &evs {
        c = chain::step(&c, e.as_bytes());
    }
    assert_eq!(r.chain_end, chain::to_hex(&c));
    use sha2::Digest;
    assert_eq!(r.sha256, hex::encode(sha2::Sha256::digest(&doc)));
    let g = verify_log(&gzip(&doc), Compression::Gzip, &start());
    assert_eq!(g.problems, Vec::<String>::new());
    assert_eq!(g.chain_end, r.chain_end);
}

#[test]
fn flipped_compressed_byte_is_a_problem() {
    let doc = document(&events());
    let good = zstd(&doc);
    for i in [good.len() / 2, good.len() - 2] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let r = verify_log(&bad, Compression::Zstd, &start());
        assert!(!r.problems.is_empty(), "flip at {i} not detected");
    }
}

#[test]
fn changed_or_swapped_events_change_the_chain_end() {
    let evs = events();
    let good = verify_log(&zstd(&document(&evs)), Compression::Zstd, &start());
    let mut swapped = evs.clone();
    swapped.swap(1, 2);
    let r = verify_log(&zstd(&document(&swapped)), Compression::Zstd, &start());
    assert!(r.problems.is_empty());
    assert_ne!(r.chain_end, good.chain_end);
    let mut changed = evs.clone();
    changed[3] = changed[3].replace("PutObject", "PutObjekt");
    let r = verify_log(&zstd(&document(&changed)), Compression::Zstd, &start());
    assert_ne!(r.chain_end, good.chain_end);
    assert_ne!(r.sha256, good.sha256);
}

#[test]
fn non_canonical_event_is_named() {
    let mut evs = events();
    evs[1] = evs[1].replace("\"n\":1", "\"n\": 1");
    let r = verify_log(&zstd(&document(&evs)), Compression::Zstd, &start());
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].starts_with("event 2:"), "{:?}", r.problems);
}

#[test]
fn layout_problems() {
    let evs = events();
    let mut doc = document(&evs);
    doc.pop(); // no final newline
    let r = verify_log(&zstd(&doc), Compression::Zstd, &start());
    assert!(!r.problems.is_empty());
    let r = verify_log(&zstd(b"{\"Records\":[\n]}\n"), Compression::Zstd, &start());
    assert!(
        r.problems.iter().any(|p| p.contains("no events")),
        "{:?}",
        r.problems
    );
    let spaced = format!("{{\"Records\": [\n{}\n]}}\n", evs.join(",\n"));
    let r = verify_log(&zstd(spaced.as_bytes()), Compression::Zstd, &start());
    assert!(
        r.problems.iter().any(|p| p.starts_with("layout")),
        "{:?}",
        r.problems
    );
    let missing_comma = format!("{{\"Records\":[\n{}\n{}\n]}}\n", evs[0], evs[1]);
    let r = verify_log(&zstd(missing_comma.as_bytes()), Compression::Zstd, &start());
    assert!(
        r.problems.iter().any(|p| p.contains("event 1")),
        "{:?}",
        r.problems
    );
}

#[test]
fn two_gzip_members_are_rejected() {
    let doc = document(&events());
    let mut data = gzip(&doc[..20]);
    data.extend(gzip(&doc[20..]));
    let r = verify_log(&data, Compression::Gzip, &start());
    assert!(
        r.problems.iter().any(|p| p.contains("gzip member")),
        "{:?}",
        r.problems
    );
}
