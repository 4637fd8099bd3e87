//! Splitting large envelopes into FRAGMENT frames, and putting them back together within limits
//! (PROTOCOL §3).

use alloc::borrow::Cow;
use alloc::{string::String, vec::Vec};

use super::envelope::Envelope;
use super::frame::{FragmentHeader, Frame, ProtocolViolation, FRAGMENT_HEADER_LEN, KIND_COMPLETE};
use crate::text::{n, Text};
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

impl FragmentError {
    /// The `Display` text, built without `core::fmt` (see `text.rs`).
    pub(crate) fn message(&self) -> String {
        match self {
            FragmentError::TooManyFragments { size, threshold } => Text::from("an envelope of ")
                .num(n(*size))
                .str(" bytes would need more than ")
                .num(u16::MAX)
                .str(" fragments of ")
                .num(n(*threshold))
                .str(" bytes")
                .into(),
        }
    }
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FragmentError::TooManyFragments { .. } => f.write_str(&self.message()),
        }
    }
}

impl core::error::Error for FragmentError {}

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
        Fragmenter {
            threshold,
            next_msg_id: 0,
        }
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
    pub fn encode(
        &mut self,
        envelope: &Envelope,
        emit: impl FnMut(Vec<u8>),
    ) -> Result<(), FragmentError> {
        // Sized for the whole envelope up front: from `vec![KIND_COMPLETE]`, every frame was a malloc and a realloc.
        let mut frame = Vec::with_capacity(1 + envelope.size_hint());
        frame.push(KIND_COMPLETE);
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
    pub fn encode_bytes(
        &mut self,
        envelope_bytes: &[u8],
        emit: impl FnMut(Vec<u8>),
    ) -> Result<(), FragmentError> {
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

    /// Whether an envelope of `len` bytes can be sent at this threshold, without encoding it (the client checks
    /// before queueing, so nothing it accepts fails later).
    ///
    /// # Errors
    /// [`FragmentError::TooManyFragments`] when it would take more than `u16::MAX` fragments.
    pub fn check(&self, len: usize) -> Result<u16, FragmentError> {
        if self.fits(len) {
            return Ok(1);
        }
        u16::try_from(len.div_ceil(self.threshold)).map_err(|_| FragmentError::TooManyFragments {
            size: len,
            threshold: self.threshold,
        })
    }

    /// Whether an envelope of `len` bytes goes out as one COMPLETE frame.
    fn fits(&self, len: usize) -> bool {
        self.threshold == 0 || len <= self.threshold
    }

    /// Plans the frames of an envelope of `len` bytes without touching its bytes: `None` when it goes out
    /// as one COMPLETE frame, else the FRAGMENT frames to build one at a time (a server sharing one encoded
    /// event among many subscribers builds each subscriber's frames from slices of it, only as it writes
    /// them). Takes a `msg_id` when it fragments.
    ///
    /// # Errors
    /// [`FragmentError::TooManyFragments`] when it would take more than `u16::MAX` fragments. Never panics.
    pub fn plan(&mut self, len: usize) -> Result<Option<FragmentPlan>, FragmentError> {
        if self.fits(len) {
            return Ok(None);
        }
        let count = self.check(len)?;
        let msg_id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        Ok(Some(FragmentPlan {
            msg_id,
            count,
            next: 0,
            threshold: self.threshold,
            len,
        }))
    }

    /// Emits FRAGMENT frames of at most `threshold` chunk bytes each. Only called with `bytes.len() >
    /// threshold > 0`, so there are at least two chunks.
    fn split(&mut self, bytes: &[u8], mut emit: impl FnMut(Vec<u8>)) -> Result<(), FragmentError> {
        if let Some(plan) = self.plan(bytes.len())? {
            for fragment in plan {
                emit(fragment.frame(bytes));
            }
        }
        Ok(())
    }
}

/// The FRAGMENT frames of one envelope, in order ([`Fragmenter::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentPlan {
    msg_id: u32,
    count: u16,
    next: u16,
    threshold: usize,
    len: usize,
}

/// One FRAGMENT frame of a [`FragmentPlan`]: its header and which envelope bytes it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFragment {
    /// The frame header.
    pub header: FragmentHeader,
    /// The envelope bytes this frame carries.
    pub range: core::ops::Range<usize>,
}

impl PlannedFragment {
    /// The whole frame (header, then `envelope[range]`).
    ///
    /// # Panics
    /// When `envelope` is shorter than the length the plan was made for.
    pub fn frame(&self, envelope: &[u8]) -> Vec<u8> {
        let chunk = &envelope[self.range.clone()];
        let mut frame = Vec::with_capacity(FRAGMENT_HEADER_LEN + chunk.len());
        self.header.write_to(&mut frame);
        frame.extend_from_slice(chunk);
        frame
    }
}

impl Iterator for FragmentPlan {
    type Item = PlannedFragment;

    fn next(&mut self) -> Option<PlannedFragment> {
        if self.next >= self.count {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let start = usize::from(index) * self.threshold;
        Some(PlannedFragment {
            header: FragmentHeader {
                msg_id: self.msg_id,
                index,
                count: self.count,
            },
            range: start..self.len.min(start.saturating_add(self.threshold)),
        })
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
    msg_id: u32,
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
    /// Sorted by `msg_id`, which keeps the expiry order deterministic. A `Vec`, not a `BTreeMap`: there are
    /// at most `max_partial_messages` (default 8), and every B-tree instantiation costs the browser package
    /// several KB of code.
    partials: Vec<Partial>,
    buffered: usize,
}

impl Reassembler {
    /// An empty reassembler with these limits.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            partials: Vec::new(),
            buffered: 0,
        }
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
                return Err(ProtocolViolation::MessageTooBig {
                    size: body.len(),
                    limit,
                });
            }
            Frame::Complete(body) => return Ok(Some(Cow::Borrowed(body))),
            Frame::Fragment(header, chunk) => (header, chunk),
        };
        let FragmentHeader {
            msg_id,
            index,
            count,
        } = header;
        let found = self.partials.binary_search_by_key(&msg_id, |p| p.msg_id);
        let (Ok(at) | Err(at)) = found;
        let Some(partial) = found.ok().map(|at| &mut self.partials[at]) else {
            // A new message: it must start at index 0 and fit the limits.
            if index != 0 {
                return Err(ProtocolViolation::UnexpectedIndex {
                    msg_id,
                    expected: 0,
                    got: index,
                });
            }
            if self.partials.len() >= self.limits.max_partial_messages {
                return Err(ProtocolViolation::TooManyPartialMessages {
                    limit: self.limits.max_partial_messages,
                });
            }
            if chunk.len() > limit {
                return Err(ProtocolViolation::MessageTooBig {
                    size: chunk.len(),
                    limit,
                });
            }
            let deadline = now + self.limits.completion_timeout;
            self.partials.insert(
                at,
                Partial {
                    msg_id,
                    count,
                    next_index: 1,
                    bytes: chunk.to_vec(),
                    deadline,
                },
            );
            self.buffered += chunk.len();
            return Ok(None);
        };
        if count != partial.count {
            return Err(ProtocolViolation::CountChanged {
                msg_id,
                was: partial.count,
                now: count,
            });
        }
        if index != partial.next_index {
            return Err(ProtocolViolation::UnexpectedIndex {
                msg_id,
                expected: partial.next_index,
                got: index,
            });
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
        let done = self.partials.remove(at).bytes;
        self.buffered -= done.len();
        Ok(Some(Cow::Owned(done)))
    }

    /// The earliest completion deadline of a partial message, or `None` when there is none.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.partials.iter().map(|p| p.deadline).min()
    }

    /// Refuses partial messages whose deadline is at or before `now`. Early (or repeated) calls are harmless.
    ///
    /// # Errors
    /// [`ProtocolViolation::IncompleteMessageExpired`] naming the message that expired first; every expired
    /// partial is dropped. Never panics.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtocolViolation> {
        let mut first_expired: Option<(Instant, u32)> = None;
        let mut freed = 0;
        self.partials.retain(|partial| {
            if partial.deadline > now {
                return true;
            }
            if first_expired.is_none_or(|(deadline, _)| partial.deadline < deadline) {
                first_expired = Some((partial.deadline, partial.msg_id));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::tests::fragment;
    use crate::codec::{Payload, KIND_FRAGMENT};
    use crate::error::CloseCode;

    const T0: Instant = Instant::ZERO;

    fn frames_of(fragmenter: &mut Fragmenter, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        fragmenter
            .encode_bytes(bytes, |f| frames.push(f))
            .expect("fits in u16::MAX fragments");
        frames
    }

    fn envelope_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    /// Feeds every frame; returns the envelopes completed.
    fn reassemble(reassembler: &mut Reassembler, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for frame in frames {
            if let Some(bytes) = reassembler
                .handle_frame(T0, frame)
                .expect("frames are valid")
            {
                out.push(bytes.into_owned());
            }
        }
        out
    }

    fn limits(
        max_message_bytes: usize,
        max_partial_messages: usize,
        timeout_ms: u64,
    ) -> ReassemblyLimits {
        ReassemblyLimits {
            max_message_bytes,
            max_partial_messages,
            completion_timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[test]
    fn defaults_match_the_protocol() {
        let limits = ReassemblyLimits::default();
        assert_eq!(limits.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(limits.max_partial_messages, 8);
        assert_eq!(limits.completion_timeout, Duration::from_secs(30));
        assert_eq!(DEFAULT_FRAGMENT_THRESHOLD, 102_400);
        assert_eq!(
            Fragmenter::new(DEFAULT_FRAGMENT_THRESHOLD).threshold(),
            DEFAULT_FRAGMENT_THRESHOLD
        );
    }

    #[test]
    fn threshold_zero_never_fragments() {
        let bytes = envelope_bytes(1 << 20);
        let frames = frames_of(&mut Fragmenter::new(0), &bytes);
        assert_eq!(frames, [[&[KIND_COMPLETE][..], &bytes].concat()]);
    }

    #[test]
    fn envelope_below_or_at_threshold_is_one_complete_frame() {
        for len in [0, 1, 99, 100] {
            let bytes = envelope_bytes(len);
            let frames = frames_of(&mut Fragmenter::new(100), &bytes);
            assert_eq!(
                frames,
                [[&[KIND_COMPLETE][..], &bytes].concat()],
                "len {len}"
            );
        }
    }

    #[test]
    fn envelope_one_byte_over_threshold_is_two_fragments() {
        let bytes = envelope_bytes(101);
        let frames = frames_of(&mut Fragmenter::new(100), &bytes);
        assert_eq!(
            frames,
            [
                fragment(0, 0, 2, &bytes[..100]),
                fragment(0, 1, 2, &bytes[100..])
            ]
        );
    }

    #[test]
    fn fragments_round_trip_through_the_reassembler() {
        let mut fragmenter = Fragmenter::new(10);
        let mut reassembler = Reassembler::new(ReassemblyLimits::default());
        for len in [0, 9, 10, 11, 20, 21, 99, 1000] {
            let bytes = envelope_bytes(len);
            let frames = frames_of(&mut fragmenter, &bytes);
            assert_eq!(frames.len(), len.div_ceil(10).max(1), "len {len}");
            assert!(frames.iter().all(|f| f.len() <= FRAGMENT_HEADER_LEN + 10));
            assert_eq!(reassemble(&mut reassembler, &frames), [bytes]);
            assert_eq!(reassembler.buffered_bytes(), 0);
            assert_eq!(reassembler.poll_timeout(), None);
        }
    }

    #[test]
    fn encoded_envelope_round_trips_at_below_and_above_the_threshold() {
        let envelope = Envelope::Req {
            id: 1,
            method: "echo".into(),
            data: Some(
                Payload::from_cbor(vec![0x58, 200].into_iter().chain([7; 200]).collect()).unwrap(),
            ),
        };
        let len = envelope.encode().len();
        for (threshold, frame_count) in [
            (0, 1),
            (len, 1),
            (len + 1, 1),
            (len - 1, 2),
            (16, len.div_ceil(16)),
        ] {
            let mut frames = Vec::new();
            Fragmenter::new(threshold)
                .encode(&envelope, |f| frames.push(f))
                .unwrap();
            assert_eq!(frames.len(), frame_count, "threshold {threshold}");
            let mut same = Vec::new();
            Fragmenter::new(threshold)
                .encode_bytes(&envelope.encode(), |f| same.push(f))
                .unwrap();
            assert_eq!(frames, same);
            let got = reassemble(&mut Reassembler::new(ReassemblyLimits::default()), &frames);
            assert_eq!(Envelope::decode(&got[0]), Ok(envelope.clone()));
        }
    }

    #[test]
    fn msg_ids_count_up_per_fragmented_message_and_wrap() {
        let mut fragmenter = Fragmenter::new(1);
        fragmenter.next_msg_id = u32::MAX;
        let ids: Vec<u32> = (0..3)
            .map(
                |_| match Frame::decode(&frames_of(&mut fragmenter, b"ab")[0]) {
                    Ok(Frame::Fragment(header, _)) => header.msg_id,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(ids, [u32::MAX, 0, 1]);
        frames_of(&mut fragmenter, b"a"); // a COMPLETE frame takes no msg_id
        assert_eq!(fragmenter.next_msg_id, 2);
    }

    #[test]
    fn more_than_u16_max_fragments_is_refused_and_emits_nothing() {
        let mut fragmenter = Fragmenter::new(1);
        let bytes = envelope_bytes(usize::from(u16::MAX) + 1);
        let mut emitted = 0;
        let result = fragmenter.encode_bytes(&bytes, |_| emitted += 1);
        assert_eq!(
            result,
            Err(FragmentError::TooManyFragments {
                size: bytes.len(),
                threshold: 1
            })
        );
        assert_eq!(emitted, 0);
        assert_eq!(
            frames_of(&mut fragmenter, &bytes[1..]).len(),
            usize::from(u16::MAX)
        );
    }

    #[test]
    fn complete_frames_are_borrowed_not_copied() {
        let frame = [KIND_COMPLETE, 0xa0];
        let got = Reassembler::new(ReassemblyLimits::default())
            .handle_frame(T0, &frame)
            .unwrap();
        assert!(matches!(got, Some(Cow::Borrowed(&[0xa0]))));
    }

    #[test]
    fn interleaved_messages_reassemble_independently() {
        let mut reassembler = Reassembler::new(ReassemblyLimits::default());
        let frames = [
            fragment(1, 0, 2, b"ab"),
            fragment(2, 0, 2, b"xy"),
            vec![KIND_COMPLETE, 0xf6],
            fragment(2, 1, 2, b"z"),
            fragment(1, 1, 2, b"c"),
        ];
        assert_eq!(
            reassemble(&mut reassembler, &frames),
            [b"\xf6".to_vec(), b"xyz".to_vec(), b"abc".to_vec()]
        );
    }

    fn violation(reassembler: &mut Reassembler, frames: &[Vec<u8>]) -> ProtocolViolation {
        let (last, init) = frames.split_last().expect("at least one frame");
        for frame in init {
            reassembler
                .handle_frame(T0, frame)
                .expect("the frames before the last are valid");
        }
        reassembler
            .handle_frame(T0, last)
            .expect_err("the last frame breaks a rule")
    }

    fn assert_refused(frames: &[Vec<u8>], expected: ProtocolViolation, code: CloseCode) {
        let got = violation(&mut Reassembler::new(limits(100, 2, 1000)), frames);
        assert_eq!(got, expected);
        assert_eq!(got.close_code(), code);
    }

    #[test]
    fn frame_rules_are_refused_with_1002() {
        let p = CloseCode::PROTOCOL_ERROR;
        assert_refused(&[vec![]], ProtocolViolation::EmptyFrame, p);
        assert_refused(&[vec![0x7f]], ProtocolViolation::UnknownKind(0x7f), p);
        assert_refused(
            &[vec![KIND_FRAGMENT, 0, 0]],
            ProtocolViolation::TruncatedHeader { len: 3 },
            p,
        );
        assert_refused(
            &[fragment(3, 0, 1, b"a")],
            ProtocolViolation::CountTooSmall {
                msg_id: 3,
                count: 1,
            },
            p,
        );
        assert_refused(
            &[fragment(3, 5, 5, b"a")],
            ProtocolViolation::IndexOutOfRange {
                msg_id: 3,
                index: 5,
                count: 5,
            },
            p,
        );
    }

    #[test]
    fn duplicate_index_is_refused_with_1002() {
        let frames = [fragment(3, 0, 3, b"a"), fragment(3, 0, 3, b"a")];
        let expected = ProtocolViolation::UnexpectedIndex {
            msg_id: 3,
            expected: 1,
            got: 0,
        };
        assert_refused(&frames, expected, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn out_of_order_index_is_refused_with_1002() {
        let frames = [fragment(3, 0, 3, b"a"), fragment(3, 2, 3, b"c")];
        let expected = ProtocolViolation::UnexpectedIndex {
            msg_id: 3,
            expected: 1,
            got: 2,
        };
        assert_refused(&frames, expected, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn message_not_starting_at_index_zero_is_refused_with_1002() {
        let expected = ProtocolViolation::UnexpectedIndex {
            msg_id: 3,
            expected: 0,
            got: 1,
        };
        assert_refused(
            &[fragment(3, 1, 3, b"b")],
            expected,
            CloseCode::PROTOCOL_ERROR,
        );
        // A repeat of a completed message's last fragment starts nothing.
        let frames = [
            fragment(4, 0, 2, b"a"),
            fragment(4, 1, 2, b"b"),
            fragment(4, 1, 2, b"b"),
        ];
        let expected = ProtocolViolation::UnexpectedIndex {
            msg_id: 4,
            expected: 0,
            got: 1,
        };
        assert_refused(&frames, expected, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn count_changing_within_a_message_is_refused_with_1002() {
        let frames = [fragment(3, 0, 3, b"a"), fragment(3, 1, 4, b"b")];
        let expected = ProtocolViolation::CountChanged {
            msg_id: 3,
            was: 3,
            now: 4,
        };
        assert_refused(&frames, expected, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn message_over_the_size_limit_is_refused_with_1009() {
        let big = CloseCode::MESSAGE_TOO_BIG;
        let complete = [&[KIND_COMPLETE][..], &[0; 101]].concat();
        assert_refused(
            &[complete],
            ProtocolViolation::MessageTooBig {
                size: 101,
                limit: 100,
            },
            big,
        );
        let first_chunk_too_big = fragment(1, 0, 2, &[0; 101]);
        assert_refused(
            &[first_chunk_too_big],
            ProtocolViolation::MessageTooBig {
                size: 101,
                limit: 100,
            },
            big,
        );
        let frames = [fragment(1, 0, 3, &[0; 60]), fragment(1, 1, 3, &[0; 41])];
        assert_refused(
            &frames,
            ProtocolViolation::MessageTooBig {
                size: 101,
                limit: 100,
            },
            big,
        );

        let at_limit = [fragment(1, 0, 2, &[0; 60]), fragment(1, 1, 2, &[0; 40])];
        assert_eq!(
            reassemble(&mut Reassembler::new(limits(100, 2, 1000)), &at_limit)[0].len(),
            100
        );
        let complete_at_limit = [&[KIND_COMPLETE][..], &[0; 100]].concat();
        assert!(Reassembler::new(limits(100, 2, 1000))
            .handle_frame(T0, &complete_at_limit)
            .is_ok());
    }

    #[test]
    fn too_many_partial_messages_are_refused_with_1009() {
        let frames = [
            fragment(1, 0, 2, b"a"),
            fragment(2, 0, 2, b"b"),
            fragment(3, 0, 2, b"c"),
        ];
        assert_refused(
            &frames,
            ProtocolViolation::TooManyPartialMessages { limit: 2 },
            CloseCode::MESSAGE_TOO_BIG,
        );
        // A finished message frees its slot.
        let frames = [
            fragment(1, 0, 2, b"a"),
            fragment(2, 0, 2, b"b"),
            fragment(2, 1, 2, b"b"),
            fragment(3, 0, 2, b"c"),
        ];
        assert!(reassemble(&mut Reassembler::new(limits(100, 2, 1000)), &frames).len() == 1);
    }

    #[test]
    fn partial_not_completed_in_time_expires_via_handle_timeout_with_1002() {
        let mut reassembler = Reassembler::new(limits(100, 8, 1000));
        assert_eq!(reassembler.poll_timeout(), None);
        reassembler
            .handle_frame(Instant::from_millis(10), &fragment(1, 0, 2, b"ab"))
            .unwrap();
        reassembler
            .handle_frame(Instant::from_millis(20), &fragment(2, 0, 2, b"c"))
            .unwrap();
        assert_eq!(reassembler.poll_timeout(), Some(Instant::from_millis(1010)));
        assert_eq!(reassembler.buffered_bytes(), 3);

        assert_eq!(
            reassembler.handle_timeout(Instant::from_millis(1009)),
            Ok(()),
            "an early call is harmless"
        );
        let e = reassembler
            .handle_timeout(Instant::from_millis(1010))
            .unwrap_err();
        assert_eq!(e, ProtocolViolation::IncompleteMessageExpired { msg_id: 1 });
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(reassembler.poll_timeout(), Some(Instant::from_millis(1020)));
        assert_eq!(reassembler.buffered_bytes(), 1);
        assert_eq!(
            reassembler.handle_timeout(Instant::from_millis(1010)),
            Ok(()),
            "a repeated call is harmless"
        );
    }

    #[test]
    fn late_fragment_of_an_expired_message_is_refused_even_without_handle_timeout() {
        let mut reassembler = Reassembler::new(limits(100, 8, 1000));
        reassembler
            .handle_frame(T0, &fragment(1, 0, 2, b"a"))
            .unwrap();
        let e = reassembler
            .handle_frame(Instant::from_millis(1000), &fragment(1, 1, 2, b"b"))
            .unwrap_err();
        assert_eq!(e, ProtocolViolation::IncompleteMessageExpired { msg_id: 1 });
    }

    #[test]
    fn reset_drops_every_partial_message() {
        let mut reassembler = Reassembler::new(ReassemblyLimits::default());
        reassembler
            .handle_frame(T0, &fragment(1, 0, 2, b"abc"))
            .unwrap();
        assert_eq!(reassembler.buffered_bytes(), 3);
        reassembler.reset();
        assert_eq!(reassembler.buffered_bytes(), 0);
        assert_eq!(reassembler.poll_timeout(), None);
        // The same msg_id starts afresh on the new socket.
        assert_eq!(
            reassembler.handle_frame(T0, &fragment(1, 0, 2, b"x")),
            Ok(None)
        );
    }
}
