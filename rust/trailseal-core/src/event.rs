//! One NDJSON line → a validated, defaulted, canonical event (FORMATS.md §1).
//!
//! CONTRACT (used by `spool`): `process_event` appends the RFC 8785 canonical bytes of the event
//! (after defaults and `receipt` are filled in) to `out` and returns its metadata, or returns a
//! `Reject` and leaves `out` as it was.

/// Rejection codes of FORMATS.md §1, spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    InvalidJson,
    NotAnObject,
    EventTooLarge,
    MissingField,
    InvalidField,
    Unauthorized,
    Overloaded,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidJson => "InvalidJson",
            RejectCode::NotAnObject => "NotAnObject",
            RejectCode::EventTooLarge => "EventTooLarge",
            RejectCode::MissingField => "MissingField",
            RejectCode::InvalidField => "InvalidField",
            RejectCode::Unauthorized => "Unauthorized",
            RejectCode::Overloaded => "Overloaded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: RejectCode,
    pub message: String,
}

/// What the daemon adds as `receipt` (FORMATS.md §1).
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    /// RFC 3339 with milliseconds, e.g. `2026-11-26T17:00:00.123Z`.
    pub received_at: &'a str,
    /// `unix:uid=N,pid=N` or `tcp:IP:PORT`.
    pub peer: &'a str,
    /// Token name, or None (written as JSON null).
    pub agent: Option<&'a str>,
}

/// Per-line context: defaults and limits.
#[derive(Debug, Clone, Copy)]
pub struct EventContext<'a> {
    pub account_id: &'a str,
    pub region: &'a str,
    pub max_event_bytes: usize,
    /// None: no receipt is added.
    pub receipt: Option<Receipt<'a>>,
    /// Receive time in seconds since the epoch: the default eventTime.
    pub received_at_secs: i64,
}

/// What the pipeline needs to know about an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub event_id: String,
    /// eventTime as stored, seconds since the epoch (its string form is `YYYY-MM-DDTHH:MM:SSZ`).
    pub event_time: i64,
    pub account: String,
    pub region: String,
}

/// Validate, default and canonicalize one line (without its line ending).
pub fn process_event(
    line: &[u8],
    ctx: &EventContext<'_>,
    out: &mut Vec<u8>,
) -> Result<EventMeta, Reject> {
    let _ = (line, ctx, out);
    Err(Reject { code: RejectCode::InvalidJson, message: "not implemented yet".into() })
}
