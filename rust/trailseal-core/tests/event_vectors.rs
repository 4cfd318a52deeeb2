//! Golden event vectors shared with pytest: tests/vectors/events.json at the repository root.
//!
//! Each case is `{"name", "line" | "line_hex", "expect"}`, evaluated with account_id
//! "111122223333", region "us-east-1", max_event_bytes 262144, no receipt and received_at_secs
//! 1767225600 (2026-01-01T00:00:00Z).
//! - `line` is the exact line text (without a line ending); `line_hex` is used instead when the
//!   line is not valid UTF-8 (lower-case hex of its bytes).
//! - `expect.canonical`: the exact canonical bytes written. When `expect.generated_event_id` is
//!   true, the event had no eventID: the runner checks that the output's first `"eventID":"…"`
//!   holds a lower-case hyphenated UUID v4, and replaces it with
//!   `00000000-0000-4000-8000-000000000000` before comparing.
//! - `expect.code` + `expect.message_contains`: the reject code and a substring of its message.
use std::path::PathBuf;

use serde_json::Value;
use trailseal_core::event::{process_event, EventContext};

const PLACEHOLDER_ID: &str = "00000000-0000-4000-8000-000000000000";

fn ctx() -> EventContext<'static> {
    EventContext {
        account_id: "111122223333",
        region: "us-east-1",
        max_event_bytes: 262_144,
        receipt: None,
        received_at_secs: 1_767_225_600,
        index: false,
    }
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            14 => c == b'4',
            19 => matches!(c, b'8' | b'9' | b'a' | b'b'),
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("line_hex is hex"))
        .collect()
}

#[test]
fn event_vectors() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/events.json");
    let text = std::fs::read_to_string(&path).expect("tests/vectors/events.json exists");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("events.json is a JSON array");
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let line = match (&case["line"], &case["line_hex"]) {
            (Value::String(s), _) => s.as_bytes().to_vec(),
            (_, Value::String(h)) => decode_hex(h),
            _ => panic!("{name}: no line"),
        };
        let expect = &case["expect"];
        let mut out = b"kept".to_vec();
        let result = process_event(&line, &ctx(), &mut out);
        if let Some(want) = expect["canonical"].as_str() {
            let meta = match result {
                Ok(meta) => meta,
                Err(rej) => {
                    failures.push(format!("{name}: rejected {:?}: {}", rej.code, rej.message));
                    continue;
                }
            };
            let mut got = String::from_utf8(out[4..].to_vec()).expect("canonical output is UTF-8");
            if expect["generated_event_id"].as_bool() == Some(true) {
                let key = "\"eventID\":\"";
                let at = got.find(key).expect("output has an eventID") + key.len();
                let id = got[at..at + 36].to_string();
                assert!(
                    is_uuid_v4(&id),
                    "{name}: generated eventID {id:?} is not a UUID v4"
                );
                assert_eq!(meta.event_id, id, "{name}: EventMeta.event_id");
                got.replace_range(at..at + 36, PLACEHOLDER_ID);
            } else {
                let id = serde_json::from_str::<Value>(want).expect("canonical is JSON")["eventID"]
                    .as_str()
                    .map(str::to_owned);
                assert_eq!(
                    Some(meta.event_id.clone()),
                    id,
                    "{name}: EventMeta.event_id"
                );
            }
            if got != want {
                failures.push(format!("{name}:\n   got {got}\n  want {want}"));
            }
            let parsed: Value = serde_json::from_str(want).expect("canonical is JSON");
            assert_eq!(
                parsed["recipientAccountId"].as_str(),
                Some(meta.account.as_str()),
                "{name}"
            );
            assert_eq!(
                parsed["awsRegion"].as_str(),
                Some(meta.region.as_str()),
                "{name}"
            );
        } else {
            let code = expect["code"].as_str().expect("expect.code");
            let contains = expect["message_contains"]
                .as_str()
                .expect("expect.message_contains");
            match result {
                Ok(_) => failures.push(format!("{name}: accepted, expected {code}")),
                Err(rej) => {
                    if rej.code.as_str() != code || !rej.message.contains(contains) {
                        failures.push(format!(
                            "{name}: got {} {:?}, expected {code} containing {contains:?}",
                            rej.code.as_str(),
                            rej.message
                        ));
                    }
                    if rej.message.contains('\n') || rej.message.len() > 300 {
                        failures.push(format!("{name}: message not one short line"));
                    }
                }
            }
            assert_eq!(out, b"kept", "{name}: a rejected event changed `out`");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
