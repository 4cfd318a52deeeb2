//! Cost of indexing into the event history, as a history that keeps up does it: the events of
//! an NDJSON file go through the core in group commits of COMMIT lines (the daemon's frames
//! under load), each followed by `History::index_spool` of what is new; both are timed.
//!
//! Run: `cargo run --release -p trailseal-core --example history_index -- FILE [COMMIT [feed]
//! [defer]]` (e.g. FILE from `trailseal.synthetic`); `feed`: the core hands the history its
//! frames and lookup values as the daemon does ([`Spool::feed_history`]), else the history reads
//! the spool files back; `defer`: merging waits until the end (as while ingest keeps the daemon
//! busy), and is timed apart. Prints µs per event of the core, of indexing and of merging.
use std::time::Instant;

use trailseal_core::history::History;
use trailseal_core::spool::{Part, Spool, SpoolConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: history_index FILE [COMMIT] (FILE: NDJSON events)")?;
    let commit: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let modes: Vec<String> = args.collect();
    let fed = modes.iter().any(|m| m == "feed");
    let defer = modes.iter().any(|m| m == "defer");
    let data = std::fs::read(&path)?;
    let dir = std::env::temp_dir().join(format!("trailseal-history-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = SpoolConfig::new(
        dir.join("spool"),
        vec!["main".into()],
        "111122223333",
        "us-east-1",
    );
    let mut spool = Spool::open(cfg)?;
    let history = History::open(&dir.join("history.db"))?;
    if fed {
        spool.feed_history(Some(history.feed()));
    }
    history.defer_merges(defer)?;
    // Ingest a group commit, then index what is new (a history that keeps up); the two are
    // timed apart.
    let mut rest = &data[..];
    let (mut ingest, mut index) = (0.0, 0.0);
    let (mut accepted, mut indexed, mut from_feed) = (0, 0, 0);
    while !rest.is_empty() {
        let mut cut = 0;
        for _ in 0..commit {
            match memchr::memchr(b'\n', &rest[cut..]) {
                Some(i) => cut += i + 1,
                None => {
                    cut = rest.len();
                    break;
                }
            }
        }
        let part = Part {
            end: cut,
            peer: "unix:uid=1000,pid=4242".into(),
            agent: None,
            received_at_ms: 1_767_268_800_123,
        };
        let t = Instant::now();
        accepted += spool.process(&rest[..cut], &[part])?.accepted;
        spool.sync()?;
        ingest += t.elapsed().as_secs_f64();
        rest = &rest[cut..];
        let t = Instant::now();
        loop {
            let r = history.index_spool(&dir.join("spool"), 100_000)?;
            indexed += r.inserted;
            from_feed += r.fed;
            if !r.more {
                break;
            }
        }
        index += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    history.defer_merges(false)?;
    while history.merge(1)? {}
    let merge = t.elapsed().as_secs_f64();
    println!(
        "{accepted} events (commits of {commit}): core {:.2} µs/event, history {:.2} µs/event \
         ({indexed} indexed, {from_feed} from the feed), merging afterwards {:.2} µs/event",
        ingest / accepted.max(1) as f64 * 1e6,
        index / indexed.max(1) as f64 * 1e6,
        merge / indexed.max(1) as f64 * 1e6
    );
    drop(spool);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
