//! One connection's protocol, sans-IO: the server's counterpart of `sockeye_core::Connection`.
//!
//! A [`Session`] decides everything about one WebSocket connection (PROTOCOL.md): the authentication verdict
//! and `ready`, `ping` → `pong`, dispatch of requests and messages (application handlers, built-ins,
//! `UNIMPLEMENTED`), topic commands, drain and close requests, the heartbeat, and the byte-budget decisions.
//! It reads no clock, spawns nothing and does no I/O (a module test keeps tokio, clocks and sockets out of
//! these files). A shell drives it:
//!
//! 1. feeds what happened, `now` first: an inbound message ([`Session::handle_inbound`]), the result of
//!    something that ran beside the connection ([`Session::handle_done`]: an auth verdict, a handler's reply,
//!    a broker answer), a broker event ([`Session::handle_event`]), a close order from outside (drain,
//!    shutdown, an overflowing fan-out: [`Session::handle_close_request`]), or the timer
//!    ([`Session::handle_timeout`]);
//! 2. after each input, pulls [`Session::poll_output`] until `None`: run a [`Task`] beside the connection,
//!    hand a [`BrokerCommand`] to the broker, write a [`Frame`] (the shell may stop pulling while its socket is
//!    not writable: frames are built as they are pulled), and finally [`Output::End`];
//! 3. arms one timer for [`Session::poll_timeout`]. Early or late timeouts are harmless.
//!
//! Once a session has ended ([`Session::is_ending`]) further inputs are ignored; the shell writes what is left
//! and ends the socket the way [`Output::End`] says.
//!
//! Shared state the session touches is the server's configuration and application hooks, its counters, and
//! the byte budgets (atomics shared with the broker's fan-out); the broker itself (topics, history, Redis) is
//! reached only through [`BrokerCommand`]s, so the session holds no lock across an input.
//!
//! The shells: `crate::shell` (tokio + tungstenite) and `crate::sim` (in memory, simulated time: fuzzing and
//! the `Pair` harness of the tests crate).

mod auth;
mod dispatch;
mod topics;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sockeye_core::codec::{Envelope, Payload, Reassembler, Refusal, TopicPosition};
use sockeye_core::error::{CloseCode, ErrorCode};
use sockeye_core::time::Instant;

use crate::app::{Identity, RpcError};
use crate::broker::Subscribed;
use crate::budget::{Charge, InboundRefused};
use crate::outbound::{Encoded, Frame, OutQueue, Refused};
use crate::server::{CloseRequest, ConnControl, Counters, Shared};

pub(crate) use auth::{OriginRefused, Upgraded};
pub(crate) use dispatch::{answer_envelope, quoted};
use topics::Delivered;

/// Something that runs beside the connection (an auth verifier, a request or message handler, a Redis
/// round trip); its result goes back in with [`Session::handle_done`].
pub(crate) type Task = BoxFuture<'static, Done>;

/// What a [`Task`] or the broker answered.
pub(crate) enum Done {
    /// The auth verifier's verdict; `Err` when it panicked.
    Auth(Result<Option<Identity>, Panicked>),
    /// A request handler's result, for request `id`.
    Reply {
        id: u64,
        result: Result<Option<Payload>, RpcError>,
    },
    /// A message handler finished; an error is told to the peer as a notice.
    Handled(Result<(), RpcError>),
    /// The broker answered a [`BrokerCommand::Subscribe`].
    Subscribed {
        id: u64,
        topic: String,
        result: Result<Subscribed, RpcError>,
    },
    /// The broker answered a [`BrokerCommand::Publish`].
    Published {
        id: Option<u64>,
        result: Result<TopicPosition, RpcError>,
    },
}

/// A task panicked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Panicked;

/// What the session asks of the broker (the embedded one answers at once, Redis later).
#[derive(Debug)]
pub(crate) enum BrokerCommand {
    /// Subscribe this connection; answer with [`Done::Subscribed`]. `max_bytes`: what a replay may take of
    /// the connection's output budget now (Redis reads no more).
    Subscribe {
        id: u64,
        topic: String,
        since: Option<TopicPosition>,
        max_bytes: usize,
    },
    /// Unsubscribe this connection; no answer.
    Unsubscribe { topic: String },
    /// Publish; answer with [`Done::Published`].
    Publish {
        id: Option<u64>,
        topic: String,
        data: Option<Payload>,
    },
}

/// How the connection ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Send a close frame with this code and reason (after the frames pulled before), then wait (bounded)
    /// for the peer's.
    Close { code: CloseCode, reason: String },
    /// The peer sent a close frame: the WebSocket layer answers it.
    PeerClosed,
    /// The socket is gone.
    Gone,
}

/// What the shell does next, pulled with [`Session::poll_output`].
pub(crate) enum Output {
    Action(Action),
    Frame(Frame),
    /// The last output.
    End(Ending),
}

/// Work the session hands its shell besides frames; also pulled alone with [`Session::poll_action`].
pub(crate) enum Action {
    Spawn(Task),
    Broker(BrokerCommand),
}

/// One inbound WebSocket event, as the shell read it.
#[derive(Debug)]
pub(crate) enum Inbound<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    /// A ping, pong or raw frame the WebSocket layer handled itself (it still shows the peer is alive).
    Control,
    /// The peer's close frame.
    Close,
    /// The read failed.
    Failed(ReadError),
    /// The stream ended.
    Ended,
}

/// Why a read failed, as far as the session cares.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// A message or frame over the size limit.
    TooBig(String),
    /// A WebSocket framing violation.
    Protocol(String),
    /// A text frame that is not UTF-8.
    Utf8,
    /// The metered socket refused the read (an inbound budget).
    Refused(InboundRefused),
    /// The connection broke.
    Io,
}

/// Where the connection stands.
enum Phase {
    /// Before `ready`: waiting for the verifier, until `deadline`.
    Authenticating {
        deadline: Instant,
    },
    Ready,
    /// [`Output::End`] is owed once the queued frames are pulled; nothing more is handled.
    Ending(Ending),
    /// [`Output::End`] was pulled.
    Ended,
}

/// One connection's protocol state. See the [module docs](self) for how to drive it.
pub(crate) struct Session {
    shared: Arc<Shared>,
    id: u64,
    control: Arc<ConnControl>,
    identity: Identity,
    phase: Phase,
    /// Registered with the server (drain and shutdown reach it); unregistered on drop.
    registered: bool,
    reassembler: Reassembler,
    /// The reassembler's buffered bytes, charged to the server-wide reassembly budget.
    reassembly_charge: Charge,
    /// Frames to write, in order.
    out: OutQueue,
    /// Tasks and broker commands, pulled before frames.
    actions: VecDeque<Action>,
    /// By topic: the epoch and the last `seq` queued, so an event reaches the peer once (a replayed one is not
    /// sent again when its live copy arrives).
    subscriptions: BTreeMap<String, Delivered>,
    /// Tasks and asynchronous broker commands (Redis) started and not answered yet.
    inflight: usize,
    last_inbound: Instant,
    frames_in: u64,
    frames_out: u64,
}

impl Session {
    /// A session for a connection just upgraded at `now`: decides the origin and, when it can at once, the
    /// authentication (with a verifier, the first output is the [`Task`] asking it).
    pub fn new(
        shared: Arc<Shared>,
        id: u64,
        control: Arc<ConnControl>,
        now: Instant,
        upgraded: Upgraded,
    ) -> Session {
        let limits = &shared.config.limits;
        let mut session = Session {
            reassembler: Reassembler::new(limits.reassembly.clone()),
            reassembly_charge: Charge::empty(&shared.reassembly),
            out: OutQueue::new(
                shared.config.fragment_threshold,
                Arc::clone(&control),
                &shared.outbound,
            ),
            actions: VecDeque::new(),
            identity: Identity::anonymous(),
            phase: Phase::Ready,
            registered: false,
            subscriptions: BTreeMap::new(),
            inflight: 0,
            last_inbound: now,
            frames_in: 0,
            frames_out: 0,
            shared,
            id,
            control,
        };
        session.authenticate(now, upgraded);
        session
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The topics this connection is subscribed to (or waiting for Redis on), for the shell to detach them
    /// from the broker when the connection is gone.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.keys().map(String::as_str)
    }

    /// Whether the session has decided to end (nothing more is handled).
    pub fn is_ending(&self) -> bool {
        matches!(self.phase, Phase::Ending(_) | Phase::Ended)
    }

    /// Whether another task would pass [`crate::Limits::max_inflight`]: the shell then hands over tasks that
    /// have finished before feeding more input (after a burst, some finished long ago).
    pub fn inflight_full(&self) -> bool {
        self.inflight >= self.shared.config.limits.max_inflight
    }

    /// The next thing for the shell to do. Tasks and broker commands come first, then frames in order, then
    /// the end.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(action) = self.actions.pop_front() {
            return Some(Output::Action(action));
        }
        if let Some(frame) = self.out.pop() {
            self.frames_out += 1;
            return Some(Output::Frame(frame));
        }
        match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Ending(ending) => Some(Output::End(ending)),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// The next task or broker command, leaving the frames queued. Shells act on these right after each
    /// inbound message, so a broker that answers at once (the embedded one) answers in the order the peer
    /// asked: a `sub` is acknowledged before the reply to a request sent after it.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether a frame is waiting to be pulled (the shell writes before it reads more).
    pub fn has_frames(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether [`Session::poll_output`] has anything.
    pub fn has_output(&self) -> bool {
        !self.actions.is_empty() || !self.out.is_empty() || matches!(self.phase, Phase::Ending(_))
    }

    /// Bytes of envelopes queued to write (a shell stops reading more in one batch past a bound).
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes()
    }

    /// Drops the frames not yet pulled (the socket cannot take them any more).
    pub fn discard_frames(&mut self) {
        self.out.clear();
    }

    /// The earliest deadline: the heartbeat limit, a partial message's, or the authentication's.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.phase {
            Phase::Authenticating { deadline } => Some(deadline),
            Phase::Ready => self
                .shared
                .config
                .heartbeat
                .map(|limit| self.last_inbound + limit),
            Phase::Ending(_) | Phase::Ended => return None,
        };
        match (own, self.reassembler.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired (early or late calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Authenticating { deadline } if now >= deadline => {
                self.end_refused(CloseCode::AUTH_TIMEOUT, "not authenticated in time");
                return;
            }
            Phase::Ready => {
                if let Some(limit) = self.shared.config.heartbeat {
                    if now >= self.last_inbound + limit {
                        self.close(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                        return;
                    }
                }
            }
            _ => return,
        }
        let expired = self.reassembler.handle_timeout(now);
        // Only shrinks: expired messages are dropped.
        self.reassembly_charge
            .resize(self.reassembler.buffered_bytes());
        if let Err(violation) = expired {
            self.protocol_error();
            self.close(violation.close_code(), violation.to_string());
        }
    }

    /// Asked from outside to close: drain, shutdown, an overflowing fan-out, a spent server budget.
    pub fn handle_close_request(&mut self, _now: Instant, request: CloseRequest) {
        if self.is_ending() {
            return;
        }
        if request.drop_output {
            self.out.clear();
        }
        if request.bye && matches!(self.phase, Phase::Ready) {
            self.out.push_text("bye");
        }
        self.close(request.code, request.reason);
    }

    /// One inbound WebSocket event, read at about `now`.
    pub fn handle_inbound(&mut self, now: Instant, inbound: Inbound<'_>) {
        match self.phase {
            Phase::Ready => {}
            Phase::Authenticating { .. } => return self.inbound_before_ready(inbound),
            Phase::Ending(_) | Phase::Ended => return,
        }
        let failed = match inbound {
            Inbound::Failed(failed) => failed,
            Inbound::Ended => return self.end(Ending::Gone),
            Inbound::Close => return self.end(Ending::PeerClosed),
            Inbound::Text(text) => {
                self.last_inbound = now;
                self.frames_in += 1;
                return self.on_text(text);
            }
            Inbound::Binary(bytes) => {
                self.last_inbound = now;
                self.frames_in += 1;
                return self.on_binary(now, bytes);
            }
            Inbound::Control => {
                self.last_inbound = now;
                return;
            }
        };
        match failed {
            ReadError::TooBig(e) => {
                self.protocol_error();
                self.close(CloseCode::MESSAGE_TOO_BIG, e);
            }
            ReadError::Protocol(e) => {
                self.protocol_error();
                self.close(CloseCode::PROTOCOL_ERROR, e);
            }
            ReadError::Utf8 => {
                self.protocol_error();
                self.close(CloseCode::INVALID_PAYLOAD, "text frame is not UTF-8");
            }
            ReadError::Refused(refused) => {
                tracing::info!(connection = self.id, error = %refused, "closing");
                self.close(refused.close_code(), refused.to_string());
            }
            ReadError::Io => self.end(Ending::Gone),
        }
    }

    /// Something that ran beside the connection finished.
    pub fn handle_done(&mut self, now: Instant, done: Done) {
        match done {
            Done::Auth(verdict) => return self.on_verdict(now, verdict),
            Done::Subscribed { .. } | Done::Published { .. } if !self.broker_is_async() => {}
            _ => self.inflight = self.inflight.saturating_sub(1),
        }
        if self.is_ending() {
            return;
        }
        match done {
            Done::Auth(_) => {}
            Done::Reply { id, result } => self.answer(Some(id), result),
            Done::Handled(result) => self.answer(None, result.map(|()| None)),
            Done::Subscribed { id, topic, result } => self.on_subscribed(id, &topic, result),
            Done::Published { id, result } => self.answer_publish(id, result),
        }
    }

    /// Adds this connection's frame counts to the server's (after a flush, and at the end).
    pub fn publish_counters(&mut self) {
        let counters = &self.shared.counters;
        Counters::add(&counters.frames_in, std::mem::take(&mut self.frames_in));
        Counters::add(&counters.frames_out, std::mem::take(&mut self.frames_out));
    }

    /// Whether broker answers come later (Redis) and count as in flight.
    fn broker_is_async(&self) -> bool {
        self.shared.redis.is_some()
    }

    fn on_text(&mut self, text: &str) {
        if text == "ping" {
            self.out.push_text("pong");
        } else {
            // PROTOCOL §1–2: text frames carry only the control words, and `ping` is the only one a client
            // sends. The protocol names no code for this; it is a protocol error (1002).
            self.protocol_error();
            self.close(
                CloseCode::PROTOCOL_ERROR,
                "text frames carry only control words",
            );
        }
    }

    fn on_binary(&mut self, now: Instant, bytes: &[u8]) {
        let handled = self.reassembler.handle_frame(now, bytes);
        if !self
            .reassembly_charge
            .resize(self.reassembler.buffered_bytes())
        {
            // 1013, not 1009: the message may be within the limits; the server is short of room for it now.
            let limit = self.shared.reassembly.limit();
            tracing::info!(limit, "server reassembly budget spent: closing");
            return self.close(
                CloseCode::TRY_AGAIN_LATER,
                format!("server reassembly budget of {limit} bytes spent"),
            );
        }
        let envelope_bytes = match handled {
            Ok(Some(envelope_bytes)) => envelope_bytes,
            Ok(None) => return,
            Err(violation) => {
                self.protocol_error();
                return self.close(violation.close_code(), violation.to_string());
            }
        };
        match Envelope::decode(&envelope_bytes) {
            Ok(envelope) => self.dispatch(envelope),
            Err(error) => {
                self.protocol_error();
                tracing::debug!(connection = self.id, %error, "invalid envelope");
                match error.refusal() {
                    Refusal::Reply(reply) => self.send_envelope(reply),
                    Refusal::Close(code, reason) => self.close(code, reason),
                }
            }
        }
    }

    fn protocol_error(&self) {
        Counters::add(&self.shared.counters.protocol_errors, 1);
    }

    /// Starts a task beside the connection.
    fn spawn(&mut self, task: Task) {
        self.inflight += 1;
        self.actions.push_back(Action::Spawn(task));
    }

    /// Refuses another task when [`crate::Limits::max_inflight`] are running.
    fn may_start_inflight(&self) -> Result<(), RpcError> {
        if self.inflight_full() {
            let limit = self.shared.config.limits.max_inflight;
            let message = format!("too many requests in flight (limit {limit})");
            return Err(RpcError::new(ErrorCode::ResourceExhausted, message));
        }
        Ok(())
    }

    /// Sends the answer to request `id`, or (without an `id`) a notice when it is an error.
    fn answer(&mut self, id: Option<u64>, result: Result<Option<Payload>, RpcError>) {
        if let Some(envelope) = answer_envelope(id, result) {
            self.send_envelope(envelope);
        }
    }

    /// Encodes and queues an envelope (fragmented, when written, above the threshold). A reply larger than
    /// the message size limit (which the client would refuse) becomes `err RESOURCE_EXHAUSTED`. One that
    /// does not fit this connection's output budget, or the server's, closes the connection with 1013.
    fn send_envelope(&mut self, envelope: Envelope) {
        let size = self.out.stage(&envelope) - 1;
        let limit = self.shared.config.limits.reassembly.max_message_bytes;
        if size > limit {
            self.out.unstage();
            tracing::warn!(
                connection = self.id,
                size,
                limit,
                kind = envelope.kind(),
                "outgoing envelope too large"
            );
            let id = match envelope {
                Envelope::Res { id, .. } | Envelope::Err { id: Some(id), .. } => Some(id),
                _ => None,
            };
            if let Some(id) = id {
                let message =
                    format!("reply of {size} bytes exceeds the message size limit of {limit}");
                self.answer(
                    Some(id),
                    Err(RpcError::new(ErrorCode::ResourceExhausted, message)),
                );
            }
            return;
        }
        let reason = match self.out.push_staged() {
            Ok(()) => return,
            Err(Refused::Fragments(e)) => {
                tracing::warn!(connection = self.id, error = %e, "cannot fragment an outgoing envelope: dropped");
                return;
            }
            Err(Refused::Server) => {
                self.shared.shed_largest_backlog();
                format!(
                    "server output budget of {} bytes spent",
                    self.shared.outbound.limit()
                )
            }
            Err(Refused::Connection) => format!(
                "outbound budget of {} bytes exceeded: peer not reading",
                self.control.outbound.limit()
            ),
        };
        tracing::info!(connection = self.id, size, %reason, "closing");
        // Through the connection's control, where the first close request wins (the shedding above may have
        // asked this very connection already).
        self.control.request_overflow_close(reason);
        if let Some(request) = self.control.take_close() {
            self.handle_close_request(self.last_inbound, request);
        }
    }

    fn queue(&mut self, encoded: Arc<Encoded>) {
        if let Err(e) = self.out.push(encoded) {
            tracing::warn!(connection = self.id, error = %e, "cannot fragment an outgoing envelope: dropped");
        }
    }

    /// Ends with a close frame (after what is queued).
    fn close(&mut self, code: CloseCode, reason: impl Into<String>) {
        self.end(Ending::Close {
            code,
            reason: reason.into(),
        });
    }

    fn end(&mut self, ending: Ending) {
        if !self.is_ending() {
            tracing::debug!(connection = self.id, ?ending, "ending");
            self.phase = Phase::Ending(ending);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.publish_counters();
        if self.registered {
            self.shared.unregister(self.id);
        }
        self.control
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    /// The session is sans-IO: no runtime, clock, socket, file or thread in its files (the crate as a whole
    /// uses all of them, so clippy's `disallowed-methods` cannot be scoped to this module).
    #[test]
    fn the_session_reads_no_clock_and_does_no_io() {
        let files = [
            ("mod.rs", include_str!("mod.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("dispatch.rs", include_str!("dispatch.rs")),
            ("topics.rs", include_str!("topics.rs")),
        ];
        let forbidden = [
            "tokio",
            "Instant::now",
            "SystemTime",
            "std::time::Instant",
            "std::net::Tcp",
            "std::fs",
            "thread::",
            "spawn_blocking",
            "tungstenite",
        ];
        for (name, text) in files {
            // This test names the forbidden words itself; comments may name them too.
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for word in forbidden {
                    assert!(!line.contains(word), "session/{name} uses {word}: {line}");
                }
            }
        }
    }
}
