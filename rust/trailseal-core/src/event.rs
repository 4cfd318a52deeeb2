//! One NDJSON line → a validated, defaulted, canonical event (FORMATS.md §1).
//!
//! CONTRACT (used by `spool`): `process_event` appends the RFC 8785 canonical bytes of the event
//! (after defaults and `receipt` are filled in) to `out` and returns its metadata, or returns a
//! `Reject` and leaves `out` as it was.
//!
//! Order of checks: size (`EventTooLarge`), then JSON and I-JSON (`InvalidJson`; a number a double
//! cannot hold is `InvalidField` naming its path), then `NotAnObject`, then the fields of the
//! FORMATS.md §1 table in table order (`MissingField` / `InvalidField`, naming the field). Unknown
//! fields are kept as they are. `eventTime` is always rewritten as `YYYY-MM-DDTHH:MM:SSZ`.
//! `receipt` is written only by the daemon: a sender's `receipt` is always dropped, and replaced
//! by the daemon's when `EventContext::receipt` is set.
//!
//! `awsRegion` must also match `^[a-z0-9][a-z0-9-]{0,31}$` and `recipientAccountId` be 12 ASCII
//! digits, because both become parts of file names and S3 object keys. The other fields event
//! selectors read (`userIdentity.arn`, `sessionCredentialFromConsole`, `vpcEndpointId`) must be
//! strings when present.
//!
//! Selection: [`process_event_selecting`] also hands the event's selector fields
//! ([`select::EventFields`], borrowed from the parsed document, after defaults) to a function
//! that returns the event's routing bits ([`EventMeta::routes`]), so that selectors are evaluated
//! in the parallel per-event stage without a second parse.

use crate::canonical::{self, CanonError, Document, Extra, Kind, NodeId};
use crate::history::{AttrKey, EventLookup, LookupHashes};
use crate::select::{self, EventFields};

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

impl Reject {
    fn new(code: RejectCode, message: String) -> Self {
        Reject { code, message }
    }

    fn field(message: String) -> Self {
        Reject {
            code: RejectCode::InvalidField,
            message,
        }
    }
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

impl Receipt<'_> {
    /// The canonical JSON of the `receipt` object, as [`EventContext::receipt`] takes it
    /// (rendered once for all the events received together, not once per event).
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.peer.len());
        // members in canonical order: agent, peer, receivedAt
        out.extend_from_slice(b"{\"agent\":");
        match self.agent {
            Some(agent) => canonical::write_string(&mut out, agent.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"peer\":");
        canonical::write_string(&mut out, self.peer.as_bytes());
        out.extend_from_slice(b",\"receivedAt\":");
        canonical::write_string(&mut out, self.received_at.as_bytes());
        out.push(b'}');
        out
    }
}

/// Per-line context: defaults and limits.
#[derive(Debug, Clone, Copy)]
pub struct EventContext<'a> {
    pub account_id: &'a str,
    pub region: &'a str,
    pub max_event_bytes: usize,
    /// The `receipt` member's value, canonical JSON ([`Receipt::canonical`]); None: no receipt
    /// is added.
    pub receipt: Option<&'a [u8]>,
    /// Receive time in seconds since the epoch: the default eventTime.
    pub received_at_secs: i64,
    /// Hash the event's lookup values for the event history ([`EventMeta::lookup`]).
    pub index: bool,
}

/// An account ID or a region of an [`EventMeta`]: `compact_str` holds up to 24 bytes inline
/// (every account ID and region name), so there is no allocation per event for them.
pub type ShortName = compact_str::CompactString;

/// What the pipeline needs to know about an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub event_id: String,
    /// eventTime as stored, seconds since the epoch (its string form is `YYYY-MM-DDTHH:MM:SSZ`).
    pub event_time: i64,
    pub account: ShortName,
    pub region: ShortName,
    /// What the selecting function of [`process_event_selecting`] returned for the event (bit `i`
    /// set: trail `i` selects it); all bits set by [`process_event`].
    pub routes: u64,
    /// `eventCategory` is "Insight": the event goes to its stream's Insight log files.
    pub insight: bool,
    /// Its lookup values for the event history, hashed (when [`EventContext::index`]).
    pub lookup: Option<EventLookup>,
}

/// Default `eventVersion`.
pub const DEFAULT_EVENT_VERSION: &str = "1.11";
/// Longest accepted `eventID`, in characters.
pub const MAX_EVENT_ID_CHARS: usize = 128;

const EVENT_TYPES: [&str; 5] = [
    "AwsApiCall",
    "AwsServiceEvent",
    "AwsConsoleAction",
    "AwsConsoleSignIn",
    "AwsCloudTrailInsight",
];
const EVENT_CATEGORIES: [&str; 4] = ["Management", "Data", "Insight", "NetworkActivity"];
const READ_ONLY_PREFIXES: [&str; 9] = [
    "Get", "List", "Describe", "Head", "Lookup", "Search", "Scan", "Query", "BatchGet",
];
const OPTIONAL_STRINGS: [&str; 7] = [
    "errorCode",
    "errorMessage",
    "sourceIPAddress",
    "userAgent",
    "requestID",
    "sessionCredentialFromConsole",
    "vpcEndpointId",
];
/// Indices into [`OPTIONAL_STRINGS`] of the fields event selectors read.
const ERROR_CODE: usize = 0;
const SESSION_CREDENTIAL_FROM_CONSOLE: usize = 5;
const VPC_ENDPOINT_ID: usize = 6;

/// Where the known top-level fields are in the document.
#[derive(Default)]
struct Fields {
    event_name: Option<NodeId>,
    event_source: Option<NodeId>,
    event_time: Option<NodeId>,
    event_id: Option<NodeId>,
    event_version: Option<NodeId>,
    aws_region: Option<NodeId>,
    recipient_account_id: Option<NodeId>,
    event_type: Option<NodeId>,
    event_category: Option<NodeId>,
    management_event: Option<NodeId>,
    read_only: Option<NodeId>,
    user_identity: Option<NodeId>,
    request_parameters: Option<NodeId>,
    response_elements: Option<NodeId>,
    resources: Option<NodeId>,
    optional_strings: [Option<NodeId>; OPTIONAL_STRINGS.len()],
}

/// Validate, default and canonicalize one line (without its line ending).
pub fn process_event(
    line: &[u8],
    ctx: &EventContext<'_>,
    out: &mut Vec<u8>,
) -> Result<EventMeta, Reject> {
    process_event_selecting(line, ctx, out, &|_| u64::MAX)
}

/// [`process_event`], and `select` run on the accepted event's selector fields (after defaults);
/// its result is the event's [`EventMeta::routes`].
pub fn process_event_selecting(
    line: &[u8],
    ctx: &EventContext<'_>,
    out: &mut Vec<u8>,
    select: &(dyn Fn(&EventFields<'_>) -> u64 + Sync),
) -> Result<EventMeta, Reject> {
    if line.len() > ctx.max_event_bytes {
        return Err(Reject::new(
            RejectCode::EventTooLarge,
            format!(
                "event is {} bytes, more than max_event_bytes {}",
                line.len(),
                ctx.max_event_bytes
            ),
        ));
    }
    let mark = out.len();
    let result = canonical::with_scratch(|scratch| {
        let doc = Document::parse(line, scratch).map_err(|e| match e {
            CanonError::InvalidJson(m) => Reject::new(RejectCode::InvalidJson, m),
            CanonError::InvalidNumber { path, message } => {
                Reject::field(format!("{path}: {message}"))
            }
        })?;
        build(&doc, line.len(), ctx, out, select)
    });
    if result.is_err() {
        out.truncate(mark);
    }
    result
}

fn build(
    doc: &Document<'_, '_>,
    line_len: usize,
    ctx: &EventContext<'_>,
    out: &mut Vec<u8>,
    select: &(dyn Fn(&EventFields<'_>) -> u64 + Sync),
) -> Result<EventMeta, Reject> {
    let root = doc.root();
    let kind = doc.kind(root);
    if kind != Kind::Object {
        return Err(Reject::new(
            RejectCode::NotAnObject,
            format!("an event must be a JSON object, got {}", kind.as_str()),
        ));
    }
    let mut f = Fields::default();
    for (key, value) in doc.members(root) {
        let slot = match key {
            b"eventName" => &mut f.event_name,
            b"eventSource" => &mut f.event_source,
            b"eventTime" => &mut f.event_time,
            b"eventID" => &mut f.event_id,
            b"eventVersion" => &mut f.event_version,
            b"awsRegion" => &mut f.aws_region,
            b"recipientAccountId" => &mut f.recipient_account_id,
            b"eventType" => &mut f.event_type,
            b"eventCategory" => &mut f.event_category,
            b"managementEvent" => &mut f.management_event,
            b"readOnly" => &mut f.read_only,
            b"userIdentity" => &mut f.user_identity,
            b"requestParameters" => &mut f.request_parameters,
            b"responseElements" => &mut f.response_elements,
            b"resources" => &mut f.resources,
            _ => match OPTIONAL_STRINGS.iter().position(|n| n.as_bytes() == key) {
                Some(i) => &mut f.optional_strings[i],
                None => continue,
            },
        };
        *slot = Some(value);
    }

    let event_name = required_string(doc, f.event_name, "eventName")?;
    let event_source = required_string(doc, f.event_source, "eventSource")?;

    let event_time = match f.event_time {
        None => ctx.received_at_secs,
        Some(id) => {
            let s = string(doc, id, "eventTime", "an RFC 3339 UTC time string")?;
            parse_utc_time(s.as_bytes()).ok_or_else(|| {
                Reject::field(format!(
                    "eventTime must be an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS[.fraction] and \
                     Z or +00:00), got {}",
                    quoted(s)
                ))
            })?
        }
    };
    let mut time_buf = [0u8; 20];
    let time_text = format_utc_time(event_time, &mut time_buf)?;

    let mut uuid_buf = [0u8; 36];
    let event_id: &str = match f.event_id {
        None => uuid::Uuid::new_v4()
            .hyphenated()
            .encode_lower(&mut uuid_buf),
        Some(id) => {
            let s = string(doc, id, "eventID", "a string")?;
            let chars = s.chars().count();
            if chars == 0 || chars > MAX_EVENT_ID_CHARS {
                return Err(Reject::field(format!(
                    "eventID must be a non-empty string of at most {MAX_EVENT_ID_CHARS} \
                     characters, got {chars} characters"
                )));
            }
            s
        }
    };

    if let Some(id) = f.event_version {
        let s = string(doc, id, "eventVersion", "a string like \"1.11\"")?;
        if !is_version(s.as_bytes()) {
            return Err(Reject::field(format!(
                "eventVersion must be digits.digits like \"1.11\", got {}",
                quoted(s)
            )));
        }
    }

    let region = match f.aws_region {
        None => ctx.region,
        Some(id) => {
            let s = string(doc, id, "awsRegion", "a string")?;
            if !is_region(s.as_bytes()) {
                return Err(Reject::field(format!(
                    "awsRegion must match ^[a-z0-9][a-z0-9-]{{0,31}}$ (it becomes part of file \
                     names), got {}",
                    quoted(s)
                )));
            }
            s
        }
    };

    let account = match f.recipient_account_id {
        None => ctx.account_id,
        Some(id) => {
            let s = string(doc, id, "recipientAccountId", "a string of 12 digits")?;
            if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Reject::field(format!(
                    "recipientAccountId must be 12 digits, got {}",
                    quoted(s)
                )));
            }
            s
        }
    };

    let event_type = match f.event_type {
        None => "AwsApiCall",
        Some(id) => one_of(doc, id, "eventType", &EVENT_TYPES)?,
    };
    let category = match f.event_category {
        None => "Management",
        Some(id) => one_of(doc, id, "eventCategory", &EVENT_CATEGORIES)?,
    };
    if let Some(id) = f.management_event {
        boolean(doc, id, "managementEvent")?;
    }
    let read_only = match f.read_only {
        None => READ_ONLY_PREFIXES.iter().any(|p| event_name.starts_with(p)),
        Some(id) => boolean(doc, id, "readOnly")?,
    };
    let mut user_identity_arn = None;
    if let Some(id) = f.user_identity {
        expect_kind(doc, id, "userIdentity", &[Kind::Object], "an object")?;
        if let Some(arn) = doc.get(id, "arn") {
            user_identity_arn = Some(string(doc, arn, "userIdentity.arn", "a string")?);
        }
    }
    for (slot, name) in [
        (f.request_parameters, "requestParameters"),
        (f.response_elements, "responseElements"),
    ] {
        if let Some(id) = slot {
            expect_kind(
                doc,
                id,
                name,
                &[Kind::Object, Kind::Null],
                "an object or null",
            )?;
        }
    }
    let mut resources: Vec<select::Resource<'_>> = Vec::new();
    if let Some(id) = f.resources {
        check_resources(doc, id, &mut resources)?;
    }
    let mut optional: [Option<&str>; OPTIONAL_STRINGS.len()] = [None; OPTIONAL_STRINGS.len()];
    for ((slot, name), value) in f
        .optional_strings
        .iter()
        .zip(OPTIONAL_STRINGS)
        .zip(&mut optional)
    {
        if let Some(id) = *slot {
            *value = Some(string(doc, id, name, "a string")?);
        }
    }
    let routes = select(&EventFields {
        event_category: category,
        event_source,
        event_name,
        event_type,
        read_only,
        resources: &resources,
        user_identity_arn,
        error_code: optional[ERROR_CODE],
        session_credential_from_console: optional[SESSION_CREDENTIAL_FROM_CONSOLE],
        vpc_endpoint_id: optional[VPC_ENDPOINT_ID],
    });

    // Everything is valid: write the event with its defaults.
    let mut extras: [(&str, Extra<'_>); 12] = [("", Extra::Null); 12];
    let mut n = 0;
    macro_rules! add {
        ($name:expr, $value:expr) => {{
            extras[n] = ($name, $value);
            n += 1;
        }};
    }
    add!("eventTime", Extra::Str(time_text));
    if f.event_id.is_none() {
        add!("eventID", Extra::Str(event_id));
    }
    if f.event_version.is_none() {
        add!("eventVersion", Extra::Str(DEFAULT_EVENT_VERSION));
    }
    if f.aws_region.is_none() {
        add!("awsRegion", Extra::Str(region));
    }
    if f.recipient_account_id.is_none() {
        add!("recipientAccountId", Extra::Str(account));
    }
    if f.event_type.is_none() {
        add!("eventType", Extra::Str("AwsApiCall"));
    }
    if f.event_category.is_none() {
        add!("eventCategory", Extra::Str("Management"));
    }
    if f.management_event.is_none() {
        add!("managementEvent", Extra::Bool(category == "Management"));
    }
    if f.read_only.is_none() {
        add!("readOnly", Extra::Bool(read_only));
    }
    if f.request_parameters.is_none() {
        add!("requestParameters", Extra::Null);
    }
    if f.response_elements.is_none() {
        add!("responseElements", Extra::Null);
    }
    if let Some(r) = ctx.receipt {
        add!("receipt", Extra::Raw(r));
    }
    out.reserve(line_len + 512);
    doc.write_object_merged(root, &["eventTime", "receipt"], &mut extras[..n], out);

    let lookup = ctx.index.then(|| {
        // what the history reads from the record (`history::index_fields`; a test compares)
        let mut h = LookupHashes::default();
        h.add(AttrKey::EventName, event_name);
        h.add(AttrKey::EventSource, event_source);
        if let Some(id) = f.user_identity {
            let text = |name: &str| doc.get(id, name).and_then(|v| doc.as_str(v));
            if let Some(v) = text("userName") {
                h.user_name(v);
            }
            if let Some(v) = text("accessKeyId") {
                h.add(AttrKey::AccessKeyId, v);
            }
        }
        if let Some(arn) = user_identity_arn {
            h.arn(arn);
        }
        for r in &resources {
            if let Some(t) = r.resource_type {
                h.add(AttrKey::ResourceType, t);
            }
            if let Some(a) = r.arn {
                h.add(AttrKey::ResourceName, a);
            }
        }
        EventLookup {
            id_hash: crate::history::value_hash(event_id.as_bytes()),
            values: h.finish(read_only),
        }
    });
    Ok(EventMeta {
        event_id: event_id.to_string(),
        event_time,
        account: account.into(),
        region: region.into(),
        routes,
        insight: category == "Insight",
        lookup,
    })
}

/// Check `resources`: an array of objects whose `ARN`, `accountId` and `type` are strings; their
/// `type` and `ARN` go to `out` (for the selectors).
fn check_resources<'d>(
    doc: &'d Document<'_, '_>,
    id: NodeId,
    out: &mut Vec<select::Resource<'d>>,
) -> Result<(), Reject> {
    expect_kind(doc, id, "resources", &[Kind::Array], "an array of objects")?;
    for (i, item) in doc.elements(id).enumerate() {
        let kind = doc.kind(item);
        if kind != Kind::Object {
            return Err(Reject::field(format!(
                "resources[{i}] must be an object, got {}",
                kind.as_str()
            )));
        }
        let mut resource = select::Resource::default();
        for name in ["ARN", "accountId", "type"] {
            if let Some(v) = doc.get(item, name) {
                let Some(text) = doc.as_str(v) else {
                    return Err(Reject::field(format!(
                        "resources[{i}].{name} must be a string, got {}",
                        doc.kind(v).as_str()
                    )));
                };
                match name {
                    "ARN" => resource.arn = Some(text),
                    "type" => resource.resource_type = Some(text),
                    _ => {}
                }
            }
        }
        out.push(resource);
    }
    Ok(())
}

fn required_string<'d>(
    doc: &'d Document<'_, '_>,
    slot: Option<NodeId>,
    name: &str,
) -> Result<&'d str, Reject> {
    let Some(id) = slot else {
        return Err(Reject::new(
            RejectCode::MissingField,
            format!("{name} is missing"),
        ));
    };
    match doc.as_str(id) {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(Reject::field(format!(
            "{name} must be a non-empty string, got an empty string"
        ))),
        None => Err(Reject::field(format!(
            "{name} must be a non-empty string, got {}",
            doc.kind(id).as_str()
        ))),
    }
}

fn string<'d>(
    doc: &'d Document<'_, '_>,
    id: NodeId,
    name: &str,
    what: &str,
) -> Result<&'d str, Reject> {
    doc.as_str(id).ok_or_else(|| {
        Reject::field(format!(
            "{name} must be {what}, got {}",
            doc.kind(id).as_str()
        ))
    })
}

fn boolean(doc: &Document<'_, '_>, id: NodeId, name: &str) -> Result<bool, Reject> {
    doc.as_bool(id).ok_or_else(|| {
        Reject::field(format!(
            "{name} must be true or false, got {}",
            doc.kind(id).as_str()
        ))
    })
}

fn expect_kind(
    doc: &Document<'_, '_>,
    id: NodeId,
    name: &str,
    kinds: &[Kind],
    what: &str,
) -> Result<(), Reject> {
    let kind = doc.kind(id);
    if kinds.contains(&kind) {
        Ok(())
    } else {
        Err(Reject::field(format!(
            "{name} must be {what}, got {}",
            kind.as_str()
        )))
    }
}

fn one_of(
    doc: &Document<'_, '_>,
    id: NodeId,
    name: &str,
    allowed: &[&'static str],
) -> Result<&'static str, Reject> {
    let found = doc
        .as_str(id)
        .and_then(|s| allowed.iter().find(|a| **a == s).copied());
    found.ok_or_else(|| {
        let got = match doc.as_str(id) {
            Some(s) => quoted(s),
            None => doc.kind(id).as_str().to_string(),
        };
        Reject::field(format!(
            "{name} must be one of {}, got {got}",
            allowed.join(", ")
        ))
    })
}

/// A value for a message: quoted, escaped, at most 64 characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn is_version(s: &[u8]) -> bool {
    match s.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let (major, minor) = (&s[..dot], &s[dot + 1..]);
            !major.is_empty()
                && !minor.is_empty()
                && major.iter().all(u8::is_ascii_digit)
                && minor.iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

fn is_region(s: &[u8]) -> bool {
    matches!(s.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.len() <= 32
        && s.iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`T`/`t`, optional fraction, `Z`/`z` or
/// `+00:00`); None when it is not one or names no real instant (Feb 30, hour 24, second 60).
pub fn parse_utc_time(s: &[u8]) -> Option<i64> {
    fn num(s: &[u8], range: std::ops::Range<usize>) -> Option<u32> {
        let digits = s.get(range)?;
        digits.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    }
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(s, 0..4)?, num(s, 5..7)?, num(s, 8..10)?);
    let (hour, minute, second) = (num(s, 11..13)?, num(s, 14..16)?, num(s, 17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    if !matches!(rest, b"Z" | b"z" | b"+00:00") {
        return None;
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(days * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the epoch (years 0000..=9999).
pub fn format_utc_time(secs: i64, buf: &mut [u8; 20]) -> Result<&str, Reject> {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return Err(Reject::field(format!(
            "eventTime {secs} is outside years 0000..9999"
        )));
    }
    let fields = [
        (0, 4, year as u32),
        (5, 2, month),
        (8, 2, day),
        (11, 2, (rem / 3600) as u32),
        (14, 2, (rem / 60 % 60) as u32),
        (17, 2, (rem % 60) as u32),
    ];
    *buf = *b"0000-00-00T00:00:00Z";
    for (at, width, mut value) in fields {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    std::str::from_utf8(buf).map_err(|_| Reject::field("eventTime is not ASCII".into()))
}

// `u32::is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.80.
#[allow(clippy::manual_is_multiple_of)]
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn time_round_trip() {
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-01-01T00:00:00Z", 1_767_225_600),
            ("2000-02-29T23:59:59Z", 951_868_799),
            ("1969-12-31T23:59:59Z", -1),
            ("9999-12-31T23:59:59Z", 253_402_300_799),
        ] {
            assert_eq!(parse_utc_time(text.as_bytes()), Some(secs), "{text}");
            let mut buf = [0u8; 20];
            assert_eq!(format_utc_time(secs, &mut buf).expect("in range"), text);
        }
        // cross-check against the time crate over a spread of instants
        for secs in (-10_000_000_000i64..250_000_000_000).step_by(987_654_321) {
            let mut buf = [0u8; 20];
            let ours = format_utc_time(secs, &mut buf)
                .expect("in range")
                .to_string();
            let theirs = time::OffsetDateTime::from_unix_timestamp(secs)
                .expect("valid")
                .format(&time::format_description::well_known::Rfc3339)
                .expect("formats");
            assert_eq!(ours, theirs);
            assert_eq!(parse_utc_time(ours.as_bytes()), Some(secs));
        }
    }

    #[test]
    fn time_forms() {
        let base = Some(1_767_225_600 + 3723);
        for ok in [
            "2026-01-01T01:02:03Z",
            "2026-01-01t01:02:03z",
            "2026-01-01T01:02:03+00:00",
            "2026-01-01T01:02:03.999999999Z",
            "2026-01-01T01:02:03.5+00:00",
        ] {
            assert_eq!(parse_utc_time(ok.as_bytes()), base, "{ok}");
        }
        for bad in [
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:60Z",
            "2026-01-01T00:00:00+01:00",
            "2026-01-01T00:00:00-00:00",
            "2026-01-01T00:00:00",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00ZZ",
            "26-01-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "+026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.1x",
        ] {
            assert_eq!(parse_utc_time(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn reject_leaves_out_unchanged() {
        let mut out = b"previous".to_vec();
        let r = process_event(
            br#"{"eventName":"X","eventSource":"s","readOnly":1}"#,
            &ctx(),
            &mut out,
        );
        assert_eq!(r.expect_err("rejected").code, RejectCode::InvalidField);
        assert_eq!(out, b"previous");
        let meta = process_event(
            br#"{"eventName":"X","eventSource":"s","eventID":"e"}"#,
            &ctx(),
            &mut out,
        )
        .expect("accepted");
        assert!(out.starts_with(b"previous{"));
        assert_eq!(meta.event_id, "e");
    }

    #[test]
    fn size_limit_is_inclusive_and_checked_first() {
        let mut c = ctx();
        let line = br#"{"eventName":"X","eventSource":"s","eventID":"e"}"#;
        c.max_event_bytes = line.len();
        let mut out = Vec::new();
        process_event(line, &c, &mut out).expect("exactly max_event_bytes is accepted");
        c.max_event_bytes = line.len() - 1;
        let rej = process_event(line, &c, &mut out).expect_err("one byte over");
        assert_eq!(rej.code, RejectCode::EventTooLarge);
        assert!(
            rej.message.contains(&line.len().to_string()),
            "{}",
            rej.message
        );
        assert!(
            rej.message.contains(&(line.len() - 1).to_string()),
            "{}",
            rej.message
        );
        // even invalid JSON is refused for its size first
        let rej = process_event(&[b'{'; 100], &c, &mut out).expect_err("too large");
        assert_eq!(rej.code, RejectCode::EventTooLarge);
    }

    #[test]
    fn escaped_duplicate_of_a_known_field_is_invalid_json() {
        let line = br#"{"eventName":"X","eventSource":"s","event\u004eame":"GetObject"}"#;
        let rej = process_event(line, &ctx(), &mut Vec::new()).expect_err("duplicate");
        assert_eq!(rej.code, RejectCode::InvalidJson);
        assert!(rej.message.contains("eventName"), "{}", rej.message);
    }

    #[test]
    fn meta_reports_given_time_account_and_region() {
        let line = br#"{"eventName":"X","eventSource":"s","eventID":"id","eventTime":"2026-02-03T04:05:06.7Z","awsRegion":"eu-central-1","recipientAccountId":"444455556666"}"#;
        let meta = process_event(line, &ctx(), &mut Vec::new()).expect("ok");
        assert_eq!(
            meta,
            EventMeta {
                event_id: "id".into(),
                event_time: 1_770_091_506,
                account: "444455556666".into(),
                region: "eu-central-1".into(),
                routes: u64::MAX,
                insight: false,
                lookup: None,
            }
        );
    }

    #[test]
    fn selector_fields_are_the_values_after_defaults() {
        let seen = std::sync::Mutex::new(Vec::new());
        let select = |f: &EventFields<'_>| {
            if let Ok(mut v) = seen.lock() {
                v.push(format!(
                    "{} {} {} {} {} {:?} {:?} {:?} {:?} {:?}",
                    f.event_category,
                    f.event_source,
                    f.event_name,
                    f.event_type,
                    f.read_only,
                    f.resources,
                    f.user_identity_arn,
                    f.error_code,
                    f.session_credential_from_console,
                    f.vpc_endpoint_id
                ));
            }
            0b101
        };
        let line = br#"{"eventName":"GetObject","eventSource":"s3.amazonaws.com","eventCategory":"Data","userIdentity":{"arn":"arn:aws:iam::1:user/a"},"resources":[{"type":"AWS::S3::Object","ARN":"arn:aws:s3:::b/k"},{"accountId":"1"}],"errorCode":"VpceAccessDenied","sessionCredentialFromConsole":"true","vpcEndpointId":"vpce-1"}"#;
        let meta = process_event_selecting(line, &ctx(), &mut Vec::new(), &select).expect("ok");
        assert_eq!(meta.routes, 0b101);
        let meta = process_event_selecting(
            br#"{"eventName":"RunInstances","eventSource":"ec2.amazonaws.com"}"#,
            &ctx(),
            &mut Vec::new(),
            &select,
        )
        .expect("ok");
        assert_eq!(meta.routes, 0b101);
        let seen = seen.into_inner().expect("not poisoned");
        assert_eq!(
            seen,
            vec![
                "Data s3.amazonaws.com GetObject AwsApiCall true [Resource { resource_type: \
                 Some(\"AWS::S3::Object\"), arn: Some(\"arn:aws:s3:::b/k\") }, Resource { \
                 resource_type: None, arn: None }] Some(\"arn:aws:iam::1:user/a\") \
                 Some(\"VpceAccessDenied\") Some(\"true\") Some(\"vpce-1\")"
                    .to_string(),
                "Management ec2.amazonaws.com RunInstances AwsApiCall false [] None None None None"
                    .to_string(),
            ]
        );
        // the selector fields CloudTrail reads must be strings when present
        for bad in [
            r#""userIdentity":{"arn":5}"#,
            r#""sessionCredentialFromConsole":true"#,
            r#""vpcEndpointId":null"#,
        ] {
            let line = format!(r#"{{"eventName":"X","eventSource":"s",{bad}}}"#);
            let rej = process_event(line.as_bytes(), &ctx(), &mut Vec::new()).expect_err(bad);
            assert_eq!(rej.code, RejectCode::InvalidField, "{bad}");
        }
    }

    #[test]
    fn generated_ids_are_uuid_v4() {
        let mut out = Vec::new();
        let a =
            process_event(br#"{"eventName":"X","eventSource":"s"}"#, &ctx(), &mut out).expect("ok");
        let b =
            process_event(br#"{"eventName":"X","eventSource":"s"}"#, &ctx(), &mut out).expect("ok");
        assert_ne!(a.event_id, b.event_id);
        let id = uuid::Uuid::parse_str(&a.event_id).expect("a UUID");
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(a.event_id, id.hyphenated().to_string());
    }

    #[test]
    fn receipt_is_written_by_the_daemon_only() {
        let mut c = ctx();
        let receipt = Receipt {
            received_at: "2026-01-01T00:00:00.123Z",
            peer: "unix:uid=0,pid=1",
            agent: None,
        }
        .canonical();
        c.receipt = Some(&receipt);
        let mut out = Vec::new();
        process_event(
            br#"{"eventName":"X","eventSource":"s","eventID":"e","receipt":{"agent":"forged"}}"#,
            &c,
            &mut out,
        )
        .expect("ok");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.ends_with(r#""receipt":{"agent":null,"peer":"unix:uid=0,pid=1","receivedAt":"2026-01-01T00:00:00.123Z"},"recipientAccountId":"111122223333","requestParameters":null,"responseElements":null}"#),
            "{text}"
        );
    }
}
