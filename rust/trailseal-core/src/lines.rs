//! NDJSON line splitting shared by the spool and the ingest framer (FORMATS.md §2).
//!
//! Rules: lines end with `\n` (a `\r` before it is part of the ending, `\r\n`); a final piece
//! after the last `\n` is a line too when it is not blank. A line is *blank* when it is empty or
//! holds only spaces, tabs and `\r`; blank lines are skipped and not counted, so the framer's
//! line numbers (and acks) and the spool's agree. Newlines are found with `memchr`; only lines
//! starting with a space, tab or `\r` are scanned further.

/// Whether a line (without its `\n`) is blank: only spaces, tabs and `\r`, or empty.
#[inline]
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|&b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// Every line of `data`, blank ones included, as (content without `\n` and a trailing `\r`,
/// blank?). A final piece after the last `\n` is yielded only when it is not empty.
pub fn lines(data: &[u8]) -> impl Iterator<Item = (&[u8], bool)> + '_ {
    let mut start = 0usize;
    let mut ends = memchr::memchr_iter(b'\n', data);
    std::iter::from_fn(move || {
        let end = match ends.next() {
            Some(end) => end,
            None if start < data.len() => data.len(),
            None => return None,
        };
        let raw = &data[start..end];
        start = end + 1;
        let blank = match raw.first() {
            None => true,
            Some(b' ' | b'\t' | b'\r') => is_blank(raw),
            Some(_) => false,
        };
        Some((raw.strip_suffix(b"\r").unwrap_or(raw), blank))
    })
}

/// The non-blank lines of `data` (each without its `\n` and a trailing `\r`), in order.
pub fn non_blank(data: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    lines(data).filter_map(|(line, blank)| (!blank).then_some(line))
}

/// How many non-blank lines `data` holds.
pub fn count_non_blank(data: &[u8]) -> usize {
    let mut count = 0usize;
    let mut start = 0usize;
    for end in memchr::memchr_iter(b'\n', data) {
        let first = data.get(start).copied().unwrap_or(b'\n');
        if !matches!(first, b'\n' | b' ' | b'\t' | b'\r') || !is_blank(&data[start..end]) {
            count += 1;
        }
        start = end + 1;
    }
    if start < data.len() && !is_blank(&data[start..]) {
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious definition, to compare with.
    fn reference(data: &[u8]) -> Vec<&[u8]> {
        let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        if data.ends_with(b"\n") || data.is_empty() {
            pieces.pop();
        }
        pieces
            .into_iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')))
            .collect()
    }

    #[test]
    fn blank_rules() {
        assert!(is_blank(b""));
        assert!(is_blank(b" \t\r"));
        assert!(!is_blank(b" x"));
        // form feed and vertical tab are not blank: such a line is a (rejected) event
        assert!(!is_blank(b"\x0c"));
        assert!(!is_blank(b"\x0b"));
    }

    #[test]
    fn splits_and_counts() {
        let cases: [&[u8]; 12] = [
            b"",
            b"\n",
            b"a\n",
            b"a",
            b"a\r\nb\n",
            b"\r\n\n \n\t\n",
            b"a\n\nb\n \r\nc",
            b"  x\n\r\r\n\x0c\n",
            b"\n\n\n{}",
            b"{}\r",
            b"a\n \t ",
            b"\r",
        ];
        for data in cases {
            let expected = reference(data);
            let got: Vec<&[u8]> = non_blank(data).collect();
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(data));
            assert_eq!(count_non_blank(data), expected.len(), "{data:?}");
        }
        let all: Vec<(&[u8], bool)> = lines(b"a\r\n\r\n b\nc").collect();
        assert_eq!(
            all,
            vec![
                (&b"a"[..], false),
                (&b""[..], true),
                (&b" b"[..], false),
                (&b"c"[..], false)
            ]
        );
    }

    #[test]
    fn long_inputs_match_reference() {
        // every combination of a few line shapes, long enough for memchr's vector paths
        let shapes: [&[u8]; 6] = [b"{\"a\":1}", b"", b" ", b"\t\r", b" {}", b"x\r"];
        let mut data = Vec::new();
        for i in 0..500usize {
            data.extend_from_slice(shapes[i % shapes.len()]);
            data.extend_from_slice(shapes[(i / 6) % shapes.len()]);
            data.push(b'\n');
        }
        assert_eq!(count_non_blank(&data), reference(&data).len());
        assert_eq!(non_blank(&data).collect::<Vec<_>>(), reference(&data));
    }
}
