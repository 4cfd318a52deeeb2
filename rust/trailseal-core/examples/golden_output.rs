//! A fingerprint of the sealed output for a fixed input, to prove a performance change leaves
//! every byte as it was: runs `Spool::process` over an NDJSON file in 4 MiB batches (one part per
//! batch, fixed peer and receive time), seals every open segment, and prints one line per sealed
//! file (account, region, event count, the uncompressed content's SHA-256, chain start and end)
//! plus the accepted/duplicate/rejected totals and every rejection. Run it before and after a
//! change and compare the output (`diff`); it must be identical.
//!
//! Run: `cargo run --release -p trailseal-core --example golden_output -- FILE [LEVEL]`
use trailseal_core::spool::{Part, Spool, SpoolConfig};

const BATCH_BYTES: usize = 4 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: golden_output FILE [LEVEL] (FILE: NDJSON events)")?;
    let level: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let data = std::fs::read(&path)?;
    let dir = std::env::temp_dir().join(format!("trailseal-golden-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = SpoolConfig::new(&dir, vec!["main".into()], "111122223333", "us-east-1");
    cfg.zstd_level = level;
    let mut spool = Spool::open(cfg)?;
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    let mut rest = &data[..];
    let mut batch_no = 0u64;
    while !rest.is_empty() {
        let cut = if rest.len() <= BATCH_BYTES {
            rest.len()
        } else {
            rest[..BATCH_BYTES]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1)
        };
        let part = Part {
            end: cut,
            peer: "unix:uid=1000,pid=4242".into(),
            agent: None,
            received_at_ms: 1_767_268_800_123,
        };
        let r = spool.process(&rest[..cut], &[part])?;
        for (_, lineno, code, message) in &r.errors {
            println!("batch {batch_no} line {lineno}: {code} {message}");
        }
        accepted += r.accepted;
        duplicates += r.duplicates;
        rejected += r.rejected;
        rest = &rest[cut..];
        batch_no += 1;
    }
    spool.sync()?;
    let mut open = spool.open_segments();
    open.sort_by(|a, b| (&a.account, &a.region).cmp(&(&b.account, &b.region)));
    for seg in open {
        let key = format!("golden/{}/{}/{}", seg.account, seg.region, seg.seq);
        if let Some(f) = spool.seal(&seg.trail, &seg.account, &seg.region, seg.insight, &key)? {
            println!(
                "{} {} events={} sha256={} chain={}..{} time={}..{}",
                f.account,
                f.region,
                f.event_count,
                f.sha256,
                f.chain_start,
                f.chain_end,
                f.oldest_event_time,
                f.newest_event_time
            );
        }
    }
    println!("accepted={accepted} duplicates={duplicates} rejected={rejected}");
    drop(spool);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
