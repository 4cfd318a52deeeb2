//! RFC 8785 test vectors (tests/vectors/jcs at the repository root): every input/*.json must
//! canonicalize to output/*.json byte for byte, and every line of numbers.txt (`HEX,EXPECTED`,
//! HEX the IEEE-754 bits) must serialize to EXPECTED and parse back to the same bits.
use std::fs;
use std::path::PathBuf;

use trailseal_core::canonical::{canonicalize, write_number, CanonError, MAX_SAFE_INTEGER};

fn jcs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/jcs")
}

#[test]
fn input_output_pairs() {
    let dir = jcs_dir();
    let mut names: Vec<_> = fs::read_dir(dir.join("input"))
        .expect("tests/vectors/jcs/input exists")
        .map(|e| e.expect("readable dir entry").file_name())
        .collect();
    names.sort();
    assert!(
        names.len() >= 6,
        "expected the RFC 8785 vectors, found {names:?}"
    );
    for name in names {
        let input = fs::read(dir.join("input").join(&name)).expect("readable input");
        let expected = fs::read(dir.join("output").join(&name)).expect("matching output file");
        let got = canonicalize(&input).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "{name:?}"
        );
        // idempotence on real-world shapes
        assert_eq!(
            canonicalize(&got).expect("canonical output re-parses"),
            got,
            "{name:?}"
        );
    }
}

#[test]
fn es6_numbers() {
    let text = fs::read_to_string(jcs_dir().join("numbers.txt")).expect("numbers.txt exists");
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let (hex, expected) = line
            .split_once(',')
            .unwrap_or_else(|| panic!("line {}", i + 1));
        let bits = u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("line {}", i + 1));
        let value = f64::from_bits(bits);
        let mut out = Vec::new();
        write_number(&mut out, value);
        assert_eq!(
            std::str::from_utf8(&out).expect("ASCII"),
            expected,
            "line {}: {hex}",
            i + 1
        );

        let parsed: f64 = expected.parse().expect("expected text is a number");
        if value == 0.0 {
            assert_eq!(parsed, 0.0, "line {}", i + 1); // -0 serializes as "0"
        } else {
            assert_eq!(parsed.to_bits(), bits, "line {}: {expected}", i + 1);
        }

        // Through the full canonicalizer: the ES6 form is already canonical, except integer
        // literals beyond 2^53, which I-JSON refuses.
        let is_integer = !expected.contains(['.', 'e']);
        let beyond = is_integer
            && expected
                .trim_start_matches('-')
                .parse::<u128>()
                .expect("digits")
                > u128::from(MAX_SAFE_INTEGER);
        match canonicalize(expected.as_bytes()) {
            Ok(c) => {
                assert!(!beyond, "line {}: {expected} accepted", i + 1);
                assert_eq!(c, expected.as_bytes(), "line {}", i + 1);
            }
            Err(CanonError::InvalidNumber { .. }) if beyond => {}
            Err(e) => panic!("line {}: {expected}: {e}", i + 1),
        }
        count += 1;
    }
    assert_eq!(count, 20_000);
}
