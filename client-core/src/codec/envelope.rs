//! The CBOR envelope (PROTOCOL §4), read and written with a small hand-written CBOR layer (`codec::cbor`) so
//! the browser build carries no serde.
//!
//! Decoding is one pass over the input straight into the typed [`Envelope`]: the map's keys are matched as
//! raw bytes, each value's extent is found with the depth-limited walker, and the payload `d` is kept as the
//! raw bytes of its CBOR item ([`Payload`]) until the application asks for its own type.
//!
//! The rules it applies where PROTOCOL §4 leaves a choice are listed in the `codec` module docs.

#[cfg(feature = "serde")]
use alloc::string::ToString;
use alloc::{borrow::ToOwned, string::String, vec, vec::Vec};
use core::fmt;

use super::cbor::{self, Arg, WalkError, MAJOR_MAP, MAJOR_TEXT, MAJOR_UINT};
use crate::error::{CloseCode, ErrorCode};
use crate::text::{n, Text};

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
    Req {
        id: u64,
        method: String,
        data: Option<Payload>,
    },
    /// `t: "res"`: the success reply to request `id`.
    Res { id: u64, data: Option<Payload> },
    /// `t: "err"`: the error reply to request `id`, or a connection-level notice when `id` is `None`.
    Err {
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        data: Option<Payload>,
    },
    /// `t: "sub"`: subscribe to `topic` (client → server). `since` (PROTOCOL §9) is the last event of the topic
    /// the client delivered: the server replays what followed it, when its history still holds it. The `res`
    /// carries a [`SubAck`] as its `d`.
    Sub {
        id: u64,
        topic: String,
        since: Option<TopicPosition>,
    },
    /// `t: "unsub"`: unsubscribe from `topic` (client → server).
    Unsub { id: u64, topic: String },
    /// `t: "pub"`: publish to `topic` (client → server). With an `id` (PROTOCOL §9) the server acknowledges it:
    /// `res` with the event's [`TopicPosition`] as `d`, or `err`.
    Pub {
        id: Option<u64>,
        topic: String,
        data: Option<Payload>,
    },
    /// `t: "evt"`: a published message delivered to a subscriber; `seq` counts per topic (server → client).
    Evt {
        topic: String,
        seq: u64,
        data: Option<Payload>,
    },
}

/// A place in a topic's sequence (PROTOCOL §9): the epoch `ep` and a `seq` in it.
///
/// Three uses on the wire: a `sub`'s `since` (the last event the client delivered), the `d` of the `res` to an
/// acknowledged `pub` (where the event was stored), and inside a [`SubAck`].
///
/// Invariant on decoded values: `ep` is 1..=64 bytes ([`validate_epoch`]). Values built by hand are not checked;
/// an encoder of its own epochs (a server) keeps to the rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicPosition {
    /// The topic's epoch: a new one whenever the server could not continue the old sequence.
    pub ep: String,
    /// An event's `seq` in that epoch (the first event is 1; 0 means "before the first").
    pub seq: u64,
}

/// The `d` of the `res` to a `sub` (PROTOCOL §9): where the topic stood when the subscription took effect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubAck {
    /// The topic's epoch and the `seq` of its latest event (0 when it has none yet). Live events follow with
    /// greater `seq`s; replayed ones (`recovered: Some(true)`) have `seq`s up to this one.
    pub position: TopicPosition,
    /// `None` when the `sub` had no `since`; `Some(true)` when the events after `since` are replayed right
    /// after the `res`; `Some(false)` when they cannot be (another epoch, or history too short).
    pub recovered: Option<bool>,
}

/// The longest epoch, in bytes of UTF-8 (PROTOCOL §9).
pub const MAX_EPOCH_BYTES: usize = 64;

/// Checks an epoch against PROTOCOL §9: 1..=64 bytes of UTF-8.
///
/// # Errors
/// The [`EnvelopeErrorKind`] a decoder reports for it. Never panics.
pub fn validate_epoch(ep: &str) -> Result<(), EnvelopeErrorKind> {
    if (1..=MAX_EPOCH_BYTES).contains(&ep.len()) {
        Ok(())
    } else {
        Err(EnvelopeErrorKind::WrongType {
            key: "ep",
            expected: "text of 1..=64 bytes",
        })
    }
}

impl TopicPosition {
    /// Encodes `{ep, seq}` as a payload (the `d` of the `res` to an acknowledged `pub`). Never panics.
    pub fn to_payload(&self) -> Payload {
        let mut out = Vec::new();
        self.encode_map(&mut out, 0);
        Payload(out)
    }

    /// Reads `{ep, seq}` from a payload (unknown keys are ignored).
    ///
    /// # Errors
    /// [`EnvelopeErrorKind`]: `WrongType` when `d` is not a map, `MissingKey("ep" | "seq")`, or `WrongType` for
    /// an `ep` that is not 1..=64 bytes of text or a `seq` that is not an unsigned integer. Never panics.
    pub fn from_payload(payload: &Payload) -> Result<TopicPosition, EnvelopeErrorKind> {
        let bytes = payload.as_cbor();
        Ok(read_position(bytes, (0, bytes.len()), "d")?.0)
    }

    /// Writes `{ep, seq}` plus `extra` more entries the caller appends.
    fn encode_map(&self, out: &mut Vec<u8>, extra: u64) {
        cbor::write_header(out, MAJOR_MAP, 2 + extra);
        write_text_entry(out, "ep", &self.ep);
        write_uint_entry(out, "seq", self.seq);
    }
}

impl SubAck {
    /// Encodes `{ep, seq, recovered?}` as a payload (the `d` of the `res` to a `sub`). Never panics.
    pub fn to_payload(&self) -> Payload {
        let mut out = Vec::new();
        self.position
            .encode_map(&mut out, u64::from(self.recovered.is_some()));
        if let Some(recovered) = self.recovered {
            cbor::write_text(&mut out, "recovered");
            out.push(if recovered { 0xf5 } else { 0xf4 });
        }
        Payload(out)
    }

    /// Reads `{ep, seq, recovered?}` from a payload (unknown keys are ignored).
    ///
    /// # Errors
    /// As [`TopicPosition::from_payload`], and `WrongType` for a `recovered` that is not a boolean. Never
    /// panics.
    pub fn from_payload(payload: &Payload) -> Result<SubAck, EnvelopeErrorKind> {
        let bytes = payload.as_cbor();
        let (position, recovered) = read_position(bytes, (0, bytes.len()), "d")?;
        Ok(SubAck {
            position,
            recovered,
        })
    }
}

/// Bytes inside a well-formed frame that are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    /// The `id` recovered from the map, when there was one: the refusal can then be an `err` reply.
    pub id: Option<u64>,
    /// The map's `t`, recovered like the `id`, when it is one this version knows (`"res"`, `"req"`, …). A
    /// broken `res` or `err` with an `id` answers the receiver's own request: it can fail that request at once.
    pub t: Option<&'static str>,
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
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
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

impl InvalidTopic {
    /// The `Display` text, built without `core::fmt` (see `text.rs`).
    pub(crate) fn message(&self) -> String {
        match self {
            InvalidTopic::Empty => "topic is empty".into(),
            InvalidTopic::TooLong { len } => Text::from("topic is ")
                .num(n(*len))
                .str(" bytes long, more than ")
                .num(n(MAX_TOPIC_BYTES))
                .into(),
            InvalidTopic::Reserved => "topics starting with '$' are reserved".into(),
        }
    }
}

impl fmt::Display for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl core::error::Error for InvalidTopic {}

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
            Ok(end) => Err(PayloadError::InvalidCbor(
                Text::from("bytes after the item, from byte ")
                    .num(n(end))
                    .into(),
            )),
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
        // A small payload fits without growing the Vec: from empty it was one malloc and three reallocs
        // (8, 16, 32, 64 bytes), ~8 % of the codec benchmark's profile.
        let mut bytes = Vec::with_capacity(64);
        ciborium::into_writer(value, &mut bytes).map_err(|e| PayloadError::Serde(e.to_string()))?;
        // The serializer has no depth limit of its own; keep the invariant.
        Payload::from_cbor(bytes)
    }

    /// Decodes the payload into `T` with serde.
    ///
    /// minicbor-serde reads it first: it decodes 2–3× as fast as ciborium (PERF.md), but it reads fewer forms
    /// than ciborium did before it (tags before a value, `undefined` as `None`, indefinite-length strings into
    /// `String`, text into `char`, `null` as `()`, a double into `f32`). Whatever it refuses is read
    /// again by ciborium, so every payload that decoded before still does, to the same value.
    ///
    /// Depth: minicbor-serde has no limit of its own (100 000 nested arrays overflow the stack), so the limit is
    /// the `Payload` invariant: no payload nests deeper than [`MAX_DEPTH`], checked whenever one is built
    /// ([`Payload::from_cbor`], [`Envelope::decode`]). ciborium is given the same limit explicitly.
    ///
    /// # Errors
    /// [`PayloadError::Serde`] with ciborium's message when neither decoder can read the CBOR as a `T`. Never
    /// panics.
    #[cfg(feature = "serde")]
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, PayloadError> {
        minicbor_serde::from_slice(&self.0).or_else(|_| {
            ciborium::de::from_reader_with_recursion_limit(self.0.as_slice(), MAX_DEPTH)
                .map_err(|e| PayloadError::Serde(e.to_string()))
        })
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
            PayloadError::InvalidCbor(what) => {
                write!(f, "payload is not one well-formed CBOR item: {what}")
            }
            PayloadError::TooDeep => write!(f, "payload nests deeper than {MAX_DEPTH}"),
            PayloadError::Serde(what) => write!(f, "payload conversion failed: {what}"),
        }
    }
}

impl core::error::Error for PayloadError {}

impl Envelope {
    /// Encodes the envelope as its CBOR map (no frame kind byte).
    ///
    /// Keys are written `t`, `id`, `m`, `code`, `msg`, `topic`, `seq`, `since`, then `d` last, so a receiver that fails
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
        // Room for everything at once: growing `out` key by key showed (realloc) in the profiles of both
        // the client and the server, once per message.
        out.reserve(self.size_hint());
        let data = self.data();
        let entries =
            1 + match self {
                Envelope::Msg { .. } | Envelope::Res { .. } => 1,
                Envelope::Req { .. } | Envelope::Unsub { .. } | Envelope::Evt { .. } => 2,
                Envelope::Sub { since, .. } => 2 + u64::from(since.is_some()),
                Envelope::Pub { id, .. } => 1 + u64::from(id.is_some()),
                Envelope::Err { id, .. } => 2 + u64::from(id.is_some()),
            } + u64::from(data.is_some());
        cbor::write_header(out, MAJOR_MAP, entries);
        write_text_entry(out, "t", self.kind());
        if let Some(id) = self.id() {
            write_uint_entry(out, "id", id);
        }
        match self {
            Envelope::Msg { name: m, .. } | Envelope::Req { method: m, .. } => {
                write_text_entry(out, "m", m)
            }
            Envelope::Err { code, message, .. } => {
                write_text_entry(out, "code", code.as_str());
                write_text_entry(out, "msg", message);
            }
            Envelope::Sub { topic, since, .. } => {
                write_text_entry(out, "topic", topic);
                if let Some(since) = since {
                    cbor::write_text(out, "since");
                    since.encode_map(out, 0);
                }
            }
            Envelope::Unsub { topic, .. } | Envelope::Pub { topic, .. } => {
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

    /// At least the encoded size: the strings and payload, plus room for keys and headers.
    pub(crate) fn size_hint(&self) -> usize {
        let text = match self {
            Envelope::Msg { name: m, .. } | Envelope::Req { method: m, .. } => m.len(),
            Envelope::Err { message, .. } => message.len(),
            Envelope::Sub { topic, .. }
            | Envelope::Unsub { topic, .. }
            | Envelope::Pub { topic, .. }
            | Envelope::Evt { topic, .. } => topic.len(),
            Envelope::Res { .. } => 0,
        };
        64 + text + self.data().map_or(0, |d| d.as_cbor().len())
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
        // `id` and `t` are recovered only for an error: read on every envelope, `t` cost an allocation each.
        scanned
            .and_then(|()| fields.build(bytes))
            .map_err(|kind| EnvelopeError {
                id: fields.id.and_then(|span| read_uint(bytes, span)),
                t: fields
                    .t
                    .and_then(|span| read_text(bytes, span, "t").ok())
                    .and_then(|t| KINDS.into_iter().find(|&known| known == t)),
                kind,
            })
    }

    /// The request `id` this envelope carries, if any (`req`, `res`, `sub`, `unsub`, and `err` or `pub` with an
    /// id).
    pub fn id(&self) -> Option<u64> {
        match self {
            Envelope::Req { id, .. } | Envelope::Res { id, .. } | Envelope::Sub { id, .. } => {
                Some(*id)
            }
            Envelope::Unsub { id, .. } => Some(*id),
            Envelope::Err { id, .. } | Envelope::Pub { id, .. } => *id,
            Envelope::Msg { .. } | Envelope::Evt { .. } => None,
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

    /// The payload `d`, for the kinds that carry one (`None` for `sub`/`unsub`, or when absent).
    pub fn data(&self) -> Option<&Payload> {
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
    since: Option<Span>,
    non_text_key: bool,
}

/// Every `t` this version knows.
const KINDS: [&str; 8] = ["msg", "req", "res", "err", "sub", "unsub", "pub", "evt"];

/// The longest known key, of an envelope or a §9 map (`recovered`); longer keys are unknown without looking
/// further.
const MAX_KEY: usize = 9;

impl Fields {
    /// Walks the whole map once, recording where each known key's value is.
    ///
    /// Stops at the first malformed item; a non-text key is only noted so the scan can still find the `id`.
    fn scan(&mut self, bytes: &[u8]) -> Result<(), EnvelopeErrorKind> {
        let (end, non_text_key) = walk_map(bytes, 0, &mut |key, span| {
            let span = Some(span);
            match key {
                Some(b"t") => self.t = span,
                Some(b"id") => self.id = span,
                Some(b"m") => self.m = span,
                Some(b"d") => self.d = span,
                Some(b"code") => self.code = span,
                Some(b"msg") => self.msg = span,
                Some(b"topic") => self.topic = span,
                Some(b"seq") => self.seq = span,
                Some(b"since") => self.since = span,
                _ => {}
            }
        })?;
        self.non_text_key = non_text_key;
        if end != bytes.len() {
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
            read_uint(bytes, span.ok_or(MissingKey(key))?).ok_or(EnvelopeErrorKind::WrongType {
                key,
                expected: "unsigned integer",
            })
        };
        // The walker has already checked `d` is one well-formed item within MAX_DEPTH: the Payload invariant.
        let data = self
            .d
            .map(|(start, end)| Payload(bytes[start..end].to_vec()));
        let mut joined = String::new();
        let t = read_str(bytes, self.t.ok_or(MissingKey("t"))?, "t", &mut joined)?;
        Ok(match t {
            "msg" => Envelope::Msg {
                name: text(self.m, "m")?,
                data,
            },
            "req" => Envelope::Req {
                id: uint(self.id, "id")?,
                method: text(self.m, "m")?,
                data,
            },
            "res" => Envelope::Res {
                id: uint(self.id, "id")?,
                data,
            },
            "err" => Envelope::Err {
                id: match self.id {
                    Some(_) => Some(uint(self.id, "id")?),
                    None => None,
                },
                code: ErrorCode::parse(&text(self.code, "code")?),
                message: text(self.msg, "msg")?,
                data,
            },
            "sub" => Envelope::Sub {
                id: uint(self.id, "id")?,
                topic: text(self.topic, "topic")?,
                since: match self.since {
                    Some(span) => Some(read_position(bytes, span, "since")?.0),
                    None => None,
                },
            },
            "unsub" => Envelope::Unsub {
                id: uint(self.id, "id")?,
                topic: text(self.topic, "topic")?,
            },
            "pub" => Envelope::Pub {
                id: match self.id {
                    Some(_) => Some(uint(self.id, "id")?),
                    None => None,
                },
                topic: text(self.topic, "topic")?,
                data,
            },
            "evt" => Envelope::Evt {
                topic: text(self.topic, "topic")?,
                seq: uint(self.seq, "seq")?,
                data,
            },
            _ => {
                let mut t = t.to_owned();
                truncate_at_char_boundary(&mut t, MAX_UNKNOWN_TYPE);
                return Err(EnvelopeErrorKind::UnknownType(t));
            }
        })
    }
}

/// Walks the map at `pos`, calling `entry(key, value)` for each entry in order: `key` is the text key's bytes when
/// it has at most [`MAX_KEY`] of them, `None` for a longer text key or a non-text one. Returns where the map ends
/// and whether a key was not text.
///
/// Stops at the first malformed item; a non-text key is only noted, so a scan can still find the `id`. (`dyn`:
/// one copy of the walk serves envelopes and §9 maps, which matters to the browser package's size.)
fn walk_map(
    bytes: &[u8],
    start: usize,
    entry: &mut dyn FnMut(Option<&[u8]>, Span),
) -> Result<(usize, bool), EnvelopeErrorKind> {
    let (header, mut pos) = cbor::read_header(bytes, start).map_err(walk_error)?;
    if header.major != MAJOR_MAP {
        // Say "not a map" only for a well-formed item, so garbage is reported as garbage.
        return Err(match cbor::skip_item(bytes, start) {
            Ok(_) => EnvelopeErrorKind::NotAMap,
            Err(e) => walk_error(e),
        });
    }
    let mut left = match header.arg {
        // Each entry takes at least two bytes: a count beyond the input is refused before the loop.
        Arg::Value(n) if n <= (bytes.len() - pos) as u64 / 2 => Some(n),
        Arg::Value(_) => return Err(walk_error(WalkError::Truncated { at: start })),
        Arg::Indefinite => None,
    };
    let mut non_text_key = false;
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
        // A short definite text key (every key this codec writes) is the bytes just walked: read where it
        // lies. Read again into a buffer, the keys cost a header read and a copy each (the server's profile
        // under 64 B requests, bench/NOTES.md).
        let joined;
        let key = match bytes.get(key_start) {
            Some(&first) if first >> 5 == MAJOR_TEXT && first & 0x1f < 24 => bytes
                .get(key_start + 1..value_start)
                .filter(|key| key.len() <= MAX_KEY),
            _ => {
                joined = key_bytes(bytes, key_start);
                joined.as_ref().map(|(buf, len)| &buf[..*len])
            }
        };
        non_text_key |= key.is_none() && !key_is_text(bytes, key_start);
        entry(key, (value_start, pos));
    }
    Ok((pos, non_text_key))
}

/// Reads a §9 map `{ep, seq, recovered?}` at `span`, the value of `key` (`since`, or a reply's `d`).
fn read_position(
    bytes: &[u8],
    (start, _): Span,
    key: &'static str,
) -> Result<(TopicPosition, Option<bool>), EnvelopeErrorKind> {
    let (mut ep, mut seq, mut recovered) = (None, None, None);
    walk_map(bytes, start, &mut |k, span| match k {
        Some(b"ep") => ep = Some(span),
        Some(b"seq") => seq = Some(span),
        Some(b"recovered") => recovered = Some(span),
        _ => {}
    })
    .map_err(|e| match e {
        EnvelopeErrorKind::NotAMap => EnvelopeErrorKind::WrongType {
            key,
            expected: "a map {ep, seq}",
        },
        e => e,
    })?;
    let ep = read_text(bytes, ep.ok_or(EnvelopeErrorKind::MissingKey("ep"))?, "ep")?;
    validate_epoch(&ep)?;
    let seq = read_uint(bytes, seq.ok_or(EnvelopeErrorKind::MissingKey("seq"))?).ok_or(
        EnvelopeErrorKind::WrongType {
            key: "seq",
            expected: "unsigned integer",
        },
    )?;
    // A boolean is one byte: simple value 21 (true) or 20 (false).
    let recovered = match recovered.and_then(|(at, _)| bytes.get(at)) {
        None => None,
        Some(0xf5) => Some(true),
        Some(0xf4) => Some(false),
        Some(_) => {
            return Err(EnvelopeErrorKind::WrongType {
                key: "recovered",
                expected: "boolean",
            })
        }
    };
    Ok((TopicPosition { ep, seq }, recovered))
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
            let Arg::Value(n) = chunk.arg else {
                return None;
            };
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
fn read_text(bytes: &[u8], span: Span, key: &'static str) -> Result<String, EnvelopeErrorKind> {
    let mut joined = String::new();
    read_str(bytes, span, key, &mut joined).map(str::to_owned)
}

/// The text string at `span`, borrowed from `bytes`, or joined into `joined` when it is indefinite-length.
/// (Read into a `String` instead, the `t` of every envelope cost an allocation: 20 % of the codec benchmark's
/// round trip. `Cow` did the same for ~120 B more in the npm package.)
fn read_str<'a>(
    bytes: &'a [u8],
    (start, end): Span,
    key: &'static str,
    joined: &'a mut String,
) -> Result<&'a str, EnvelopeErrorKind> {
    let wrong_type = EnvelopeErrorKind::WrongType {
        key,
        expected: "text",
    };
    let not_utf8 = || {
        EnvelopeErrorKind::InvalidCbor(Text::from("`").str(key).str("` is not valid UTF-8").into())
    };
    let (header, mut pos) = cbor::read_header(bytes, start).map_err(walk_error)?;
    if header.major != MAJOR_TEXT {
        return Err(wrong_type);
    }
    let chunk = |from: usize, len: u64| -> Result<(&str, usize), EnvelopeErrorKind> {
        // The span was walked already, so the length fits; still, never index past it.
        let to = usize::try_from(len)
            .ok()
            .and_then(|len| from.checked_add(len))
            .filter(|&to| to <= end);
        let to = to.ok_or_else(|| walk_error(WalkError::Truncated { at: from }))?;
        let text = core::str::from_utf8(&bytes[from..to]).map_err(|_| not_utf8())?;
        Ok((text, to))
    };
    match header.arg {
        Arg::Value(len) => Ok(chunk(pos, len)?.0),
        Arg::Indefinite => {
            while pos < end && bytes[pos] != 0xff {
                let (chunk_header, next) = cbor::read_header(bytes, pos).map_err(walk_error)?;
                let Arg::Value(len) = chunk_header.arg else {
                    return Err(wrong_type);
                };
                let (text, to) = chunk(next, len)?;
                joined.push_str(text);
                pos = to;
            }
            Ok(joined)
        }
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character.
fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
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
                message: self.message(),
                data: None,
            })
        };
        match (&self.kind, self.id) {
            (EnvelopeErrorKind::UnknownType(_), id) => reply(id),
            (_, Some(id)) => reply(Some(id)),
            (_, None) => {
                let mut reason = self.message();
                truncate_at_char_boundary(&mut reason, MAX_CLOSE_REASON);
                Refusal::Close(CloseCode::INVALID_PAYLOAD, reason)
            }
        }
    }
}

impl EnvelopeErrorKind {
    /// The `Display` text, appended to `t` (built without `core::fmt`, see `text.rs`).
    fn append_to(&self, t: Text) -> Text {
        match self {
            EnvelopeErrorKind::InvalidCbor(what) => t.str("not valid CBOR: ").str(what),
            EnvelopeErrorKind::NotAMap => t.str("not a CBOR map"),
            EnvelopeErrorKind::NonTextKey => t.str("map keys must be text"),
            EnvelopeErrorKind::MissingKey(key) => t.str("missing key `").str(key).str("`"),
            EnvelopeErrorKind::WrongType { key, expected } => {
                t.str("`").str(key).str("` must be ").str(expected)
            }
            EnvelopeErrorKind::UnknownType(ty) => t.str("unknown type `").str(ty).str("`"),
            EnvelopeErrorKind::TooDeep => t.str("nested deeper than ").num(n(MAX_DEPTH)),
            EnvelopeErrorKind::TrailingBytes => t.str("bytes after the map"),
        }
    }

    /// The `Display` text.
    pub(crate) fn message(&self) -> String {
        self.append_to(Text::default()).into()
    }
}

impl fmt::Display for EnvelopeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl EnvelopeError {
    /// The `Display` text, built without `core::fmt`.
    fn message(&self) -> String {
        self.kind.append_to(Text::from("invalid envelope: ")).into()
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl core::error::Error for EnvelopeError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_text(&mut out, s);
        out
    }

    fn uint(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_header(&mut out, MAJOR_UINT, n);
        out
    }

    /// A definite map from already-encoded keys and values.
    fn map(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_header(&mut out, MAJOR_MAP, entries.len() as u64);
        for (k, v) in entries {
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }

    fn payload(bytes: &[u8]) -> Payload {
        Payload::from_cbor(bytes.to_vec()).expect("test payloads are well-formed")
    }

    /// `{"a": [1, {"b": [h'00ff', -1, 1.5]}], "c": null}`
    fn nested() -> Payload {
        payload(&[
            0xa2, 0x61, b'a', 0x82, 0x01, 0xa1, 0x61, b'b', 0x83, 0x42, 0x00, 0xff, 0x20, 0xf9,
            0x3e, 0x00, 0x61, b'c', 0xf6,
        ])
    }

    fn every_kind(data: Option<Payload>) -> Vec<Envelope> {
        vec![
            Envelope::Msg {
                name: "chat".into(),
                data: data.clone(),
            },
            Envelope::Req {
                id: 7,
                method: "echo".into(),
                data: data.clone(),
            },
            Envelope::Res {
                id: u64::MAX,
                data: data.clone(),
            },
            Envelope::Err {
                id: Some(7),
                code: ErrorCode::NotFound,
                message: "no such".into(),
                data: data.clone(),
            },
            Envelope::Err {
                id: None,
                code: ErrorCode::Other("TEAPOT".into()),
                message: String::new(),
                data: data.clone(),
            },
            Envelope::Sub {
                id: 0,
                topic: "room/1".into(),
                since: None,
            },
            Envelope::Sub {
                id: 1,
                topic: "room/1".into(),
                since: Some(position("é".repeat(32), u64::MAX)),
            },
            Envelope::Unsub {
                id: 300,
                topic: "room/1".into(),
            },
            Envelope::Pub {
                id: None,
                topic: "room/ü".into(),
                data: data.clone(),
            },
            Envelope::Pub {
                id: Some(12),
                topic: "room/ü".into(),
                data: data.clone(),
            },
            Envelope::Evt {
                topic: "room/1".into(),
                seq: 1 << 40,
                data,
            },
        ]
    }

    fn position(ep: impl Into<String>, seq: u64) -> TopicPosition {
        TopicPosition { ep: ep.into(), seq }
    }

    fn refusal_of(bytes: &[u8]) -> Refusal {
        Envelope::decode(bytes)
            .expect_err("the envelope is invalid")
            .refusal()
    }

    fn assert_closes_1007(bytes: &[u8], kind: EnvelopeErrorKind) {
        let e = Envelope::decode(bytes).expect_err("the envelope is invalid");
        assert_eq!((e.id, e.kind.clone()), (None, kind));
        match e.refusal() {
            Refusal::Close(code, reason) => {
                assert_eq!(code, CloseCode::INVALID_PAYLOAD);
                assert!(reason.len() <= MAX_CLOSE_REASON, "{reason}");
                assert_eq!(reason, e.to_string());
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    fn assert_replies(bytes: &[u8], id: u64, kind: EnvelopeErrorKind) {
        let e = Envelope::decode(bytes).expect_err("the envelope is invalid");
        assert_eq!((e.id, e.kind.clone()), (Some(id), kind));
        let expected = Envelope::Err {
            id: Some(id),
            code: ErrorCode::InvalidArgument,
            message: e.to_string(),
            data: None,
        };
        assert_eq!(e.refusal(), Refusal::Reply(expected));
    }

    #[test]
    fn every_kind_round_trips_with_and_without_payload() {
        for data in [None, Some(Payload::null()), Some(nested())] {
            for envelope in every_kind(data) {
                let bytes = envelope.encode();
                assert_eq!(
                    Envelope::decode(&bytes),
                    Ok(envelope.clone()),
                    "{bytes:02x?}"
                );
            }
        }
    }

    #[test]
    fn sub_writes_since_as_a_map_after_the_topic() {
        let sub = Envelope::Sub {
            id: 2,
            topic: "a".into(),
            since: Some(position("e", 5)),
        };
        let expected = map(&[
            (text("t"), text("sub")),
            (text("id"), uint(2)),
            (text("topic"), text("a")),
            (
                text("since"),
                map(&[(text("ep"), text("e")), (text("seq"), uint(5))]),
            ),
        ]);
        assert_eq!(sub.encode(), expected);
        let acked_pub = Envelope::Pub {
            id: Some(3),
            topic: "a".into(),
            data: None,
        };
        let expected = map(&[
            (text("t"), text("pub")),
            (text("id"), uint(3)),
            (text("topic"), text("a")),
        ]);
        assert_eq!(acked_pub.encode(), expected);
    }

    #[test]
    fn since_ignores_unknown_keys_and_refuses_a_broken_position_with_the_id() {
        let sub = |since: Vec<u8>| {
            map(&[
                (text("t"), text("sub")),
                (text("id"), uint(4)),
                (text("topic"), text("a")),
                (text("since"), since),
            ])
        };
        let with_extra = sub(map(&[
            (text("later"), vec![0x81, 0x01]),
            (text("seq"), uint(9)),
            (text("ep"), text("x")),
            (text("recovered"), vec![0xf5]), // no meaning in a `since`: ignored
        ]));
        assert_eq!(
            Envelope::decode(&with_extra),
            Ok(Envelope::Sub {
                id: 4,
                topic: "a".into(),
                since: Some(position("x", 9)),
            })
        );
        let bad_epoch = EnvelopeErrorKind::WrongType {
            key: "ep",
            expected: "text of 1..=64 bytes",
        };
        assert_eq!(validate_epoch(""), Err(bad_epoch.clone()));
        assert_eq!(
            validate_epoch(&"e".repeat(MAX_EPOCH_BYTES + 1)),
            Err(bad_epoch.clone())
        );
        assert_eq!(validate_epoch(&"é".repeat(MAX_EPOCH_BYTES / 2)), Ok(()));
        for (since, kind) in [
            (
                map(&[(text("ep"), text("")), (text("seq"), uint(1))]),
                bad_epoch.clone(),
            ),
            (
                map(&[(text("ep"), text(&"e".repeat(65))), (text("seq"), uint(1))]),
                bad_epoch,
            ),
            (
                map(&[(text("ep"), uint(1)), (text("seq"), uint(1))]),
                EnvelopeErrorKind::WrongType {
                    key: "ep",
                    expected: "text",
                },
            ),
            (
                map(&[(text("ep"), text("e")), (text("seq"), vec![0x20])]),
                EnvelopeErrorKind::WrongType {
                    key: "seq",
                    expected: "unsigned integer",
                },
            ),
            (
                map(&[(text("seq"), uint(1))]),
                EnvelopeErrorKind::MissingKey("ep"),
            ),
            (
                map(&[(text("ep"), text("e"))]),
                EnvelopeErrorKind::MissingKey("seq"),
            ),
            (
                uint(3),
                EnvelopeErrorKind::WrongType {
                    key: "since",
                    expected: "a map {ep, seq}",
                },
            ),
        ] {
            assert_replies(&sub(since), 4, kind);
        }
    }

    #[test]
    fn pub_id_must_be_an_unsigned_integer() {
        let bytes = map(&[
            (text("t"), text("pub")),
            (text("id"), text("1")),
            (text("topic"), text("a")),
        ]);
        assert_closes_1007(
            &bytes,
            EnvelopeErrorKind::WrongType {
                key: "id",
                expected: "unsigned integer",
            },
        );
    }

    #[test]
    fn acks_round_trip_through_their_payloads() {
        for recovered in [None, Some(true), Some(false)] {
            let ack = SubAck {
                position: position("ep-1", 77),
                recovered,
            };
            assert_eq!(SubAck::from_payload(&ack.to_payload()), Ok(ack));
        }
        let stored = position("z", 0);
        assert_eq!(
            TopicPosition::from_payload(&stored.to_payload()),
            Ok(stored)
        );
        let ack = payload(&map(&[
            (text("recovered"), vec![0xf4]),
            (text("ep"), text("a")),
            (text("seq"), uint(3)),
            (text("by"), text("another server version")),
        ]));
        assert_eq!(
            SubAck::from_payload(&ack),
            Ok(SubAck {
                position: position("a", 3),
                recovered: Some(false)
            })
        );
    }

    #[test]
    fn acks_refuse_what_is_not_a_position() {
        let not_a_map = EnvelopeErrorKind::WrongType {
            key: "d",
            expected: "a map {ep, seq}",
        };
        assert_eq!(
            SubAck::from_payload(&Payload::null()),
            Err(not_a_map.clone())
        );
        assert_eq!(
            TopicPosition::from_payload(&payload(&text("ok"))),
            Err(not_a_map)
        );
        let bad_recovered = payload(&map(&[
            (text("ep"), text("a")),
            (text("seq"), uint(3)),
            (text("recovered"), uint(1)),
        ]));
        assert_eq!(
            SubAck::from_payload(&bad_recovered),
            Err(EnvelopeErrorKind::WrongType {
                key: "recovered",
                expected: "boolean"
            })
        );
        assert_eq!(
            SubAck::from_payload(&payload(&map(&[(text("ep"), text("a"))]))),
            Err(EnvelopeErrorKind::MissingKey("seq"))
        );
    }

    #[test]
    fn kind_and_id_name_the_variant() {
        let kinds: Vec<_> = every_kind(None)
            .iter()
            .map(|e| (e.kind(), e.id()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("msg", None),
                ("req", Some(7)),
                ("res", Some(u64::MAX)),
                ("err", Some(7)),
                ("err", None),
                ("sub", Some(0)),
                ("sub", Some(1)),
                ("unsub", Some(300)),
                ("pub", None),
                ("pub", Some(12)),
                ("evt", None),
            ]
        );
    }

    #[test]
    fn encodes_a_map_of_text_keys_without_absent_optional_keys() {
        let msg = Envelope::Msg {
            name: "hi".into(),
            data: None,
        }
        .encode();
        assert_eq!(
            msg,
            map(&[(text("t"), text("msg")), (text("m"), text("hi"))])
        );
        let err = Envelope::Err {
            id: None,
            code: ErrorCode::Internal,
            message: "x".into(),
            data: None,
        };
        let expected = map(&[
            (text("t"), text("err")),
            (text("code"), text("INTERNAL")),
            (text("msg"), text("x")),
        ]);
        assert_eq!(err.encode(), expected);
        let res = Envelope::Res {
            id: 1,
            data: Some(Payload::null()),
        }
        .encode();
        assert_eq!(
            res,
            map(&[
                (text("t"), text("res")),
                (text("id"), uint(1)),
                (text("d"), vec![0xf6])
            ])
        );
    }

    #[test]
    fn encode_to_appends_after_existing_bytes() {
        let envelope = Envelope::Res { id: 1, data: None };
        let mut out = vec![0x00];
        envelope.encode_to(&mut out);
        assert_eq!(out[1..], envelope.encode());
    }

    #[test]
    fn decodes_keys_in_any_order_and_indefinite_lengths() {
        // {_ "m": (_ "ec" "ho"), "id": 5, "t": "req"} with a non-minimal id.
        let mut bytes = vec![0xbf];
        bytes.extend(text("m"));
        bytes.extend([0x7f, 0x62, b'e', b'c', 0x62, b'h', b'o', 0xff]);
        bytes.extend([0x62, b'i', b'd', 0x1b, 0, 0, 0, 0, 0, 0, 0, 5]);
        bytes.extend(text("t"));
        bytes.extend([0x7f, 0x63, b'r', b'e', b'q', 0xff]);
        bytes.push(0xff);
        assert_eq!(
            Envelope::decode(&bytes),
            Ok(Envelope::Req {
                id: 5,
                method: "echo".into(),
                data: None
            })
        );
    }

    #[test]
    fn decodes_indefinite_length_keys() {
        let bytes = map(&[
            (vec![0x7f, 0x61, b't', 0xff], text("pub")),
            (text("topic"), text("a")),
        ]);
        assert_eq!(
            Envelope::decode(&bytes),
            Ok(Envelope::Pub {
                id: None,
                topic: "a".into(),
                data: None
            })
        );
    }

    #[test]
    fn ignores_unknown_keys_and_keys_the_type_does_not_use() {
        let bytes = map(&[
            (text("future"), vec![0x9f, 0xa1, 0x01, 0x02, 0xff]),
            (text("t"), text("evt")),
            (text("topic"), text("a")),
            (text("m"), uint(3)), // `m` has no meaning on an `evt`: not type-checked
            (text("seq"), uint(9)),
            (text("a-much-longer-unknown-key"), vec![0xc1, 0x00]),
        ]);
        assert_eq!(
            Envelope::decode(&bytes),
            Ok(Envelope::Evt {
                topic: "a".into(),
                seq: 9,
                data: None
            })
        );
    }

    #[test]
    fn duplicate_keys_take_the_last_value() {
        let bytes = map(&[
            (text("t"), text("msg")),
            (text("m"), text("first")),
            (text("m"), text("last")),
        ]);
        assert_eq!(
            Envelope::decode(&bytes),
            Ok(Envelope::Msg {
                name: "last".into(),
                data: None
            })
        );
    }

    #[test]
    fn keeps_payload_as_its_raw_cbor_bytes() {
        let d = nested();
        let bytes = map(&[
            (text("t"), text("res")),
            (text("id"), uint(1)),
            (text("d"), d.as_cbor().to_vec()),
        ]);
        let Ok(Envelope::Res {
            data: Some(got), ..
        }) = Envelope::decode(&bytes)
        else {
            panic!("not a res")
        };
        assert_eq!(got.as_cbor(), d.as_cbor());
    }

    #[test]
    fn invalid_cbor_closes_with_1007_or_replies_when_the_id_came_first() {
        let truncated = [0xa2, 0x61, b't'];
        assert!(matches!(
            refusal_of(&truncated),
            Refusal::Close(CloseCode::INVALID_PAYLOAD, _)
        ));
        assert_closes_1007(
            &[],
            EnvelopeErrorKind::InvalidCbor(WalkError::Truncated { at: 0 }.describe()),
        );
        assert_closes_1007(
            &[0xa1, 0x1c, 0x00],
            EnvelopeErrorKind::InvalidCbor("reserved additional information at byte 1".into()),
        );

        let mut id_then_garbage = map(&[(text("id"), uint(4)), (text("t"), text("req"))]);
        id_then_garbage[0] = 0xa3; // declares a third entry that is not there
        let e = Envelope::decode(&id_then_garbage).unwrap_err();
        assert_eq!(e.id, Some(4));
        assert!(matches!(e.kind, EnvelopeErrorKind::InvalidCbor(_)));
        assert!(matches!(
            e.refusal(),
            Refusal::Reply(Envelope::Err { id: Some(4), .. })
        ));
    }

    #[test]
    fn not_a_map_closes_with_1007() {
        assert_closes_1007(&[0x80], EnvelopeErrorKind::NotAMap);
        assert_closes_1007(&text("msg"), EnvelopeErrorKind::NotAMap);
        assert_closes_1007(&[0xf6], EnvelopeErrorKind::NotAMap);
    }

    #[test]
    fn non_text_key_replies_with_the_id_or_closes_with_1007() {
        let without_id = map(&[
            (text("t"), text("msg")),
            (text("m"), text("a")),
            (uint(1), uint(2)),
        ]);
        assert_closes_1007(&without_id, EnvelopeErrorKind::NonTextKey);
        // The non-text key comes before the id: the scan goes on to find it.
        let with_id = map(&[
            (vec![0x41, b'x'], uint(2)),
            (text("t"), text("res")),
            (text("id"), uint(8)),
        ]);
        assert_replies(&with_id, 8, EnvelopeErrorKind::NonTextKey);
    }

    #[test]
    fn missing_key_replies_with_the_id_or_closes_with_1007() {
        assert_closes_1007(
            &map(&[(text("m"), text("a"))]),
            EnvelopeErrorKind::MissingKey("t"),
        );
        assert_closes_1007(
            &map(&[(text("t"), text("msg"))]),
            EnvelopeErrorKind::MissingKey("m"),
        );
        assert_closes_1007(
            &map(&[(text("t"), text("req")), (text("m"), text("a"))]),
            EnvelopeErrorKind::MissingKey("id"),
        );
        assert_closes_1007(
            &map(&[(text("t"), text("evt")), (text("topic"), text("a"))]),
            EnvelopeErrorKind::MissingKey("seq"),
        );
        assert_replies(
            &map(&[(text("t"), text("req")), (text("id"), uint(3))]),
            3,
            EnvelopeErrorKind::MissingKey("m"),
        );
        assert_replies(
            &map(&[(text("t"), text("sub")), (text("id"), uint(3))]),
            3,
            EnvelopeErrorKind::MissingKey("topic"),
        );
        let err_without_code = map(&[
            (text("t"), text("err")),
            (text("id"), uint(3)),
            (text("msg"), text("x")),
        ]);
        assert_replies(&err_without_code, 3, EnvelopeErrorKind::MissingKey("code"));
    }

    #[test]
    fn wrong_type_replies_with_the_id_or_closes_with_1007() {
        let text_id = map(&[(text("t"), text("res")), (text("id"), text("3"))]);
        assert_closes_1007(
            &text_id,
            EnvelopeErrorKind::WrongType {
                key: "id",
                expected: "unsigned integer",
            },
        );
        let negative_id = map(&[(text("t"), text("res")), (text("id"), vec![0x20])]);
        assert_closes_1007(
            &negative_id,
            EnvelopeErrorKind::WrongType {
                key: "id",
                expected: "unsigned integer",
            },
        );
        let numeric_t = map(&[(text("t"), uint(1)), (text("id"), uint(2))]);
        assert_replies(
            &numeric_t,
            2,
            EnvelopeErrorKind::WrongType {
                key: "t",
                expected: "text",
            },
        );
        let bytes_method = map(&[
            (text("t"), text("req")),
            (text("id"), uint(2)),
            (text("m"), vec![0x41, b'a']),
        ]);
        assert_replies(
            &bytes_method,
            2,
            EnvelopeErrorKind::WrongType {
                key: "m",
                expected: "text",
            },
        );
        let float_seq = map(&[
            (text("t"), text("evt")),
            (text("topic"), text("a")),
            (text("seq"), vec![0xf9, 0, 0]),
        ]);
        assert_closes_1007(
            &float_seq,
            EnvelopeErrorKind::WrongType {
                key: "seq",
                expected: "unsigned integer",
            },
        );
    }

    #[test]
    fn invalid_utf8_text_is_refused() {
        let bytes = map(&[
            (text("t"), text("req")),
            (text("id"), uint(2)),
            (text("m"), vec![0x61, 0xff]),
        ]);
        assert_replies(
            &bytes,
            2,
            EnvelopeErrorKind::InvalidCbor("`m` is not valid UTF-8".into()),
        );
    }

    #[test]
    fn unknown_type_replies_with_an_err_even_without_id() {
        let with_id = map(&[(text("t"), text("ping")), (text("id"), uint(5))]);
        assert_replies(&with_id, 5, EnvelopeErrorKind::UnknownType("ping".into()));

        let without_id = map(&[(text("t"), text("ping"))]);
        let e = Envelope::decode(&without_id).unwrap_err();
        assert_eq!(
            e,
            EnvelopeError {
                id: None,
                t: None,
                kind: EnvelopeErrorKind::UnknownType("ping".into())
            }
        );
        let notice = Envelope::Err {
            id: None,
            code: ErrorCode::InvalidArgument,
            message: e.to_string(),
            data: None,
        };
        assert_eq!(e.refusal(), Refusal::Reply(notice));
    }

    #[test]
    fn a_known_t_is_recovered_with_the_id_so_a_broken_reply_can_end_its_request() {
        let broken_res = map(&[
            (text("t"), text("res")),
            (text("id"), uint(5)),
            (text("d"), vec![0x1c]),
        ]);
        let e = Envelope::decode(&broken_res).unwrap_err();
        assert_eq!((e.t, e.id), (Some("res"), Some(5)));
        let missing_m = map(&[(text("t"), text("req")), (text("id"), uint(6))]);
        let e = Envelope::decode(&missing_m).unwrap_err();
        assert_eq!((e.t, e.id), (Some("req"), Some(6)));
        let unknown = map(&[(text("t"), text("ping")), (text("id"), uint(7))]);
        assert_eq!(Envelope::decode(&unknown).unwrap_err().t, None);
    }

    #[test]
    fn unknown_type_keeps_at_most_64_bytes_of_it() {
        let long = "é".repeat(1000);
        let Err(e) = Envelope::decode(&map(&[(text("t"), text(&long))])) else {
            panic!("unknown t accepted")
        };
        let EnvelopeErrorKind::UnknownType(kept) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(kept.len(), MAX_UNKNOWN_TYPE);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = Envelope::Msg {
            name: "a".into(),
            data: None,
        }
        .encode();
        bytes.push(0x00);
        assert_closes_1007(&bytes, EnvelopeErrorKind::TrailingBytes);
        let mut bytes = Envelope::Res { id: 6, data: None }.encode();
        bytes.push(0xa0);
        assert_replies(&bytes, 6, EnvelopeErrorKind::TrailingBytes);
    }

    #[test]
    fn payload_nested_deeper_than_max_depth_is_too_deep_without_overflowing_the_stack() {
        let mut deep = vec![0x81; 100_000];
        deep.push(0x00);
        let bytes = map(&[
            (text("t"), text("res")),
            (text("id"), uint(1)),
            (text("d"), deep.clone()),
        ]);
        assert_replies(&bytes, 1, EnvelopeErrorKind::TooDeep);
        let bytes = map(&[
            (text("t"), text("msg")),
            (text("m"), text("a")),
            (text("d"), deep),
        ]);
        assert_closes_1007(&bytes, EnvelopeErrorKind::TooDeep);

        let mut deepest_allowed = vec![0x81; MAX_DEPTH];
        deepest_allowed.push(0x00);
        let bytes = map(&[
            (text("t"), text("res")),
            (text("id"), uint(1)),
            (text("d"), deepest_allowed.clone()),
        ]);
        assert_eq!(
            Envelope::decode(&bytes),
            Ok(Envelope::Res {
                id: 1,
                data: Some(payload(&deepest_allowed))
            })
        );
    }

    #[test]
    fn declared_huge_lengths_are_refused_without_allocating() {
        // A byte string claiming 2^63 bytes, an array claiming 2^64-1 items, a map claiming 2^63 entries.
        for d in [
            vec![0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let bytes = map(&[
                (text("t"), text("res")),
                (text("id"), uint(1)),
                (text("d"), d.clone()),
            ]);
            let e = Envelope::decode(&bytes).unwrap_err();
            assert!(matches!(e.kind, EnvelopeErrorKind::InvalidCbor(_)), "{e:?}");
            assert_eq!(
                Payload::from_cbor(d).map_err(|e| matches!(e, PayloadError::InvalidCbor(_))),
                Err(true)
            );
        }
        let huge_envelope = [0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            refusal_of(&huge_envelope),
            Refusal::Close(CloseCode::INVALID_PAYLOAD, _)
        ));
        let huge_text = map(&[(text("t"), vec![0x7b, 0x80, 0, 0, 0, 0, 0, 0, 0])]);
        assert!(matches!(
            refusal_of(&huge_text),
            Refusal::Close(CloseCode::INVALID_PAYLOAD, _)
        ));
    }

    #[test]
    fn close_reasons_fit_in_a_close_frame() {
        for kind in [
            EnvelopeErrorKind::InvalidCbor("x".repeat(500)),
            EnvelopeErrorKind::UnknownType("y".repeat(MAX_UNKNOWN_TYPE)),
            EnvelopeErrorKind::WrongType {
                key: "topic",
                expected: "unsigned integer",
            },
        ] {
            if let Refusal::Close(_, reason) = (EnvelopeError {
                id: None,
                t: None,
                kind,
            })
            .refusal()
            {
                assert!(reason.len() <= MAX_CLOSE_REASON, "{reason}");
            }
        }
    }

    #[test]
    fn payload_from_cbor_accepts_one_item_and_refuses_anything_else() {
        assert_eq!(Payload::from_cbor(vec![0xf6]), Ok(Payload::null()));
        assert_eq!(nested().clone().into_cbor(), nested().as_cbor());
        assert!(matches!(
            Payload::from_cbor(vec![]),
            Err(PayloadError::InvalidCbor(_))
        ));
        assert!(matches!(
            Payload::from_cbor(vec![0x01, 0x02]),
            Err(PayloadError::InvalidCbor(_))
        ));
        assert!(matches!(
            Payload::from_cbor(vec![0x82, 0x01]),
            Err(PayloadError::InvalidCbor(_))
        ));
        let mut deep = vec![0x9f; MAX_DEPTH + 1];
        deep.extend(vec![0xff; MAX_DEPTH + 1]);
        assert_eq!(Payload::from_cbor(deep), Err(PayloadError::TooDeep));
    }

    #[test]
    fn payload_debug_is_short() {
        assert_eq!(format!("{:?}", Payload::null()), "Payload(1 bytes: f6)");
        let long = Payload::from_cbor([&[0x58, 100][..], &[0xab; 100]].concat()).unwrap();
        let shown = format!("{long:?}");
        assert!(
            shown.starts_with("Payload(102 bytes: 58 64 ab") && shown.ends_with(" …)"),
            "{shown}"
        );
    }

    #[test]
    fn validate_topic_applies_the_protocol_rules() {
        assert_eq!(validate_topic("room/1"), Ok(()));
        assert_eq!(validate_topic(&"é".repeat(128)), Ok(()));
        assert_eq!(validate_topic(""), Err(InvalidTopic::Empty));
        assert_eq!(
            validate_topic(&"a".repeat(257)),
            Err(InvalidTopic::TooLong { len: 257 })
        );
        assert_eq!(validate_topic("$sys"), Err(InvalidTopic::Reserved));
        assert_eq!(validate_topic("a$"), Ok(()));
    }

    #[cfg(feature = "serde")]
    mod serde_payloads {
        use super::*;

        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Point {
            x: i32,
            label: String,
            tags: Vec<String>,
            extra: Option<Box<Point>>,
        }

        #[test]
        fn struct_round_trips_through_payload() {
            let point = Point {
                x: -3,
                label: "ü".into(),
                tags: vec!["a".into()],
                extra: Some(Box::new(Point {
                    x: 1,
                    label: String::new(),
                    tags: vec![],
                    extra: None,
                })),
            };
            let payload = Payload::encode(&point).unwrap();
            assert_eq!(payload.decode::<Point>(), Ok(point));
        }

        #[test]
        fn payload_survives_an_envelope_round_trip() {
            let data = Payload::encode(&vec![1u8, 2, 3]).unwrap();
            let bytes = Envelope::Msg {
                name: "n".into(),
                data: Some(data),
            }
            .encode();
            let Ok(Envelope::Msg {
                data: Some(data), ..
            }) = Envelope::decode(&bytes)
            else {
                panic!()
            };
            assert_eq!(data.decode::<Vec<u8>>(), Ok(vec![1, 2, 3]));
        }

        #[test]
        fn decode_handles_the_deepest_allowed_payload() {
            let mut deepest = vec![0x81; MAX_DEPTH];
            deepest.push(0x00);
            assert!(payload(&deepest).decode::<ciborium::Value>().is_ok());
        }

        /// minicbor-serde recurses once per level and has no limit of its own: the limit is the `Payload`
        /// invariant. Hostile nesting of every container kind is refused before a decoder sees it, and the
        /// deepest allowed nesting of each decodes (through minicbor-serde, and through ciborium for tags).
        #[test]
        fn hostile_nesting_is_refused_before_the_decoder_and_the_deepest_allowed_decodes() {
            #[derive(serde::Deserialize)]
            #[allow(dead_code)] // Only decoded: the recursion is the point.
            enum Nest {
                Leaf(u8),
                List(Vec<Nest>),
            }
            // (opening bytes of one level, closing bytes, the innermost item)
            let kinds: [(&[u8], &[u8], &[u8]); 4] = [
                (&[0x81], &[], &[0x00]),             // [[[0]]]
                (&[0x9f], &[0xff], &[0x00]),         // indefinite arrays
                (&[0xa1, 0x61, b'k'], &[], &[0x00]), // {"k": {"k": 0}}
                (&[0xc6], &[], &[0x00]),             // tags
            ];
            for (open, close, inner) in kinds {
                let nested = |levels: usize| {
                    [open.repeat(levels), inner.to_vec(), close.repeat(levels)].concat()
                };
                assert_eq!(
                    Payload::from_cbor(nested(100_000)),
                    Err(PayloadError::TooDeep),
                    "{open:02x?}"
                );
                let deepest = payload(&nested(MAX_DEPTH));
                assert!(deepest.decode::<ciborium::Value>().is_ok(), "{open:02x?}");
            }
            // A recursive type of the application's, 127 levels ({"List": [...]} is two): the same bound.
            let mut lists = [0xa1, 0x64, b'L', b'i', b's', b't', 0x81].repeat(MAX_DEPTH / 2 - 1);
            lists.extend([0xa1, 0x64, b'L', b'e', b'a', b'f', 0x01]);
            assert!(payload(&lists).decode::<Nest>().is_ok());
        }

        /// An enum variant of every kind serde has.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        enum Shape {
            Unit,
            Newtype(u8),
            Tuple(i16, bool),
            Struct { r: f32 },
        }

        /// Every field type serde has, in one struct: what `Payload::encode` writes for each.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Everything {
            small: u8,
            big: u64,
            negative: i64,
            wide: i128,
            half: f64,
            single: f32,
            double: f64,
            flag: bool,
            letter: char,
            text: String,
            #[serde(with = "serde_bytes")]
            blob: Vec<u8>,
            list: Vec<u16>,
            map: std::collections::BTreeMap<String, Option<u32>>,
            shapes: Vec<Shape>,
            nothing: (),
            pair: (u8, String),
            missing: Option<String>,
            point: Option<Box<Point>>,
        }

        fn everything() -> Everything {
            Everything {
                small: 7,
                big: u64::MAX,
                negative: i64::MIN,
                wide: -(1 << 70),
                half: 1.5,
                single: 0.1,
                double: 1.0 / 3.0,
                flag: true,
                letter: 'ü',
                text: "sockeye".into(),
                blob: vec![0, 255],
                list: vec![1, 300, 65535],
                map: [("a".into(), Some(1)), ("b".into(), None)].into(),
                shapes: vec![
                    Shape::Unit,
                    Shape::Newtype(3),
                    Shape::Tuple(-2, false),
                    Shape::Struct { r: 2.5 },
                ],
                nothing: (),
                pair: (1, "x".into()),
                missing: None,
                point: Some(Box::new(Point {
                    x: -3,
                    label: "ü".into(),
                    tags: vec!["a".into()],
                    extra: None,
                })),
            }
        }

        /// The old codec (ciborium both ways) and the new one read each other: the encoding is still ciborium's,
        /// byte for byte, and what the new decoder reads is what ciborium reads.
        #[test]
        fn old_and_new_codecs_interoperate_on_every_field_type() {
            let value = everything();
            let payload = Payload::encode(&value).unwrap();
            let mut old = Vec::new();
            ciborium::into_writer(&value, &mut old).unwrap();
            assert_eq!(payload.as_cbor(), old);
            assert_eq!(payload.decode::<Everything>(), Ok(value.clone()));
            let old_decoded: Everything = ciborium::from_reader(payload.as_cbor()).unwrap();
            assert_eq!(old_decoded, value);
            // A plain struct is read by minicbor-serde itself, without the detour through ciborium.
            let point = *value.point.unwrap();
            let bytes = Payload::encode(&point).unwrap().into_cbor();
            assert_eq!(
                minicbor_serde::from_slice::<Point>(&bytes).ok(),
                Some(point)
            );
        }

        /// Forms other encoders write (the browser package writes `undefined` and half floats; tags and
        /// indefinite lengths are any CBOR library's right) decode to what ciborium decoded them to.
        #[test]
        fn forms_minicbor_serde_refuses_still_decode_as_before() {
            fn same<T>(bytes: &[u8])
            where
                T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
            {
                let old: T = ciborium::from_reader(bytes).expect("ciborium reads it");
                assert_eq!(payload(bytes).decode::<T>(), Ok(old), "{bytes:02x?}");
            }
            same::<u64>(&[0xc1, 0x1a, 0, 1, 0, 0]); // tag 1 (epoch time) before an integer
            same::<String>(&[0xd8, 0x20, 0x61, b'a']); // tag 32 (URI) before text
            same::<Vec<Option<u32>>>(&[0x82, 0x01, 0xf7]); // [1, undefined]
            same::<String>(&[0x7f, 0x61, b'a', 0x62, b'b', b'c', 0xff]); // indefinite text
            same::<std::collections::BTreeMap<String, u8>>(&[
                0xbf, 0x7f, 0x61, b'k', 0xff, 0x01, 0xff,
            ]);
            same::<f64>(&[0xf9, 0x3e, 0x00]); // 1.5 as a half
            same::<f32>(&[0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]); // 1.5 as a double, into f32
            same::<char>(&[0x62, 0xc3, 0xbc]); // "ü"
            same::<()>(&[0xf6]);
            same::<Vec<u8>>(&[0x42, 0x01, 0x02]); // bytes into a Vec<u8>
            same::<ciborium::Value>(&[0xc6, 0x82, 0xf7, 0x01]); // tag 6 over [undefined, 1]
        }

        #[test]
        fn decode_into_the_wrong_type_is_a_serde_error() {
            assert!(matches!(
                Payload::null().decode::<Point>(),
                Err(PayloadError::Serde(_))
            ));
        }

        #[test]
        fn encode_refuses_values_nested_deeper_than_max_depth() {
            let mut value = ciborium::Value::Null;
            for _ in 0..=MAX_DEPTH {
                value = ciborium::Value::Array(vec![value]);
            }
            assert_eq!(Payload::encode(&value), Err(PayloadError::TooDeep));
        }
    }
}
