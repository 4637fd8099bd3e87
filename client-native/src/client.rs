//! The application-facing handle and its futures and streams.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sockeye_core::codec::{validate_topic, Payload, TopicPosition};
use sockeye_core::{Status, Transition};
use tokio::sync::{mpsc, oneshot, watch};

use crate::builder::ClientBuilder;
use crate::calls::{CallRequest, Calls, Outcome, Target};
use crate::handlers::{self, decode_optional, Handlers};
use crate::Error;

/// What a [`Client`] handle asks of its driver task. One unbounded channel carries them all, so their order
/// is total: a `Cancel` can never overtake the `Call` it cancels.
///
/// Sixteen bytes: the channel allocates its blocks of 32 commands with the client, so every idle client pays
/// for the largest command 32 times (72 bytes made that 2.3 KB); what is larger goes in a [`Control`] box.
pub(crate) enum Command {
    /// A request or an acknowledged publish (something the server answers), waiting in its slot of
    /// [`Calls`] under this key.
    Call {
        key: usize,
    },
    /// Cancels a [`Command::Call`] whose future was dropped.
    Cancel {
        key: usize,
    },
    Unlisten {
        key: u64,
    },
    Close,
    Control(Box<Control>),
}

/// The commands too large for [`Command`] itself.
pub(crate) enum Control {
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
    Subscribe {
        topic: String,
        key: u64,
        feed: Feed<RawItem>,
        state: watch::Sender<SubState>,
    },
    Unsubscribe {
        topic: String,
        key: u64,
    },
    Listen {
        key: u64,
        listener: Listener,
    },
}

impl From<Control> for Command {
    fn from(control: Control) -> Self {
        Command::Control(Box::new(control))
    }
}

/// Whether a subscription's `sub` is acknowledged on the current connection ([`Subscription::subscribed`]).
#[derive(Clone, Debug)]
pub(crate) enum SubState {
    /// Not acknowledged (yet, or again after a reconnect).
    Pending,
    /// Acknowledged on the current connection: events published from now on are delivered.
    Live,
    /// Refused by the server; the subscription has ended.
    Failed(Error),
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

/// A listener stream's sending half.
pub(crate) enum Listener {
    Incoming(Feed<Message>),
    Transitions(Feed<Transition>),
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
struct Tap<T> {
    rx: mpsc::Receiver<(Result<T, Error>, usize)>,
    lagged: Arc<AtomicU64>,
    waiting: Arc<AtomicUsize>,
}

fn feed<T>(limits: StreamLimits) -> (Feed<T>, Tap<T>) {
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
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Error>>> {
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

pub(crate) struct Inner {
    pub commands: mpsc::UnboundedSender<Command>,
    pub calls: Arc<Calls>,
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

    fn submit(&self, command: impl Into<Command>) -> Result<(), Error> {
        self.inner
            .commands
            .send(command.into())
            .map_err(|_| Error::Closed)
    }

    fn key(&self) -> u64 {
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
            self.submit(Control::Send {
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
                self.submit(Control::Publish {
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
        let (state_tx, state) = watch::channel(SubState::Pending);
        self.submit(Control::Subscribe {
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
        let key = self.key();
        let (feed, tap) = feed(self.inner.stream_limits);
        // A closed client: the feed is dropped with the command, and the stream ends at once.
        let _ = self.submit(Control::Listen {
            key,
            listener: Listener::Incoming(feed),
        });
        Incoming {
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
        let key = self.key();
        let (feed, tap) = feed(self.inner.stream_limits);
        let _ = self.submit(Control::Listen {
            key,
            listener: Listener::Transitions(feed),
        });
        Transitions {
            key,
            tap,
            commands: self.inner.commands.clone(),
        }
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

/// The future of [`Client::send`] and [`Client::publish`]: resolves once the connection accepted the message
/// (sent or queued).
#[must_use = "futures do nothing unless awaited; the message is already submitted, but its outcome is lost"]
#[derive(Debug)]
pub struct SendFuture {
    state: Result<oneshot::Receiver<Result<(), Error>>, Option<Error>>,
}

impl SendFuture {
    fn new(submitted: Result<oneshot::Receiver<Result<(), Error>>, Error>) -> Self {
        SendFuture {
            state: submitted.map_err(Some),
        }
    }
}

impl Future for SendFuture {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            Ok(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
            Err(error) => Poll::Ready(Err(error.take().unwrap_or(Error::Closed))),
        }
    }
}

/// What a [`Call`] resolves to, and how it is asked of the driver.
trait Issue: Sized {
    /// What the call's `target` names (a method, or a topic to publish to).
    fn target(target: String) -> Target;
    /// This call's kind of outcome; the core decides each call's kind from its target, so the other kind
    /// never arrives.
    fn from_outcome(outcome: Outcome) -> Option<Self>;
}

impl Issue for Option<Payload> {
    fn target(method: String) -> Target {
        Target::Method(method)
    }

    fn from_outcome(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Reply(data) => Some(data),
            Outcome::Position(_) => None,
        }
    }
}

impl Issue for TopicPosition {
    fn target(topic: String) -> Target {
        Target::Publish(topic)
    }

    fn from_outcome(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Position(position) => Some(position),
            Outcome::Reply(_) => None,
        }
    }
}

enum CallState {
    Unsent {
        target: String,
        data: Result<Option<Payload>, Error>,
        timeout: Option<Duration>,
    },
    /// Issued: its slot in [`Calls`].
    Sent {
        key: usize,
    },
    Done,
}

/// Something the server answers (a request, an acknowledged publish): issued on its first poll, with its own
/// deadline, cancelled when dropped before it ends.
struct Call<R> {
    client: Client,
    state: CallState,
    _outcome: PhantomData<fn() -> R>,
}

impl<R: Issue> Call<R> {
    fn new(client: Client, target: &str, data: Result<Option<Payload>, Error>) -> Self {
        Call {
            client,
            state: CallState::Unsent {
                target: target.to_owned(),
                data,
                timeout: None,
            },
            _outcome: PhantomData,
        }
    }

    fn set_timeout(&mut self, timeout: Duration) {
        if let CallState::Unsent { timeout: t, .. } = &mut self.state {
            *t = Some(timeout);
        }
    }

    fn describe(&self) -> String {
        match &self.state {
            CallState::Unsent { target, .. } => format!("unsent {target:?}"),
            CallState::Sent { key } => format!("pending #{key}"),
            CallState::Done => "done".to_owned(),
        }
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, Error>> {
        let calls = &self.client.inner.calls;
        let key = match std::mem::replace(&mut self.state, CallState::Done) {
            CallState::Unsent {
                target,
                data,
                timeout,
            } => {
                let request = CallRequest {
                    target: R::target(target),
                    data: data?,
                    timeout,
                };
                let key = calls.issue(request, cx.waker())?;
                if let Err(e) = self.client.submit(Command::Call { key }) {
                    calls.forget(key);
                    return Poll::Ready(Err(e));
                }
                // Just issued: the driver cannot have answered before this poll returns `Pending`, and it
                // wakes the waker the slot holds.
                self.state = CallState::Sent { key };
                return Poll::Pending;
            }
            CallState::Sent { key } => key,
            CallState::Done => {
                return Poll::Ready(Err(Error::Cancelled {
                    message: "polled after completion".into(),
                }))
            }
        };
        match calls.poll(key, cx) {
            Poll::Pending => {
                self.state = CallState::Sent { key };
                Poll::Pending
            }
            Poll::Ready(result) => Poll::Ready(result.and_then(|outcome| {
                R::from_outcome(outcome).ok_or_else(|| Error::Cancelled {
                    message: "the call ended with another kind of outcome".into(),
                })
            })),
        }
    }
}

impl<R> Drop for Call<R> {
    fn drop(&mut self) {
        if let CallState::Sent { key } = self.state {
            // Cancelled by drop; the driver frees the key once it has handled the cancel. A closed client has
            // nothing left to cancel.
            if self.client.inner.calls.abandon(key) {
                let _ = self.client.inner.commands.send(Command::Cancel { key });
            }
        }
    }
}

/// The future of [`Client::request`]. Dropping it before it completes cancels the request.
#[must_use = "a request is issued when its future is first polled"]
pub struct RequestFuture<Resp> {
    call: Call<Option<Payload>>,
    _resp: PhantomData<fn() -> Resp>,
}

impl<Resp> std::fmt::Debug for RequestFuture<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFuture")
            .field("state", &self.call.describe())
            .finish()
    }
}

impl<Resp> RequestFuture<Resp> {
    /// This request's own deadline instead of the builder's
    /// [`request_timeout`](ClientBuilder::request_timeout), counted from the first poll. No effect once the
    /// future has been polled.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.call.set_timeout(timeout);
        self
    }
}

impl<Resp: DeserializeOwned> Future for RequestFuture<Resp> {
    type Output = Result<Resp, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.call
            .poll_reply(cx)
            .map(|result| result.and_then(|data| decode_optional(data.as_ref())))
    }
}

/// The future of [`Client::publish_acked`]: where the server stored the event. Dropping it before it
/// completes cancels the wait (a publish still queued is never sent; one already sent may be stored).
#[must_use = "an acknowledged publish is issued when its future is first polled"]
pub struct PublishFuture {
    call: Call<TopicPosition>,
}

impl std::fmt::Debug for PublishFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishFuture")
            .field("state", &self.call.describe())
            .finish()
    }
}

impl PublishFuture {
    /// This publish's own deadline instead of the builder's
    /// [`request_timeout`](ClientBuilder::request_timeout), counted from the first poll.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.call.set_timeout(timeout);
        self
    }
}

impl Future for PublishFuture {
    type Output = Result<TopicPosition, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.call.poll_reply(cx)
    }
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
    topic: String,
    key: u64,
    tap: Tap<RawItem>,
    state: watch::Receiver<SubState>,
    commands: mpsc::UnboundedSender<Command>,
    _data: PhantomData<fn() -> T>,
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
                .wait_for(|s| !matches!(s, SubState::Pending))
                .await
                .map(|s| s.clone());
            match outcome {
                Ok(SubState::Failed(e)) => Err(e),
                Ok(_) => Ok(()),
                Err(_) => Err(Error::Closed),
            }
        }
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
        let _ = self.commands.send(Command::from(Control::Unsubscribe {
            topic: std::mem::take(&mut self.topic),
            key: self.key,
        }));
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

impl Message {
    /// The payload decoded as `T` (an absent payload as `null`).
    ///
    /// # Errors
    /// [`Error::Payload`] when it does not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_optional(self.data.as_ref())
    }
}

/// The stream of [`Client::incoming`].
pub struct Incoming {
    key: u64,
    tap: Tap<Message>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Stream for Incoming {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.tap.poll_next(cx)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unlisten { key: self.key });
    }
}

/// The stream of [`Client::transitions`].
pub struct Transitions {
    key: u64,
    tap: Tap<Transition>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Transitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transitions").finish_non_exhaustive()
    }
}

impl Stream for Transitions {
    type Item = Result<Transition, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.tap.poll_next(cx)
    }
}

impl Drop for Transitions {
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

    /// Every idle client holds a block of 32 commands (see [`Command`]).
    #[test]
    fn a_command_stays_two_words() {
        assert!(std::mem::size_of::<Command>() <= 2 * std::mem::size_of::<usize>());
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
