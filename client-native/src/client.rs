//! The application-facing handle: what a [`Client`] asks of its driver task, and its methods.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sockeye_core::codec::{validate_topic, Payload};
use sockeye_core::Status;
use tokio::sync::{mpsc, oneshot, watch};

use crate::builder::ClientBuilder;
use crate::handlers::{self, Handlers};
use crate::requests::{Call, PublishFuture, ReplyTo, RequestFuture, SendFuture, Target};
#[cfg(doc)]
use crate::streams::ClientEvent;
use crate::streams::{
    feed, Events, Feed, Incoming, Listen, Listener, Listening, StreamLimits, Transitions,
};
#[cfg(doc)]
use crate::subscriptions::SubscriptionItem;
use crate::subscriptions::{RawItem, Subscription, SubscriptionState};
use crate::Error;

/// What a [`Client`] handle asks of its driver task. One unbounded channel carries them all, so their order
/// is total: a `Cancel` can never overtake the `Request` it cancels.
pub(crate) enum Command {
    Send {
        name: String,
        data: Option<Payload>,
        ack: oneshot::Sender<Result<(), Error>>,
    },
    Publish {
        topic: String,
        data: Option<Payload>,
        ack: oneshot::Sender<Result<(), Error>>,
    },
    /// A request or an acknowledged publish: something the server answers.
    Call {
        key: u64,
        target: Target,
        data: Option<Payload>,
        timeout: Option<Duration>,
        reply: ReplyTo,
    },
    /// Cancels a [`Command::Call`].
    Cancel {
        key: u64,
    },
    Subscribe {
        topic: String,
        key: u64,
        feed: Feed<RawItem>,
        state: watch::Sender<SubscriptionState>,
    },
    Unsubscribe {
        topic: String,
        key: u64,
    },
    Listen {
        key: u64,
        listener: Listener,
    },
    Unlisten {
        key: u64,
    },
    Close,
}

pub(crate) struct Inner {
    pub commands: mpsc::UnboundedSender<Command>,
    pub status: watch::Receiver<Status>,
    pub handlers: Arc<Handlers>,
    pub next_key: AtomicU64,
    pub stream_limits: StreamLimits,
}

/// A Sockeye client: one reconnecting, authenticated WebSocket connection, driven by a background task.
///
/// Cheap to clone (an `Arc`), `Send + Sync`, usable from many tasks at once. Build one with
/// [`Client::builder`]. The connection lives until [`Client::close`] is called, or until every handle
/// (clients, subscriptions, listener streams, pending requests) has been dropped.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = sockeye_server::Server::builder()
/// #     .bind("127.0.0.1:0".parse()?)
/// #     .start()
/// #     .await?;
/// # let url = server.ws_url();
/// use sockeye::Client;
///
/// let client = Client::builder(url).connect().await?;
/// let echoed: String = client.request("echo", "hello").await?;
/// assert_eq!(echoed, "hello");
/// client.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("status", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client for `url` (`ws://host:port/ws` or `wss://…`).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), sockeye::Error> {
    /// use std::time::Duration;
    ///
    /// let client = sockeye::Client::builder("ws://127.0.0.1:9/ws")
    ///     .header("X-Service", "billing")
    ///     .request_timeout(Duration::from_secs(5))
    ///     .build()?; // connects in the background
    /// assert_ne!(client.state(), sockeye::Status::Ready);
    /// client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    pub(crate) fn submit(&self, command: Command) -> Result<(), Error> {
        self.inner.commands.send(command).map_err(|_| Error::Closed)
    }

    pub(crate) fn key(&self) -> u64 {
        self.inner.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a one-way message (`msg`) named `name` with `data` as its payload.
    ///
    /// Sent at once when the connection is `ready`, otherwise queued in the offline queue and sent, in order,
    /// on the next `ready`. The future resolves when the message was handed to the socket or queued; it is not
    /// an acknowledgement from the server.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] when the offline queue is full (or the message is too large to frame),
    /// [`Error::Payload`] when `data` cannot be encoded, [`Error::Closed`] after [`Client::close`].
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// client.send("audit", &serde_json::json!({ "event": "login" })).await?;
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn send<T: Serialize + ?Sized>(&self, name: &str, data: &T) -> SendFuture {
        let (ack, rx) = oneshot::channel();
        SendFuture::new(Payload::encode(data).map_err(Error::from).and_then(|data| {
            self.submit(Command::Send {
                name: name.to_owned(),
                data: Some(data),
                ack,
            })?;
            Ok(rx)
        }))
    }

    /// Publishes `data` to `topic` (`pub`); queued while offline, like [`Client::send`].
    ///
    /// # Errors
    /// As [`Client::send`], and [`Error::InvalidTopic`] for a name PROTOCOL §4 forbids.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// client.publish("prices", &42.5).await?;
    /// assert!(client.publish("$reserved", &1).await.is_err());
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> SendFuture {
        let (ack, rx) = oneshot::channel();
        let submitted = validate_topic(topic)
            .map_err(Error::from)
            .and_then(|()| Payload::encode(data).map_err(Error::from))
            .and_then(|data| {
                self.submit(Command::Publish {
                    topic: topic.to_owned(),
                    data: Some(data),
                    ack,
                })?;
                Ok(rx)
            });
        SendFuture::new(submitted)
    }

    /// Publishes `data` to `topic` and waits for the server to acknowledge it (PROTOCOL §9: a `pub` with an
    /// `id`): resolves to where the event was stored, its topic's epoch and `seq`.
    ///
    /// Issued when the future is first polled, queued while offline, with a deadline and cancellation on
    /// drop exactly like [`Client::request`] ([`PublishFuture::timeout`]).
    ///
    /// # Errors
    /// [`Error::Server`] for the server's refusal (e.g. `PERMISSION_DENIED`, or `UNAVAILABLE` while its
    /// history store is unreachable), [`Error::DeadlineExceeded`] on timeout, [`Error::Unavailable`] when the
    /// connection dropped while the publish was in flight (it may or may not have been stored), and the errors
    /// of [`Client::publish`].
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use std::time::Duration;
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// let stored = client
    ///     .publish_acked("prices", &42.5)
    ///     .timeout(Duration::from_secs(1))
    ///     .await;
    /// // With a server that keeps history: `stored?.seq` is the event's place in the topic.
    /// # let _ = stored;
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish_acked<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> PublishFuture {
        let data = validate_topic(topic)
            .map_err(Error::from)
            .and_then(|()| Payload::encode(data).map(Some).map_err(Error::from));
        PublishFuture {
            call: Call::new(self.clone(), topic, data),
        }
    }

    /// Calls `method` on the server with `req` as the payload and decodes the reply as `Resp`.
    ///
    /// The request is issued when the returned future is first polled; its deadline (the builder's
    /// [`request_timeout`](ClientBuilder::request_timeout), or [`RequestFuture::timeout`]) counts from then.
    /// Issued while offline, it waits in the offline queue (still subject to its deadline). Dropping the
    /// future before it completes cancels the request (a queued one is never sent).
    ///
    /// # Errors
    /// The future resolves to [`Error::DeadlineExceeded`] on timeout, [`Error::Unavailable`] when the
    /// connection dropped while the request was in flight, [`Error::Server`] for the server's `err` reply,
    /// [`Error::Payload`] when `req` cannot be encoded or the reply does not decode as `Resp`,
    /// [`Error::ResourceExhausted`] when the offline queue is full, [`Error::Cancelled`] when the client was
    /// closed meanwhile.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use std::time::Duration;
    /// use sockeye::{Error, ErrorCode};
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// let reply: Vec<u32> = client.request("echo", &[1, 2, 3]).await?;
    /// assert_eq!(reply, [1, 2, 3]);
    ///
    /// // The built-in `sleep` method answers after `ms` milliseconds: too late for this deadline.
    /// let late = client
    ///     .request::<_, serde_json::Value>("sleep", &serde_json::json!({ "ms": 2000 }))
    ///     .timeout(Duration::from_millis(50))
    ///     .await;
    /// assert!(matches!(late, Err(Error::DeadlineExceeded { .. })));
    /// assert_eq!(late.unwrap_err().code(), ErrorCode::DeadlineExceeded);
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn request<Req, Resp>(&self, method: &str, req: &Req) -> RequestFuture<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let data = Payload::encode(req).map(Some).map_err(Error::from);
        RequestFuture {
            call: Call::new(self.clone(), method, data),
            _resp: PhantomData,
        }
    }

    /// Subscribes to `topic` and returns its events, decoded as `T`, and what happened to its sequence.
    ///
    /// The subscription survives reconnects: `sub` is re-sent on every `ready`, carrying the last event
    /// delivered (PROTOCOL §9), so a server that keeps history replays what was missed. The stream yields
    /// [`SubscriptionItem`]s: every event once ([`SubscriptionItem::Event`]; duplicates are dropped), and,
    /// in order with them, [`SubscriptionItem::Gap`] for events lost for good, [`SubscriptionItem::Reset`]
    /// when the topic's sequence started anew, [`SubscriptionItem::Resumed`] when a reconnect lost nothing.
    /// [`SubscriptionItem::into_event`] keeps just the events. Several streams may follow
    /// the same topic; dropping the last one unsubscribes. The stream yields `Err` items without ending for
    /// an event whose payload does not decode as `T` ([`Error::Payload`]) or when the application fell more
    /// than the builder's [`stream_buffer`](ClientBuilder::stream_buffer) or
    /// [`stream_buffer_bytes`](ClientBuilder::stream_buffer_bytes) behind ([`Error::Lagged`]). When
    /// the server refuses the subscription, the stream yields [`Error::Server`] and ends.
    ///
    /// Subscribing does not wait for the server's acknowledgement: events published before the server has
    /// processed the `sub` are not delivered. Await [`Subscription::subscribed`] to know when it is live.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`] for a name PROTOCOL §4 forbids, [`Error::Closed`] after [`Client::close`].
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use futures_util::StreamExt;
    /// use sockeye::SubscriptionItem;
    /// use std::time::Duration;
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// let mut prices = client.subscribe::<f64>("prices")?;
    /// // Wait for the server's acknowledgement: from then on, every event is delivered.
    /// tokio::time::timeout(Duration::from_secs(5), prices.subscribed()).await??;
    /// client.publish("prices", &42.5).await?;
    /// match prices.next().await.expect("stream open")? {
    ///     SubscriptionItem::Event(event) => assert_eq!((event.topic.as_str(), event.data), ("prices", 42.5)),
    ///     SubscriptionItem::Gap { from, to } => println!("events {from}..={to} are lost"),
    ///     other => println!("{other:?}"),
    /// }
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe<T: DeserializeOwned>(&self, topic: &str) -> Result<Subscription<T>, Error> {
        validate_topic(topic)?;
        let key = self.key();
        let (feed, tap) = feed(self.inner.stream_limits);
        let (state_tx, state) = watch::channel(SubscriptionState::Pending);
        self.submit(Command::Subscribe {
            topic: topic.to_owned(),
            key,
            feed,
            state: state_tx,
        })?;
        Ok(Subscription {
            topic: topic.to_owned(),
            key,
            tap,
            state,
            commands: self.inner.commands.clone(),
            _data: PhantomData,
        })
    }

    /// A stream of the server's one-way messages (`msg`).
    ///
    /// Every stream gets every message that arrives while it exists. Messages arriving when no stream exists
    /// are dropped. See [`Subscription`] for `Err` items ([`Error::Lagged`]).
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
    /// let mut incoming = client.incoming();
    /// client.send("echo", "ping me back").await?; // the reference server echoes `echo` messages
    /// let message = incoming.next().await.expect("stream open")?;
    /// assert_eq!(message.name, "echo");
    /// assert_eq!(message.decode::<String>()?, "ping me back");
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn incoming(&self) -> Incoming {
        self.listen()
    }

    /// A new listener stream of `T`s.
    fn listen<T: Listen>(&self) -> Listening<T> {
        let key = self.key();
        let (feed, tap) = feed(self.inner.stream_limits);
        // A closed client: the feed is dropped with the command, and the stream ends at once.
        let _ = self.submit(Command::Listen {
            key,
            listener: T::listener(feed),
        });
        Listening {
            key,
            tap,
            commands: self.inner.commands.clone(),
        }
    }

    /// Registers (or replaces) the handler for server requests (`req`) calling `method`.
    ///
    /// `Req` is decoded from the request's payload (an absent payload as `null`; failure answers
    /// `INVALID_ARGUMENT`); the handler's `Ok` becomes the `res` payload, its `Err` an `err` reply with
    /// [`Error::code`]. Requests for methods without a handler are answered `UNIMPLEMENTED`. Handlers run as
    /// their own tasks; a reply is dropped if the connection it was requested on is gone by then. Handlers
    /// still running when the client ends are stopped. At most
    /// [`max_inbound_requests`](ClientBuilder::max_inbound_requests) handlers run at once: at that bound the
    /// client reads nothing more from the server until one answers, so a handler that never finishes holds
    /// its place (and enough of them stall the connection until the keepalive closes it).
    ///
    /// A handler that holds a [`Client`] clone keeps the connection alive (the client's task ends when every
    /// handle is gone): call [`Client::close`] to end such a client.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), sockeye::Error> {
    /// let client = sockeye::Client::builder("ws://127.0.0.1:9/ws").build()?;
    /// client.on_request("health", |_: ()| async { Ok::<_, sockeye::Error>("ok") });
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_request<Req, Resp, F, Fut>(&self, method: impl Into<String>, handler: F)
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        self.inner
            .handlers
            .insert(method.into(), handlers::typed(handler));
    }

    /// The connection's current state.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// assert_eq!(client.state(), sockeye::Status::Ready);
    /// client.close().await;
    /// assert_eq!(client.state().name(), "disconnected");
    /// # Ok(())
    /// # }
    /// ```
    pub fn state(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// A stream of every state change from now on (`{from, to, at}`; `at` is milliseconds since the client
    /// was built). It ends when the client is closed.
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
    /// let transitions = client.transitions();
    /// client.close().await;
    /// let seen: Vec<_> = transitions.collect().await;
    /// let last = seen.last().expect("one transition").as_ref().expect("no lag");
    /// assert_eq!((last.from.name(), last.to.name()), ("ready", "disconnected"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn transitions(&self) -> Transitions {
        self.listen()
    }

    /// A stream of what happens to the connection from now on, as the core reports it: why it was lost
    /// and whether the client will reconnect ([`ClientEvent::Disconnected`]), [`ClientEvent::Reconnected`],
    /// [`ClientEvent::Draining`], and the server's connection-level errors ([`ClientEvent::Notice`]). It
    /// ends when the client is closed (after the `Disconnected` of the close itself, when a connection was
    /// open). Every stream gets every event; a stream created later does not see earlier ones.
    ///
    /// Bounded like every stream of the client: an application that falls more than
    /// [`stream_buffer`](ClientBuilder::stream_buffer) items (or
    /// [`stream_buffer_bytes`](ClientBuilder::stream_buffer_bytes)) behind loses the newest events, and the
    /// stream yields [`Error::Lagged`] with their count before its next event; [`Client::state`] tells where
    /// things stand then.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use futures_util::StreamExt;
    /// use sockeye::{ClientEvent, CloseCode};
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// let mut events = client.events();
    /// // The reference server's built-in `close` method closes the connection with the given code.
    /// client
    ///     .request::<_, ()>("close", &serde_json::json!({ "code": 1012, "reason": "restart" }))
    ///     .await?;
    /// match events.next().await.expect("stream open")? {
    ///     ClientEvent::Disconnected { code, reason, will_reconnect } => {
    ///         assert_eq!((code, reason.as_str(), will_reconnect), (CloseCode(1012), "restart", true));
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(matches!(events.next().await, Some(Ok(ClientEvent::Reconnected))));
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> Events {
        self.listen()
    }

    /// Waits until the state is `status`, compared by kind ([`Status::name`]: the attempt numbers of
    /// `Connecting { .. }` and friends are ignored), for at most `timeout`.
    ///
    /// # Errors
    /// [`Error::DeadlineExceeded`] on timeout; [`Error::Disconnected`] as soon as the client gives up
    /// (authentication failed, attempts exhausted, reconnect disabled, closed) while waiting for another
    /// state; [`Error::Closed`] when the client's task has ended.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use std::time::Duration;
    /// use sockeye::Status;
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).build()?;
    /// client.wait_for(Status::Ready, Duration::from_secs(5)).await?;
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for(&self, status: Status, timeout: Duration) -> Result<(), Error> {
        match tokio::time::timeout(timeout, self.wait_until(&status)).await {
            Ok(result) => result,
            Err(_) => Err(Error::DeadlineExceeded {
                message: format!(
                    "not {} within {} ms (still {})",
                    status,
                    timeout.as_millis(),
                    self.state()
                ),
            }),
        }
    }

    pub(crate) async fn wait_until(&self, target: &Status) -> Result<(), Error> {
        let mut rx = self.inner.status.clone();
        let wanted = target.name();
        let mut outcome = Ok(());
        let waited = rx
            .wait_for(|status| {
                if status.name() == wanted {
                    outcome = Ok(());
                    return true;
                }
                if let Status::Disconnected {
                    reason: Some(reason),
                } = status
                {
                    outcome = Err(Error::Disconnected(reason.clone()));
                    return true;
                }
                false
            })
            .await;
        match waited {
            Ok(_) => outcome,
            Err(_) => match self.state() {
                // The driver ended; its last state says why.
                Status::Disconnected {
                    reason: Some(reason),
                } if wanted != "disconnected" => Err(Error::Disconnected(reason)),
                status if status.name() == wanted => Ok(()),
                _ => Err(Error::Closed),
            },
        }
    }

    /// Closes the connection for good: close code 1000, no reconnect. Pending requests fail with
    /// [`Error::Cancelled`], the offline queue is discarded (nothing further is sent), subscriptions and
    /// listener streams end. Resolves when the background task has finished (the close handshake is given a
    /// short grace period). Calling it again, from any clone, just waits for the same end.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// let client = sockeye::Client::builder(server.ws_url()).connect().await?;
    /// client.close().await;
    /// assert!(matches!(client.send("late", &1).await, Err(sockeye::Error::Closed)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) {
        let _ = self.submit(Command::Close);
        let mut rx = self.inner.status.clone();
        // Resolves with an error once the driver has dropped its sender, i.e. has finished.
        while rx.changed().await.is_ok() {}
    }
}
