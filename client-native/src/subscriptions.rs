//! Subscriptions: the stream of a topic's events and of what became of its sequence, and the state the core
//! reports for it (pending, live, failed).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use sockeye_core::codec::Payload;
use tokio::sync::{mpsc, watch};

use crate::client::Command;
use crate::handlers::decode_optional;
use crate::streams::Tap;
#[cfg(doc)]
use crate::Client;
use crate::Error;

/// Where a subscription stands on the current connection, as the core reports it ([`Subscription::state`],
/// [`Subscription::states`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// Not acknowledged on the current connection: not yet, or again after the connection that acknowledged
    /// it was lost. Events published meanwhile may be missed (a server with history replays them once it
    /// acknowledges; what it cannot replay is reported as a gap or reset).
    Pending,
    /// Acknowledged on the current connection: every event published from now on is delivered.
    Live,
    /// Refused by the server (e.g. `PERMISSION_DENIED`); the subscription has ended, for every stream
    /// following the topic.
    Failed(Error),
}

impl From<sockeye_core::SubscriptionState> for SubscriptionState {
    fn from(state: sockeye_core::SubscriptionState) -> Self {
        match state {
            sockeye_core::SubscriptionState::Pending => SubscriptionState::Pending,
            sockeye_core::SubscriptionState::Live => SubscriptionState::Live,
            sockeye_core::SubscriptionState::Failed(error) => {
                SubscriptionState::Failed(error.into())
            }
        }
    }
}

/// A subscription's item before the subscriber's type is applied.
pub(crate) enum RawItem {
    Event {
        topic: String,
        seq: u64,
        ep: Option<Arc<str>>,
        data: Option<Payload>,
    },
    Gap {
        from: u64,
        to: u64,
    },
    Reset {
        ep: String,
    },
    Resumed {
        replayed: u64,
    },
}

/// One event on a subscribed topic.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TopicEvent<T> {
    pub topic: String,
    /// The server's per-topic sequence number.
    pub seq: u64,
    /// The epoch `seq` counts in (PROTOCOL §9); `None` from a server that does not name one.
    pub ep: Option<Arc<str>>,
    pub data: T,
}

/// What a [`Subscription`] yields, in the order it happened: the topic's events, and what became of its
/// sequence across reconnects (PROTOCOL §9). Nothing lost goes unreported.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SubscriptionItem<T> {
    /// One event, delivered once.
    Event(TopicEvent<T>),
    /// The events `from ..= to` are lost: the server's history no longer held them when the client
    /// re-subscribed, or the live sequence skipped them.
    Gap { from: u64, to: u64 },
    /// The topic's sequence started anew in epoch `ep` (the server lost its history or restarted without
    /// one): events may have been lost, and how many cannot be known.
    Reset { ep: String },
    /// A re-subscription after a reconnect lost nothing: the `replayed` events the server kept meanwhile have
    /// been yielded (as [`SubscriptionItem::Event`]s, before this item).
    Resumed { replayed: u64 },
}

impl<T> SubscriptionItem<T> {
    /// The event, if this item is one.
    pub fn into_event(self) -> Option<TopicEvent<T>> {
        match self {
            SubscriptionItem::Event(event) => Some(event),
            _ => None,
        }
    }
}

/// The stream of [`Client::subscribe`]. Dropping it unsubscribes (when it is the topic's last stream).
#[must_use = "dropping a subscription unsubscribes"]
pub struct Subscription<T> {
    pub(crate) topic: String,
    pub(crate) key: u64,
    pub(crate) tap: Tap<RawItem>,
    pub(crate) state: watch::Receiver<SubscriptionState>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) _data: PhantomData<fn() -> T>,
}

impl<T> Subscription<T> {
    /// The subscribed topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Resolves once the server has acknowledged the subscription on the current connection: every event
    /// published after that is delivered (at once when it is acknowledged already). After a reconnect it
    /// waits for the new connection's acknowledgement. The returned future does not borrow the
    /// subscription, so the stream can be polled meanwhile.
    ///
    /// # Errors
    /// [`Error::Server`] when the server refused the subscription (the stream yields the same error and
    /// ends), [`Error::Closed`] when the client is closed first.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use futures_util::StreamExt;
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// let mut news = client.subscribe::<String>("news")?;
    /// news.subscribed().await?;
    /// server.publish("news", Some(sockeye::Payload::encode(&"hello")?))?;
    /// let item = news.next().await.expect("stream open")?;
    /// assert_eq!(item.into_event().map(|e| e.data).as_deref(), Some("hello"));
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribed(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            let outcome = state
                .wait_for(|s| !matches!(s, SubscriptionState::Pending))
                .await
                .map(|s| s.clone());
            match outcome {
                Ok(SubscriptionState::Failed(e)) => Err(e),
                Ok(_) => Ok(()),
                Err(_) => Err(Error::Closed),
            }
        }
    }

    /// Where the subscription stands now: pending until the server acknowledges it on the current connection,
    /// live from then on (pending again while a lost connection is being replaced), failed when refused.
    /// After [`Client::close`] it keeps its last state (pending).
    pub fn state(&self) -> SubscriptionState {
        self.state.borrow().clone()
    }

    /// A stream of the subscription's states: the current one first, then every change. It does not borrow
    /// the subscription, and ends after [`SubscriptionState::Failed`], when the subscription is dropped, or
    /// when the client is closed.
    ///
    /// It holds one state, never a backlog: a stream polled less often than the state changes skips to the
    /// latest (a `pending` → `live` → `pending` it did not look at meanwhile is seen as one `pending`, or
    /// not at all), so it suits showing the state, not counting reconnects ([`Client::events`] reports each
    /// one).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use futures_util::StreamExt;
    /// use sockeye::SubscriptionState;
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).build()?; // still connecting
    /// let news = client.subscribe::<String>("news")?;
    /// let mut states = news.states();
    /// assert!(matches!(states.next().await, Some(SubscriptionState::Pending)));
    /// assert!(matches!(states.next().await, Some(SubscriptionState::Live)));
    /// assert!(matches!(news.state(), SubscriptionState::Live));
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn states(&self) -> SubscriptionStates {
        let state = self.state.clone();
        let states = futures_util::stream::unfold((state, true), |(mut state, first)| async move {
            // The current state first; then each change, until the driver drops the sending half.
            if !first {
                state.changed().await.ok()?;
            }
            let current = state.borrow_and_update().clone();
            Some((current, (state, false)))
        });
        SubscriptionStates {
            states: states.boxed(),
        }
    }
}

/// The stream of [`Subscription::states`].
pub struct SubscriptionStates {
    states: BoxStream<'static, SubscriptionState>,
}

impl std::fmt::Debug for SubscriptionStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionStates").finish_non_exhaustive()
    }
}

impl Stream for SubscriptionStates {
    type Item = SubscriptionState;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.states.poll_next_unpin(cx)
    }
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<SubscriptionItem<T>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.tap.poll_next(cx).map(|item| {
            item.map(|raw| {
                Ok(match raw? {
                    RawItem::Event {
                        topic,
                        seq,
                        ep,
                        data,
                    } => SubscriptionItem::Event(TopicEvent {
                        topic,
                        seq,
                        ep,
                        data: decode_optional(data.as_ref())?,
                    }),
                    RawItem::Gap { from, to } => SubscriptionItem::Gap { from, to },
                    RawItem::Reset { ep } => SubscriptionItem::Reset { ep },
                    RawItem::Resumed { replayed } => SubscriptionItem::Resumed { replayed },
                })
            })
        })
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe {
            topic: std::mem::take(&mut self.topic),
            key: self.key,
        });
    }
}
