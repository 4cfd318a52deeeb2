//! RFC 8785 (JSON Canonicalization Scheme) with the I-JSON checks of FORMATS.md §1.
//!
//! CONTRACT (used by `event` and `verify`): `canonicalize` turns one JSON text into its canonical
//! bytes, or says what is wrong and where.
//!
//! Invariants of the canonical form (RFC 8785 §3.2):
//! - no whitespace; object members sorted by the UTF-16 code units of their names;
//! - strings escape only `"`, `\` and U+0000..U+001F (`\b \t \n \f \r`, else `\u00xx` lower-case);
//!   everything else, U+2028/U+2029 and all non-ASCII included, is literal UTF-8;
//! - numbers as ES6 `Number.prototype.toString` (`ryu-js`), `-0` as `0`; literals as they are.
//!
//! The input must be I-JSON (RFC 7493): valid UTF-8, no lone surrogate escape, no duplicate member
//! name (compared after unescaping), nesting ≤ [`MAX_DEPTH`]; an integer literal (no fraction, no
//! exponent) beyond ±2^53 or a number that overflows a double is refused with the path of the value,
//! because a double cannot carry it exactly. Fractions and exponents are read as the nearest double;
//! one that lands on an integer beyond ±2^53 below 1e21 (e.g. `1e20`) is refused too, because ES6
//! writes it as an integer literal beyond 2^53: so canonical output never holds such a literal and
//! canonicalizing it again gives the same bytes (which `verify` relies on).
//!
//! Parser: `jiter` (pydantic's JSON iterator). Its iterator API hands out the raw bytes of every
//! number (so integer literals can be told from fractions and checked before any rounding), decodes
//! strings into a reusable tape, validates UTF-8 in strings and keys, and refuses lone surrogate
//! escapes, raw control characters and bad escapes (all checked by this module's tests). It does not
//! detect duplicate member names and its nesting limit is not ours, so both are checked here.
//! serde_json would need a custom visitor plus a second pass for the same information.
//!
//! Shape: one pass builds a compact tree ([`Document`]): flat node and member arrays whose
//! strings point into the input (or into an arena when they had escapes). A strict fast parser
//! (module `fast`) handles the common case (no escapes, valid, no duplicates) and gives up on
//! anything else, which then goes through `jiter` from the start: the two build the same tree
//! (except that the fast parser also marks each member whose canonical bytes stand in the input
//! as they are, `Member::whole`, which the writer then copies in one piece), and every error
//! comes from the `jiter` path. Each object's
//! members are sorted and checked for duplicates when the object closes, so writing the canonical
//! bytes afterwards cannot fail and allocates nothing (an object whose names' 8-byte prefixes, in
//! input order, match a recently sorted one takes its order from a per-thread cache instead:
//! `OrderCache`). The buffers live in a per-thread [`Scratch`] reused across calls.

use std::cell::RefCell;
use std::cmp::Ordering;

use jiter::{Jiter, JiterError, JiterErrorType, JsonErrorType, Peek};

/// Deepest nesting of arrays and objects accepted (the top-level container is level 1).
pub const MAX_DEPTH: usize = 64;
/// Largest integer magnitude a double holds exactly together with all its neighbours (2^53).
pub const MAX_SAFE_INTEGER: u64 = 1 << 53;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    /// Not JSON, not UTF-8, a duplicate member name, a lone surrogate escape, nesting too deep.
    #[error("{0}")]
    InvalidJson(String),
    /// A number JSON allows but a double cannot hold exactly; `path` is like `requestParameters.size`.
    #[error("{path}: {message}")]
    InvalidNumber { path: String, message: String },
}

/// Canonical bytes of one JSON text (any value).
pub fn canonicalize(input: &[u8]) -> Result<Vec<u8>, CanonError> {
    let mut out = Vec::with_capacity(input.len());
    canonicalize_into(input, &mut out)?;
    Ok(out)
}

/// Append the canonical bytes of one JSON text to `out`; on error `out` is left as it was.
pub fn canonicalize_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), CanonError> {
    with_scratch(|scratch| {
        let doc = Document::parse(input, scratch)?;
        doc.write_value(doc.root(), out);
        Ok(())
    })
}

/// Run `f` with this thread's reusable parse buffers (a fresh set if they are already in use).
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Reusable buffers of a parse: keeping one per thread makes parsing allocation-free in the
/// steady state.
#[derive(Debug, Default)]
pub struct Scratch {
    nodes: Vec<Node>,
    members: Vec<Member>,
    pending: Vec<Member>,
    arena: Vec<u8>,
    tape: Vec<u8>,
}

impl Scratch {
    fn clear(&mut self) {
        self.nodes.clear();
        self.members.clear();
        self.pending.clear();
        self.arena.clear();
    }
}

/// Index of a value in a [`Document`].
pub type NodeId = usize;

/// Where a string's bytes live: in the input (no escapes) or in the arena (decoded escapes, or a
/// number's canonical text).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
    /// In the arena: decoded from escapes, so it must be escaped again on output. A string in
    /// the input is already in canonical form: jiter refuses raw control characters, and a `"` or
    /// `\` in it would have been an escape.
    in_arena: bool,
    /// Holds a character ≥ U+E000 (a UTF-8 byte ≥ 0xEE): only then can UTF-16 order differ from
    /// byte order (set for member names only).
    high: bool,
}

#[derive(Debug, Clone, Copy)]
enum Node {
    Null,
    True,
    False,
    /// Canonical text of the number.
    Number(Span),
    /// Decoded (unescaped) UTF-8.
    String(Span),
    /// Elements follow the node in pre-order; `end` is the index after the last node of the array.
    Array {
        len: u32,
        end: u32,
    },
    /// Members are `members[first..first + len]`, sorted by name.
    Object {
        first: u32,
        len: u32,
        end: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Member {
    key: Span,
    value: u32,
    /// When not 0: the member's canonical bytes (`"name":value`) stand in the input as they are,
    /// `whole` bytes from the name's opening quote (set by the fast parser; see `Fast::object`).
    whole: u32,
    /// The name's first 8 bytes, zero-padded, big-endian: most comparisons end here.
    prefix: u64,
}

/// The JSON type of a value, for validation messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "boolean",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }
}

/// A value to write as an extra member of an object (see [`Document::write_object_merged`]).
#[derive(Debug, Clone, Copy)]
pub enum Extra<'x> {
    Null,
    Bool(bool),
    /// A string, escaped on output.
    Str(&'x str),
    /// Bytes that already are canonical JSON.
    Raw(&'x [u8]),
}

/// A parsed, checked JSON text whose canonical bytes can be written.
#[derive(Debug)]
pub struct Document<'a, 's> {
    input: &'a [u8],
    /// `input` as text when the fast path checked all of it to be UTF-8: the strings of the
    /// input are then sliced from it without checking them again.
    text: Option<&'a str>,
    s: &'s Scratch,
}

impl<'a, 's> Document<'a, 's> {
    /// Parse and check `input` (one JSON text, surrounding whitespace allowed) into `scratch`.
    pub fn parse(input: &'a [u8], scratch: &'s mut Scratch) -> Result<Self, CanonError> {
        Self::parse_with(input, scratch, true)
    }

    /// [`Document::parse`], trying the fast parser first only when `try_fast` (tests compare).
    fn parse_with(
        input: &'a [u8],
        scratch: &'s mut Scratch,
        try_fast: bool,
    ) -> Result<Self, CanonError> {
        // spans are u32: the arena (decoded strings, number texts) stays below 2x the input
        if input.len() > (u32::MAX / 4) as usize {
            return Err(CanonError::InvalidJson(format!(
                "JSON text of {} bytes is too large to canonicalize",
                input.len()
            )));
        }
        scratch.clear();
        if try_fast {
            if let Ok(text) = fast::parse(input, scratch) {
                return Ok(Document {
                    input,
                    text: Some(text),
                    s: scratch,
                });
            }
        }
        scratch.clear();
        let tape = std::mem::take(&mut scratch.tape);
        let mut parser = Parser {
            input,
            jiter: Jiter::with_tape(input, tape),
            nodes: &mut scratch.nodes,
            members: &mut scratch.members,
            pending: &mut scratch.pending,
            arena: &mut scratch.arena,
        };
        let result = parser.parse_document();
        scratch.tape = parser.jiter.into_tape();
        result?;
        Ok(Document {
            input,
            text: None,
            s: scratch,
        })
    }

    /// The top-level value.
    pub fn root(&self) -> NodeId {
        0
    }

    pub fn kind(&self, id: NodeId) -> Kind {
        match self.s.nodes[id] {
            Node::Null => Kind::Null,
            Node::True | Node::False => Kind::Bool,
            Node::Number(_) => Kind::Number,
            Node::String(_) => Kind::String,
            Node::Array { .. } => Kind::Array,
            Node::Object { .. } => Kind::Object,
        }
    }

    /// The decoded bytes (valid UTF-8) of a string value, else None.
    pub fn as_str_bytes(&self, id: NodeId) -> Option<&[u8]> {
        match self.s.nodes[id] {
            Node::String(span) => Some(self.span(span)),
            _ => None,
        }
    }

    /// The decoded text of a string value, else None.
    pub fn as_str(&self, id: NodeId) -> Option<&str> {
        let Node::String(span) = self.s.nodes[id] else {
            return None;
        };
        match self.text {
            // a string of the input stands between two ASCII quotes: char boundaries
            Some(text) if !span.in_arena => {
                text.get(span.start as usize..(span.start + span.len) as usize)
            }
            _ => simdutf8::basic::from_utf8(self.span(span)).ok(),
        }
    }

    pub fn as_bool(&self, id: NodeId) -> Option<bool> {
        match self.s.nodes[id] {
            Node::True => Some(true),
            Node::False => Some(false),
            _ => None,
        }
    }

    /// The members of an object value, sorted by name (empty for other values).
    pub fn members(&self, id: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> + '_ {
        let slice: &[Member] = match self.s.nodes[id] {
            Node::Object { first, len, .. } => {
                &self.s.members[first as usize..(first + len) as usize]
            }
            _ => &[],
        };
        slice.iter().map(|m| (self.span(m.key), m.value as usize))
    }

    /// The elements of an array value (empty for other values).
    pub fn elements(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let len = match self.s.nodes[id] {
            Node::Array { len, .. } => len,
            _ => 0,
        };
        let mut next = id + 1;
        (0..len).map(move |_| {
            let this = next;
            next = self.end(this);
            this
        })
    }

    /// The value of member `name` of an object value.
    pub fn get(&self, id: NodeId, name: &str) -> Option<NodeId> {
        self.members(id)
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// Append the canonical bytes of a value.
    pub fn write_value(&self, id: NodeId, out: &mut Vec<u8>) {
        match self.s.nodes[id] {
            Node::Null => out.extend_from_slice(b"null"),
            Node::True => out.extend_from_slice(b"true"),
            Node::False => out.extend_from_slice(b"false"),
            Node::Number(span) => out.extend_from_slice(self.span(span)),
            Node::String(span) => self.write_span_string(out, span),
            Node::Array { len, .. } => {
                out.push(b'[');
                let mut child = id + 1;
                for i in 0..len {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_value(child, out);
                    child = self.end(child);
                }
                out.push(b']');
            }
            Node::Object { first, len, .. } => {
                out.push(b'{');
                for (i, m) in self.s.members[first as usize..(first + len) as usize]
                    .iter()
                    .enumerate()
                {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_member(out, m);
                }
                out.push(b'}');
            }
        }
    }

    /// Append the canonical bytes of the object `id` without the members named in `skip` and with
    /// the `extras` added. `extras` must not repeat a kept member's name (nor one another's).
    pub fn write_object_merged(
        &self,
        id: NodeId,
        skip: &[&str],
        extras: &mut [(&str, Extra<'_>)],
        out: &mut Vec<u8>,
    ) {
        extras.sort_unstable_by(|a, b| cmp_utf16(a.0.as_bytes(), b.0.as_bytes()));
        out.push(b'{');
        let mut first = true;
        let mut comma = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        let mut extra = extras.iter().peekable();
        let members: &[Member] = match self.s.nodes[id] {
            Node::Object { first, len, .. } => {
                &self.s.members[first as usize..(first + len) as usize]
            }
            _ => &[],
        };
        for m in members {
            let key = self.span(m.key);
            if skip.iter().any(|s| s.as_bytes() == key) {
                continue;
            }
            while let Some((name, v)) = extra.next_if(|(n, _)| cmp_utf16(n.as_bytes(), key).is_lt())
            {
                comma(out);
                write_extra(out, name, *v);
            }
            comma(out);
            self.write_member(out, m);
        }
        for (name, v) in extra {
            comma(out);
            write_extra(out, name, *v);
        }
        out.push(b'}');
    }

    /// Append `"name":value` of a member.
    fn write_member(&self, out: &mut Vec<u8>, m: &Member) {
        if m.whole != 0 {
            let start = m.key.start as usize - 1; // the name's opening quote
            out.extend_from_slice(&self.input[start..start + m.whole as usize]);
        } else {
            self.write_span_string(out, m.key);
            out.push(b':');
            self.write_value(m.value as usize, out);
        }
    }

    fn write_span_string(&self, out: &mut Vec<u8>, span: Span) {
        if span.in_arena {
            write_string(out, self.span(span));
            return;
        }
        // a string in the input stands there between its quotes: copy them along
        let (start, end) = (span.start as usize, (span.start + span.len) as usize);
        match self.input.get(start.wrapping_sub(1)..end + 1) {
            Some(quoted) if quoted.first() == Some(&b'"') && quoted.last() == Some(&b'"') => {
                out.extend_from_slice(quoted);
            }
            _ => {
                out.reserve(span.len as usize + 2);
                out.push(b'"');
                out.extend_from_slice(&self.input[start..end]);
                out.push(b'"');
            }
        }
    }

    fn span(&self, span: Span) -> &[u8] {
        let range = span.start as usize..(span.start + span.len) as usize;
        if span.in_arena {
            &self.s.arena[range]
        } else {
            &self.input[range]
        }
    }

    /// Index after the last node of the value `id`.
    fn end(&self, id: NodeId) -> NodeId {
        match self.s.nodes[id] {
            Node::Array { end, .. } | Node::Object { end, .. } => end as usize,
            _ => id + 1,
        }
    }
}

fn write_extra(out: &mut Vec<u8>, name: &str, value: Extra<'_>) {
    write_string(out, name.as_bytes());
    out.push(b':');
    match value {
        Extra::Null => out.extend_from_slice(b"null"),
        Extra::Bool(true) => out.extend_from_slice(b"true"),
        Extra::Bool(false) => out.extend_from_slice(b"false"),
        Extra::Str(s) => write_string(out, s.as_bytes()),
        Extra::Raw(raw) => out.extend_from_slice(raw),
    }
}

/// Append `s` (valid UTF-8) as a JCS string literal.
pub fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    loop {
        // s[start..i] needs no escape; s[i] does (or i is the end)
        let i = fast::scan_string::<true>(s, start);
        out.extend_from_slice(&s[start..i]);
        let Some(&b) = s.get(i) else {
            break;
        };
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]),
        }
    }
    out.push(b'"');
}

/// Append the ES6 `Number.prototype.toString` form of a finite double (`-0` is written `0`).
pub fn write_number(out: &mut Vec<u8>, value: f64) {
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(value).as_bytes());
}

/// Order of two UTF-8 strings by their UTF-16 code units (RFC 8785 §3.2.3).
///
/// UTF-8 byte order is code point order, which is UTF-16 order except that a supplementary
/// character (UTF-8 lead byte 0xF0..0xF4, a surrogate pair 0xD800.. in UTF-16) sorts before
/// U+E000..U+FFFF (lead bytes 0xEE, 0xEF) in UTF-16. Both strings agree up to the first differing
/// byte, so that byte is a lead byte in both or a continuation byte in both; only the lead-byte
/// case needs the adjustment.
pub fn cmp_utf16(a: &[u8], b: &[u8]) -> Ordering {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None => a.len().cmp(&b.len()),
        Some(i) => utf16_rank(a[i]).cmp(&utf16_rank(b[i])),
    }
}

fn utf16_rank(byte: u8) -> u32 {
    match byte {
        // between 0xED (U+D000..U+D7FF) and 0xEE (U+E000..)
        0xF0..=0xF7 => 0xED * 16 + 1 + u32::from(byte - 0xF0),
        _ => u32::from(byte) * 16,
    }
}

/// A path to a value, as a chain of stack frames (materialized only for error messages).
#[derive(Clone, Copy)]
enum Seg<'p> {
    Root,
    Key(&'p Seg<'p>, Span),
    Index(&'p Seg<'p>, u32),
}

struct Parser<'a, 'x> {
    input: &'a [u8],
    jiter: Jiter<'a>,
    nodes: &'x mut Vec<Node>,
    members: &'x mut Vec<Member>,
    pending: &'x mut Vec<Member>,
    arena: &'x mut Vec<u8>,
}

impl Parser<'_, '_> {
    fn parse_document(&mut self) -> Result<(), CanonError> {
        let peek = self.jiter.peek().map_err(json_error)?;
        self.parse_value(peek, 0, &Seg::Root)?;
        self.jiter.finish().map_err(json_error)
    }

    fn push(&mut self, node: Node) -> Result<usize, CanonError> {
        let id = self.nodes.len();
        if id >= u32::MAX as usize {
            return Err(CanonError::InvalidJson("too many JSON values".into()));
        }
        self.nodes.push(node);
        Ok(id)
    }

    fn parse_value(&mut self, peek: Peek, depth: usize, path: &Seg<'_>) -> Result<(), CanonError> {
        match peek {
            Peek::Null => {
                self.jiter.known_null().map_err(json_error)?;
                self.push(Node::Null)?;
            }
            Peek::True | Peek::False => {
                let b = self.jiter.known_bool(peek).map_err(json_error)?;
                self.push(if b { Node::True } else { Node::False })?;
            }
            Peek::String => {
                let s = self.jiter.known_str().map_err(json_error)?;
                let span = intern(self.input, self.arena, s.as_bytes());
                self.push(Node::String(span))?;
            }
            Peek::Array => {
                self.check_depth(depth, path)?;
                let id = self.push(Node::Array { len: 0, end: 0 })?;
                let mut len: u32 = 0;
                let mut next = self.jiter.known_array().map_err(json_error)?;
                while let Some(p) = next {
                    self.parse_value(p, depth + 1, &Seg::Index(path, len))?;
                    len += 1;
                    next = self.jiter.array_step().map_err(json_error)?;
                }
                self.nodes[id] = Node::Array {
                    len,
                    end: self.nodes.len() as u32,
                };
            }
            Peek::Object => {
                self.check_depth(depth, path)?;
                let id = self.push(Node::Object {
                    first: 0,
                    len: 0,
                    end: 0,
                })?;
                let base = self.pending.len();
                let mut key = self
                    .jiter
                    .known_object()
                    .map_err(json_error)?
                    .map(|k| k.as_bytes());
                while let Some(k) = key {
                    let prefix = key_prefix(k);
                    let key_span = intern_key(self.input, self.arena, k);
                    let value = self.nodes.len() as u32;
                    let p = self.jiter.peek().map_err(json_error)?;
                    self.parse_value(p, depth + 1, &Seg::Key(path, key_span))?;
                    self.pending.push(Member {
                        key: key_span,
                        value,
                        whole: 0, // written piece by piece
                        prefix,
                    });
                    key = self
                        .jiter
                        .next_key()
                        .map_err(json_error)?
                        .map(|k| k.as_bytes());
                }
                if let Err(dup) = close_object(
                    self.input,
                    self.arena,
                    self.nodes,
                    self.members,
                    self.pending,
                    id,
                    base,
                ) {
                    let name = String::from_utf8_lossy(dup).into_owned();
                    let where_ = match path {
                        Seg::Root => "the top-level object".to_string(),
                        _ => format!("object {}", self.path_string(path)),
                    };
                    return Err(CanonError::InvalidJson(format!(
                        "duplicate member name \"{}\" in {where_} (I-JSON forbids duplicates)",
                        clip(&name)
                    )));
                }
            }
            _ if peek.is_num() => {
                let raw = self.jiter.known_number_bytes(peek).map_err(json_error)?;
                let node = number(self.input, self.arena, raw).map_err(|message| {
                    CanonError::InvalidNumber {
                        path: self.path_string(path),
                        message,
                    }
                })?;
                self.push(node)?;
            }
            _ => {
                return Err(CanonError::InvalidJson(format!(
                    "invalid JSON at byte {}: expected a value",
                    self.jiter.current_index()
                )))
            }
        }
        Ok(())
    }

    fn check_depth(&self, depth: usize, path: &Seg<'_>) -> Result<(), CanonError> {
        if depth >= MAX_DEPTH {
            return Err(CanonError::InvalidJson(format!(
                "nesting deeper than {MAX_DEPTH} levels at byte {} ({})",
                self.jiter.current_index(),
                self.path_string(path)
            )));
        }
        Ok(())
    }

    /// `a.b[3].c` for a path; `(top level)` for the root.
    fn path_string(&self, path: &Seg<'_>) -> String {
        let mut segs = Vec::new();
        let mut at = path;
        loop {
            match at {
                Seg::Root => break,
                Seg::Key(parent, span) => {
                    segs.push(Err(*span));
                    at = parent;
                }
                Seg::Index(parent, i) => {
                    segs.push(Ok(*i));
                    at = parent;
                }
            }
        }
        if segs.is_empty() {
            return "(top level)".into();
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Ok(i) => out.push_str(&format!("[{i}]")),
                Err(span) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    let r = span.start as usize..(span.start + span.len) as usize;
                    let bytes = if span.in_arena {
                        &self.arena[r]
                    } else {
                        &self.input[r]
                    };
                    out.push_str(&clip(&String::from_utf8_lossy(bytes)));
                }
            }
        }
        out
    }
}

/// Most members of an object whose order [`OrderCache`] remembers.
const ORDER_MAX: usize = 64;
/// Slots of [`OrderCache`] (direct-mapped by a hash of the prefixes): a power of two.
const ORDER_SLOTS: usize = 64;

thread_local! {
    static ORDERS: RefCell<OrderCache> = RefCell::new(OrderCache::default());
}

/// The canonical order of recently seen objects' members, by the sequence of their names'
/// 8-byte prefixes in input order. When no name holds a character ≥ U+E000 and the prefixes all
/// differ, the prefixes alone decide the order (and rule out a duplicate name), so an object
/// whose prefix sequence equals a remembered one takes the remembered permutation instead of a
/// sort. Events of one kind from one source repeat their member order, so most objects hit.
#[derive(Debug)]
struct OrderCache {
    slots: Vec<OrderSlot>,
}

#[derive(Debug, Default, Clone)]
struct OrderSlot {
    /// The members' prefixes in input order (all different).
    prefixes: Vec<u64>,
    /// `order[k]`: the input position of the k-th member in canonical order.
    order: Vec<u8>,
}

impl Default for OrderCache {
    fn default() -> Self {
        OrderCache {
            slots: vec![OrderSlot::default(); ORDER_SLOTS],
        }
    }
}

/// The [`OrderCache`] slot of an object's members, or None when the cache does not apply (fewer
/// than 2 or more than [`ORDER_MAX`] members, or a name with a character ≥ U+E000).
fn order_slot(mine: &[Member]) -> Option<usize> {
    if !(2..=ORDER_MAX).contains(&mine.len()) {
        return None;
    }
    let mut h = 0u64;
    for m in mine {
        if m.key.high {
            return None;
        }
        h = (h ^ m.prefix).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    Some((h >> 58) as usize % ORDER_SLOTS)
}

impl OrderCache {
    /// Append `mine` to `members` in the order remembered in `slot` and return true, when the
    /// slot holds exactly `mine`'s prefix sequence; else append nothing and return false.
    fn apply(&self, slot: usize, mine: &[Member], members: &mut Vec<Member>) -> bool {
        let Some(s) = self.slots.get(slot) else {
            return false;
        };
        if s.prefixes.len() != mine.len()
            || s.order.len() != mine.len()
            || !s.prefixes.iter().zip(mine).all(|(p, m)| *p == m.prefix)
        {
            return false;
        }
        members.extend(s.order.iter().map(|&i| mine[usize::from(i)]));
        true
    }

    /// Remember the order of an object: `original` its prefixes in input order, `sorted` its
    /// members in canonical order. Objects with two equal prefixes are not remembered.
    fn remember(&mut self, slot: usize, original: &[u64], sorted: &[Member]) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.prefixes.clear();
        s.order.clear();
        if sorted.windows(2).any(|w| w[0].prefix == w[1].prefix) {
            return;
        }
        for m in sorted {
            match original.iter().position(|&p| p == m.prefix) {
                Some(i) if i <= usize::from(u8::MAX) => s.order.push(i as u8),
                _ => {
                    s.order.clear();
                    return;
                }
            }
        }
        s.prefixes.extend_from_slice(original);
    }
}

/// Close the object node `id` whose members are `pending[base..]`: sort them by name (RFC 8785
/// order), move them to `members` and fill in the node. Err is a duplicated member name (nothing
/// is moved then).
fn close_object<'b>(
    input: &'b [u8],
    arena: &'b [u8],
    nodes: &mut [Node],
    members: &mut Vec<Member>,
    pending: &mut Vec<Member>,
    id: usize,
    base: usize,
) -> Result<(), &'b [u8]> {
    let resolve = |s: Span| {
        let r = s.start as usize..(s.start + s.len) as usize;
        if s.in_arena {
            &arena[r]
        } else {
            &input[r]
        }
    };
    let first = members.len() as u32;
    let len = (pending.len() - base) as u32;
    let mine = &mut pending[base..];
    let slot = order_slot(mine);
    let hit =
        slot.is_some_and(|slot| ORDERS.with(|cache| cache.borrow().apply(slot, mine, members)));
    if hit {
        pending.truncate(base);
        nodes[id] = Node::Object {
            first,
            len,
            end: nodes.len() as u32,
        };
        return Ok(());
    }
    let mut original = [0u64; ORDER_MAX];
    if slot.is_some() {
        for (o, m) in original.iter_mut().zip(mine.iter()) {
            *o = m.prefix;
        }
    }
    mine.sort_unstable_by(|a, b| {
        if a.key.high && b.key.high {
            cmp_utf16(resolve(a.key), resolve(b.key))
        } else {
            // byte order is UTF-16 order unless both hold characters ≥ U+E000
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| resolve(a.key).cmp(resolve(b.key)))
        }
    });
    if let Some(w) = mine
        .windows(2)
        .find(|w| w[0].prefix == w[1].prefix && resolve(w[0].key) == resolve(w[1].key))
    {
        return Err(resolve(w[0].key));
    }
    if let Some(slot) = slot {
        ORDERS.with(|cache| {
            cache
                .borrow_mut()
                .remember(slot, &original[..mine.len()], mine)
        });
    }
    members.extend_from_slice(&pending[base..]);
    pending.truncate(base);
    nodes[id] = Node::Object {
        first,
        len,
        end: nodes.len() as u32,
    };
    Ok(())
}

/// The fast path of [`Document::parse`]: a strict RFC 8259 parser for the common case, which
/// builds exactly the tree the jiter parser builds, or gives up ([`Bail`]) on anything else —
/// a bad escape or lone surrogate, a syntax error, a duplicate name, a number `number` refuses,
/// nesting beyond [`MAX_DEPTH`], input that is not UTF-8 — and then the jiter parser runs from
/// the start and reports (or handles) it. So every error and every message comes from one
/// place, and the fast path only has to be right on what it accepts: strings with escapes are
/// decoded into the arena in parse order, as the jiter path interns them; strings without escapes
/// are spans of the input (the whole text is checked to be UTF-8 first), numbers go through the
/// same [`number`].
mod fast {
    use super::{
        close_object, is_high, key_prefix, key_prefix_at, number_of, Member, Node, Scratch, Span,
        MAX_DEPTH,
    };

    /// The fast path does not handle this input (see the module docs).
    pub(super) struct Bail;

    type R<T> = Result<T, Bail>;

    /// Parse `input` into `s` (cleared by the caller) and return it as text, or Bail (leaving
    /// `s` to be cleared).
    pub(super) fn parse<'a>(input: &'a [u8], s: &mut Scratch) -> R<&'a str> {
        // one check of the whole text is cheaper than one per string (a string's ends are ASCII
        // quotes, so every string of valid UTF-8 is valid UTF-8); simdutf8 checks 32 or 64 bytes
        // per step where core's check goes a word at a time
        let Ok(text) = simdutf8::basic::from_utf8(input) else {
            return Err(Bail);
        };
        // one pass over the text, which the compiler vectorizes: a name of the input can hold a
        // character ≥ U+E000 only when some byte is ≥ 0xEE (instead of a check per name), and a
        // string can hold a raw control character only when some byte is below 0x20 (else the
        // string scans look for `"` and `\` only)
        let (lowest, highest) = input
            .iter()
            .fold((u8::MAX, 0u8), |(lo, hi), &b| (lo.min(b), hi.max(b)));
        let mut p = Fast {
            input,
            pos: 0,
            high: highest >= 0xEE,
            controls: lowest < 0x20,
            nodes: &mut s.nodes,
            members: &mut s.members,
            pending: &mut s.pending,
            arena: &mut s.arena,
        };
        p.ws();
        p.value(0)?;
        p.ws();
        if p.pos == input.len() {
            Ok(text)
        } else {
            Err(Bail)
        }
    }

    struct Fast<'a, 'x> {
        input: &'a [u8],
        pos: usize,
        /// Some byte of the input is ≥ 0xEE (else no name without escapes holds a character
        /// ≥ U+E000).
        high: bool,
        /// Some byte of the input is below 0x20 (whitespace, or a raw control character in a
        /// string, which sends the text to the jiter parser).
        controls: bool,
        nodes: &'x mut Vec<Node>,
        members: &'x mut Vec<Member>,
        pending: &'x mut Vec<Member>,
        arena: &'x mut Vec<u8>,
    }

    impl Fast<'_, '_> {
        fn peek(&self) -> R<u8> {
            self.input.get(self.pos).copied().ok_or(Bail)
        }

        fn ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
                self.pos += 1;
            }
        }

        /// [`Self::ws`], then [`Self::peek`]: one load when no whitespace follows (every byte of
        /// JSON whitespace is ≤ 0x20), as in compact NDJSON.
        #[inline(always)]
        fn peek_past_ws(&mut self) -> R<u8> {
            match self.input.get(self.pos) {
                Some(&b) if b > b' ' => Ok(b),
                _ => {
                    self.ws();
                    self.peek()
                }
            }
        }

        fn push(&mut self, node: Node) -> usize {
            // every node takes at least one byte of the input, which is below u32::MAX / 4
            // bytes (`Document::parse_with`): its id fits the u32 of a member's value
            let id = self.nodes.len();
            self.nodes.push(node);
            id
        }

        fn literal(&mut self, text: &[u8], node: Node) -> R<()> {
            if self.input[self.pos..].starts_with(text) {
                self.pos += text.len();
                self.push(node);
                Ok(())
            } else {
                Err(Bail)
            }
        }

        /// [`scan_string`] of the input from `at`.
        #[inline(always)]
        fn scan(&self, at: usize) -> usize {
            if self.controls {
                scan_string::<true>(self.input, at)
            } else {
                scan_string::<false>(self.input, at)
            }
        }

        /// The span of the string whose opening quote is at `pos`; `pos` moves past its end.
        /// Without escapes it is the span in the input, else the decoded text in the arena.
        #[inline(always)]
        fn string(&mut self) -> R<Span> {
            let start = self.pos + 1;
            let end = self.scan(start);
            match self.input.get(end) {
                Some(b'"') => {
                    self.pos = end + 1;
                    Ok(Span {
                        start: start as u32,
                        len: (end - start) as u32,
                        in_arena: false,
                        high: false,
                    })
                }
                Some(b'\\') => {
                    // built here, not in the callee: a span returned through memory and read
                    // back whole stalled store forwarding on every key (perf annotate)
                    let (start, len) = self.escaped_string(start, end)?;
                    Ok(Span {
                        start,
                        len,
                        in_arena: true,
                        high: false,
                    })
                }
                _ => Err(Bail), // a raw control character or no closing quote
            }
        }

        /// Decode the string starting at `start` whose first escape is at `at` into the arena.
        #[cold]
        #[inline(never)]
        fn escaped_string(&mut self, start: usize, mut at: usize) -> R<(u32, u32)> {
            let input = self.input;
            let arena_start = self.arena.len();
            let mut run = start;
            loop {
                // input[run..at] is plain text; input[at] is `\` or the closing quote
                self.arena.extend_from_slice(&input[run..at]);
                match input.get(at) {
                    Some(b'"') => break,
                    Some(b'\\') => {}
                    _ => return Err(Bail),
                }
                let decoded = match input.get(at + 1) {
                    Some(b'"') => b'"',
                    Some(b'\\') => b'\\',
                    Some(b'/') => b'/',
                    Some(b'b') => 0x08,
                    Some(b'f') => 0x0c,
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(b't') => b'\t',
                    Some(b'u') => {
                        let (c, used) = unicode_escape(&input[at..])?;
                        let mut buf = [0u8; 4];
                        self.arena
                            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        run = at + used;
                        at = self.scan(run);
                        continue;
                    }
                    _ => return Err(Bail),
                };
                self.arena.push(decoded);
                run = at + 2;
                at = self.scan(run);
            }
            self.pos = at + 1;
            Ok((arena_start as u32, (self.arena.len() - arena_start) as u32))
        }

        fn value(&mut self, depth: usize) -> R<()> {
            match self.peek()? {
                b'{' => self.object(depth),
                b'[' => self.array(depth),
                b'"' => {
                    let span = self.string()?;
                    self.push(Node::String(span));
                    Ok(())
                }
                b't' => self.literal(b"true", Node::True),
                b'f' => self.literal(b"false", Node::False),
                b'n' => self.literal(b"null", Node::Null),
                b'-' | b'0'..=b'9' => {
                    let start = self.pos;
                    let integer = self.number_end()?;
                    let raw = &self.input[start..self.pos];
                    let node = number_of(self.input, self.arena, raw, integer).map_err(|_| Bail)?;
                    self.push(node);
                    Ok(())
                }
                _ => Err(Bail),
            }
        }

        /// Move `pos` past a number of the RFC 8259 grammar; whether it is an integer literal
        /// (no fraction, no exponent).
        fn number_end(&mut self) -> R<bool> {
            let input = self.input;
            let digits = |mut i: usize| {
                while input.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                i
            };
            let mut i = self.pos;
            if input.get(i) == Some(&b'-') {
                i += 1;
            }
            match input.get(i) {
                Some(b'0') => i += 1,
                Some(b'1'..=b'9') => i = digits(i + 1),
                _ => return Err(Bail),
            }
            let mut integer = true;
            if input.get(i) == Some(&b'.') {
                let j = digits(i + 1);
                if j == i + 1 {
                    return Err(Bail);
                }
                i = j;
                integer = false;
            }
            if let Some(b'e' | b'E') = input.get(i) {
                i += 1;
                if let Some(b'+' | b'-') = input.get(i) {
                    i += 1;
                }
                let j = digits(i);
                if j == i {
                    return Err(Bail);
                }
                i = j;
                integer = false;
            }
            self.pos = i;
            Ok(integer)
        }

        fn array(&mut self, depth: usize) -> R<()> {
            if depth >= MAX_DEPTH {
                return Err(Bail);
            }
            self.pos += 1;
            let id = self.push(Node::Array { len: 0, end: 0 });
            let mut len: u32 = 0;
            if self.peek_past_ws()? == b']' {
                self.pos += 1;
            } else {
                loop {
                    self.value(depth + 1)?;
                    len += 1;
                    match self.peek_past_ws()? {
                        b',' => {
                            self.pos += 1;
                            self.ws();
                        }
                        b']' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(Bail),
                    }
                }
            }
            self.nodes[id] = Node::Array {
                len,
                end: self.nodes.len() as u32,
            };
            Ok(())
        }

        fn object(&mut self, depth: usize) -> R<()> {
            if depth >= MAX_DEPTH {
                return Err(Bail);
            }
            self.pos += 1;
            let id = self.push(Node::Object {
                first: 0,
                len: 0,
                end: 0,
            });
            let base = self.pending.len();
            if self.peek_past_ws()? == b'}' {
                self.pos += 1;
            } else {
                loop {
                    if self.peek()? != b'"' {
                        return Err(Bail);
                    }
                    let opening = self.pos;
                    let mut key = self.string()?;
                    let r = key.start as usize..(key.start + key.len) as usize;
                    let name = if key.in_arena {
                        &self.arena[r]
                    } else {
                        &self.input[r]
                    };
                    // (a decoded name can hold what the input only escapes)
                    key.high = (self.high || key.in_arena) && is_high(name);
                    let prefix = if key.in_arena {
                        key_prefix(name)
                    } else {
                        key_prefix_at(self.input, key.start as usize, key.len as usize)
                    };
                    let after_name = self.pos;
                    if self.peek_past_ws()? != b':' {
                        return Err(Bail);
                    }
                    let compact = self.pos == after_name;
                    self.pos += 1;
                    let after_colon = self.pos;
                    self.ws();
                    let compact = compact && self.pos == after_colon;
                    let value = self.nodes.len() as u32;
                    self.value(depth + 1)?;
                    // `"name":value` is canonical as it stands when nothing in it is escaped,
                    // no whitespace surrounds the colon, and the value is a string or a number
                    // of the input (not rewritten into the arena) or a literal
                    let verbatim = compact
                        && !key.in_arena
                        && match self.nodes[value as usize] {
                            Node::String(span) | Node::Number(span) => !span.in_arena,
                            Node::Null | Node::True | Node::False => true,
                            Node::Array { .. } | Node::Object { .. } => false,
                        };
                    let whole = if verbatim {
                        (self.pos - opening) as u32
                    } else {
                        0
                    };
                    self.pending.push(Member {
                        key,
                        value,
                        whole,
                        prefix,
                    });
                    match self.peek_past_ws()? {
                        b',' => {
                            self.pos += 1;
                            self.ws();
                        }
                        b'}' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(Bail),
                    }
                }
            }
            close_object(
                self.input,
                self.arena,
                self.nodes,
                self.members,
                self.pending,
                id,
                base,
            )
            .map_err(|_| Bail)
        }
    }

    /// The character of the `\uXXXX` escape (or surrogate pair of two) at the start of `s`, and
    /// the bytes it took; a lone surrogate or a bad hex digit is left to jiter.
    fn unicode_escape(s: &[u8]) -> R<(char, usize)> {
        let hex4 = |at: usize| -> R<u32> {
            let digits = s.get(at..at + 4).ok_or(Bail)?;
            digits.iter().try_fold(0u32, |n, &d| {
                let v = char::from(d).to_digit(16).ok_or(Bail)?;
                Ok(n * 16 + v)
            })
        };
        let first = hex4(2)?;
        match first {
            0xD800..=0xDBFF => {
                if s.get(6..8) != Some(b"\\u") {
                    return Err(Bail);
                }
                let second = hex4(8)?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Bail);
                }
                let c = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                Ok((char::from_u32(c).ok_or(Bail)?, 12))
            }
            0xDC00..=0xDFFF => Err(Bail),
            _ => Ok((char::from_u32(first).ok_or(Bail)?, 6)),
        }
    }

    /// Index of the first `"`, `\` or (with `CONTROLS`) byte below 0x20 in `s[i..]` (`s.len()`
    /// if none), eight bytes at a time. For each test the lowest flagged byte of a word is exact
    /// (a borrow only spreads upwards, past a true hit), so the lowest of them is the first hit.
    /// Without `CONTROLS` the caller knows `s` holds no byte below 0x20.
    pub(super) fn scan_string<const CONTROLS: bool>(s: &[u8], mut i: usize) -> usize {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = s.get(i..).and_then(<[u8]>::first_chunk::<8>) {
            let w = u64::from_le_bytes(*chunk);
            let quote = w ^ (ONES * u64::from(b'"'));
            let backslash = w ^ (ONES * u64::from(b'\\'));
            let mut hits =
                (quote.wrapping_sub(ONES) & !quote) | (backslash.wrapping_sub(ONES) & !backslash);
            if CONTROLS {
                hits |= w.wrapping_sub(ONES * 0x20) & !w;
            }
            let hits = hits & HIGH;
            if hits != 0 {
                return i + (hits.trailing_zeros() / 8) as usize;
            }
            i += 8;
        }
        while let Some(&b) = s.get(i) {
            if b == b'"' || b == b'\\' || (CONTROLS && b < 0x20) {
                return i;
            }
            i += 1;
        }
        i
    }

    #[cfg(test)]
    mod tests {
        use super::scan_string;

        #[test]
        fn scan_string_finds_the_first_special_byte() {
            let specials = [b'"', b'\\', 0x00, 0x01, 0x1f];
            for len in 0..20 {
                for at in 0..len {
                    for &sp in &specials {
                        // plain bytes around, including ones a sloppy SWAR test confuses
                        let mut s: Vec<u8> = (0..len)
                            .map(|k| [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff][k % 9])
                            .collect();
                        s[at] = sp;
                        if at + 1 < len {
                            s[at + 1] = b'"';
                        }
                        assert_eq!(scan_string::<true>(&s, 0), at, "{s:?}");
                        if sp >= 0x20 {
                            assert_eq!(scan_string::<false>(&s, 0), at, "{s:?}");
                        }
                    }
                }
                let plain: Vec<u8> = (0..len).map(|k| (0x20 + (k * 37) % 0x60) as u8).collect();
                let expect = plain
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\')
                    .unwrap_or(len);
                assert_eq!(scan_string::<true>(&plain, 0), expect, "{plain:?}");
                assert_eq!(scan_string::<false>(&plain, 0), expect, "{plain:?}");
            }
        }
    }
}

/// A string for a message: at most 64 characters.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The first 8 bytes of `key`, zero-padded, as a big-endian number: when two prefixes differ,
/// they order as the names' bytes do.
fn key_prefix(key: &[u8]) -> u64 {
    if let Some(head) = key.first_chunk::<8>() {
        return u64::from_be_bytes(*head);
    }
    // shorter names byte by byte: a copy of variable length would be a call to memcpy
    let mut b = [0u8; 8];
    for (to, from) in b.iter_mut().zip(key) {
        *to = *from;
    }
    u64::from_be_bytes(b)
}

/// [`key_prefix`] of the name `input[start..start + len]`: one load of the eight bytes at
/// `start` with those past the name masked off, when the input goes on that far (a name of the
/// input always has at least its closing quote, a colon and a value after it). A name shorter
/// than eight bytes would otherwise be copied into a buffer and read back as one word, which
/// stalls the load (perf annotate of the fast parser).
fn key_prefix_at(input: &[u8], start: usize, len: usize) -> u64 {
    match input.get(start..).and_then(<[u8]>::first_chunk::<8>) {
        Some(head) if len < 8 => {
            u64::from_be_bytes(*head) & !(u64::MAX.checked_shr(8 * len as u32).unwrap_or(0))
        }
        Some(head) => u64::from_be_bytes(*head),
        None => key_prefix(&input[start..start + len]),
    }
}

/// Whether a name holds a character ≥ U+E000 (a UTF-8 byte ≥ 0xEE); ASCII names (nearly all)
/// are ruled out a word at a time.
fn is_high(name: &[u8]) -> bool {
    !name.is_ascii() && name.iter().any(|&b| b >= 0xEE)
}

/// [`intern`] for a member name, noting whether it holds a character ≥ U+E000.
fn intern_key(input: &[u8], arena: &mut Vec<u8>, s: &[u8]) -> Span {
    let mut span = intern(input, arena, s);
    span.high = is_high(s);
    span
}

/// The span of `s`: inside the input when it points there (jiter returns unescaped strings as
/// slices of the input), else a copy in the arena.
fn intern(input: &[u8], arena: &mut Vec<u8>, s: &[u8]) -> Span {
    let base = input.as_ptr() as usize;
    let p = s.as_ptr() as usize;
    if p >= base && p + s.len() <= base + input.len() {
        Span {
            start: (p - base) as u32,
            len: s.len() as u32,
            in_arena: false,
            high: false,
        }
    } else {
        let start = arena.len() as u32;
        arena.extend_from_slice(s);
        Span {
            start,
            len: s.len() as u32,
            in_arena: true,
            high: false,
        }
    }
}

/// The node of a number literal `raw` (a slice of `input` already checked to be JSON syntax by
/// jiter); Err is the message for an `InvalidNumber`.
fn number(input: &[u8], arena: &mut Vec<u8>, raw: &[u8]) -> Result<Node, String> {
    let is_integer = !raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
    number_of(input, arena, raw, is_integer)
}

/// [`number`] when the caller knows whether `raw` is an integer literal (no fraction, no
/// exponent).
fn number_of(
    input: &[u8],
    arena: &mut Vec<u8>,
    raw: &[u8],
    is_integer: bool,
) -> Result<Node, String> {
    if is_integer {
        let digits = raw.strip_prefix(b"-").unwrap_or(raw);
        let magnitude = if digits.len() > 16 {
            None
        } else {
            Some(
                digits
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
            )
        };
        match magnitude {
            Some(m) if m <= MAX_SAFE_INTEGER => {
                if m == 0 && raw.len() != 1 {
                    // `-0`
                    let at = arena.len() as u32;
                    arena.push(b'0');
                    return Ok(Node::Number(Span {
                        start: at,
                        len: 1,
                        in_arena: true,
                        high: false,
                    }));
                }
                // An integer literal of at most 2^53 is its own ES6 form (no leading zeros in
                // JSON, < 1e21). Point at it where it stands in the input.
                return Ok(Node::Number(intern(input, arena, raw)));
            }
            _ => {
                return Err(format!(
                    "integer {} is beyond ±2^53 and cannot be stored exactly as a JSON number; \
                     send it as a string",
                    clip(&String::from_utf8_lossy(raw))
                ))
            }
        }
    }
    if is_canonical_decimal(raw) {
        return Ok(Node::Number(intern(input, arena, raw)));
    }
    let text = std::str::from_utf8(raw).map_err(|_| "number is not ASCII".to_string())?;
    let value: f64 = text
        .parse()
        .map_err(|_| format!("cannot read number {}", clip(text)))?;
    if !value.is_finite() {
        return Err(format!(
            "number {} overflows a double; send it as a string",
            clip(text)
        ));
    }
    // ES6 writes doubles below 1e21 in integer form: one beyond 2^53 would come out as an integer
    // literal beyond 2^53, which this module refuses, so canonical output would not re-parse.
    let magnitude = value.abs();
    if magnitude > MAX_SAFE_INTEGER as f64 && magnitude < 1e21 {
        return Err(format!(
            "number {} is an integer beyond ±2^53 once read as a double; send it as a string",
            clip(text)
        ));
    }
    let at = arena.len() as u32;
    write_number(arena, value);
    Ok(Node::Number(Span {
        start: at,
        len: arena.len() as u32 - at,
        in_arena: true,
        high: false,
    }))
}

/// Whether a number literal (JSON syntax) is a plain decimal `-?int.frac` that already is the ES6
/// form of its double, so it needs no reading and writing: at most 15 significant digits (every
/// such decimal reads as a different double, so the shortest digits that read back as it are the
/// literal's own), no trailing zero in the fraction, and at least 1e-6 in magnitude (ES6 writes
/// smaller ones with an exponent; larger ones, below 1e21, without).
fn is_canonical_decimal(raw: &[u8]) -> bool {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    let Some(dot) = digits.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (int, frac) = (&digits[..dot], &digits[dot + 1..]);
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !all_digits(int) || !all_digits(frac) || frac.last() == Some(&b'0') {
        return false;
    }
    if int.len() > 1 && int[0] == b'0' {
        return false; // not JSON: leave it to the full reading
    }
    let significant = if int == b"0" {
        let zeros = frac.iter().take_while(|&&b| b == b'0').count();
        if zeros > 5 {
            return false;
        }
        frac.len() - zeros
    } else {
        int.len() + frac.len()
    };
    significant <= 15
}

/// The message of a syntax or encoding error reported by jiter.
fn json_error(e: JiterError) -> CanonError {
    let what = match &e.error_type {
        JiterErrorType::JsonError(t) => match t {
            JsonErrorType::InvalidUnicodeCodePoint => "invalid UTF-8 in a string".to_string(),
            JsonErrorType::LoneLeadingSurrogateInHexEscape
            | JsonErrorType::UnexpectedEndOfHexEscape => {
                "lone surrogate escape (\\ud800-\\udfff must form a pair; I-JSON forbids it)"
                    .to_string()
            }
            JsonErrorType::ControlCharacterWhileParsingString => {
                "raw control character in a string (escape it)".to_string()
            }
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    CanonError::InvalidJson(format!("invalid JSON at byte {}: {what}", e.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        match canonicalize(s.as_bytes()) {
            Ok(v) => String::from_utf8(v).expect("canonical output is UTF-8"),
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    fn err(input: &[u8]) -> CanonError {
        canonicalize(input).expect_err("must be rejected")
    }

    #[test]
    fn key_prefix_at_agrees_with_key_prefix() {
        let input = b"\"ab\":1,\"abcdefgh\":2,\"\xc3\xa9t\xc3\xa9\":3,\"abcdefghij\"";
        for start in 0..input.len() {
            for len in 0..=(input.len() - start) {
                assert_eq!(
                    key_prefix_at(input, start, len),
                    key_prefix(&input[start..start + len]),
                    "{start} {len}"
                );
            }
        }
    }

    /// Canonical bytes through the fast path (when it takes the input; it marks the members
    /// copied whole from the input) and through jiter alone (every member written piece by
    /// piece); both ways must agree.
    fn both_paths(input: &[u8]) -> (Result<Vec<u8>, CanonError>, Result<Vec<u8>, CanonError>) {
        let run = |try_fast: bool| {
            let mut scratch = Scratch::default();
            let doc = Document::parse_with(input, &mut scratch, try_fast)?;
            let mut out = Vec::new();
            doc.write_value(doc.root(), &mut out);
            Ok(out)
        };
        (run(true), run(false))
    }

    #[test]
    fn fast_path_agrees_with_jiter_on_mutated_texts() {
        let seeds: [&[u8]; 8] = [
            br#"{"eventVersion":"1.09","userIdentity":{"type":"AssumedRole","arn":"a:b"},"n":[1,-0,0.5,1e3,-2.50E-3,9007199254740992],"t":true,"f":false,"z":null,"e":{},"a":[]}"#,
            " { \"b\" : [ 1 , 2 ] ,\t\"a\" :\r\n{\"\\u00e9\":\"x\"} } ".as_bytes(),
            "{\"zoë\":\"renée\",\"日本\":[\"語\",{\"\u{e000}\":1,\"\u{1f600}\":2}]}".as_bytes(),
            br#"[[[[[[]]]]],{"a":{"a":{"a":0}}},"q\"uote",12345678901234567890]"#,
            br#"{"a":1,"a":2,"b":[1.0,0.0,-0.0,100,1E21,1e-7]}"#,
            br#""just a string""#,
            br#"{"e\u00e9":"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00\u0000\uE000x","k\"":["\u12ab\uFFFF"]}"#,
            r#"["\ud800","\udc00x","\ud83d\u0041","\u00G0","\x","\u00e","é\u00e9é",{"\ud800\udc00":0}]"#
                .as_bytes(),
        ];
        // JSON-ish bytes a mutation inserts or swaps in
        let alphabet = b"{}[]:,\"\\ \t\n0123456789-+.eEtruefalsnu/bdD\x01\x7f\xc3\xa9\xff";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut fast_taken = 0;
        for seed in seeds {
            for _ in 0..3000 {
                let mut text = seed.to_vec();
                for _ in 0..1 + next(3) {
                    let at = next(text.len() + 1);
                    let b = alphabet[next(alphabet.len())];
                    match next(3) {
                        0 => text.insert(at, b),
                        1 if at < text.len() => {
                            text.remove(at);
                        }
                        _ if at < text.len() => text[at] = b,
                        _ => text.push(b),
                    }
                }
                let (fast, slow) = both_paths(&text);
                assert_eq!(fast, slow, "{:?}", String::from_utf8_lossy(&text));
                let mut scratch = Scratch::default();
                scratch.clear();
                if fast::parse(&text, &mut scratch).is_ok() {
                    fast_taken += 1;
                }
            }
            let (fast, slow) = both_paths(seed);
            assert_eq!(fast, slow);
        }
        // the mutations must leave the fast path plenty of texts it accepts
        assert!(fast_taken > 1000, "fast path took only {fast_taken} texts");
    }

    #[test]
    fn basics() {
        assert_eq!(
            canon(" {\"b\": 1, \"a\": [true, false, null]} \n"),
            r#"{"a":[true,false,null],"b":1}"#
        );
        assert_eq!(canon("-0"), "0");
        assert_eq!(canon("-0.0"), "0");
        assert_eq!(canon("1.0"), "1");
        assert_eq!(canon("1e2"), "100");
        assert_eq!(canon("1E-7"), "1e-7");
        assert_eq!(
            canon("\"\\u2028\\u00e9\\u001f\\/\""),
            "\"\u{2028}é\\u001f/\""
        );
        assert_eq!(canon("[]"), "[]");
        assert_eq!(canon("{}"), "{}");
        assert_eq!(canon("9007199254740992"), "9007199254740992");
        assert_eq!(canon("-9007199254740992"), "-9007199254740992");
        assert_eq!(canon("9007199254740993.0"), "9007199254740992");
    }

    #[test]
    fn utf16_order_of_supplementary_vs_private_use() {
        // U+1F600 (surrogates D83D DE00) sorts before U+E000 in UTF-16, after it in UTF-8.
        assert_eq!(
            canon("{\"\u{e000}\":1,\"\u{1f600}\":2}"),
            "{\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
        // the same when the names are escaped in an otherwise ASCII text (both parsers)
        let escaped = br#"{"\uFB33 0":null,"\uDBFF\uDFFF":true}"#;
        let want = "{\"\u{10ffff}\":true,\"\u{fb33} 0\":null}".as_bytes();
        let (fast, jiter) = both_paths(escaped);
        assert_eq!(fast.expect("fast path"), want);
        assert_eq!(jiter.expect("jiter path"), want);
        let samples = [
            "",
            "a",
            "ab",
            "é",
            "\u{7ff}",
            "\u{d7ff}",
            "\u{e000}",
            "\u{ffff}",
            "\u{10000}",
            "\u{1f600}",
            "\u{10ffff}",
            "a\u{10000}",
            "a\u{fb33}",
        ];
        for a in samples {
            for b in samples {
                let want = a.encode_utf16().cmp(b.encode_utf16());
                assert_eq!(
                    cmp_utf16(a.as_bytes(), b.as_bytes()),
                    want,
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert!(matches!(err(b"\"\xff\""), CanonError::InvalidJson(m) if m.contains("UTF-8")));
        assert!(
            matches!(err(b"{\"\xc3\x28\":1}"), CanonError::InvalidJson(m) if m.contains("UTF-8"))
        );
        assert!(matches!(err(b"[1] \xff"), CanonError::InvalidJson(_)));
        // overlong encoding and an encoded surrogate are not UTF-8
        assert!(matches!(err(b"\"\xc0\xaf\""), CanonError::InvalidJson(_)));
        assert!(matches!(
            err(b"\"\xed\xa0\x80\""),
            CanonError::InvalidJson(_)
        ));
    }

    #[test]
    fn rejects_lone_surrogates() {
        for s in [
            r#""\ud800""#,
            r#""\ud800x""#,
            r#""\ud800\u0041""#,
            r#""\udc00""#,
            r#"{"\udfff":1}"#,
            r#""a\ud83d""#,
        ] {
            match err(s.as_bytes()) {
                CanonError::InvalidJson(m) => assert!(m.contains("surrogate"), "{s}: {m}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!(canon(r#""\ud83d\ude02""#), "\"😂\"");
    }

    #[test]
    fn rejects_duplicates_after_unescaping() {
        match err(br#"{"a":{"x":1,"\u0078":2}}"#) {
            CanonError::InvalidJson(m) => {
                assert!(m.contains("duplicate member name \"x\""), "{m}");
                assert!(m.contains("object a"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        match err(br#"{"k":1,"k":1}"#) {
            CanonError::InvalidJson(m) => assert!(m.contains("top-level"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nesting_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(canon(&ok), ok);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(
            matches!(err(deep.as_bytes()), CanonError::InvalidJson(m) if m.contains("nesting"))
        );
        let deep_obj = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(
            matches!(err(deep_obj.as_bytes()), CanonError::InvalidJson(m) if m.contains("nesting"))
        );
    }

    #[test]
    fn big_integers_name_their_path() {
        match err(br#"{"requestParameters":{"items":[{},{},{},{"size":9007199254740993}]}}"#) {
            CanonError::InvalidNumber { path, message } => {
                assert_eq!(path, "requestParameters.items[3].size");
                assert!(message.contains("as a string"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(err(b"-9007199254740993"), CanonError::InvalidNumber { path, .. } if path == "(top level)")
        );
        assert!(
            matches!(err(b"[123456789012345678901234567890]"), CanonError::InvalidNumber { path, .. } if path == "[0]")
        );
        match err(br#"{"a":1e400}"#) {
            CanonError::InvalidNumber { path, message } => {
                assert_eq!(path, "a");
                assert!(message.contains("overflows"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(err(b"-1e400"), CanonError::InvalidNumber { .. }));
        for s in [
            "1e20",
            "-9007199254740994.0",
            "9007199254740993.5",
            "1.5e16",
        ] {
            match err(s.as_bytes()) {
                CanonError::InvalidNumber { message, .. } => {
                    assert!(message.contains("as a string"), "{s}: {message}")
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!(canon("9007199254740993.0"), "9007199254740992");
        assert_eq!(canon("1e21"), "1e+21");
        assert_eq!(canon("-1e21"), "-1e+21");
        assert_eq!(canon("1e-400"), "0");
    }

    #[test]
    fn rejects_syntax_errors() {
        for s in [
            "",
            " ",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "+1",
            "NaN",
            "Infinity",
            "-",
            "\"\t\"",
            "'a'",
            "{a:1}",
            "[1] [2]",
            "tru",
            "\"\\x\"",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(err(s.as_bytes()), CanonError::InvalidJson(_)),
                "{s:?} accepted"
            );
        }
        match err(b"{\"a\":1 \"b\":2}") {
            CanonError::InvalidJson(m) => assert!(m.contains("byte 7"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn raw_control_characters_are_refused_at_any_position() {
        // short strings and strings long enough for jiter's SIMD path
        for prefix in [0usize, 5, 17, 40] {
            for c in 0u8..0x20 {
                let mut input = b"[\"".to_vec();
                input.resize(input.len() + prefix, b'a');
                input.push(c);
                input.extend_from_slice(b"z\"]");
                assert!(
                    matches!(err(&input), CanonError::InvalidJson(m) if m.contains("control")),
                    "byte {c:#x} after {prefix} bytes"
                );
            }
        }
        // DEL and U+2028 stand as they are, in and out
        assert_eq!(canon("[\"a\u{7f}\u{2028}b\"]"), "[\"a\u{7f}\u{2028}b\"]");
    }

    #[test]
    fn canonical_decimals_are_what_reading_and_writing_the_double_gives() {
        // every plain decimal of up to 17 digits around each position of the point, trailing
        // zeros, leading zeros of the fraction (through 1e-6 and below), both signs: the
        // shortcut takes a literal only when the ES6 form of its double is the literal itself
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        let (mut taken, mut checked) = (0, 0);
        for _ in 0..200_000 {
            let r = next();
            let total = 1 + (r % 17) as usize;
            let mut digits: Vec<u8> = (0..total)
                .map(|k| b'0' + ((next() >> (k % 8)) % 10) as u8)
                .collect();
            if r & (1 << 20) != 0 {
                digits[total - 1] = b'0'; // a trailing zero
            }
            let point = ((r >> 8) % (total as u64 + 1)) as usize;
            let int: Vec<u8> = match digits[..point].iter().position(|&d| d != b'0') {
                _ if point == 0 => b"0".to_vec(),
                Some(first) => digits[first..point].to_vec(),
                None => b"0".to_vec(),
            };
            let mut frac = digits[point..].to_vec();
            if frac.is_empty() {
                frac.push(b'5');
            }
            if r & (1 << 21) != 0 {
                let zeros = ((r >> 24) % 9) as usize; // leading zeros of the fraction
                frac.splice(0..0, std::iter::repeat_n(b'0', zeros));
            }
            let mut raw = Vec::new();
            if r & (1 << 22) != 0 {
                raw.push(b'-');
            }
            raw.extend_from_slice(&int);
            raw.push(b'.');
            raw.extend_from_slice(&frac);
            let text = std::str::from_utf8(&raw).expect("ASCII");
            let mut expect = Vec::new();
            write_number(&mut expect, text.parse::<f64>().expect("a decimal"));
            checked += 1;
            if is_canonical_decimal(&raw) {
                taken += 1;
                assert_eq!(expect, raw, "{text}");
            }
            // and whichever way it goes, the document's canonical form is the double's (or the
            // number is refused: an integer beyond 2^53 once read, never one the shortcut takes)
            match canonicalize(&raw) {
                Ok(out) => assert_eq!(out, expect, "{text}"),
                Err(e) => assert!(!is_canonical_decimal(&raw), "{text}: {e:?}"),
            }
        }
        assert!(
            taken > checked / 4 && taken < checked,
            "{taken} of {checked}"
        );
        for no in [
            "1.50",
            "0.0",
            "-0.0",
            "0.0000001",
            "1e5",
            "1.5e3",
            "10",
            "1234567890123456.5",
        ] {
            assert!(!is_canonical_decimal(no.as_bytes()), "{no}");
        }
        for yes in ["1.5", "-0.5", "0.000001", "12345678901234.5", "0.001038"] {
            assert!(is_canonical_decimal(yes.as_bytes()), "{yes}");
        }
    }

    #[test]
    fn idempotent() {
        for s in [
            r#"{"z":[1.5e300,-0.0,{"b":"\u00e9\n","a":null}],"\u20ac":"x","aa":"\"\\"}"#,
            "[\"\u{2028}\",\"\\u0000\\u007f\",1e21,1e-7,123456789.123456789]",
        ] {
            let once = canon(s);
            assert_eq!(canon(&once), once);
        }
    }

    #[test]
    fn merged_writer_inserts_in_order() {
        with_scratch(|s| {
            let doc = Document::parse(br#"{"b":1,"d":2,"receipt":3}"#, s).expect("valid");
            let mut out = Vec::new();
            let mut extras = [
                ("e", Extra::Bool(true)),
                ("a", Extra::Str("x\"")),
                ("c", Extra::Null),
                ("receipt", Extra::Raw(b"{}")),
            ];
            doc.write_object_merged(doc.root(), &["receipt"], &mut extras, &mut out);
            assert_eq!(
                out,
                br#"{"a":"x\"","b":1,"c":null,"d":2,"e":true,"receipt":{}}"#
            );
        });
    }
}
