//! The connection: one state machine a shell drives with `handle_*` and drains with `poll_*`.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::{borrow::ToOwned, string::String, vec::Vec};

use core::fmt;

use crate::backoff::{self, Rng};
use crate::codec::{
    validate_topic, Envelope, FragmentError, Fragmenter, InvalidTopic, Payload, ProtocolViolation,
    Refusal, SubAck, TopicPosition,
};
use crate::config::{Config, ConfigError, QueueLimits};
use crate::error::{CloseCode, CloseReason, ErrorCode};
use crate::link::Link;
use crate::queue::{OfflineQueue, Queued};
use crate::requests::{Kind, RequestError, RequestId, Requests, Stage};
use crate::state::{terminal_reason, DisconnectReason, Status, Transition};
use crate::text::{n, push_quoted, Text};
use crate::time::{millis, Duration, Instant};
use crate::topics::{SubscriptionState, Topics};

/// Names one socket the core asked the shell to open. Inputs about any other socket are stale and ignored, so
/// a late `close` event from a replaced socket cannot disturb the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketId(pub u64);

/// Something that happened to the connection, as the shell reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// The application wants the connection up.
    Start,
    /// The application closes the connection for good (close 1000, no reconnect).
    Stop,
    /// The socket's `open` event.
    SocketOpened { socket: SocketId },
    /// A text frame (`ready`, `pong`, `bye`).
    SocketText { socket: SocketId, text: &'a str },
    /// A binary frame (one Sockeye frame).
    SocketBinary { socket: SocketId, data: &'a [u8] },
    /// The socket closed. Shells report a failed upgrade with HTTP 401/403 as [`CloseCode::AUTH_FAILED`].
    SocketClosed {
        socket: SocketId,
        code: CloseCode,
        reason: &'a str,
    },
    /// The socket failed (could not connect, I/O error). Treated as an abnormal closure (1006).
    SocketError { socket: SocketId, message: &'a str },
    /// The socket refused an inbound message of `size` bytes, over the limit the shell set from
    /// [`Config::reassembly`]'s `max_message_bytes` (native WebSockets enforce it while reading). The socket
    /// is still open: the core closes it as it refuses any oversize message (4004) and reconnects.
    MessageTooBig { socket: SocketId, size: usize },
    /// The timer armed from [`Connection::poll_timeout`] fired. Early or late calls are harmless.
    Timeout,
    /// Liveness is unknown (the page became visible or resumed, the network came back, the machine woke up):
    /// cut a backoff wait short, or probe a `ready` connection with a `ping` at once, giving the server a whole
    /// keepalive timeout from now to answer. The core does the same by itself when an input's `now` lies past
    /// the armed deadline by more than [`Config::time_jump_threshold`]; shells feed `Wake` for what the clock
    /// they hand in cannot show (a monotonic clock stops while a machine sleeps).
    Wake,
    /// The platform's network availability changed (`navigator.onLine`). While offline, attempts wait
    /// instead of being burned; coming online starts a pending attempt at once.
    NetworkChanged { online: bool },
}

/// What the shell must do, pulled with [`Connection::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Open a WebSocket (offering subprotocol `sockeye.v1`; fetching a fresh token first) and report its events
    /// with this id.
    OpenSocket { socket: SocketId, attempt: u32 },
    /// Close this socket with the code and reason (bounded to fit a close frame). Its later events are ignored.
    CloseSocket {
        socket: SocketId,
        code: CloseCode,
        reason: CloseReason,
    },
    /// Send a text frame on the current socket (`ping`).
    SendText(&'static str),
    /// Send a binary frame on the current socket.
    SendBinary(Vec<u8>),
    /// Tell the application.
    Event(Event),
}

/// What the application hears.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Every change of [`Status`].
    StateChanged(Transition),
    /// A server `msg`.
    Message { name: String, data: Option<Payload> },
    /// A server `req` that arrived on `socket`; answer it with [`Connection::respond`] naming the same socket.
    Request {
        socket: SocketId,
        id: u64,
        method: String,
        data: Option<Payload>,
    },
    /// An `evt` on a subscribed topic, delivered once: a duplicate (a `seq` already delivered in the epoch) is
    /// dropped. `ep` is the topic's epoch (PROTOCOL §9), `None` from a server that does not name one.
    TopicEvent {
        topic: String,
        seq: u64,
        ep: Option<Arc<str>>,
        data: Option<Payload>,
    },
    /// The events `from ..= to` of `topic` are lost (PROTOCOL §9): the server could not replay them after a
    /// reconnect, or a live event skipped their numbers. Reported before the next event.
    TopicGap { topic: String, from: u64, to: u64 },
    /// `topic` started a new epoch `ep` (the server lost its history, or restarted without one): how many
    /// events were missed cannot be known. The next events count in the new epoch.
    TopicReset { topic: String, ep: String },
    /// `topic` was re-subscribed after a reconnect with nothing lost: the `replayed` events the server kept
    /// in its history have been delivered (as [`Event::TopicEvent`]s, before this event).
    TopicResumed { topic: String, replayed: u64 },
    /// A request ended: reply, server `err`, or a local failure (`DEADLINE_EXCEEDED`, `UNAVAILABLE`,
    /// `CANCELLED`). Each request ends exactly once.
    Reply {
        id: RequestId,
        result: Result<Option<Payload>, RequestError>,
    },
    /// An acknowledged publish ([`Connection::publish_acked`]) ended, exactly once: stored at `{ep, seq}`, or
    /// failed like a request (server `err`, `DEADLINE_EXCEEDED`, `UNAVAILABLE`, `CANCELLED`, or
    /// `INVALID_ARGUMENT` for an acknowledgement without a valid `{ep, seq}`).
    Published {
        id: RequestId,
        result: Result<TopicPosition, RequestError>,
    },
    /// A topic's subscription changed state: pending when first subscribed and whenever the socket that
    /// acknowledged it ends, live once the server acknowledges its `sub` on the current socket (events flow
    /// from then on; a gap, reset or resume follows when the topic had a position), failed when the server
    /// refuses it (the topic is then no longer subscribed, for any subscriber).
    SubscriptionChanged {
        topic: String,
        state: SubscriptionState,
    },
    /// A connection that was open (`connected` or `ready`) ended, with the close code and reason (the peer's,
    /// or the client's own: 1000 for `stop`, 4000 for a keepalive timeout, 4004 for a refusal; 1006 when the
    /// socket failed). `will_reconnect` is false when the client ends in `disconnected`. Reported before the
    /// [`Event::StateChanged`] that leaves the open state.
    Disconnected {
        code: CloseCode,
        reason: CloseReason,
        will_reconnect: bool,
    },
    /// `ready` again after an earlier `ready` since the last start, reported right after that
    /// [`Event::StateChanged`].
    Reconnected,
    /// A connection-level `err` (one without an `id`).
    Notice(RequestError),
    /// The server said `bye`: it is draining and will close this connection.
    Draining,
}

/// Why a send, request or publish was refused. Nothing refused was queued or sent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The offline queue is at its bound (`RESOURCE_EXHAUSTED`).
    QueueFull { limits: QueueLimits },
    /// The envelope needs more fragments than a frame header can count (`RESOURCE_EXHAUSTED`).
    TooLarge(FragmentError),
    /// The topic name breaks PROTOCOL §4's rules (`INVALID_ARGUMENT`).
    InvalidTopic(InvalidTopic),
}

impl SendError {
    /// The protocol's code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            SendError::QueueFull { .. } | SendError::TooLarge(_) => ErrorCode::ResourceExhausted,
            SendError::InvalidTopic(_) => ErrorCode::InvalidArgument,
        }
    }
}

impl SendError {
    /// The `Display` text, built without `core::fmt` (the browser package shows it and pays for formatting
    /// machinery per call site; see `text.rs`).
    pub fn message(&self) -> String {
        match self {
            SendError::QueueFull { limits } => Text::from("offline queue full (")
                .num(n(limits.max_messages))
                .str(" messages / ")
                .num(n(limits.max_bytes))
                .str(" bytes at most)")
                .into(),
            SendError::TooLarge(e) => String::from("message too large: ") + &e.message(),
            SendError::InvalidTopic(e) => String::from("invalid topic: ") + &e.message(),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl core::error::Error for SendError {}

/// The Sockeye client connection as a pure state machine.
///
/// See the crate docs for the driver contract. Every method takes `now` first and does no I/O.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    status: Status,
    rng: Rng,
    outputs: VecDeque<Output>,
    /// The current socket and everything that lives and dies with it; `Some` exactly in `connecting`,
    /// `connected` and `ready`. Losing the connection is `link.take()`.
    link: Option<Link>,
    sockets_opened: u64,
    /// Attempts since the connection was last stable.
    attempts: u32,
    online: bool,
    /// `ready` was reached since the last `start`: the next `ready` is a reconnect ([`Event::Reconnected`]).
    ever_ready: bool,
    requests: Requests,
    queue: OfflineQueue,
    topics: Topics,
    fragmenter: Fragmenter,
}

/// An inbound frame proves the socket alive.
fn heard_from_server(link: &mut Link) {
    link.deadlines.pong = None;
    link.deadlines.pong_after_wake = false;
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| at <= now)
}

const PING: &str = "ping";

impl Connection {
    /// A connection in `disconnected`, not yet started.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first option that cannot work.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Connection {
            rng: Rng::new(config.seed),
            queue: OfflineQueue::new(config.queue),
            fragmenter: Fragmenter::new(config.fragment_threshold),
            config,
            status: Status::Disconnected { reason: None },
            outputs: VecDeque::new(),
            link: None,
            sockets_opened: 0,
            attempts: 0,
            online: true,
            ever_ready: false,
            requests: Requests::default(),
            topics: Topics::default(),
        })
    }

    /// The current state.
    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Requests that have not ended yet (queued or in flight).
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Envelopes waiting in the offline queue, and their encoded size.
    pub fn queued(&self) -> (usize, usize) {
        (self.queue.len(), self.queue.bytes())
    }

    /// Where `topic`'s subscription stands ([`SubscriptionState::Pending`] or [`SubscriptionState::Live`]);
    /// `None` when it is not subscribed. A shell adding a subscriber to a subscribed topic tells it this;
    /// later changes arrive as [`Event::SubscriptionChanged`].
    pub fn subscription(&self, topic: &str) -> Option<SubscriptionState> {
        self.topics
            .state(topic, self.link.as_ref().map(|l| l.socket))
    }

    /// The next output, or `None` when the shell should wait (for an input or [`Self::poll_timeout`]).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest deadline; the shell arms one timer for it and then feeds [`Input::Timeout`].
    ///
    /// In `reconnecting`, the attempt's deadline is the state's own `next_attempt_at`: what the application is
    /// shown and what the timer is armed for cannot disagree.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let attempt = match self.status {
            Status::Reconnecting {
                next_attempt_at, ..
            } => next_attempt_at,
            _ => None,
        };
        [
            self.link.as_ref().and_then(Link::poll_timeout),
            attempt,
            self.requests.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feeds one input.
    ///
    /// The drain rule: drain [`Self::poll_output`] until `None` before the next input (debug builds check it),
    /// so outputs are acted on in the order they were decided.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        debug_assert!(
            self.outputs.is_empty(),
            "drain poll_output() before the next input"
        );
        // Checked before the input acts: an overdue pong deadline must not end a connection whose answer may
        // be waiting, unread, in the socket after a sleep. Not for inputs that end the socket (or the client):
        // a probe on a socket reported gone would be sent into nothing.
        let ends_socket = matches!(
            input,
            Input::Wake | Input::Stop | Input::SocketClosed { .. } | Input::SocketError { .. }
        );
        if !ends_socket && self.time_jumped(now) {
            self.handle_wake(now);
        }
        match input {
            Input::Start => self.start(now),
            Input::Stop => self.stop(now),
            Input::SocketOpened { socket } => self.handle_socket_opened(now, socket),
            Input::SocketText { socket, text } => self.handle_text(now, socket, text),
            Input::SocketBinary { socket, data } => self.handle_binary(now, socket, data),
            Input::SocketClosed {
                socket,
                code,
                reason,
            } => self.handle_socket_closed(now, socket, code, reason),
            Input::SocketError { socket, message } => {
                self.handle_socket_closed(now, socket, CloseCode::ABNORMAL, message)
            }
            Input::MessageTooBig { socket, size } => {
                if self.is_current(socket) {
                    let limit = self.config.reassembly.max_message_bytes;
                    self.refuse(
                        now,
                        ProtocolViolation::MessageTooBig { size, limit }.message(),
                    );
                }
            }
            Input::Timeout => self.handle_timeout(now),
            Input::Wake => self.handle_wake(now),
            Input::NetworkChanged { online } => self.handle_network(now, online),
        }
    }

    fn start(&mut self, now: Instant) {
        if !matches!(self.status, Status::Disconnected { .. }) {
            return;
        }
        self.attempts = 0;
        self.ever_ready = false;
        if self.online {
            self.open_socket(now, 1);
        } else {
            self.begin_attempt(now, 1, Duration::ZERO);
        }
    }

    fn stop(&mut self, now: Instant) {
        let reason = CloseReason::new("client closed");
        if let Some(link) = &self.link {
            self.push(Output::CloseSocket {
                socket: link.socket,
                code: CloseCode::NORMAL,
                reason: reason.clone(),
            });
        }
        self.report_disconnect(CloseCode::NORMAL, reason, false);
        self.end_link();
        self.queue.clear();
        for id in self
            .requests
            .ids_in(Stage::InFlight)
            .into_iter()
            .chain(self.requests.ids_in(Stage::Queued))
        {
            self.fail_request(
                id,
                ErrorCode::Cancelled,
                "the connection was closed by the application",
            );
        }
        if !matches!(
            self.status,
            Status::Disconnected {
                reason: Some(DisconnectReason::Stopped)
            }
        ) {
            self.transition(
                now,
                Status::Disconnected {
                    reason: Some(DisconnectReason::Stopped),
                },
            );
        }
    }

    /// Drops the current socket's [`Link`] (its deadlines, reassembly, server requests and `sub` acks go with
    /// it) and reports every topic that was live on it as pending again.
    fn end_link(&mut self) {
        let Some(link) = self.link.take() else { return };
        let outputs = &mut self.outputs;
        for topic in self.topics.live_on(link.socket) {
            outputs.push_back(Output::Event(Event::SubscriptionChanged {
                topic: topic.to_owned(),
                state: SubscriptionState::Pending,
            }));
        }
    }

    /// [`Event::Disconnected`], when the connection ending now was open (`connected` or `ready`).
    fn report_disconnect(&mut self, code: CloseCode, reason: CloseReason, will_reconnect: bool) {
        if matches!(self.status, Status::Connected { .. } | Status::Ready) {
            self.push(Output::Event(Event::Disconnected {
                code,
                reason,
                will_reconnect,
            }));
        }
    }

    /// `matches!` rather than `==`: comparing whole `Status` values would pull the derived `PartialEq` (with
    /// its string comparisons) into the browser package.
    fn is_ready(&self) -> bool {
        matches!(self.status, Status::Ready)
    }

    fn is_current(&self, socket: SocketId) -> bool {
        self.link.as_ref().is_some_and(|l| l.socket == socket)
    }

    fn handle_socket_opened(&mut self, now: Instant, socket: SocketId) {
        if !self.is_current(socket) {
            return;
        }
        if let Status::Connecting { attempt } = self.status {
            self.transition(now, Status::Connected { attempt });
        }
    }

    fn handle_text(&mut self, now: Instant, socket: SocketId, text: &str) {
        let Some(link) = self.link.as_mut().filter(|l| l.socket == socket) else {
            return;
        };
        // Any inbound frame proves liveness.
        heard_from_server(link);
        match text {
            "ready" => {
                // `ready` may beat the `open` event: `connecting` goes straight to `ready`.
                if matches!(
                    self.status,
                    Status::Connecting { .. } | Status::Connected { .. }
                ) {
                    self.become_ready(now);
                }
            }
            "pong" => {}
            "bye" => self.push(Output::Event(Event::Draining)),
            other => {
                let mut reason = String::from("unexpected text frame ");
                push_quoted(&mut reason, other, 32);
                self.refuse(now, reason);
            }
        }
    }

    fn handle_binary(&mut self, now: Instant, socket: SocketId, data: &[u8]) {
        let Some(link) = self.link.as_mut().filter(|l| l.socket == socket) else {
            return;
        };
        heard_from_server(link);
        if !matches!(self.status, Status::Ready) {
            self.refuse(now, "binary frame before ready".into());
            return;
        }
        let envelope = match link.reassembler.handle_frame(now, data) {
            Ok(Some(bytes)) => Envelope::decode(&bytes),
            Ok(None) => return,
            Err(violation) => return self.refuse(now, violation.message()),
        };
        match envelope {
            Ok(envelope) => self.dispatch(now, socket, envelope),
            Err(error) => {
                // A broken reply to one of our requests ends that request now rather than at its deadline.
                if let (Some("res" | "err"), Some(id)) = (error.t, error.id) {
                    let message =
                        String::from("the server's reply is malformed: ") + &error.kind.message();
                    self.complete(
                        id,
                        Err(RequestError::local(ErrorCode::InvalidArgument, message)),
                    );
                }
                match error.refusal() {
                    Refusal::Reply(reply) => self.send_now(&reply),
                    Refusal::Close(_, reason) => self.refuse(now, reason),
                }
            }
        }
    }

    /// Handles one envelope that arrived on `socket`, the current one (so `self.link` is set).
    fn dispatch(&mut self, now: Instant, socket: SocketId, envelope: Envelope) {
        match envelope {
            Envelope::Msg { name, data } => self.push(Output::Event(Event::Message { name, data })),
            Envelope::Req { id, method, data } => {
                let Some(link) = &mut self.link else { return };
                // Each unanswered `req` holds a handler's work and memory: past the bound the server is
                // flooding us. (The native shell stops reading at the bound, so only shells that cannot, like
                // the browser's, get here.)
                let max = self.config.max_inbound_requests;
                if link.inbound_requests.len() >= max {
                    let reason = Text::from("more than ")
                        .num(n(max))
                        .str(" unanswered server requests");
                    return self.refuse(now, reason.into());
                }
                link.inbound_requests.push(id);
                self.push(Output::Event(Event::Request {
                    socket,
                    id,
                    method,
                    data,
                }))
            }
            Envelope::Res { id, data } => self.complete(id, Ok(data)),
            Envelope::Err {
                id: Some(id),
                code,
                message,
                data,
            } => self.complete(id, Err(RequestError::from_peer(code, message, data))),
            Envelope::Err {
                id: None,
                code,
                message,
                data,
            } => self.push(Output::Event(Event::Notice(RequestError::from_peer(
                code, message, data,
            )))),
            Envelope::Evt { topic, seq, data } => {
                // An `evt` for a topic already unsubscribed locally is late, not an error: dropped there.
                let outputs = &mut self.outputs;
                self.topics.deliver(socket, topic, seq, data, |e| {
                    outputs.push_back(Output::Event(e))
                });
            }
            Envelope::Sub { id, .. } | Envelope::Unsub { id, .. } => {
                self.send_now(&Envelope::reply(
                    id,
                    Err(RequestError::local(
                        ErrorCode::InvalidArgument,
                        "sub/unsub go from client to server only",
                    )),
                ))
            }
            Envelope::Pub { id, .. } => self.send_now(&Envelope::error(
                id,
                RequestError::local(
                    ErrorCode::InvalidArgument,
                    "pub goes from client to server only",
                ),
            )),
        }
    }

    /// A `res`/`err` arrived for `id`: a request, a `sub` acknowledgement, or something already ended.
    fn complete(&mut self, id: u64, result: Result<Option<Payload>, RequestError>) {
        let Some(link) = &mut self.link else { return };
        if let Some(topic) = link.take_ack(id) {
            let socket = link.socket;
            match result {
                Ok(data) => {
                    // A `d` that is not a §9 position (a server without §9 may send any) is no position.
                    let ack = data.and_then(|d| SubAck::from_payload(&d).ok());
                    let continuity = self.topics.acknowledged(&topic, socket, ack);
                    self.push(Output::Event(Event::SubscriptionChanged {
                        topic,
                        state: SubscriptionState::Live,
                    }));
                    if let Some(event) = continuity {
                        self.push(Output::Event(event));
                    }
                }
                Err(error) => {
                    self.topics.remove(&topic);
                    self.push(Output::Event(Event::SubscriptionChanged {
                        topic,
                        state: SubscriptionState::Failed(error),
                    }));
                }
            }
            return;
        }
        // A reply for a request that already timed out or was cancelled is dropped: it ended once already.
        if let Some((_, kind)) = self.requests.remove(id) {
            self.push_reply(id, kind, result);
        }
    }

    fn handle_socket_closed(
        &mut self,
        now: Instant,
        socket: SocketId,
        code: CloseCode,
        reason: &str,
    ) {
        if !self.is_current(socket) {
            return;
        }
        let terminal = terminal_reason(code, reason);
        self.connection_lost(now, code, reason, terminal);
    }

    /// The client closes the socket because the server sent something it must refuse (PROTOCOL §6: 4004).
    fn refuse(&mut self, now: Instant, reason: String) {
        self.close_and_retry(now, CloseCode::REFUSED, reason);
    }

    /// The client ends the current socket for a retryable cause (keepalive, connect timeout, refusal).
    fn close_and_retry(&mut self, now: Instant, code: CloseCode, reason: String) {
        if let Some(link) = &self.link {
            self.push(Output::CloseSocket {
                socket: link.socket,
                code,
                reason: CloseReason::new(reason.as_str()),
            });
        }
        self.connection_lost(now, code, &reason, None);
    }

    /// The socket is gone: fail what was in flight, then reconnect or end in `disconnected`.
    fn connection_lost(
        &mut self,
        now: Instant,
        code: CloseCode,
        reason: &str,
        terminal: Option<DisconnectReason>,
    ) {
        let attempt = self.attempts.saturating_add(1);
        let end = terminal
            .or_else(|| {
                (!self.config.reconnect.enabled).then(|| DisconnectReason::Closed {
                    code,
                    reason: reason.to_owned(),
                })
            })
            .or_else(|| {
                let max = self.config.reconnect.max_attempts;
                max.is_some_and(|max| attempt > max).then(|| {
                    DisconnectReason::MaxAttemptsExceeded {
                        attempts: self.attempts,
                        code,
                        reason: reason.to_owned(),
                    }
                })
            });
        self.report_disconnect(code, CloseReason::new(reason), end.is_none());
        self.end_link();
        for id in self.requests.ids_in(Stage::InFlight) {
            self.fail_request(
                id,
                ErrorCode::Unavailable,
                "the connection was lost before the reply",
            );
        }
        if let Some(reason) = end {
            return self.transition(
                now,
                Status::Disconnected {
                    reason: Some(reason),
                },
            );
        }
        let delay = backoff::delay(&self.config.reconnect, attempt, &mut self.rng);
        self.begin_attempt(now, attempt, delay);
    }

    /// Attempt `attempt` after `delay`, always through `reconnecting`; while offline it waits for the network.
    fn begin_attempt(&mut self, now: Instant, attempt: u32, delay: Duration) {
        // Offline: no deadline; `NetworkChanged { online: true }` starts the attempt.
        let next_attempt_at = self.online.then_some(now + delay);
        self.transition(
            now,
            Status::Reconnecting {
                attempt,
                delay,
                next_attempt_at,
            },
        );
        // A zero jitter draw still shows `reconnecting` to observers, then attempts at once.
        if delay.is_zero() && self.online {
            self.open_socket(now, attempt);
        }
    }

    fn open_socket(&mut self, now: Instant, attempt: u32) {
        self.sockets_opened += 1;
        let socket = SocketId(self.sockets_opened);
        self.link = Some(Link::new(
            socket,
            now + self.config.connect_timeout,
            self.config.reassembly.clone(),
        ));
        self.attempts = attempt;
        self.transition(now, Status::Connecting { attempt });
        self.push(Output::OpenSocket { socket, attempt });
    }

    fn become_ready(&mut self, now: Instant) {
        let Some(link) = &mut self.link else { return };
        let deadlines = &mut link.deadlines;
        deadlines.connect = None;
        deadlines.stable = Some(now + self.config.stable_period);
        if !self.config.keepalive_interval.is_zero() {
            deadlines.ping = Some(now + self.config.keepalive_interval);
        }
        self.transition(now, Status::Ready);
        if core::mem::replace(&mut self.ever_ready, true) {
            self.push(Output::Event(Event::Reconnected));
        }
        // PROTOCOL §7: re-subscribe, then flush the queue in order, then normal sends resume.
        let topics: Vec<String> = self.topics.iter().map(str::to_owned).collect();
        for topic in topics {
            self.send_sub(topic);
        }
        while let Some(Queued { bytes, request }) = self.queue.pop() {
            let outputs = &mut self.outputs;
            // Cannot fail: the size was checked against the fragmenter when the envelope was queued.
            let _ = self
                .fragmenter
                .encode_bytes(&bytes, |frame| outputs.push_back(Output::SendBinary(frame)));
            if let Some(id) = request {
                self.requests.set_stage(id, Stage::InFlight);
            }
        }
    }

    /// Sends `sub` for `topic` on the current socket (called only when `ready`).
    fn send_sub(&mut self, topic: String) {
        let id = self.requests.allocate_id();
        if let Some(link) = &mut self.link {
            link.expect_ack(id, &topic);
        }
        let since = self.topics.since(&topic);
        self.send_now(&Envelope::Sub { id, topic, since });
    }

    fn handle_timeout(&mut self, now: Instant) {
        for (id, stage, kind) in self.requests.take_expired(now) {
            if stage == Stage::Queued {
                self.queue.remove_request(id);
            }
            self.push_reply(
                id,
                kind,
                Err(RequestError::local(
                    ErrorCode::DeadlineExceeded,
                    "request timed out",
                )),
            );
        }
        if let Some(link) = &mut self.link {
            if let Err(violation) = link.reassembler.handle_timeout(now) {
                return self.refuse(now, violation.message());
            }
            let deadlines = link.deadlines;
            if due(deadlines.connect, now) {
                let reason = Text::from("connect timeout: not ready within ")
                    .num(millis(self.config.connect_timeout))
                    .str(" ms");
                return self.close_and_retry(now, CloseCode::KEEPALIVE_TIMEOUT, reason.into());
            }
            if due(deadlines.pong, now) {
                let reason = Text::from("keepalive timeout: no frame within ")
                    .num(millis(self.config.keepalive_timeout))
                    .str(" ms");
                return self.close_and_retry(now, CloseCode::KEEPALIVE_TIMEOUT, reason.into());
            }
            if due(deadlines.stable, now) {
                link.deadlines.stable = None;
                self.attempts = 0;
            }
            if due(deadlines.ping, now) {
                link.deadlines.ping = Some(now + self.config.keepalive_interval);
                self.probe(now);
            }
        }
        if let Status::Reconnecting {
            attempt,
            next_attempt_at,
            ..
        } = self.status
        {
            if due(next_attempt_at, now) {
                self.open_socket(now, attempt);
            }
        }
    }

    /// `now` lies further past the earliest deadline (the one the shell's timer was armed for) than
    /// [`Config::time_jump_threshold`] allows.
    fn time_jumped(&self, now: Instant) -> bool {
        let threshold = self.config.time_jump_threshold;
        !threshold.is_zero()
            && self
                .poll_timeout()
                .is_some_and(|deadline| now > deadline + threshold)
    }

    /// Sends `ping` and expects a frame within the keepalive timeout.
    fn probe(&mut self, now: Instant) {
        let Some(link) = &mut self.link else { return };
        if link.deadlines.pong.is_none() {
            link.deadlines.pong = Some(now + self.config.keepalive_timeout);
        }
        self.push(Output::SendText(PING));
    }

    /// Liveness is unknown (time jumped, or the shell says the page or machine woke up): attempt a pending
    /// reconnect now, or probe a `ready` connection now, giving the server a whole keepalive timeout from now
    /// to answer (an overdue deadline says nothing while the clock was not running for us).
    fn handle_wake(&mut self, now: Instant) {
        match (&self.status, &mut self.link) {
            (Status::Reconnecting { attempt, .. }, _) if self.online => {
                let attempt = *attempt;
                self.open_socket(now, attempt)
            }
            (Status::Ready, Some(link)) if !self.config.keepalive_timeout.is_zero() => {
                let deadlines = &mut link.deadlines;
                if deadlines.pong_after_wake && deadlines.pong.is_some() {
                    return; // already probing since the last wake; its deadline decides
                }
                deadlines.pong = None;
                deadlines.pong_after_wake = true;
                if !self.config.keepalive_interval.is_zero() {
                    deadlines.ping = Some(now + self.config.keepalive_interval);
                }
                self.probe(now);
            }
            _ => {}
        }
    }

    fn handle_network(&mut self, now: Instant, online: bool) {
        self.online = online;
        match self.status {
            Status::Reconnecting { attempt, .. } if online => self.open_socket(now, attempt),
            // Keep waiting, but don't burn an attempt while the platform says there is no network: the state
            // shows no deadline, and none is armed.
            Status::Reconnecting {
                attempt,
                delay,
                next_attempt_at: Some(_),
            } => self.transition(
                now,
                Status::Reconnecting {
                    attempt,
                    delay,
                    next_attempt_at: None,
                },
            ),
            _ => {}
        }
    }

    /// Sends a one-way `msg` now, or queues it while not `ready`.
    ///
    /// # Errors
    /// [`SendError::QueueFull`] when the offline queue is at a bound; [`SendError::TooLarge`] for a message
    /// that cannot be framed. Nothing is sent or queued then.
    pub fn send(
        &mut self,
        _now: Instant,
        name: &str,
        data: Option<Payload>,
    ) -> Result<(), SendError> {
        self.submit(
            Envelope::Msg {
                name: name.to_owned(),
                data,
            },
            None,
        )
        .map(drop)
    }

    /// Publishes to a topic (`pub`), now or from the offline queue.
    ///
    /// # Errors
    /// As [`Self::send`], and [`SendError::InvalidTopic`].
    pub fn publish(
        &mut self,
        _now: Instant,
        topic: &str,
        data: Option<Payload>,
    ) -> Result<(), SendError> {
        validate_topic(topic).map_err(SendError::InvalidTopic)?;
        self.submit(
            Envelope::Pub {
                id: None,
                topic: topic.to_owned(),
                data,
            },
            None,
        )
        .map(drop)
    }

    /// Publishes to a topic with an acknowledgement (PROTOCOL §9: a `pub` with an `id`), now or from the
    /// offline queue. The outcome arrives as exactly one [`Event::Published`] with the returned id: the
    /// event's `{ep, seq}` once the server stored it, or a failure. The deadline (`timeout`, else the configured
    /// request timeout) counts from `now`, as for [`Self::request`]; so do `UNAVAILABLE` when the connection
    /// drops while it is in flight (the event may or may not have been stored then) and [`Self::cancel`].
    ///
    /// # Errors
    /// As [`Self::publish`]; a refused publish gets no id and no event.
    pub fn publish_acked(
        &mut self,
        now: Instant,
        topic: &str,
        data: Option<Payload>,
        timeout: Option<Duration>,
    ) -> Result<RequestId, SendError> {
        validate_topic(topic).map_err(SendError::InvalidTopic)?;
        let id = self.requests.allocate_id();
        let envelope = Envelope::Pub {
            id: Some(id),
            topic: topic.to_owned(),
            data,
        };
        self.track(now, id, Kind::Publish, envelope, timeout)
    }

    /// Issues a request; its deadline (`timeout`, else the configured default) counts from `now`. The outcome
    /// arrives as exactly one [`Event::Reply`] with the returned id.
    ///
    /// # Errors
    /// As [`Self::send`]; a refused request gets no id and no reply event.
    pub fn request(
        &mut self,
        now: Instant,
        method: &str,
        data: Option<Payload>,
        timeout: Option<Duration>,
    ) -> Result<RequestId, SendError> {
        let id = self.requests.allocate_id();
        let envelope = Envelope::Req {
            id,
            method: method.to_owned(),
            data,
        };
        self.track(now, id, Kind::Call, envelope, timeout)
    }

    /// Sends or queues an envelope that expects a reply with `id`, under a deadline counted from `now`.
    fn track(
        &mut self,
        now: Instant,
        id: u64,
        kind: Kind,
        envelope: Envelope,
        timeout: Option<Duration>,
    ) -> Result<RequestId, SendError> {
        let stage = self.submit(envelope, Some(id))?;
        let deadline = now + timeout.unwrap_or(self.config.request_timeout);
        self.requests.insert(id, deadline, stage, kind);
        Ok(RequestId(id))
    }

    /// Cancels a pending request or acknowledged publish: it ends with `CANCELLED` (a queued one is never
    /// sent). Returns false when it had already ended.
    pub fn cancel(&mut self, _now: Instant, id: RequestId) -> bool {
        if !self.requests.contains(id.0) {
            return false;
        }
        self.fail_request(id.0, ErrorCode::Cancelled, "request cancelled");
        true
    }

    /// Answers the server `req` `id` that arrived on `socket` ([`Event::Request`]). Returns false, sending
    /// nothing, when that connection is gone (the server has failed the request then, and a newer connection
    /// may be using the same id for another request) or when it was answered already.
    pub fn respond(
        &mut self,
        _now: Instant,
        socket: SocketId,
        id: u64,
        result: Result<Option<Payload>, RequestError>,
    ) -> bool {
        let Some(link) = self.link.as_mut().filter(|l| l.socket == socket) else {
            return false;
        };
        let Some(pos) = link.inbound_requests.iter().position(|&i| i == id) else {
            return false;
        };
        link.inbound_requests.swap_remove(pos);
        self.send_now(&Envelope::reply(id, result));
        true
    }

    /// Answers the server `req` `id` that arrived on `socket` for a `method` the application has no handler
    /// for: the one `UNIMPLEMENTED` answer ([`RequestError::unimplemented`]), the same from every shell. Returns
    /// false as [`Self::respond`] does.
    pub fn respond_unimplemented(
        &mut self,
        now: Instant,
        socket: SocketId,
        id: u64,
        method: &str,
    ) -> bool {
        self.respond(now, socket, id, Err(RequestError::unimplemented(method)))
    }

    /// Subscribes to a topic for the life of this connection object, counting subscribers: the first sends
    /// `sub` now when `ready` (and again on every later `ready`) and reports the topic
    /// [`SubscriptionState::Pending`]; later ones only count (ask [`Self::subscription`] for the state).
    /// Returns true for the topic's first subscriber.
    ///
    /// # Errors
    /// [`SendError::InvalidTopic`].
    pub fn subscribe(&mut self, _now: Instant, topic: &str) -> Result<bool, SendError> {
        validate_topic(topic).map_err(SendError::InvalidTopic)?;
        let first = self.topics.insert(topic);
        if first {
            self.push(Output::Event(Event::SubscriptionChanged {
                topic: topic.to_owned(),
                state: SubscriptionState::Pending,
            }));
            if self.is_ready() {
                self.send_sub(topic.to_owned());
            }
        }
        Ok(first)
    }

    /// One subscriber fewer; the last one's unsubscribe sends `unsub` when `ready` and forgets the topic's
    /// position. Returns false when the topic was not subscribed (never, or refused since).
    pub fn unsubscribe(&mut self, _now: Instant, topic: &str) -> bool {
        let Some(last) = self.topics.release(topic) else {
            return false;
        };
        if last {
            if let Some(link) = &mut self.link {
                // A late answer to its `sub` must not count for a later subscription to the same topic.
                link.forget_acks_of(topic);
            }
            if self.is_ready() {
                let id = self.requests.allocate_id();
                self.send_now(&Envelope::Unsub {
                    id,
                    topic: topic.to_owned(),
                });
            }
        }
        true
    }

    /// Sends when `ready`, else queues; says where the envelope went.
    fn submit(&mut self, envelope: Envelope, request: Option<u64>) -> Result<Stage, SendError> {
        if self.is_ready() {
            // Encoded straight into the frame: no intermediate copy on the hot path.
            let outputs = &mut self.outputs;
            self.fragmenter
                .encode(&envelope, |frame| {
                    outputs.push_back(Output::SendBinary(frame))
                })
                .map_err(SendError::TooLarge)?;
            return Ok(Stage::InFlight);
        }
        let bytes = envelope.encode();
        // Refused now rather than when the queue flushes: what the queue accepts can always be sent.
        self.fragmenter
            .check(bytes.len())
            .map_err(SendError::TooLarge)?;
        self.queue
            .push(Queued { bytes, request })
            .map_err(|_| SendError::QueueFull {
                limits: self.config.queue,
            })?;
        Ok(Stage::Queued)
    }

    /// Sends a protocol envelope of the core's own (acks, refusals) on the current socket.
    fn send_now(&mut self, envelope: &Envelope) {
        let outputs = &mut self.outputs;
        // The core's own envelopes are small; they never need more fragments than a header can count.
        let _ = self.fragmenter.encode(envelope, |frame| {
            outputs.push_back(Output::SendBinary(frame))
        });
    }

    fn fail_request(&mut self, id: u64, code: ErrorCode, message: &str) {
        let Some((stage, kind)) = self.requests.remove(id) else {
            return;
        };
        if stage == Stage::Queued {
            self.queue.remove_request(id);
        }
        self.push_reply(id, kind, Err(RequestError::local(code, message)));
    }

    /// Ends a request with the event its kind calls for.
    fn push_reply(&mut self, id: u64, kind: Kind, result: Result<Option<Payload>, RequestError>) {
        let id = RequestId(id);
        let event = match kind {
            Kind::Call => Event::Reply { id, result },
            Kind::Publish => Event::Published {
                id,
                result: result.and_then(|data| {
                    let position = data.as_ref().map(TopicPosition::from_payload);
                    position.and_then(Result::ok).ok_or_else(|| {
                        RequestError::local(
                            ErrorCode::InvalidArgument,
                            "the server acknowledged the publish without a valid {ep, seq}",
                        )
                    })
                }),
            },
        };
        self.push(Output::Event(event));
    }

    fn transition(&mut self, now: Instant, to: Status) {
        let from = core::mem::replace(&mut self.status, to.clone());
        self.push(Output::Event(Event::StateChanged(Transition {
            from,
            to,
            at: now,
        })));
    }

    fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }
}
