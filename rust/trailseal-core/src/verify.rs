//! Verification of one log file's bytes (FORMATS.md §3, §4): decompression (zstd: one or more
//! frames; gzip: exactly one member), the exact document layout, every event in canonical form,
//! and the chain recomputed from the given chain start.
//!
//! Problems are collected rather than raised: each names the event index (from 1) where one
//! applies. A layout problem (the content is not a log document) stops the per-event checks.
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::canonical;
use crate::chain::{self, ChainValue};
use crate::segment::{self, split_events};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
}

impl Compression {
    pub fn parse(name: &str) -> Option<Compression> {
        match name {
            "zstd" => Some(Compression::Zstd),
            "gzip" => Some(Compression::Gzip),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lower-case hex SHA-256 of the uncompressed content ("" when it could not be decompressed).
    pub sha256: String,
    pub event_count: u64,
    pub oldest_event_time: Option<String>,
    pub newest_event_time: Option<String>,
    pub chain_start: String,
    pub chain_end: String,
    pub event_ids: Vec<String>,
    pub problems: Vec<String>,
}

/// Decompress a log file's bytes.
pub fn decompress(data: &[u8], compression: Compression) -> Result<Vec<u8>, String> {
    match compression {
        Compression::Zstd => {
            zstd::stream::decode_all(data).map_err(|e| format!("not valid zstd data: {e}"))
        }
        Compression::Gzip => {
            let mut dec = flate2::bufread::GzDecoder::new(data);
            let mut out = Vec::new();
            dec.read_to_end(&mut out)
                .map_err(|e| format!("not valid gzip data: {e}"))?;
            let rest = dec.into_inner();
            if !rest.is_empty() {
                return Err(format!(
                    "{} bytes follow the first gzip member (log files must be exactly one member)",
                    rest.len()
                ));
            }
            Ok(out)
        }
    }
}

/// Verify one log file.
pub fn verify_log(data: &[u8], compression: Compression, chain_start: &ChainValue) -> VerifyReport {
    let mut report = VerifyReport {
        sha256: String::new(),
        event_count: 0,
        oldest_event_time: None,
        newest_event_time: None,
        chain_start: chain::to_hex(chain_start),
        chain_end: chain::to_hex(chain_start),
        event_ids: Vec::new(),
        problems: Vec::new(),
    };
    let content = match decompress(data, compression) {
        Ok(c) => c,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    report.sha256 = hex::encode(Sha256::digest(&content));
    verify_content(&content, chain_start, &mut report);
    report
}

/// The checks on uncompressed content (shared with tests).
pub fn verify_content(content: &[u8], chain_start: &ChainValue, report: &mut VerifyReport) {
    let split = match split_events(content) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(format!("layout: {e}"));
            return;
        }
    };
    if !split.closed {
        report
            .problems
            .push("layout: the content does not end with a newline, ]} and a newline".into());
    }
    if split.events.is_empty() {
        report.problems.push(
            "layout: the log file holds no events (an empty log file is never delivered)".into(),
        );
    }
    let mut c = *chain_start;
    let (mut oldest, mut newest) = (i64::MAX, i64::MIN);
    for (i, ev) in split.events.iter().enumerate() {
        let n = i + 1;
        c = chain::step(&c, ev);
        match canonical::canonicalize(ev) {
            Ok(canon) if canon == *ev => {}
            Ok(_) => report
                .problems
                .push(format!("event {n}: not in canonical form (RFC 8785)")),
            Err(e) => report
                .problems
                .push(format!("event {n}: not valid JSON: {e}")),
        }
        match segment::event_id_and_time(ev) {
            Ok((id, t)) => {
                report.event_ids.push(id);
                oldest = oldest.min(t);
                newest = newest.max(t);
            }
            Err(e) => report.problems.push(format!("event {n}: {e}")),
        }
    }
    report.event_count = split.events.len() as u64;
    report.chain_end = chain::to_hex(&c);
    if oldest <= newest {
        report.oldest_event_time = Some(segment::format_time(oldest));
        report.newest_event_time = Some(segment::format_time(newest));
    }
}
