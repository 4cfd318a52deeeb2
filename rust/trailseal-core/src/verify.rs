//! Verification of one log file's bytes (FORMATS.md §3, §4): decompression (zstd: one or more
//! frames; gzip: exactly one member), the exact document layout, every event in canonical form,
//! and the chain recomputed from the given chain start.
//!
//! Problems are collected rather than raised: each names the event index (from 1) where one
//! applies. A layout problem (the content is not a log document) stops the per-event checks.
//!
//! The digests' hashes cover the uncompressed content only, so the compressed wrapper must be
//! canonical for every flipped byte of a delivered object to count. trailseal writes, and this
//! module accepts, nothing else:
//! - zstd: only zstd frames (no skippable frames), each single-segment: the frame header is the
//!   magic `28 b5 2f fd`, a descriptor with Single_Segment and Content_Checksum set and the
//!   Unused, Reserved and Dictionary_ID bits clear, then the frame content size in the fewest
//!   bytes that hold it (RFC 8878 §3.1.1.1: 1, 2 (minus 256), 4 or 8); no window descriptor and
//!   no dictionary ID; inside the blocks, the bits a decoder skips are zero: the padding after
//!   each FSE table description (Huffman weights, sequence codes) and the unused low nibble of
//!   an odd number of directly written Huffman weights. Known limit: the last state update of
//!   an FSE-coded Huffman weight table reads a few bits (the first ones of that table's
//!   bitstream) whose value libzstd never uses and whose encoder-chosen value this check does
//!   not recompute, so a flip there goes unnoticed (the content is unchanged);
//! - gzip: exactly one member with the 10-byte header `1f 8b 08 00 00000000 00 ff` (no FLG bits,
//!   MTIME 0, XFL 0, OS 255), a raw deflate stream whose padding bits after the final block are
//!   zero, then CRC-32 and ISIZE of the content, and nothing after.
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

/// Why a compressed log file is not in trailseal's canonical encoding (see the module docs), or
/// an empty list. Each problem names the byte offset where the encoding differs.
pub fn encoding_problems(data: &[u8], compression: Compression) -> Vec<String> {
    let mut problems = Vec::new();
    match compression {
        Compression::Zstd => check_zstd_frames(data, &mut problems),
        Compression::Gzip => {
            if let Err(e) = strict_gzip(data) {
                problems.push(e);
            }
        }
    }
    problems
        .into_iter()
        .map(|p| format!("modified or not written by trailseal: {p}"))
        .collect()
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn check_zstd_frames(data: &[u8], problems: &mut Vec<String>) {
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest.len() >= 8 && rest[0] & 0xf0 == 0x50 && rest[1..4] == [0x2a, 0x4d, 0x18] {
            problems.push(format!(
                "skippable zstd frame at byte offset {pos} (trailseal writes none)"
            ));
        } else if rest.len() < 6 || rest[..4] != ZSTD_MAGIC {
            problems.push(format!("no zstd frame starts at byte offset {pos}"));
            return;
        } else {
            match check_zstd_header(rest) {
                Err(e) => problems.push(format!("zstd frame at byte offset {pos}: {e}")),
                Ok(header_len) => {
                    if let Some(at) = zstd_block_padding(rest, header_len) {
                        problems.push(format!(
                            "unused bits at byte offset {} (in a block of the zstd frame at byte \
                             offset {pos}) are not zero",
                            pos + at
                        ));
                    }
                }
            }
        }
        match zstd::zstd_safe::find_frame_compressed_size(rest) {
            Ok(n) if n > 0 && n <= rest.len() => pos += n,
            _ => {
                problems.push(format!(
                    "zstd frame at byte offset {pos} is truncated or malformed"
                ));
                return;
            }
        }
    }
}

/// The frame header of a single-segment frame as trailseal writes it (`frame` starts at the
/// magic); Ok(its length).
fn check_zstd_header(frame: &[u8]) -> Result<usize, String> {
    let fhd = frame[4];
    let fcs_flag = fhd >> 6;
    if fhd & 0x20 == 0 {
        return Err("header has a window descriptor (not a single-segment frame)".into());
    }
    if fhd & 0x10 != 0 {
        return Err("header's unused bit is set".into());
    }
    if fhd & 0x08 != 0 {
        return Err("header's reserved bit is set".into());
    }
    if fhd & 0x04 == 0 {
        return Err("header has no content checksum".into());
    }
    if fhd & 0x03 != 0 {
        return Err("header has a dictionary ID".into());
    }
    let size_len = [1usize, 2, 4, 8][usize::from(fcs_flag)];
    let Some(field) = frame.get(5..5 + size_len) else {
        return Err("header is truncated".into());
    };
    let mut raw = [0u8; 8];
    raw[..size_len].copy_from_slice(field);
    let mut size = u64::from_le_bytes(raw);
    if fcs_flag == 1 {
        size += 256;
    }
    let canonical_flag =
        u8::from(size >= 256) + u8::from(size >= 65536 + 256) + u8::from(size >= 0xffff_ffff);
    if canonical_flag != fcs_flag {
        return Err(format!(
            "content size {size} is written in {size_len} bytes, not in the fewest that hold it"
        ));
    }
    Ok(5 + size_len)
}

/// Little-endian forward bit reader (FSE table descriptions); bits past the end read as zero.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn peek(&self, n: usize) -> u32 {
        let mut v = 0u32;
        for i in 0..n {
            let bit = self.pos + i;
            let b = self.data.get(bit / 8).copied().unwrap_or(0);
            v |= u32::from((b >> (bit % 8)) & 1) << i;
        }
        v
    }
    fn take(&mut self, n: usize) -> u32 {
        let v = self.peek(n);
        self.pos += n;
        v
    }
}

/// Length in bits of the FSE table description (RFC 8878 §4.1.1) at the start of `data`, or
/// None when it does not parse (the decoder then reports the frame).
fn fse_description_bits(data: &[u8], max_symbol: u32) -> Option<usize> {
    let mut r = Bits { data, pos: 0 };
    let log = r.take(4) as usize + 5;
    if log > 15 {
        return None;
    }
    let mut remaining: i32 = (1 << log) + 1;
    let mut threshold: i32 = 1 << log;
    let mut nb_bits = log + 1;
    let mut symbol = 0u32;
    let mut previous0 = false;
    while remaining > 1 && symbol <= max_symbol {
        if previous0 {
            loop {
                let repeat = r.take(2);
                symbol += repeat;
                if repeat != 3 {
                    break;
                }
            }
        }
        let max = (2 * threshold - 1) - remaining;
        let low = r.peek(nb_bits - 1) as i32 & (threshold - 1);
        let mut count = if low < max {
            r.pos += nb_bits - 1;
            low
        } else {
            let v = r.take(nb_bits) as i32 & (2 * threshold - 1);
            if v >= threshold {
                v - max
            } else {
                v
            }
        };
        count -= 1;
        remaining -= count.abs();
        symbol += 1;
        previous0 = count == 0;
        if remaining < threshold && remaining > 1 {
            nb_bits = (31 - remaining.leading_zeros()) as usize + 1;
            threshold = 1 << (nb_bits - 1);
        }
        if r.pos > data.len() * 8 {
            return None;
        }
    }
    (remaining == 1).then_some(r.pos)
}

/// Index (in `bytes`) of a nonzero padding bit after a bit field of `bits` bits, if any.
fn padding_after(bytes: &[u8], bits: usize) -> Option<usize> {
    let used = bits % 8;
    if used == 0 {
        return None;
    }
    let i = bits / 8;
    let b = *bytes.get(i)?;
    (b >> used != 0).then_some(i)
}

/// Walk the blocks of a single-segment frame (`frame` from its magic, blocks after
/// `header_len`) for the bits a decoder ignores, which trailseal always writes as zero: the
/// padding after an FSE table description (Huffman weights, sequence codes) and the unused low
/// nibble of directly written Huffman weights. Some(offset in `frame`) of the first set one.
fn zstd_block_padding(frame: &[u8], header_len: usize) -> Option<usize> {
    let mut pos = header_len;
    loop {
        let h = frame.get(pos..pos + 3)?;
        let header = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        let last = header & 1 == 1;
        let kind = (header >> 1) & 3;
        let size = (header >> 3) as usize;
        pos += 3;
        match kind {
            0 => pos += size,
            1 => pos += 1,
            2 => {
                let block = frame.get(pos..pos + size)?;
                if let Some(at) = compressed_block_padding(block) {
                    return Some(pos + at);
                }
                pos += size;
            }
            _ => return None,
        }
        if last {
            return None;
        }
    }
}

fn compressed_block_padding(block: &[u8]) -> Option<usize> {
    let b0 = *block.first()?;
    let lit_type = b0 & 3;
    let size_format = (b0 >> 2) & 3;
    let lit_end = match lit_type {
        0 | 1 => {
            let (hlen, regenerated) = match size_format {
                0 | 2 => (1, usize::from(b0 >> 3)),
                1 => (2, usize::from(b0 >> 4) | usize::from(*block.get(1)?) << 4),
                _ => (
                    3,
                    usize::from(b0 >> 4)
                        | usize::from(*block.get(1)?) << 4
                        | usize::from(*block.get(2)?) << 12,
                ),
            };
            hlen + if lit_type == 0 { regenerated } else { 1 }
        }
        _ => {
            let hlen = match size_format {
                0 | 1 => 3,
                2 => 4,
                _ => 5,
            };
            let mut v = 0u64;
            for (i, b) in block.get(..hlen)?.iter().enumerate() {
                v |= u64::from(*b) << (8 * i);
            }
            let field = (hlen * 8 - 4) / 2;
            let compressed = ((v >> (4 + field)) & ((1 << field) - 1)) as usize;
            if lit_type == 2 {
                let tree = hlen;
                let th = usize::from(*block.get(tree)?);
                if th < 128 {
                    let desc = block.get(tree + 1..tree + 1 + th)?;
                    let bits = fse_description_bits(desc, 255)?;
                    if let Some(i) = padding_after(desc, bits) {
                        return Some(tree + 1 + i);
                    }
                } else {
                    let weights = th - 127;
                    let last = tree + weights.div_ceil(2);
                    if weights % 2 == 1 && block.get(last)? & 0x0f != 0 {
                        return Some(last);
                    }
                }
            }
            hlen + compressed
        }
    };
    // sequences section
    let mut pos = lit_end;
    let n0 = *block.get(pos)?;
    if n0 == 0 {
        return None;
    }
    pos += match n0 {
        0..=127 => 1,
        128..=254 => 2,
        255 => 3,
    };
    let modes = *block.get(pos)?;
    pos += 1;
    for (shift, max_symbol) in [(6u8, 35u32), (4, 31), (2, 52)] {
        match (modes >> shift) & 3 {
            1 => pos += 1,
            2 => {
                let desc = block.get(pos..)?;
                let bits = fse_description_bits(desc, max_symbol)?;
                if let Some(i) = padding_after(desc, bits) {
                    return Some(pos + i);
                }
                pos += bits.div_ceil(8);
            }
            _ => {}
        }
    }
    None
}

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];

/// Inflate a raw deflate stream at the start of `data`: (content, bytes consumed).
fn inflate_raw(data: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut dec = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(64 << 20));
    loop {
        let consumed = usize::try_from(dec.total_in()).map_err(|e| e.to_string())?;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        let status = dec
            .decompress_vec(&data[consumed..], &mut out, flate2::FlushDecompress::None)
            .map_err(|e| format!("deflate data is corrupt ({e})"))?;
        let now = usize::try_from(dec.total_in()).map_err(|e| e.to_string())?;
        match status {
            flate2::Status::StreamEnd => return Ok((out, now)),
            _ if now == data.len() && out.len() < out.capacity() => {
                return Err("deflate data ends before its final block".into())
            }
            _ => {}
        }
    }
}

/// Decode one gzip member as trailseal writes it; any other encoding is an error.
pub fn strict_gzip(data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < GZIP_HEADER.len() || data[..GZIP_HEADER.len()] != GZIP_HEADER {
        return Err(
            "gzip header (bytes 0-9) is not 1f 8b 08 00 00 00 00 00 00 ff (no flags, MTIME 0, \
             XFL 0, OS 255)"
                .into(),
        );
    }
    let body = &data[GZIP_HEADER.len()..];
    let (content, used) = inflate_raw(body)?;
    let trailer = &body[used..];
    let end = GZIP_HEADER.len() + used;
    if trailer.len() != 8 {
        return Err(format!(
            "the gzip member's deflate data ends at byte offset {end}, followed by {} bytes \
             instead of exactly the 8-byte CRC-32 and size",
            trailer.len()
        ));
    }
    let mut crc = flate2::Crc::new();
    crc.update(&content);
    let stored_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let stored_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if stored_crc != crc.sum() {
        return Err(format!(
            "gzip CRC-32 at byte offset {end} does not match the content"
        ));
    }
    // ISIZE is the length modulo 2^32
    if u64::from(stored_len) != (content.len() as u64) & 0xffff_ffff {
        return Err(format!(
            "gzip size at byte offset {} does not match the content",
            end + 4
        ));
    }
    // Padding after the final block: the high bits of the last deflate byte that inflate did not
    // read. A bit there decodes the same whichever its value, so it must be zero.
    if used > 0 {
        let mut probe = body[..used].to_vec();
        for bit in (0..8).rev() {
            probe[used - 1] ^= 1 << bit;
            let same = matches!(inflate_raw(&probe), Ok((c, n)) if n == used && c == content);
            probe[used - 1] ^= 1 << bit;
            if !same {
                break;
            }
            if body[used - 1] & (1 << bit) != 0 {
                return Err(format!(
                    "padding bits after the final deflate block (byte offset {}) are not zero",
                    end - 1
                ));
            }
        }
    }
    Ok(content)
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
    report.problems = encoding_problems(data, compression);
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
