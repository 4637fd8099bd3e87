//! The CBOR envelope (PROTOCOL §4), read and written with a small hand-written CBOR layer ([`super::cbor`]) so
//! the browser build carries no serde.
//!
//! Decoding is one pass over the input straight into the typed [`Envelope`]: the map's keys are matched as
//! raw bytes, each value's extent is found with the depth-limited walker, and the payload `d` is kept as the
//! raw bytes of its CBOR item ([`Payload`]) until the application asks for its own type.
//!
//! Rules this decoder applies where PROTOCOL §4 leaves a choice:
//! - Unknown keys are ignored, and so are known keys that the envelope's `t` does not use (a `m` on an `evt`
//!   is not type-checked), for forward compatibility.
//! - Duplicate keys: the last occurrence wins (as in most JSON parsers). Only the known keys are tracked.
//! - Text values and keys may be definite or indefinite-length; text values must be valid UTF-8.
//! - Topic names are not checked here ([`validate_topic`] is for senders and servers): `$`-topics are reserved
//!   for the protocol itself, so an old client must still be able to decode them.

use core::fmt;

use super::cbor::{self, Arg, WalkError, MAJOR_MAP, MAJOR_TEXT, MAJOR_UINT};
use crate::error::{CloseCode, ErrorCode};

/// Nesting depth allowed in a payload `d` (arrays, maps and tags count one level each).
///
/// A payload of `MAX_DEPTH` nested arrays is accepted; one more level is refused with `TooDeep`. The same
/// limit applies to the values of unknown envelope keys.
pub const MAX_DEPTH: usize = 128;

/// The longest close reason a WebSocket close frame can carry (RFC 6455 §5.5: 125-byte payload, 2 for the code).
const MAX_CLOSE_REASON: usize = 123;

/// How many bytes of an unknown `t` an error keeps: enough to name it, never a peer-sized string.
const MAX_UNKNOWN_TYPE: usize = 64;

/// One CBOR data item, kept as its encoded bytes until the application asks for its own type.
///
/// Invariant: the bytes are exactly one well-formed CBOR item no deeper than [`MAX_DEPTH`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Vec<u8>);

/// Why bytes are not a valid payload, or a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not exactly one well-formed CBOR item (message says where).
    InvalidCbor(String),
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// serde could not encode or decode the value (message from serde).
    Serde(String),
}

/// One Sockeye message. Payloads `d` are optional on the wire; `None` means the key was absent.
#[derive(Clone, Debug, PartialEq)]
pub enum Envelope {
    /// `t: "msg"`: a one-way message named `m`.
    Msg { name: String, data: Option<Payload> },
    /// `t: "req"`: a request for `method`; answered by `res` or `err` with the same `id`.
    Req { id: u64, method: String, data: Option<Payload> },
    /// `t: "res"`: the success reply to request `id`.
    Res { id: u64, data: Option<Payload> },
    /// `t: "err"`: the error reply to request `id`, or a connection-level notice when `id` is `None`.
    Err { id: Option<u64>, code: ErrorCode, message: String, data: Option<Payload> },
    /// `t: "sub"`: subscribe to `topic` (client → server).
    Sub { id: u64, topic: String },
    /// `t: "unsub"`: unsubscribe from `topic` (client → server).
    Unsub { id: u64, topic: String },
    /// `t: "pub"`: publish to `topic` (client → server).
    Pub { topic: String, data: Option<Payload> },
    /// `t: "evt"`: a published message delivered to a subscriber; `seq` counts per topic (server → client).
    Evt { topic: String, seq: u64, data: Option<Payload> },
}

/// Bytes inside a well-formed frame that are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    /// The `id` recovered from the map, when there was one: the refusal can then be an `err` reply.
    pub id: Option<u64>,
    pub kind: EnvelopeErrorKind,
}

/// The rule an invalid envelope broke.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeErrorKind {
    /// Not well-formed CBOR (message says where), or a text value that is not UTF-8.
    InvalidCbor(String),
    /// The item is well-formed but not a map.
    NotAMap,
    /// Map keys must be text.
    NonTextKey,
    /// A key the envelope's `t` requires is absent.
    MissingKey(&'static str),
    /// A known key holds a value of the wrong CBOR type.
    WrongType { key: &'static str, expected: &'static str },
    /// `t` is not one this version knows (at most 64 bytes of it are kept).
    UnknownType(String),
    /// A value nests deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes left after the envelope map.
    TrailingBytes,
}

/// How the protocol says to answer an invalid envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Reply with this `err` envelope and keep the connection.
    Reply(Envelope),
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
}

/// Why a topic name is not allowed (PROTOCOL §4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidTopic {
    /// Topics have at least one byte.
    Empty,
    /// Topics have at most 256 bytes of UTF-8; this one has `len`.
    TooLong { len: usize },
    /// Topics starting with `$` are reserved for the protocol.
    Reserved,
}

/// The longest topic name, in bytes of UTF-8.
const MAX_TOPIC_BYTES: usize = 256;

/// Checks a topic name against PROTOCOL §4: 1..=256 bytes of UTF-8, not starting with `$`.
///
/// # Errors
/// [`InvalidTopic`] naming the broken rule. Never panics.
pub fn validate_topic(topic: &str) -> Result<(), InvalidTopic> {
    if topic.is_empty() {
        Err(InvalidTopic::Empty)
    } else if topic.len() > MAX_TOPIC_BYTES {
        Err(InvalidTopic::TooLong { len: topic.len() })
    } else if topic.starts_with('$') {
        Err(InvalidTopic::Reserved)
    } else {
        Ok(())
    }
}

impl fmt::Display for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidTopic::Empty => f.write_str("topic is empty"),
            InvalidTopic::TooLong { len } => {
                write!(f, "topic is {len} bytes long, more than {MAX_TOPIC_BYTES}")
            }
            InvalidTopic::Reserved => f.write_str("topics starting with '$' are reserved"),
        }
    }
}

impl std::error::Error for InvalidTopic {}

impl Payload {
    /// Wraps encoded CBOR after checking it is exactly one well-formed item no deeper than [`MAX_DEPTH`].
    ///
    /// Only well-formedness is checked (RFC 8949 §1.2), not validity: text inside is not checked for UTF-8,
    /// tags are not interpreted. Lengths are checked against the input, never allocated.
    ///
    /// # Errors
    /// [`PayloadError::TooDeep`] for nesting beyond [`MAX_DEPTH`], [`PayloadError::InvalidCbor`] for anything
    /// else (empty, truncated, malformed, trailing bytes). Never panics.
    pub fn from_cbor(bytes: Vec<u8>) -> Result<Payload, PayloadError> {
        match cbor::skip_item(&bytes, 0) {
            Ok(end) if end == bytes.len() => Ok(Payload(bytes)),
            Ok(end) => Err(PayloadError::InvalidCbor(format!("bytes after the item, from byte {end}"))),
            Err(WalkError::TooDeep) => Err(PayloadError::TooDeep),
            Err(e) => Err(PayloadError::InvalidCbor(e.describe())),
        }
    }

    /// The encoded CBOR item.
    pub fn as_cbor(&self) -> &[u8] {
        &self.0
    }

    /// The encoded CBOR item, without a copy.
    pub fn into_cbor(self) -> Vec<u8> {
        self.0
    }

    /// CBOR `null` (`0xf6`).
    pub fn null() -> Payload {
        Payload(vec![0xf6])
    }

    /// Encodes `value` with serde and ciborium.
    ///
    /// # Errors
    /// [`PayloadError::Serde`] when serde refuses the value, [`PayloadError::TooDeep`] when the encoding nests
    /// deeper than [`MAX_DEPTH`] (a peer would refuse it).
    #[cfg(feature = "serde")]
    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Payload, PayloadError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes).map_err(|e| PayloadError::Serde(e.to_string()))?;
        // The serializer has no depth limit of its own; keep the invariant.
        Payload::from_cbor(bytes)
    }

    /// Decodes the payload into `T` with serde and ciborium, with recursion limited to [`MAX_DEPTH`].
    ///
    /// # Errors
    /// [`PayloadError::Serde`] when the CBOR does not fit `T`. Never panics.
    #[cfg(feature = "serde")]
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, PayloadError> {
        ciborium::de::from_reader_with_recursion_limit(self.0.as_slice(), MAX_DEPTH)
            .map_err(|e| PayloadError::Serde(e.to_string()))
    }
}

impl fmt::Debug for Payload {
    /// `Payload(5 bytes: a1 61 6b 01 02)`, with at most 16 bytes shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 16;
        write!(f, "Payload({} bytes:", self.0.len())?;
        for byte in self.0.iter().take(SHOWN) {
            write!(f, " {byte:02x}")?;
        }
        if self.0.len() > SHOWN {
            f.write_str(" …")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::InvalidCbor(what) => write!(f, "payload is not one well-formed CBOR item: {what}"),
            PayloadError::TooDeep => write!(f, "payload nests deeper than {MAX_DEPTH}"),
            PayloadError::Serde(what) => write!(f, "payload conversion failed: {what}"),
        }
    }
}

impl std::error::Error for PayloadError {}

impl Envelope {
    /// Encodes the envelope as its CBOR map (no frame kind byte).
    ///
    /// Keys are written `t`, `id`, `m`, `code`, `msg`, `topic`, `seq`, then `d` last, so a receiver that fails
    /// on a broken payload has already seen the `id` to answer with. Absent optional keys are not written.
    /// Never panics.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_to(&mut out);
        out
    }

    /// Appends the envelope's CBOR map to `out` (lets the fragmenter write the kind byte first without a copy).
    /// Never panics.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        let data = self.data();
        let entries = 1 + match self {
            Envelope::Msg { .. } | Envelope::Res { .. } | Envelope::Pub { .. } => 1,
            Envelope::Req { .. } | Envelope::Sub { .. } | Envelope::Unsub { .. } | Envelope::Evt { .. } => 2,
            Envelope::Err { id, .. } => 2 + u64::from(id.is_some()),
        } + u64::from(data.is_some());
        cbor::write_header(out, MAJOR_MAP, entries);
        write_text_entry(out, "t", self.kind());
        if let Some(id) = self.id() {
            write_uint_entry(out, "id", id);
        }
        match self {
            Envelope::Msg { name: m, .. } | Envelope::Req { method: m, .. } => write_text_entry(out, "m", m),
            Envelope::Err { code, message, .. } => {
                write_text_entry(out, "code", code.as_str());
                write_text_entry(out, "msg", message);
            }
            Envelope::Sub { topic, .. } | Envelope::Unsub { topic, .. } | Envelope::Pub { topic, .. } => {
                write_text_entry(out, "topic", topic);
            }
            Envelope::Evt { topic, seq, .. } => {
                write_text_entry(out, "topic", topic);
                write_uint_entry(out, "seq", *seq);
            }
            Envelope::Res { .. } => {}
        }
        if let Some(data) = data {
            cbor::write_text(out, "d");
            out.extend_from_slice(data.as_cbor());
        }
    }

    /// Decodes one envelope: the input must be exactly one CBOR map (PROTOCOL §4).
    ///
    /// One pass: keys are matched as raw bytes, values are located with the depth-limited walker and then
    /// read straight into the variant's fields; `d` is copied out as its raw CBOR. Declared lengths are
    /// checked against the input and never allocated.
    ///
    /// # Errors
    /// [`EnvelopeError`] naming the broken rule. Its `id` is the map's `id` when it is an unsigned integer
    /// and the scan reached it (a malformed item before the `id` key hides it); [`EnvelopeError::refusal`]
    /// says how to answer. Never panics, for any input.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut fields = Fields::default();
        let scanned = fields.scan(bytes);
        let recovered_id = fields.id.and_then(|span| read_uint(bytes, span));
        let fail = |kind| EnvelopeError { id: recovered_id, kind };
        scanned.map_err(fail)?;
        fields.build(bytes).map_err(fail)
    }

    /// The request `id` this envelope carries, if any (`req`, `res`, `sub`, `unsub`, and `err` with an id).
    pub fn id(&self) -> Option<u64> {
        match self {
            Envelope::Req { id, .. } | Envelope::Res { id, .. } | Envelope::Sub { id, .. } => Some(*id),
            Envelope::Unsub { id, .. } => Some(*id),
            Envelope::Err { id, .. } => *id,
            Envelope::Msg { .. } | Envelope::Pub { .. } | Envelope::Evt { .. } => None,
        }
    }

    /// The wire spelling of `t`: `"msg"`, `"req"`, `"res"`, `"err"`, `"sub"`, `"unsub"`, `"pub"` or `"evt"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Envelope::Msg { .. } => "msg",
            Envelope::Req { .. } => "req",
            Envelope::Res { .. } => "res",
            Envelope::Err { .. } => "err",
            Envelope::Sub { .. } => "sub",
            Envelope::Unsub { .. } => "unsub",
            Envelope::Pub { .. } => "pub",
            Envelope::Evt { .. } => "evt",
        }
    }

    /// The payload `d`, for the kinds that carry one.
    fn data(&self) -> Option<&Payload> {
        match self {
            Envelope::Msg { data, .. }
            | Envelope::Req { data, .. }
            | Envelope::Res { data, .. }
            | Envelope::Err { data, .. }
            | Envelope::Pub { data, .. }
            | Envelope::Evt { data, .. } => data.as_ref(),
            Envelope::Sub { .. } | Envelope::Unsub { .. } => None,
        }
    }
}

fn write_text_entry(out: &mut Vec<u8>, key: &str, value: &str) {
    cbor::write_text(out, key);
    cbor::write_text(out, value);
}

fn write_uint_entry(out: &mut Vec<u8>, key: &str, value: u64) {
    cbor::write_text(out, key);
    cbor::write_header(out, MAJOR_UINT, value);
}

/// Where a value lies in the input: `start..end`.
type Span = (usize, usize);

/// The known keys' value spans found by [`Fields::scan`] (last occurrence wins).
#[derive(Default)]
struct Fields {
    t: Option<Span>,
    id: Option<Span>,
    m: Option<Span>,
    d: Option<Span>,
    code: Option<Span>,
    msg: Option<Span>,
    topic: Option<Span>,
    seq: Option<Span>,
    non_text_key: bool,
}

/// The longest known key (`topic`); longer keys are unknown without looking further.
const MAX_KEY: usize = 5;

impl Fields {
    /// Walks the whole map once, recording where each known key's value is.
    ///
    /// Stops at the first malformed item; a non-text key is only noted so the scan can still find the `id`.
    fn scan(&mut self, bytes: &[u8]) -> Result<(), EnvelopeErrorKind> {
        let (header, mut pos) = cbor::read_header(bytes, 0).map_err(walk_error)?;
        if header.major != MAJOR_MAP {
            // Say "not a map" only for a well-formed item, so garbage is reported as garbage.
            return Err(match cbor::skip_item(bytes, 0) {
                Ok(_) => EnvelopeErrorKind::NotAMap,
                Err(e) => walk_error(e),
            });
        }
        let mut left = match header.arg {
            // Each entry takes at least two bytes: a count beyond the input is refused before the loop.
            Arg::Value(n) if n <= (bytes.len() - pos) as u64 / 2 => Some(n),
            Arg::Value(_) => return Err(walk_error(WalkError::Truncated { at: 0 })),
            Arg::Indefinite => None,
        };
        loop {
            match &mut left {
                Some(0) => break,
                Some(n) => *n -= 1,
                None if bytes.get(pos) == Some(&0xff) => {
                    pos += 1;
                    break;
                }
                None => {}
            }
            let key_start = pos;
            pos = cbor::skip_item(bytes, pos).map_err(walk_error)?;
            let value_start = pos;
            pos = cbor::skip_item(bytes, pos).map_err(walk_error)?;
            let span = Some((value_start, pos));
            match key_bytes(bytes, key_start) {
                Some((buf, len)) => match &buf[..len] {
                    b"t" => self.t = span,
                    b"id" => self.id = span,
                    b"m" => self.m = span,
                    b"d" => self.d = span,
                    b"code" => self.code = span,
                    b"msg" => self.msg = span,
                    b"topic" => self.topic = span,
                    b"seq" => self.seq = span,
                    _ => {}
                },
                None if key_is_text(bytes, key_start) => {}
                None => self.non_text_key = true,
            }
        }
        if pos != bytes.len() {
            return Err(EnvelopeErrorKind::TrailingBytes);
        }
        Ok(())
    }

    /// Reads the recorded values into the variant `t` names.
    fn build(&self, bytes: &[u8]) -> Result<Envelope, EnvelopeErrorKind> {
        use EnvelopeErrorKind::MissingKey;
        if self.non_text_key {
            return Err(EnvelopeErrorKind::NonTextKey);
        }
        let text = |span: Option<Span>, key: &'static str| -> Result<String, EnvelopeErrorKind> {
            read_text(bytes, span.ok_or(MissingKey(key))?, key)
        };
        let uint = |span: Option<Span>, key: &'static str| -> Result<u64, EnvelopeErrorKind> {
            read_uint(bytes, span.ok_or(MissingKey(key))?)
                .ok_or(EnvelopeErrorKind::WrongType { key, expected: "unsigned integer" })
        };
        // The walker has already checked `d` is one well-formed item within MAX_DEPTH: the Payload invariant.
        let data = self.d.map(|(start, end)| Payload(bytes[start..end].to_vec()));
        let t = text(self.t, "t")?;
        Ok(match t.as_str() {
            "msg" => Envelope::Msg { name: text(self.m, "m")?, data },
            "req" => Envelope::Req { id: uint(self.id, "id")?, method: text(self.m, "m")?, data },
            "res" => Envelope::Res { id: uint(self.id, "id")?, data },
            "err" => Envelope::Err {
                id: match self.id {
                    Some(_) => Some(uint(self.id, "id")?),
                    None => None,
                },
                code: ErrorCode::parse(&text(self.code, "code")?),
                message: text(self.msg, "msg")?,
                data,
            },
            "sub" => Envelope::Sub { id: uint(self.id, "id")?, topic: text(self.topic, "topic")? },
            "unsub" => Envelope::Unsub { id: uint(self.id, "id")?, topic: text(self.topic, "topic")? },
            "pub" => Envelope::Pub { topic: text(self.topic, "topic")?, data },
            "evt" => Envelope::Evt { topic: text(self.topic, "topic")?, seq: uint(self.seq, "seq")?, data },
            _ => {
                let mut t = t;
                truncate_at_char_boundary(&mut t, MAX_UNKNOWN_TYPE);
                return Err(EnvelopeErrorKind::UnknownType(t));
            }
        })
    }
}

fn walk_error(e: WalkError) -> EnvelopeErrorKind {
    match e {
        WalkError::TooDeep => EnvelopeErrorKind::TooDeep,
        e => EnvelopeErrorKind::InvalidCbor(e.describe()),
    }
}

fn key_is_text(bytes: &[u8], pos: usize) -> bool {
    bytes.get(pos).is_some_and(|b| b >> 5 == MAJOR_TEXT)
}

/// The bytes of a well-formed text key at `pos`, or `None` when it is not text or longer than any known key.
/// Indefinite-length keys are joined from their chunks.
fn key_bytes(bytes: &[u8], pos: usize) -> Option<([u8; MAX_KEY], usize)> {
    let (header, mut pos) = cbor::read_header(bytes, pos).ok()?;
    if header.major != MAJOR_TEXT {
        return None;
    }
    let mut buf = [0u8; MAX_KEY];
    let mut len = 0;
    let mut append = |chunk: &[u8]| -> Option<()> {
        buf.get_mut(len..len + chunk.len())?.copy_from_slice(chunk);
        len += chunk.len();
        Some(())
    };
    match header.arg {
        Arg::Value(n) => append(bytes.get(pos..pos.checked_add(usize::try_from(n).ok()?)?)?)?,
        Arg::Indefinite => loop {
            if bytes.get(pos) == Some(&0xff) {
                break;
            }
            let (chunk, next) = cbor::read_header(bytes, pos).ok()?;
            let Arg::Value(n) = chunk.arg else { return None };
            pos = next.checked_add(usize::try_from(n).ok()?)?;
            append(bytes.get(next..pos)?)?;
        },
    }
    Some((buf, len))
}

/// The unsigned integer at `span`, if that is what it holds.
fn read_uint(bytes: &[u8], (start, _): Span) -> Option<u64> {
    match cbor::read_header(bytes, start) {
        Ok((header, _)) if header.major == MAJOR_UINT => match header.arg {
            Arg::Value(v) => Some(v),
            Arg::Indefinite => None,
        },
        _ => None,
    }
}

/// The text string at `span` (definite, or indefinite with each chunk valid UTF-8 on its own).
fn read_text(bytes: &[u8], (start, end): Span, key: &'static str) -> Result<String, EnvelopeErrorKind> {
    let wrong_type = EnvelopeErrorKind::WrongType { key, expected: "text" };
    let not_utf8 = || EnvelopeErrorKind::InvalidCbor(format!("`{key}` is not valid UTF-8"));
    let (header, mut pos) = cbor::read_header(bytes, start).map_err(walk_error)?;
    if header.major != MAJOR_TEXT {
        return Err(wrong_type);
    }
    let chunk = |from: usize, len: u64| -> Result<(&str, usize), EnvelopeErrorKind> {
        // The span was walked already, so the length fits; still, never index past it.
        let to = usize::try_from(len).ok().and_then(|len| from.checked_add(len)).filter(|&to| to <= end);
        let to = to.ok_or_else(|| walk_error(WalkError::Truncated { at: from }))?;
        let text = core::str::from_utf8(&bytes[from..to]).map_err(|_| not_utf8())?;
        Ok((text, to))
    };
    match header.arg {
        Arg::Value(len) => Ok(chunk(pos, len)?.0.to_owned()),
        Arg::Indefinite => {
            let mut out = String::new();
            while pos < end && bytes[pos] != 0xff {
                let (chunk_header, next) = cbor::read_header(bytes, pos).map_err(walk_error)?;
                let Arg::Value(len) = chunk_header.arg else { return Err(wrong_type) };
                let (text, to) = chunk(next, len)?;
                out.push_str(text);
                pos = to;
            }
            Ok(out)
        }
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character.
fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let cut = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
    }
}

impl EnvelopeError {
    /// How to answer this envelope (PROTOCOL §3, §4).
    ///
    /// - An unknown `t`: an `err` `INVALID_ARGUMENT` reply, with the `id` when there is one (without one it is
    ///   a connection-level error notice).
    /// - Any other invalid envelope with a recovered `id`: an `err` `INVALID_ARGUMENT` reply to that `id`,
    ///   whose `msg` names the broken rule.
    /// - Otherwise close with 1007 (invalid payload) and a reason naming the rule, at most 123 bytes.
    ///
    /// Never panics.
    pub fn refusal(&self) -> Refusal {
        let reply = |id| {
            Refusal::Reply(Envelope::Err {
                id,
                code: ErrorCode::InvalidArgument,
                message: self.to_string(),
                data: None,
            })
        };
        match (&self.kind, self.id) {
            (EnvelopeErrorKind::UnknownType(_), id) => reply(id),
            (_, Some(id)) => reply(Some(id)),
            (_, None) => {
                let mut reason = self.to_string();
                truncate_at_char_boundary(&mut reason, MAX_CLOSE_REASON);
                Refusal::Close(CloseCode::INVALID_PAYLOAD, reason)
            }
        }
    }
}

impl fmt::Display for EnvelopeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeErrorKind::InvalidCbor(what) => write!(f, "not valid CBOR: {what}"),
            EnvelopeErrorKind::NotAMap => f.write_str("not a CBOR map"),
            EnvelopeErrorKind::NonTextKey => f.write_str("map keys must be text"),
            EnvelopeErrorKind::MissingKey(key) => write!(f, "missing key `{key}`"),
            EnvelopeErrorKind::WrongType { key, expected } => write!(f, "`{key}` must be {expected}"),
            EnvelopeErrorKind::UnknownType(t) => write!(f, "unknown type `{t}`"),
            EnvelopeErrorKind::TooDeep => write!(f, "nested deeper than {MAX_DEPTH}"),
            EnvelopeErrorKind::TrailingBytes => f.write_str("bytes after the map"),
        }
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid envelope: {}", self.kind)
    }
}

impl std::error::Error for EnvelopeError {}
