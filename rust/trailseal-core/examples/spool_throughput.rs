//! Throughput of `Spool::process` + `Spool::sync` (the whole core path of a batch: parse,
//! validate, canonicalize, dedup, chain, compress, append, fsync) over 4 MiB batches of an NDJSON
//! file, e.g. the Python synthetic events (`trailseal.synthetic`).
//!
//! Run: `cargo run --release -p trailseal-core --example spool_throughput -- FILE [PASSES [LEVEL]]`
//! (`taskset -c 0` in front for one core). Each pass uses a fresh spool in a temporary directory
//! (dedup would drop a second pass). Prints events/s and MB/s of the best pass, and the
//! compression ratio (uncompressed / compressed bytes appended) at zstd level LEVEL (default 3).
use std::time::Instant;

use trailseal_core::spool::{Part, Spool, SpoolConfig};

const BATCH_BYTES: usize = 4 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: spool_throughput FILE [PASSES] (FILE: NDJSON events)")?;
    let passes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let level: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let data = std::fs::read(&path)?;
    // 4 MiB batches cut after a newline
    let mut batches = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let cut = if rest.len() <= BATCH_BYTES {
            rest.len()
        } else {
            rest[..BATCH_BYTES]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1)
        };
        batches.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    let mut best = f64::INFINITY;
    let mut best_sync = 0.0;
    let mut accepted = 0;
    let (mut uncompressed, mut compressed) = (0u64, 0u64);
    for pass in 0..passes {
        let dir = std::env::temp_dir().join(format!(
            "trailseal-spool-throughput-{}-{pass}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = SpoolConfig::new(&dir, vec!["main".into()], "111122223333", "us-east-1");
        cfg.zstd_level = level;
        let mut spool = Spool::open(cfg)?;
        let start = Instant::now();
        accepted = 0;
        (uncompressed, compressed) = (0, 0);
        let mut sync_secs = 0.0;
        for b in &batches {
            let part = Part {
                end: b.len(),
                peer: "unix:uid=1000,pid=4242".into(),
                agent: None,
                received_at_ms: 1_767_268_800_123,
            };
            let r = spool.process(b, &[part])?;
            let synced = Instant::now();
            spool.sync()?;
            sync_secs += synced.elapsed().as_secs_f64();
            accepted += r.accepted;
            uncompressed += r.uncompressed_bytes;
            compressed += r.compressed_bytes;
        }
        let total = start.elapsed().as_secs_f64();
        if total < best {
            best = total;
            best_sync = sync_secs;
        }
        drop(spool);
        std::fs::remove_dir_all(&dir)?;
    }
    println!(
        "Spool::process+sync: {accepted} events in {} batches, zstd level {level} (ratio {:.2}), \
         best of {passes}: {:.1} MB/s, {:.0} events/s ({:.0}% of the time in sync)",
        batches.len(),
        uncompressed as f64 / compressed.max(1) as f64,
        data.len() as f64 / best / 1e6,
        accepted as f64 / best,
        100.0 * best_sync / best
    );
    Ok(())
}
