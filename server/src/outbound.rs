//! The per-connection output queue.
//!
//! Events are encoded once per publish ([`Encoded`], reference-counted) and shared by every subscriber; a
//! subscriber's FRAGMENT frames are built from slices of that one encoding, one frame at a time, as they are
//! written. Queued bytes count against the connection's budget and (once per allocation) the server's.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use sockeye_core::codec::{Envelope, FragmentPlan, Fragmenter, KIND_COMPLETE};

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
    Envelope {
        encoded: Arc<Encoded>,
        /// `None`: one COMPLETE frame, the shared bytes themselves.
        fragments: Option<FragmentPlan>,
    },
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
}

impl OutQueue {
    pub fn new(fragment_threshold: usize, control: Arc<ConnControl>) -> OutQueue {
        OutQueue {
            items: VecDeque::new(),
            fragmenter: Fragmenter::new(fragment_threshold),
            control,
            bytes: 0,
        }
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
        self.control.outbound.give(self.bytes);
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
            let mut queue = OutQueue::new(10_000, Arc::clone(&control));
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
        let mut queue = OutQueue::new(100_000, Arc::clone(&control));
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
}
