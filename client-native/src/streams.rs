//! Bounded streams the driver feeds without ever blocking (subscriptions, messages, transitions, lifecycle
//! events), and the listener streams of messages, transitions and lifecycle events.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::de::DeserializeOwned;
use sockeye_core::codec::Payload;
use sockeye_core::{CloseCode, CloseReason, Transition};
use tokio::sync::mpsc;

use crate::client::Command;
use crate::handlers::decode_optional;
use crate::subscriptions::RawItem;
#[cfg(doc)]
use crate::Client;
use crate::Error;

/// A listener stream's sending half.
pub(crate) enum Listener {
    Incoming(Feed<Message>),
    Transitions(Feed<Transition>),
    Events(Feed<ClientEvent>),
}

/// What a [`Listening`] stream yields: it knows which [`Listener`] its sending half goes in.
pub(crate) trait Listen: Weigh + Sized {
    fn listener(feed: Feed<Self>) -> Listener;
}

impl Listen for Message {
    fn listener(feed: Feed<Self>) -> Listener {
        Listener::Incoming(feed)
    }
}

impl Listen for Transition {
    fn listener(feed: Feed<Self>) -> Listener {
        Listener::Transitions(feed)
    }
}

impl Listen for ClientEvent {
    fn listener(feed: Feed<Self>) -> Listener {
        Listener::Events(feed)
    }
}

/// How much a stream may buffer for an application that falls behind ([`ClientBuilder::stream_buffer`],
/// [`ClientBuilder::stream_buffer_bytes`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamLimits {
    pub items: usize,
    pub bytes: usize,
}

/// The payload bytes an item holds, counted against [`StreamLimits::bytes`].
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

fn payload_len(data: Option<&Payload>) -> usize {
    data.map_or(0, |p| p.as_cbor().len())
}

impl Weigh for RawItem {
    fn weight(&self) -> usize {
        match self {
            RawItem::Event { topic, data, .. } => topic.len() + payload_len(data.as_ref()),
            RawItem::Reset { ep } => ep.len(),
            RawItem::Gap { .. } | RawItem::Resumed { .. } => 0,
        }
    }
}

impl Weigh for Message {
    fn weight(&self) -> usize {
        self.name.len() + payload_len(self.data.as_ref())
    }
}

impl Weigh for Transition {
    fn weight(&self) -> usize {
        0
    }
}

impl Weigh for ClientEvent {
    fn weight(&self) -> usize {
        match self {
            ClientEvent::Disconnected { reason, .. } => reason.as_str().len(),
            // The server's text and details: a peer must not fill a lagging stream with large notices.
            ClientEvent::Notice(Error::Server {
                message, details, ..
            }) => message.len() + payload_len(details.as_ref()),
            ClientEvent::Notice(_) | ClientEvent::Reconnected | ClientEvent::Draining => 0,
        }
    }
}

/// The sending half of a bounded stream that never blocks the driver: when the application falls behind
/// (more items or more payload bytes waiting than its limits), items are dropped and counted, and the stream
/// reports [`Error::Lagged`]. An item larger than the byte limit still goes through when nothing else waits,
/// so every message the connection accepts can be delivered.
pub(crate) struct Feed<T> {
    tx: mpsc::Sender<(Result<T, Error>, usize)>,
    lagged: Arc<AtomicU64>,
    /// Payload bytes sent and not yet taken by the stream.
    waiting: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl<T: Weigh> Feed<T> {
    /// Delivers an item; false when the receiving stream is gone.
    pub fn deliver(&self, item: Result<T, Error>) -> bool {
        let weight = item.as_ref().map_or(0, Weigh::weight);
        let waiting = self.waiting.load(Ordering::Acquire);
        // Weightless items (errors, transitions) are bounded by the item count alone.
        if weight > 0 && waiting > 0 && waiting.saturating_add(weight) > self.max_bytes {
            if self.tx.is_closed() {
                return false;
            }
            self.lagged.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        // Counted before sending, so the stream can never take back more than was counted.
        self.waiting.fetch_add(weight, Ordering::AcqRel);
        match self.tx.try_send((item, weight)) {
            Ok(()) => true,
            Err(e) => {
                self.waiting.fetch_sub(weight, Ordering::AcqRel);
                let full = matches!(e, mpsc::error::TrySendError::Full(_));
                if full {
                    self.lagged.fetch_add(1, Ordering::Relaxed);
                }
                full
            }
        }
    }
}

/// The receiving half of a [`Feed`].
pub(crate) struct Tap<T> {
    rx: mpsc::Receiver<(Result<T, Error>, usize)>,
    lagged: Arc<AtomicU64>,
    waiting: Arc<AtomicUsize>,
}

pub(crate) fn feed<T>(limits: StreamLimits) -> (Feed<T>, Tap<T>) {
    let (tx, rx) = mpsc::channel(limits.items.max(1));
    let lagged = Arc::new(AtomicU64::new(0));
    let waiting = Arc::new(AtomicUsize::new(0));
    (
        Feed {
            tx,
            lagged: Arc::clone(&lagged),
            waiting: Arc::clone(&waiting),
            max_bytes: limits.bytes,
        },
        Tap {
            rx,
            lagged,
            waiting,
        },
    )
}

impl<T> Tap<T> {
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Error>>> {
        let skipped = self.lagged.swap(0, Ordering::Relaxed);
        if skipped > 0 {
            return Poll::Ready(Some(Err(Error::Lagged { skipped })));
        }
        self.rx.poll_recv(cx).map(|item| {
            item.map(|(item, weight)| {
                self.waiting.fetch_sub(weight, Ordering::AcqRel);
                item
            })
        })
    }
}

/// A one-way message (`msg`) from the server.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Message {
    pub name: String,
    /// The payload; `None` when the envelope had no `d`.
    pub data: Option<Payload>,
}

/// What happened to the client's connection, as the core reports it ([`Client::events`]). The client's
/// state changes themselves are [`Client::transitions`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connection that was open (`connected` or `ready`) ended: the close code and reason, the server's or
    /// the client's own (1000 for [`Client::close`], 4000 for a keepalive timeout, 4004 for a frame the client
    /// refused; 1006 when the socket failed without a close frame). `will_reconnect` is false when the client
    /// gives up (authentication failed with 4003, a policy violation with 1008, reconnect disabled, closed)
    /// and ends in `disconnected`; otherwise it retries with backoff. A connect attempt that never opened
    /// (refused, unreachable, an upgrade refused with HTTP 401) is seen in [`Client::transitions`] only.
    Disconnected {
        code: CloseCode,
        /// The close frame's reason (at most 123 bytes; text the server controls).
        reason: CloseReason,
        will_reconnect: bool,
    },
    /// `ready` again after an earlier `ready` (since the client started): subscriptions are being renewed
    /// and the offline queue has been flushed.
    Reconnected,
    /// The server said `bye` (PROTOCOL §8): it is draining and will close this connection; the client
    /// reconnects after it.
    Draining,
    /// An `err` from the server about the connection rather than a request (one without an `id`).
    Notice(Error),
}

impl Message {
    /// The payload decoded as `T` (an absent payload as `null`).
    ///
    /// # Errors
    /// [`Error::Payload`] when it does not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_optional(self.data.as_ref())
    }
}

/// A listener stream of the client: [`Client::incoming`] ([`Incoming`]), [`Client::transitions`]
/// ([`Transitions`]) or [`Client::events`] ([`Events`]). Bounded like every stream of the client: see
/// [`Error::Lagged`]. It ends when the client is closed; dropping it stops the delivery.
pub struct Listening<T> {
    pub(crate) key: u64,
    pub(crate) tap: Tap<T>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

/// The stream of [`Client::incoming`].
pub type Incoming = Listening<Message>;
/// The stream of [`Client::transitions`].
pub type Transitions = Listening<Transition>;
/// The stream of [`Client::events`].
pub type Events = Listening<ClientEvent>;

impl<T> std::fmt::Debug for Listening<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening").finish_non_exhaustive()
    }
}

impl<T> Stream for Listening<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.tap.poll_next(cx)
    }
}

impl<T> Drop for Listening<T> {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unlisten { key: self.key });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message whose payload (a CBOR byte string) weighs exactly `bytes` (at least 3).
    fn message(bytes: usize) -> Result<Message, Error> {
        let len = u16::try_from(bytes - 3).expect("small");
        let mut cbor = vec![0x59];
        cbor.extend(len.to_be_bytes());
        cbor.resize(bytes, 0);
        Ok(Message {
            name: String::new(),
            data: Some(Payload::from_cbor(cbor).expect("a byte string")),
        })
    }

    #[test]
    fn a_feed_bounds_waiting_bytes_but_lets_one_large_item_through() {
        let (feed, mut tap) = feed::<Message>(StreamLimits {
            items: 10,
            bytes: 100,
        });
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Nothing waits: an item over the limit goes through; then nothing more fits.
        assert!(feed.deliver(message(500)));
        assert!(feed.deliver(message(10)));
        // An error weighs nothing: it is never dropped for bytes, even with more than the limit waiting.
        assert!(feed.deliver(Err(Error::Closed)));
        assert!(matches!(
            tap.poll_next(&mut cx),
            Poll::Ready(Some(Err(Error::Lagged { skipped: 1 })))
        ));
        assert!(matches!(tap.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(
            tap.poll_next(&mut cx),
            Poll::Ready(Some(Err(Error::Closed)))
        ));
        // Taken: its bytes are free again.
        for _ in 0..2 {
            assert!(feed.deliver(message(50)));
        }
        assert!(feed.deliver(message(50)));
        assert_eq!(feed.lagged.load(Ordering::Relaxed), 1);
        drop(tap);
        assert!(!feed.deliver(message(50)), "the stream is gone");
    }
}
