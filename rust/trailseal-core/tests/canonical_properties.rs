//! Randomized properties of `canonicalize` over seeded random JSON values, each written out in a
//! random member order, with random whitespace and random (needless) escapes:
//! - the result equals an independent reference serialization (members sorted with
//!   `str::encode_utf16`, strings escaped by a straightforward char-by-char encoder);
//! - it does not depend on member order, whitespace or escaping in the input;
//! - canonicalizing the result again changes nothing.
use trailseal_core::canonical::canonicalize;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone)]
enum V {
    Null,
    Bool(bool),
    /// An integer within ±2^53: its canonical form is its decimal digits.
    Int(i64),
    Str(String),
    Arr(Vec<V>),
    Obj(Vec<(String, V)>),
}

const CHARS: [char; 16] = [
    'a',
    'Z',
    '0',
    ' ',
    '"',
    '\\',
    '/',
    '\n',
    '\u{1}',
    '\u{7f}',
    'é',
    '\u{2028}',
    '\u{e000}',
    '\u{fb33}',
    '\u{1f600}',
    '\u{10ffff}',
];

fn string(rng: &mut Rng) -> String {
    let len = rng.below(6);
    (0..len)
        .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
        .collect()
}

fn value(rng: &mut Rng, depth: u32) -> V {
    let pick = if depth >= 4 {
        rng.below(4)
    } else {
        rng.below(6)
    };
    match pick {
        0 => V::Null,
        1 => V::Bool(rng.below(2) == 1),
        2 => {
            let max = 1i64 << 53;
            let v = match rng.below(3) {
                0 => rng.below(10) as i64,
                1 => (rng.next() % (2 * max as u64 + 1)) as i64 - max,
                _ => -(rng.below(1000) as i64),
            };
            V::Int(v)
        }
        3 => V::Str(string(rng)),
        4 => V::Arr((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => {
            let mut members: Vec<(String, V)> = Vec::new();
            for _ in 0..rng.below(6) {
                let k = string(rng);
                if !members.iter().any(|(m, _)| *m == k) {
                    members.push((k, value(rng, depth + 1)));
                }
            }
            V::Obj(members)
        }
    }
}

/// Reference RFC 8785 serialization.
fn reference(v: &V, out: &mut String) {
    match v {
        V::Null => out.push_str("null"),
        V::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        V::Int(i) => out.push_str(&i.to_string()),
        V::Str(s) => reference_string(s, out),
        V::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                reference(item, out);
            }
            out.push(']');
        }
        V::Obj(members) => {
            let mut sorted: Vec<&(String, V)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                reference_string(k, out);
                out.push(':');
                reference(v, out);
            }
            out.push('}');
        }
    }
}

fn reference_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Any valid JSON text of `v`: shuffled members, random whitespace, random escapes.
fn scramble(v: &V, rng: &mut Rng, out: &mut String) {
    let ws = |rng: &mut Rng, out: &mut String| {
        for _ in 0..rng.below(3) {
            out.push([' ', '\t', '\n', '\r'][rng.below(4) as usize]);
        }
    };
    ws(rng, out);
    match v {
        V::Null | V::Bool(_) => reference(v, out),
        V::Int(i) => match rng.below(4) {
            0 => out.push_str(&format!("{i}.0")),
            1 if *i != 0 => out.push_str(&format!("{i}e0")),
            2 if *i == 0 => out.push_str("-0"),
            _ => out.push_str(&i.to_string()),
        },
        V::Str(s) => scramble_string(s, rng, out),
        V::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                scramble(item, rng, out);
            }
            ws(rng, out);
            out.push(']');
        }
        V::Obj(members) => {
            let mut order: Vec<usize> = (0..members.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            out.push('{');
            for (n, &i) in order.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                ws(rng, out);
                scramble_string(&members[i].0, rng, out);
                ws(rng, out);
                out.push(':');
                scramble(&members[i].1, rng, out);
            }
            ws(rng, out);
            out.push('}');
        }
    }
    ws(rng, out);
}

fn scramble_string(s: &str, rng: &mut Rng, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let must = c == '"' || c == '\\' || (c as u32) < 0x20;
        if must || rng.below(3) == 0 {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04X}", u));
            }
        } else if c == '/' && rng.below(2) == 0 {
            out.push_str("\\/");
        } else {
            out.push(c);
        }
    }
    out.push('"');
}

#[test]
fn matches_reference_and_ignores_input_form() {
    let mut rng = Rng(42);
    for case in 0..5000 {
        let v = value(&mut rng, 0);
        let mut want = String::new();
        reference(&v, &mut want);
        let mut a = String::new();
        scramble(&v, &mut rng, &mut a);
        let mut b = String::new();
        scramble(&v, &mut rng, &mut b);
        let ca = canonicalize(a.as_bytes()).unwrap_or_else(|e| panic!("case {case}: {a:?}: {e}"));
        let cb = canonicalize(b.as_bytes()).unwrap_or_else(|e| panic!("case {case}: {b:?}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&ca),
            want,
            "case {case}: input {a:?}"
        );
        assert_eq!(ca, cb, "case {case}: {a:?} vs {b:?}");
        assert_eq!(
            canonicalize(&ca).expect("canonical re-parses"),
            ca,
            "case {case}: idempotence"
        );
    }
}
