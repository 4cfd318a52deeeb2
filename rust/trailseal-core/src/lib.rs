//! trailseal-core: the pure-Rust heart of trailseal (no pyo3; `cargo test -p trailseal-core`
//! needs no Python).
//!
//! - [`canonical`]: RFC 8785 (JCS) canonical JSON with I-JSON checks.
//! - [`event`]: one NDJSON line → validated, defaulted, canonical event bytes (FORMATS.md §1).
//! - [`chain`]: the per-stream SHA-256 chain (FORMATS.md §3).
//! - [`segment`]: open segments of zstd frames, torn-tail recovery, sealing (FORMATS.md §4).
//! - [`lines`]: NDJSON line splitting and the blank-line rule (shared with the ingest framer).
//! - [`select`]: CloudTrail event selectors (basic and advanced), checked and compiled.
//! - [`dedup`]: the persisted eventID window.
//! - [`spool`]: a batch in, one result out: the orchestration the Python binding exposes.
//! - [`verify`]: verification of sealed log files.
//! - [`history`]: the SQLite event history (LookupEvents), fed by tailing the spool.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod chain;
pub mod dedup;
pub mod error;
pub mod event;
pub mod history;
pub mod lines;
pub mod segment;
pub mod select;
pub mod spool;
pub mod verify;

pub use error::{CoreError, Result};

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A xorshift64 generator from `seed` (not 0): a few reproducible pseudo-random numbers
    /// without a dependency.
    pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }
}
