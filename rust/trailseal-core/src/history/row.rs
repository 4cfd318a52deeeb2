//! The bytes of one postings row (`posts.data`): the postings of one key and bucket of a block,
//! sorted by hash ascending, then event_time descending.
//!
//! ```text
//! row     := unit:u8 varint(n) zigzag(base_time) zigzag(base_rid)
//!            hash:u64le × n            (distinct, ascending: binary search)
//!            end:u32le × n             (each hash's run ends here, from the start of the runs)
//!            run × n
//! run     := entry+                    (the hash's postings, newest first)
//! entry   := varint(time delta) zigzag(rid delta)
//! ```
//! Times are in `unit`s (1: milliseconds; 1000: every time of the row is whole seconds, as
//! eventTime always is). A run's first entry is relative to `base_time` (the row's newest time,
//! so the delta is never negative) and `base_rid`; each later entry to the one before it. A
//! value shared by many events costs ~2-4 bytes per event, a distinct one (an eventID) ~18,
//! where fixed 24-byte entries cost 24 for every posting.
use super::postings::Post;

/// The row's bytes cannot be read.
#[derive(Debug)]
pub struct Damaged;

type Decoded<T> = std::result::Result<T, Damaged>;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn varint(data: &[u8], at: &mut usize) -> Decoded<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or(Damaged)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Damaged)
}

fn zigzag(data: &[u8], at: &mut usize) -> Decoded<i64> {
    let v = varint(data, at)?;
    Ok((v >> 1) as i64 ^ -((v & 1) as i64))
}

fn fixed<const N: usize>(data: &[u8], at: usize) -> Decoded<[u8; N]> {
    data.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or(Damaged)
}

/// Encode `posts` (one key and bucket, sorted by hash ascending, then time descending).
pub fn encode(posts: &[Post], out: &mut Vec<u8>) {
    out.clear();
    let unit: i64 = if posts.iter().all(|p| p.time % 1000 == 0) {
        1000
    } else {
        1
    };
    let base_time = posts.iter().map(|p| p.time).max().unwrap_or(0) / unit;
    let base_rid = posts.first().map_or(0, |p| p.rid);
    let mut hashes: Vec<u64> = Vec::with_capacity(posts.len());
    let mut ends: Vec<u32> = Vec::with_capacity(posts.len());
    let mut runs: Vec<u8> = Vec::with_capacity(posts.len() * 4);
    let mut prev = (0i64, 0i64);
    for (i, p) in posts.iter().enumerate() {
        let t = p.time / unit;
        if i == 0 || posts[i - 1].hash != p.hash {
            if i > 0 {
                ends.push(runs.len() as u32);
            }
            hashes.push(p.hash);
            prev = (base_time, base_rid);
        }
        put_varint(&mut runs, prev.0.wrapping_sub(t) as u64);
        put_zigzag(&mut runs, p.rid.wrapping_sub(prev.1));
        prev = (t, p.rid);
    }
    if !posts.is_empty() {
        ends.push(runs.len() as u32);
    }
    out.reserve(16 + hashes.len() * 12 + runs.len());
    out.push(u8::from(unit == 1000));
    put_varint(out, hashes.len() as u64);
    put_zigzag(out, base_time);
    put_zigzag(out, base_rid);
    for h in &hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
    for e in &ends {
        out.extend_from_slice(&e.to_le_bytes());
    }
    out.extend_from_slice(&runs);
}

/// Call `f(hash, time, rid)` for the postings of the row with `hash` (all of them, hash by
/// hash, when None), newest first per hash, until `f` returns false. Returns whether `f` went
/// on to the end.
pub fn decode(
    data: &[u8],
    hash: Option<u64>,
    f: &mut dyn FnMut(u64, i64, i64) -> bool,
) -> Decoded<bool> {
    let mut at = 0usize;
    let unit: i64 = match data.first() {
        Some(0) => 1,
        Some(1) => 1000,
        _ => return Err(Damaged),
    };
    at += 1;
    let n = usize::try_from(varint(data, &mut at)?).map_err(|_| Damaged)?;
    let base_time = zigzag(data, &mut at)?;
    let base_rid = zigzag(data, &mut at)?;
    let hashes_at = at;
    let ends_at = hashes_at
        .checked_add(n.checked_mul(8).ok_or(Damaged)?)
        .ok_or(Damaged)?;
    let runs_at = ends_at.checked_add(n * 4).ok_or(Damaged)?;
    if runs_at > data.len() {
        return Err(Damaged);
    }
    let hash_at = |i: usize| fixed::<8>(data, hashes_at + i * 8).map(u64::from_le_bytes);
    let end_at =
        |i: usize| fixed::<4>(data, ends_at + i * 4).map(|b| u32::from_le_bytes(b) as usize);
    let range = match hash {
        Some(h) => {
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if hash_at(mid)? < h {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if lo == n || hash_at(lo)? != h {
                return Ok(true);
            }
            lo..lo + 1
        }
        None => 0..n,
    };
    for i in range {
        let h = hash_at(i)?;
        let start = if i == 0 { 0 } else { end_at(i - 1)? };
        let end = end_at(i)?;
        let run = data
            .get(runs_at + start..runs_at + end)
            .filter(|r| !r.is_empty())
            .ok_or(Damaged)?;
        let (mut t, mut rid) = (base_time, base_rid);
        let mut pos = 0usize;
        while pos < run.len() {
            t = t.wrapping_sub(varint(run, &mut pos)? as i64);
            rid = rid.wrapping_add(zigzag(run, &mut pos)?);
            if !f(h, t.wrapping_mul(unit), rid) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(hash: u64, time: i64, rid: i64) -> Post {
        Post {
            key: 0,
            hash,
            time,
            rid,
        }
    }

    fn all(data: &[u8], hash: Option<u64>) -> Vec<(u64, i64, i64)> {
        let mut out = Vec::new();
        decode(data, hash, &mut |h, t, r| {
            out.push((h, t, r));
            true
        })
        .expect("decode");
        out
    }

    #[test]
    fn rows_round_trip_and_stay_small() {
        let mut posts = vec![
            post(1, 1_767_225_605_000, 5 << 20 | 3),
            post(1, 1_767_225_600_000, 4 << 20 | 900),
            post(1, 1_767_225_600_000, 4 << 20 | 17),
            post(7, 1_767_225_700_000, 9 << 20),
            post(u64::MAX, -5_000, 1),
        ];
        let mut data = Vec::new();
        encode(&posts, &mut data);
        let want: Vec<_> = posts.iter().map(|p| (p.hash, p.time, p.rid)).collect();
        assert_eq!(all(&data, None), want);
        assert_eq!(all(&data, Some(1)), want[..3]);
        assert_eq!(all(&data, Some(u64::MAX)), want[4..]);
        assert_eq!(all(&data, Some(3)), []);
        // milliseconds are kept when a time is not whole seconds
        posts[0].time += 1;
        encode(&posts, &mut data);
        assert_eq!(all(&data, Some(1))[0].1, 1_767_225_605_001);
        // stopping early
        let mut seen = 0;
        assert!(!decode(&data, None, &mut |_, _, _| {
            seen += 1;
            seen < 2
        })
        .expect("decode"));
        assert_eq!(seen, 2);
        // 1,000 events sharing a value, a second apart, in 3 chunks: ~3 bytes each
        let many: Vec<Post> = (0..1000)
            .map(|i| {
                post(
                    42,
                    1_767_225_600_000 - i * 1000,
                    (5 - i / 400) << 20 | (999 - i),
                )
            })
            .collect();
        encode(&many, &mut data);
        assert!(data.len() < 3_100, "{} bytes", data.len());
        assert_eq!(all(&data, Some(42)).len(), 1000);
        encode(&[], &mut data);
        assert_eq!(all(&data, None), []);
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let mut data = Vec::new();
        encode(&[post(1, 1000, 1), post(2, 2000, 2)], &mut data);
        for cut in 0..data.len() {
            let _ = decode(&data[..cut], None, &mut |_, _, _| true);
        }
        assert!(decode(&[], None, &mut |_, _, _| true).is_err());
        assert!(decode(&[9], None, &mut |_, _, _| true).is_err());
        let mut bad = data.clone();
        let last = bad.len() - 1;
        bad[last] = 0xff; // a varint that does not end
        assert!(decode(&bad, None, &mut |_, _, _| true).is_err());
    }
}
