//! The per-connection output queue.
//!
//! Events are encoded once per publish ([`Encoded`], reference-counted) and shared by every subscriber; a
//! subscriber's FRAGMENT frames are built from slices of that one encoding, one frame at a time, as they are
//! written. Queued bytes count against the connection's budget and (once per allocation) the server's.
//!
//! A reply has one reader, so replies skip [`Encoded`]: they are encoded one after another into one buffer
//! and handed out as slices of it, and their budgets are settled once per batch. One `Vec`, one shared-bytes
//! header, one `Arc` and seven atomic operations per reply showed in the profile of the server under 64 B
//! requests (bench/NOTES.md).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use sockeye_core::codec::{Envelope, FragmentError, FragmentPlan, Fragmenter, KIND_COMPLETE};

use crate::budget::{Budget, Charge};
use crate::server::ConnControl;

/// One envelope encoded as a COMPLETE frame (`KIND_COMPLETE`, then the envelope), charged to the server-wide
/// output budget for as long as anyone holds it. Shared (`Arc`) by every subscriber of an event.
#[derive(Debug)]
pub(crate) struct Encoded {
    frame: Bytes,
    _charge: Charge,
}

impl Encoded {
    /// The COMPLETE frame of `envelope`; charge it with [`Encoded::charge`].
    pub fn frame_of(envelope: &Envelope) -> Vec<u8> {
        let mut frame = vec![KIND_COMPLETE];
        envelope.encode_to(&mut frame);
        frame
    }

    /// Wraps a frame from [`Encoded::frame_of`] (or shared bytes of one, e.g. from a topic's history),
    /// charged to `budget`; `None` when the budget is spent.
    pub fn charge(frame: impl Into<Bytes>, budget: &Arc<Budget>) -> Option<Arc<Encoded>> {
        let frame = frame.into();
        let charge = Charge::take(budget, frame.len())?;
        Some(Arc::new(Encoded {
            frame,
            _charge: charge,
        }))
    }

    /// The whole COMPLETE frame.
    #[cfg(test)]
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The envelope's bytes (after the kind byte).
    pub fn envelope(&self) -> &[u8] {
        &self.frame[1..]
    }

    /// Bytes charged for this envelope (the whole COMPLETE frame).
    pub fn len(&self) -> usize {
        self.frame.len()
    }
}

/// One WebSocket data frame to write.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A control word (`ready`, `pong`, `bye`).
    Text(&'static str),
    Binary(Bytes),
}

enum Out {
    Text(&'static str),
    /// A reply of this many bytes, one COMPLETE frame: the next bytes of `OutQueue::pending`.
    Reply(usize),
    Envelope {
        encoded: Arc<Encoded>,
        /// `None`: one COMPLETE frame, the shared bytes themselves.
        fragments: Option<FragmentPlan>,
    },
}

/// Why [`OutQueue::push_staged`] queued nothing.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The server-wide output budget cannot take the frame.
    Server,
    /// The connection's output budget cannot take the frame.
    Connection,
    /// It would take more than `u16::MAX` fragments.
    Fragments(FragmentError),
}

/// What one connection has queued to write, in order. Envelope bytes count against the connection's
/// budget (taken by whoever queued them, given back here once written or dropped).
pub(crate) struct OutQueue {
    items: VecDeque<Out>,
    fragmenter: Fragmenter,
    /// Whose `outbound` budget the queued bytes are charged to.
    control: Arc<ConnControl>,
    /// Envelope bytes in `items`.
    bytes: usize,
    /// The COMPLETE frames of the queued replies not handed out yet, in order, then the frame staged last.
    pending: Vec<u8>,
    /// Where the frame staged last starts in `pending`.
    staged: usize,
    /// The replies being handed out: once the first reply of `pending` is popped, `pending` becomes this and
    /// each reply is a slice of it (no copy; the allocation goes with the last slice).
    frozen: Bytes,
    /// The allocation behind `frozen` (it lives until its last reply has been written).
    frozen_capacity: usize,
    /// `Out::Reply` items queued.
    replies: usize,
    /// Bytes of the replies queued, plus those written since the queue last held no reply: charged to the
    /// connection's budget, and given back together once no reply is queued.
    reply_bytes: usize,
    /// The reply buffers' allocations (`pending` and `frozen`), charged to the server-wide budget: their
    /// spare capacity is memory held too (up to the bytes in them, as a `Vec` doubles). Given back once no
    /// reply is queued.
    reply_charge: Charge,
}

impl OutQueue {
    /// A queue charging `control`'s budget and, for replies, the server-wide `server` budget.
    pub fn new(
        fragment_threshold: usize,
        control: Arc<ConnControl>,
        server: &Arc<Budget>,
    ) -> OutQueue {
        OutQueue {
            items: VecDeque::new(),
            fragmenter: Fragmenter::new(fragment_threshold),
            control,
            bytes: 0,
            pending: Vec::new(),
            staged: 0,
            frozen: Bytes::new(),
            frozen_capacity: 0,
            replies: 0,
            reply_bytes: 0,
            reply_charge: Charge::empty(server),
        }
    }

    /// Encodes `envelope` as a COMPLETE frame after the pending replies, to be queued with
    /// [`OutQueue::push_staged`] or dropped with [`OutQueue::unstage`]; returns the frame's length.
    pub fn stage(&mut self, envelope: &Envelope) -> usize {
        self.staged = self.pending.len();
        self.pending.push(KIND_COMPLETE);
        envelope.encode_to(&mut self.pending);
        self.pending.len() - self.staged
    }

    /// Drops the frame staged last.
    pub fn unstage(&mut self) {
        self.pending.truncate(self.staged);
    }

    /// Queues the frame staged last, charged to the server-wide budget and this connection's. A frame that
    /// goes out in fragments leaves the reply buffer for an [`Encoded`] of its own.
    ///
    /// # Errors
    /// [`Refused`]: nothing is queued or charged.
    pub fn push_staged(&mut self) -> Result<(), Refused> {
        let len = self.pending.len() - self.staged;
        match self.fragmenter.plan(len - 1) {
            Ok(None) => {}
            Ok(Some(plan)) => {
                let frame = if self.staged == 0 {
                    std::mem::take(&mut self.pending)
                } else {
                    self.pending.split_off(self.staged)
                };
                let server = Arc::clone(self.reply_charge.budget());
                let encoded = Encoded::charge(frame, &server).ok_or(Refused::Server)?;
                if !self.control.outbound.try_take(encoded.len()) {
                    return Err(Refused::Connection);
                }
                self.bytes += encoded.len();
                self.items.push_back(Out::Envelope {
                    encoded,
                    fragments: Some(plan),
                });
                return Ok(());
            }
            Err(e) => {
                self.unstage();
                return Err(Refused::Fragments(e));
            }
        }
        let charged = self.reply_charge.bytes();
        if !self
            .reply_charge
            .resize(self.pending.capacity() + self.frozen_capacity)
        {
            self.unstage();
            return Err(Refused::Server);
        }
        if !self.control.outbound.try_take(len) {
            self.reply_charge.resize(charged);
            self.unstage();
            return Err(Refused::Connection);
        }
        self.reply_bytes += len;
        self.bytes += len;
        self.replies += 1;
        self.items.push_back(Out::Reply(len));
        Ok(())
    }

    /// No reply is queued: gives back what the replies written since the last time were charged.
    fn settle_replies(&mut self) {
        self.control.outbound.give(self.reply_bytes);
        self.reply_bytes = 0;
        // Nothing is staged while frames are pulled, so `pending` is empty here: its allocation (if any)
        // goes, and `frozen`'s goes with the reply just popped.
        self.pending = Vec::new();
        self.frozen_capacity = 0;
        self.reply_charge.resize(0);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Envelope bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push_text(&mut self, word: &'static str) {
        self.items.push_back(Out::Text(word));
    }

    /// Queues an envelope whose `len()` bytes were already taken from this connection's budget.
    ///
    /// # Errors
    /// When it would take more than `u16::MAX` fragments; nothing is queued and the bytes are given back.
    pub fn push(
        &mut self,
        encoded: Arc<Encoded>,
    ) -> Result<(), sockeye_core::codec::FragmentError> {
        match self.fragmenter.plan(encoded.envelope().len()) {
            Ok(fragments) => {
                self.bytes += encoded.len();
                self.items.push_back(Out::Envelope { encoded, fragments });
                Ok(())
            }
            Err(e) => {
                self.control.outbound.give(encoded.len());
                Err(e)
            }
        }
    }

    /// The next WebSocket message to write. A COMPLETE frame is the shared bytes (no copy); a FRAGMENT frame
    /// is built now from a slice of them.
    pub fn pop(&mut self) -> Option<Frame> {
        let (message, finished) = match self.items.front_mut()? {
            Out::Text(word) => (Frame::Text(word), true),
            &mut Out::Reply(len) => {
                if self.frozen.is_empty() {
                    self.frozen_capacity = self.pending.capacity();
                    self.frozen = Bytes::from(std::mem::take(&mut self.pending));
                }
                let frame = self.frozen.split_to(len);
                self.items.pop_front();
                self.bytes -= len;
                self.replies -= 1;
                if self.replies == 0 {
                    self.settle_replies();
                }
                return Some(Frame::Binary(frame));
            }
            Out::Envelope {
                fragments: None, ..
            } => (Frame::Binary(Bytes::new()), true),
            Out::Envelope {
                encoded,
                fragments: Some(plan),
            } => {
                let fragment = plan
                    .next()
                    .expect("a plan leaves the queue with its last fragment");
                let last = fragment.header.index + 1 == fragment.header.count;
                (
                    Frame::Binary(fragment.frame(encoded.envelope()).into()),
                    last,
                )
            }
        };
        if !finished {
            return Some(message);
        }
        match self.items.pop_front() {
            Some(Out::Envelope { encoded, fragments }) => {
                self.bytes -= encoded.len();
                self.control.outbound.give(encoded.len());
                if fragments.is_some() {
                    return Some(message);
                }
                // A COMPLETE frame is the encoded bytes themselves. A reply has one owner: its bytes move to
                // the sink. Cloning a `Bytes` made from a `Vec` allocates a shared header, which showed per
                // reply in the profile; only events, shared by their subscribers, still need the clone.
                let frame = match Arc::try_unwrap(encoded) {
                    Ok(encoded) => encoded.frame,
                    Err(shared) => shared.frame.clone(),
                };
                Some(Frame::Binary(frame))
            }
            _ => Some(message),
        }
    }

    /// Drops everything queued (a connection closed for being too slow need not be sent its backlog).
    pub fn clear(&mut self) {
        self.items.clear();
        // The queued replies are counted in both `bytes` and `reply_bytes`; their bytes are all that is left
        // of the reply buffer.
        let queued_replies = self.frozen.len() + self.pending.len();
        self.control
            .outbound
            .give(self.bytes - queued_replies + self.reply_bytes);
        self.pending = Vec::new();
        self.frozen = Bytes::new();
        self.frozen_capacity = 0;
        self.replies = 0;
        self.reply_bytes = 0;
        self.reply_charge.resize(0);
        self.bytes = 0;
    }
}

impl Drop for OutQueue {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockeye_core::codec::{Payload, Reassembler, ReassemblyLimits};
    use sockeye_core::time::Instant;

    /// An `evt` whose payload is a text of `size` bytes.
    fn event(size: usize, server: &Arc<Budget>) -> Arc<Encoded> {
        let envelope = Envelope::Evt {
            topic: "t".to_owned(),
            seq: 1,
            data: Some(Payload::encode(&"x".repeat(size)).expect("text encodes")),
        };
        Encoded::charge(Encoded::frame_of(&envelope), server).expect("within the budget")
    }

    #[test]
    fn one_encoding_serves_every_subscriber_and_budgets_are_given_back_once_written() {
        let server = Arc::new(Budget::new(1 << 20));
        let shared = event(50_000, &server);
        let charged = server.used();
        assert_eq!(charged, shared.len());
        for _ in 0..3 {
            let control = Arc::new(ConnControl::new(1 << 20));
            let budget = &control.outbound;
            let mut queue = OutQueue::new(10_000, Arc::clone(&control), &server);
            assert!(budget.try_take(shared.len()));
            queue.push(Arc::clone(&shared)).expect("fragments");
            assert_eq!(queue.bytes(), shared.len());
            let mut reassembler = Reassembler::new(ReassemblyLimits::default());
            let mut whole = None;
            while let Some(message) = queue.pop() {
                let Frame::Binary(frame) = message else {
                    panic!("a binary frame")
                };
                assert!(frame.len() <= 10_000 + 9);
                if let Some(envelope) = reassembler
                    .handle_frame(Instant::from_millis(0), &frame)
                    .expect("valid fragments")
                {
                    whole = Some(envelope.into_owned());
                }
            }
            assert_eq!(whole.as_deref(), Some(shared.envelope()));
            assert_eq!(budget.used(), 0, "given back once written");
        }
        // Still one allocation, charged once, until the last holder lets go.
        assert_eq!(server.used(), charged);
        drop(shared);
        assert_eq!(server.used(), 0);
    }

    #[test]
    fn a_complete_frame_is_the_shared_bytes_and_clearing_gives_the_budget_back() {
        let server = Arc::new(Budget::new(1 << 20));
        let shared = event(1_000, &server);
        let control = Arc::new(ConnControl::new(1 << 20));
        let budget = &control.outbound;
        let mut queue = OutQueue::new(100_000, Arc::clone(&control), &server);
        queue.push_text("ready");
        for _ in 0..2 {
            assert!(budget.try_take(shared.len()));
            queue.push(Arc::clone(&shared)).expect("fits");
        }
        assert_eq!(queue.pop(), Some(Frame::Text("ready")));
        let Some(Frame::Binary(frame)) = queue.pop() else {
            panic!("a binary frame")
        };
        assert_eq!(frame.as_ptr(), shared.frame.as_ptr(), "no copy");
        assert_eq!(budget.used(), shared.len());
        queue.clear();
        assert_eq!(budget.used(), 0);
        assert!(queue.is_empty());
    }

    /// A `res` to request `id` with a text payload of `size` bytes.
    fn reply(id: u64, size: usize) -> Envelope {
        Envelope::Res {
            id,
            data: Some(Payload::encode(&"r".repeat(size)).expect("text encodes")),
        }
    }

    #[test]
    fn replies_go_out_in_order_as_slices_of_one_buffer_and_their_budgets_come_back_once_none_is_queued(
    ) {
        let server = Arc::new(Budget::new(1 << 20));
        let control = Arc::new(ConnControl::new(1 << 20));
        let mut queue = OutQueue::new(1_000, Arc::clone(&control), &server);
        let mut expected = Vec::new();
        for (id, size) in [(1, 10), (2, 300), (3, 5_000), (4, 20)] {
            let envelope = reply(id, size);
            let len = queue.stage(&envelope);
            queue.push_staged().expect("within the budgets");
            let mut frame = vec![KIND_COMPLETE];
            envelope.encode_to(&mut frame);
            assert_eq!(len, frame.len());
            expected.push(frame);
        }
        // A reply refused for its size leaves nothing behind.
        queue.stage(&reply(5, 50));
        queue.unstage();
        let total: usize = expected.iter().map(Vec::len).sum();
        assert_eq!(queue.bytes(), total);
        assert_eq!(control.outbound.used(), total);
        // The server's budget holds the reply buffer's allocation (the fragmented reply is an `Encoded`).
        assert!(server.used() >= total, "{}", server.used());
        let mut reassembler = Reassembler::new(ReassemblyLimits::default());
        let mut got = Vec::new();
        while let Some(message) = queue.pop() {
            let Frame::Binary(frame) = message else {
                panic!("a binary frame")
            };
            if let Some(envelope) = reassembler
                .handle_frame(Instant::from_millis(0), &frame)
                .expect("valid frames")
            {
                got.push(envelope.into_owned());
            }
            // Held while a reply is still queued (the 5 000-byte one is fragmented: charged on its own).
            if !queue.is_empty() {
                assert!(control.outbound.used() > 0);
            }
        }
        let want: Vec<&[u8]> = expected.iter().map(|frame| &frame[1..]).collect();
        assert_eq!(got, want);
        assert_eq!((server.used(), control.outbound.used()), (0, 0));
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn clearing_gives_back_replies_queued_and_written() {
        let server = Arc::new(Budget::new(1 << 20));
        let control = Arc::new(ConnControl::new(1 << 20));
        let mut queue = OutQueue::new(1_000, Arc::clone(&control), &server);
        for id in 0..3 {
            queue.stage(&reply(id, 100));
            queue.push_staged().expect("within the budgets");
        }
        let shared = event(50, &server);
        assert!(control.outbound.try_take(shared.len()));
        queue.push(Arc::clone(&shared)).expect("fits");
        assert!(matches!(queue.pop(), Some(Frame::Binary(_))));
        queue.clear();
        assert_eq!(control.outbound.used(), 0);
        assert_eq!(server.used(), shared.len(), "only the shared event is left");
        // The queue works on after a clear.
        queue.stage(&reply(9, 1));
        queue.push_staged().expect("within the budgets");
        assert!(matches!(queue.pop(), Some(Frame::Binary(_))));
        assert_eq!(control.outbound.used(), 0);
    }

    #[test]
    fn a_reply_over_either_budget_is_refused_and_charges_nothing() {
        let server = Arc::new(Budget::new(500));
        let control = Arc::new(ConnControl::new(1 << 20));
        let mut queue = OutQueue::new(10_000, Arc::clone(&control), &server);
        queue.stage(&reply(1, 600));
        assert!(matches!(queue.push_staged(), Err(Refused::Server)));
        let control = Arc::new(ConnControl::new(500));
        let server = Arc::new(Budget::new(1 << 20));
        let mut queue = OutQueue::new(10_000, Arc::clone(&control), &server);
        queue.stage(&reply(1, 600));
        assert!(matches!(queue.push_staged(), Err(Refused::Connection)));
        assert_eq!((server.used(), control.outbound.used()), (0, 0));
        assert!(queue.is_empty());
        assert!(queue.pop().is_none());
    }
}
