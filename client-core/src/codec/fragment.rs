//! Splitting large envelopes into FRAGMENT frames, and putting them back together within limits
//! (PROTOCOL §3).

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::envelope::Envelope;
use super::frame::{FragmentHeader, Frame, ProtocolViolation, FRAGMENT_HEADER_LEN, KIND_COMPLETE};
use crate::time::{Duration, Instant};
use core::fmt;

/// The default fragment threshold (PROTOCOL §3): encoded envelopes larger than this are split.
pub const DEFAULT_FRAGMENT_THRESHOLD: usize = 100 * 1024;

/// Why an envelope cannot be sent as frames.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FragmentError {
    /// `size` bytes at this `threshold` would need more than `u16::MAX` fragments.
    TooManyFragments { size: usize, threshold: usize },
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FragmentError::TooManyFragments { size, threshold } => write!(
                f,
                "an envelope of {size} bytes would need more than {} fragments of {threshold} bytes",
                u16::MAX
            ),
        }
    }
}

impl std::error::Error for FragmentError {}

/// Turns envelopes into binary WebSocket messages: one COMPLETE frame, or FRAGMENT frames when the encoded
/// envelope is larger than the threshold.
///
/// Holds the sender's `msg_id` counter (per connection, per sender; it wraps). Use one per connection.
#[derive(Debug, Clone)]
pub struct Fragmenter {
    threshold: usize,
    next_msg_id: u32,
}

impl Fragmenter {
    /// A fragmenter splitting envelopes larger than `threshold` bytes; 0 disables fragmentation.
    pub fn new(threshold: usize) -> Self {
        Fragmenter { threshold, next_msg_id: 0 }
    }

    /// The threshold in bytes (0: never fragments).
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Encodes the envelope and hands each binary WebSocket message (kind byte included) to `emit`, in order.
    ///
    /// An envelope that fits is encoded straight after the kind byte and emitted without a copy.
    ///
    /// # Errors
    /// [`FragmentError::TooManyFragments`] when it would take more than `u16::MAX` fragments; nothing is
    /// emitted then. Never panics.
    pub fn encode(&mut self, envelope: &Envelope, emit: impl FnMut(Vec<u8>)) -> Result<(), FragmentError> {
        let mut frame = vec![KIND_COMPLETE];
        envelope.encode_to(&mut frame);
        if self.fits(frame.len() - 1) {
            let mut emit = emit;
            emit(frame);
            Ok(())
        } else {
            self.split(&frame[1..], emit)
        }
    }

    /// Same as [`encode`](Fragmenter::encode) for already-encoded envelope bytes (the client's offline queue
    /// stores encoded envelopes). The bytes are not checked.
    ///
    /// # Errors
    /// [`FragmentError::TooManyFragments`] when it would take more than `u16::MAX` fragments; nothing is
    /// emitted then. Never panics.
    pub fn encode_bytes(&mut self, envelope_bytes: &[u8], emit: impl FnMut(Vec<u8>)) -> Result<(), FragmentError> {
        if self.fits(envelope_bytes.len()) {
            let mut frame = Vec::with_capacity(1 + envelope_bytes.len());
            frame.push(KIND_COMPLETE);
            frame.extend_from_slice(envelope_bytes);
            let mut emit = emit;
            emit(frame);
            Ok(())
        } else {
            self.split(envelope_bytes, emit)
        }
    }

    /// Whether an envelope of `len` bytes goes out as one COMPLETE frame.
    fn fits(&self, len: usize) -> bool {
        self.threshold == 0 || len <= self.threshold
    }

    /// Emits FRAGMENT frames of at most `threshold` chunk bytes each. Only called with `bytes.len() >
    /// threshold > 0`, so there are at least two chunks.
    fn split(&mut self, bytes: &[u8], mut emit: impl FnMut(Vec<u8>)) -> Result<(), FragmentError> {
        let too_many = FragmentError::TooManyFragments { size: bytes.len(), threshold: self.threshold };
        let count = u16::try_from(bytes.len().div_ceil(self.threshold)).map_err(|_| too_many)?;
        let msg_id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        for (index, chunk) in (0..count).zip(bytes.chunks(self.threshold)) {
            let mut frame = Vec::with_capacity(FRAGMENT_HEADER_LEN + chunk.len());
            FragmentHeader { msg_id, index, count }.write_to(&mut frame);
            frame.extend_from_slice(chunk);
            emit(frame);
        }
        Ok(())
    }
}

/// The receiver's limits on reassembly (PROTOCOL §3); each protects memory.
#[derive(Clone, Debug)]
pub struct ReassemblyLimits {
    /// Largest envelope accepted, whole or reassembled (default 16 MiB).
    pub max_message_bytes: usize,
    /// Most fragmented messages in progress at once (default 8).
    pub max_partial_messages: usize,
    /// Time from a message's first fragment to its last (default 30 s).
    pub completion_timeout: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_message_bytes: 16 * 1024 * 1024,
            max_partial_messages: 8,
            completion_timeout: Duration::from_secs(30),
        }
    }
}

/// One fragmented message in progress.
#[derive(Debug)]
struct Partial {
    count: u16,
    next_index: u16,
    bytes: Vec<u8>,
    deadline: Instant,
}

/// Puts FRAGMENT frames back together, enforcing PROTOCOL §3's sequence rules and the [`ReassemblyLimits`].
///
/// Every error is a reason to close the connection ([`ProtocolViolation::close_code`]); after one, the state
/// is unspecified until [`reset`](Reassembler::reset). Use one per connection and reset it for a new socket.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    /// Keyed by `msg_id`; a BTreeMap keeps the expiry order deterministic.
    partials: BTreeMap<u32, Partial>,
    buffered: usize,
}

impl Reassembler {
    /// An empty reassembler with these limits.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler { limits, partials: BTreeMap::new(), buffered: 0 }
    }

    /// Feeds one binary WebSocket message; `Ok(Some(envelope bytes))` when a whole envelope is available
    /// (borrowed for COMPLETE frames, owned when reassembled), `Ok(None)` when more fragments are needed.
    ///
    /// Partial messages whose deadline has passed at `now` are refused first, so a late timer cannot let one
    /// complete. Buffers grow with the bytes actually received, never from a declared count.
    ///
    /// # Errors
    /// Any [`ProtocolViolation`] of PROTOCOL §3: frame rules from [`Frame::decode`]; a first fragment with
    /// index ≠ 0, a duplicate or out-of-order index ([`UnexpectedIndex`](ProtocolViolation::UnexpectedIndex));
    /// a changed count; a message over `max_message_bytes` (COMPLETE or reassembled); a new message beyond
    /// `max_partial_messages`; an expired partial message. Never panics.
    pub fn handle_frame<'a>(
        &mut self,
        now: Instant,
        bytes: &'a [u8],
    ) -> Result<Option<Cow<'a, [u8]>>, ProtocolViolation> {
        let frame = Frame::decode(bytes)?;
        self.handle_timeout(now)?;
        let limit = self.limits.max_message_bytes;
        let (header, chunk) = match frame {
            Frame::Complete(body) if body.len() > limit => {
                return Err(ProtocolViolation::MessageTooBig { size: body.len(), limit });
            }
            Frame::Complete(body) => return Ok(Some(Cow::Borrowed(body))),
            Frame::Fragment(header, chunk) => (header, chunk),
        };
        let FragmentHeader { msg_id, index, count } = header;
        let Some(partial) = self.partials.get_mut(&msg_id) else {
            // A new message: it must start at index 0 and fit the limits.
            if index != 0 {
                return Err(ProtocolViolation::UnexpectedIndex { msg_id, expected: 0, got: index });
            }
            if self.partials.len() >= self.limits.max_partial_messages {
                return Err(ProtocolViolation::TooManyPartialMessages { limit: self.limits.max_partial_messages });
            }
            if chunk.len() > limit {
                return Err(ProtocolViolation::MessageTooBig { size: chunk.len(), limit });
            }
            let deadline = now + self.limits.completion_timeout;
            self.partials.insert(msg_id, Partial { count, next_index: 1, bytes: chunk.to_vec(), deadline });
            self.buffered += chunk.len();
            return Ok(None);
        };
        if count != partial.count {
            return Err(ProtocolViolation::CountChanged { msg_id, was: partial.count, now: count });
        }
        if index != partial.next_index {
            return Err(ProtocolViolation::UnexpectedIndex { msg_id, expected: partial.next_index, got: index });
        }
        let size = partial.bytes.len().saturating_add(chunk.len());
        if size > limit {
            return Err(ProtocolViolation::MessageTooBig { size, limit });
        }
        partial.bytes.extend_from_slice(chunk);
        partial.next_index += 1; // < count <= u16::MAX: Frame::decode checked index < count.
        self.buffered += chunk.len();
        if partial.next_index < count {
            return Ok(None);
        }
        let done = self.partials.remove(&msg_id).map(|p| p.bytes).unwrap_or_default();
        self.buffered -= done.len();
        Ok(Some(Cow::Owned(done)))
    }

    /// The earliest completion deadline of a partial message, or `None` when there is none.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.partials.values().map(|p| p.deadline).min()
    }

    /// Refuses partial messages whose deadline is at or before `now`. Early (or repeated) calls are harmless.
    ///
    /// # Errors
    /// [`ProtocolViolation::IncompleteMessageExpired`] naming the message that expired first; every expired
    /// partial is dropped. Never panics.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtocolViolation> {
        let mut first_expired: Option<(Instant, u32)> = None;
        let mut freed = 0;
        self.partials.retain(|&msg_id, partial| {
            if partial.deadline > now {
                return true;
            }
            if first_expired.is_none_or(|(deadline, _)| partial.deadline < deadline) {
                first_expired = Some((partial.deadline, msg_id));
            }
            freed += partial.bytes.len();
            false
        });
        self.buffered -= freed;
        match first_expired {
            Some((_, msg_id)) => Err(ProtocolViolation::IncompleteMessageExpired { msg_id }),
            None => Ok(()),
        }
    }

    /// Bytes held in partial messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Drops every partial message (for a new socket: `msg_id`s are per connection).
    pub fn reset(&mut self) {
        self.partials.clear();
        self.buffered = 0;
    }
}
