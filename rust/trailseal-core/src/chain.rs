//! The per-stream SHA-256 chain (FORMATS.md §3).
//!
//! Invariants: a stream (trail × recipientAccountId × awsRegion) starts at [`ZERO`];
//! `c_i = SHA-256(c_{i-1} ‖ SHA-256(canonical_i))`. A log file records the value before its first
//! event (chain start) and after its last (chain end); the next file of the stream starts there.
use sha2::{Digest, Sha256};

/// A chain value.
pub type ChainValue = [u8; 32];

/// `c_0`: 32 zero bytes.
pub const ZERO: ChainValue = [0u8; 32];

/// SHA-256 of one canonical event.
pub fn event_hash(canonical: &[u8]) -> [u8; 32] {
    Sha256::digest(canonical).into()
}

/// The next chain value from the previous one and an event's hash ([`event_hash`]).
pub fn step_hashed(previous: &ChainValue, event_hash: &[u8; 32]) -> ChainValue {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(event_hash);
    h.finalize().into()
}

/// `SHA-256(previous ‖ SHA-256(canonical))`.
pub fn step(previous: &ChainValue, canonical: &[u8]) -> ChainValue {
    step_hashed(previous, &event_hash(canonical))
}

/// Lower-case hex of a chain value.
pub fn to_hex(value: &ChainValue) -> String {
    hex::encode(value)
}

/// Parse 64 hex digits (either case) into a chain value.
pub fn from_hex(text: &str) -> Option<ChainValue> {
    let mut out = ZERO;
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_vectors() {
        // Computed independently with Python's hashlib:
        //   h = sha256(b'{}'); c1 = sha256(bytes(32) + h); c2 = sha256(c1 + sha256(b'{"a":1}'))
        assert_eq!(
            hex::encode(event_hash(b"{}")),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let c1 = step(&ZERO, b"{}");
        assert_eq!(
            to_hex(&c1),
            "961af672d320bfb80e482edf9e092930b12b6f10f28ac4913d1d64c49219da68"
        );
        let c2 = step(&c1, br#"{"a":1}"#);
        assert_eq!(
            to_hex(&c2),
            "aba4cff544a75e8148107d01313aa4287d9b73f623095eb3e42c2118cda5e9a4"
        );
    }

    #[test]
    fn hex_round_trip() {
        let v = step(&ZERO, b"[1]");
        assert_eq!(from_hex(&to_hex(&v)), Some(v));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"0".repeat(63)), None);
    }
}
