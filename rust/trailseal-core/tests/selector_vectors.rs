//! Golden selector vectors shared with pytest: tests/vectors/selectors.json at the repository root.
//!
//! Each case is either `{"name", "doc", "selectors", "event", "matches"}`: the selectors (the
//! object `Selectors::from_json` takes) are valid and decide the event (a full event after
//! defaults) as `matches` says; or `{"name", "doc", "selectors", "error_contains"}`: CloudTrail
//! refuses the selectors and the message contains that text. `doc` is the CloudTrail
//! documentation behaviour the case encodes.
use std::path::PathBuf;

use serde_json::Value;
use trailseal_core::select::{EventRecord, Selectors};

#[test]
fn selector_vectors() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/selectors.json");
    let text = std::fs::read_to_string(&path).expect("tests/vectors/selectors.json exists");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("selectors.json is a JSON array");
    let matching = cases.iter().filter(|c| c.get("matches").is_some()).count();
    assert!(matching >= 40, "only {matching} matching cases");
    assert!(
        cases.len() - matching >= 10,
        "only {} error cases",
        cases.len() - matching
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        assert!(case["doc"].is_string(), "{name}: no doc");
        let selectors = serde_json::to_string(&case["selectors"]).expect("selectors serialize");
        let parsed = Selectors::from_json(&selectors);
        match (case.get("matches"), case.get("error_contains")) {
            (Some(expected), None) => {
                let expected = expected.as_bool().expect("matches is a bool");
                let sel = match parsed {
                    Ok(s) => s,
                    Err(e) => {
                        failures.push(format!("{name}: refused: {e}"));
                        continue;
                    }
                };
                let event = serde_json::to_vec(&case["event"]).expect("event serializes");
                let record = EventRecord::from_canonical(&event).expect("event reads");
                let got = record.with_fields(|f| sel.matches(f));
                if got != expected {
                    failures.push(format!("{name}: matches {got}, expected {expected}"));
                }
            }
            (None, Some(want)) => {
                let want = want.as_str().expect("error_contains is a string");
                match parsed {
                    Ok(_) => failures.push(format!("{name}: accepted, expected an error")),
                    Err(e) if !e.to_string().contains(want) => {
                        failures.push(format!("{name}: error {e:?} lacks {want:?}"))
                    }
                    Err(_) => {}
                }
            }
            _ => panic!("{name}: needs exactly one of matches / error_contains"),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
