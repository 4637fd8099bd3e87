//! One WebSocket connection: authentication, `ready`, then one task running a loop over inbound frames,
//! finished requests, queued events, close requests and one timer.
//!
//! Output is batched: everything that became ready while handling a batch of inbound frames is written with
//! `feed`, then flushed once. Requests run concurrently inside the task (a `FuturesUnordered`), bounded by
//! `Limits::max_inflight`. Events from other connections arrive through a bounded queue created on the first
//! `sub`, so an idle connection that never subscribes carries no queue at all.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use sockeye_core::codec::{
    validate_topic, Envelope, Payload, Reassembler, Refusal, SubAck, TopicPosition,
};
use sockeye_core::error::{clip, CloseCode, CloseReason, ErrorCode};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::app::{Context, Identity, RpcError, TopicAccess};
use crate::broker::{Event, Subscribed, Subscriber};
use crate::budget::{Charge, InboundRefused, Metered, FREE_INBOUND};
use crate::builtins::{self, Builtin};
use crate::config::{Auth, Credentials};
use crate::outbound::{Encoded, OutQueue};
use crate::server::{ConnControl, Counters, Shared};

type Ws = WebSocketStream<Metered<TcpStream>>;

/// How long the closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbound frames handled before output is written.
const INBOUND_BATCH: usize = 64;
/// Output queued (bytes) after which no further inbound frame is handled before writing.
const BATCH_BYTES: usize = 256 * 1024;
/// Queued events written in one go before inbound frames get another turn.
const EVENT_BATCH: usize = 256;
/// How much of a peer-chosen name (method, message name, topic) error replies and logs quote.
const MAX_QUOTED_NAME: usize = 128;

/// What the HTTP layer learned during the upgrade.
pub(crate) struct Upgraded {
    pub peer: SocketAddr,
    pub token: Option<String>,
    /// The `Origin` header, already checked against the allowlist; a refused one is closed with 1008.
    pub origin: Result<Option<String>, OriginRefused>,
}

/// Why a connection's `Origin` is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OriginRefused {
    #[error("origin not allowed")]
    NotAllowed,
    #[error("several Origin headers, or one that is not text")]
    Malformed,
}

/// What to do after an input.
enum Flow {
    Continue,
    /// Close with this code and reason (after writing what is queued).
    Close {
        code: CloseCode,
        reason: String,
        bye: bool,
        /// Drop the queued output instead of writing it first.
        drop_output: bool,
    },
    /// The peer sent a close frame: answer it and stop.
    PeerClosed,
    /// The socket is gone.
    Gone,
}

impl Flow {
    fn close(code: CloseCode, reason: impl Into<String>) -> Flow {
        Flow::Close {
            code,
            reason: reason.into(),
            bye: false,
            drop_output: false,
        }
    }
}

/// Counts the connection as open for as long as it lives.
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0
            .counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs an upgraded connection to its end.
pub(crate) async fn run(shared: Arc<Shared>, mut ws: Ws, upgraded: Upgraded) {
    let id = shared.next_connection_id();
    Counters::add(&shared.counters.connections_total, 1);
    Counters::add(&shared.counters.connections_open, 1);
    let _open = OpenGuard(&shared);
    let peer = upgraded.peer;
    tracing::debug!(connection = id, %peer, "upgraded");

    if let Err(refused) = &upgraded.origin {
        // The header's value is not logged: logs hold no header values.
        tracing::info!(connection = id, %peer, reason = %refused, "origin refused");
        close_socket(&mut ws, CloseCode::POLICY_VIOLATION, "origin not allowed").await;
        return;
    }

    let identity = match authenticate(&shared, &mut ws, upgraded).await {
        Ok(identity) => identity,
        Err(Flow::Close { code, reason, .. }) => {
            if code == CloseCode::AUTH_FAILED {
                Counters::add(&shared.counters.auth_failures, 1);
            }
            tracing::info!(connection = id, %peer, code = code.0, %reason, "connection refused before ready");
            close_socket(&mut ws, code, &reason).await;
            return;
        }
        Err(_) => return,
    };
    tracing::debug!(connection = id, %identity, "authenticated");

    let control = Arc::clone(ws.get_ref().control());
    shared.register(id, Arc::clone(&control));
    let mut conn = Conn::new(Arc::clone(&shared), id, control, identity);
    let ending = if shared.draining.load(Ordering::SeqCst) {
        // The drain started while this connection was being upgraded.
        Flow::close(CloseCode::GOING_AWAY, "Server draining")
    } else {
        conn.serve(&mut ws).await
    };
    conn.finish(&mut ws, ending).await;
}

/// Decides who is connecting (PROTOCOL §5). `Err` carries how to refuse.
async fn authenticate(shared: &Shared, ws: &mut Ws, upgraded: Upgraded) -> Result<Identity, Flow> {
    let refused = || Flow::close(CloseCode::AUTH_FAILED, "authentication failed");
    match &shared.config.auth {
        Auth::Off => Ok(Identity::anonymous()),
        Auth::Tokens(tokens) => {
            let token = upgraded.token.ok_or_else(refused)?;
            // Compare against every token in constant time per token, so timing does not tell how much of a
            // guess was right.
            let mut found = None;
            for (known, identity) in tokens.iter() {
                if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                    found = Some(identity.clone());
                }
            }
            found.ok_or_else(refused)
        }
        Auth::Verifier(verify) => {
            let credentials = Credentials {
                token: upgraded.token,
                origin: upgraded.origin.ok().flatten(),
                peer: upgraded.peer,
            };
            let verdict = AssertUnwindSafe(verify(credentials)).catch_unwind();
            tokio::pin!(verdict);
            let deadline = tokio::time::sleep(shared.config.limits.auth_timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    verdict = &mut verdict => {
                        return match verdict {
                            Ok(Some(identity)) => Ok(identity),
                            Ok(None) => Err(refused()),
                            Err(_) => {
                                tracing::error!("auth verifier panicked");
                                Err(Flow::close(CloseCode::INTERNAL_ERROR, "authentication failed"))
                            }
                        };
                    }
                    () = &mut deadline => {
                        return Err(Flow::close(CloseCode::AUTH_TIMEOUT, "not authenticated in time"));
                    }
                    inbound = ws.next() => match inbound {
                        Some(Ok(Message::Text(text))) if text.as_str() == "ping" => {
                            Counters::add(&shared.counters.frames_in, 1);
                            if ws.send(Message::text("pong")).await.is_err() {
                                return Err(Flow::Gone);
                            }
                            Counters::add(&shared.counters.frames_out, 1);
                        }
                        Some(Ok(Message::Text(_))) => {
                            Counters::add(&shared.counters.protocol_errors, 1);
                            return Err(Flow::close(CloseCode::PROTOCOL_ERROR, "text frames carry only control words"));
                        }
                        Some(Ok(Message::Binary(_))) => {
                            Counters::add(&shared.counters.protocol_errors, 1);
                            return Err(Flow::close(CloseCode::POLICY_VIOLATION, "binary frame before ready"));
                        }
                        Some(Ok(Message::Close(_))) => {
                            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                            return Err(Flow::PeerClosed);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Err(Flow::Gone),
                    },
                }
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends a close frame and waits (bounded) for the peer's answer.
async fn close_socket(ws: &mut Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code.0),
        reason: CloseReason::new(reason).into_string().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(Some(frame)).await.is_ok() {
            // Read until the peer's close frame (or the end of the stream).
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// A peer-chosen name, cut for quoting in a reply or a log.
pub(crate) fn quoted(name: &str) -> Cow<'_, str> {
    clip(name, MAX_QUOTED_NAME)
}

/// Where a subscription stands: its topic's epoch and the last `seq` queued for the peer.
struct Delivered {
    /// Empty until the first answer (with Redis).
    ep: Arc<str>,
    seq: u64,
    /// With Redis, while a `sub` waits for its answer: the events that arrived meanwhile (their bytes are
    /// charged to this connection's budget, as if queued), handled once the answer is queued.
    pending: Option<Vec<Event>>,
}

/// What finished beside the connection.
enum Done {
    /// A reply or notice to send.
    Send(Envelope),
    /// Redis answered a `sub`.
    Subscribed {
        id: u64,
        topic: String,
        result: Result<Subscribed, RpcError>,
    },
}

fn sub_ack(ep: &str, seq: u64, recovered: Option<bool>) -> SubAck {
    SubAck {
        position: TopicPosition {
            ep: ep.to_owned(),
            seq,
        },
        recovered,
    }
}

/// A connection past `ready`.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    control: Arc<ConnControl>,
    identity: Identity,
    reassembler: Reassembler,
    /// The reassembler's buffered bytes, charged to the server-wide reassembly budget.
    reassembly_charge: Charge,
    /// The last binary message, kept while tungstenite's read buffer still shares its allocation: that
    /// buffer reuses the allocation of the largest message read (up to the message size limit) whenever it
    /// is the only owner, so holding the message until tungstenite has moved to a buffer of its own lets a
    /// big message's allocation go instead of staying for the connection's lifetime. Meanwhile its bytes
    /// count against the inbound budget (they are alive either way).
    held: Option<Bytes>,
    /// Frames to write, in order.
    out: OutQueue,
    /// tungstenite queued something (an automatic pong or close reply) that needs a flush.
    needs_flush: bool,
    /// The sending end handed to the topic registry, and the receiving end; created by the first `sub`.
    events: Option<(mpsc::Sender<Event>, mpsc::Receiver<Event>)>,
    /// By topic: the epoch and the last `seq` queued, so an event reaches the peer once (a replayed one is
    /// not sent again when its live copy arrives).
    subscriptions: BTreeMap<String, Delivered>,
    inflight: Inflight,
    last_inbound: Instant,
    frames_in: u64,
    frames_out: u64,
}

impl Conn {
    fn new(shared: Arc<Shared>, id: u64, control: Arc<ConnControl>, identity: Identity) -> Conn {
        let limits = &shared.config.limits;
        Conn {
            reassembler: Reassembler::new(limits.reassembly.clone()),
            reassembly_charge: Charge::empty(&shared.reassembly),
            held: None,
            out: OutQueue::new(shared.config.fragment_threshold, Arc::clone(&control)),
            shared,
            id,
            control,
            identity,
            needs_flush: false,
            events: None,
            subscriptions: BTreeMap::new(),
            inflight: Inflight::default(),
            last_inbound: Instant::now(),
            frames_in: 0,
            frames_out: 0,
        }
    }

    /// Sends `ready`, then serves until the connection must end; returns how.
    async fn serve(&mut self, ws: &mut Ws) -> Flow {
        self.out.push_text("ready");
        let control = Arc::clone(&self.control);
        let mut armed = self.next_deadline();
        let sleep = tokio::time::sleep_until(armed.unwrap_or_else(Instant::now));
        tokio::pin!(sleep);

        loop {
            if self.has_output() {
                // A peer that does not read its replies blocks the write (and with it, reading); the timer
                // still runs, so such a peer is closed with 4002 once the heartbeat limit passes.
                let (flow, written) = tokio::select! {
                    biased;
                    () = control.notify.notified() => (self.requested_close(), false),
                    () = sleep.as_mut(), if armed.is_some() => (self.on_timer(), false),
                    written = self.write_out(ws) => match written {
                        Ok(()) => (Flow::Continue, true),
                        Err(_) => (Flow::Gone, false),
                    },
                };
                if !matches!(flow, Flow::Continue) {
                    return flow;
                }
                self.rearm(&mut armed, sleep.as_mut());
                if !written {
                    // Nothing more is read until what is queued has been written: a peer that does not read
                    // cannot make the server buffer without bound.
                    continue;
                }
            }

            let flow = tokio::select! {
                biased;
                () = control.notify.notified() => self.requested_close(),
                inbound = next_inbound(ws, &mut self.held) => {
                    // One clock reading for the batch: a read per frame showed in the profile.
                    let now = Instant::now();
                    let mut flow = self.on_inbound(inbound, now);
                    // Handle whatever else has already arrived before writing, so replies go out in one flush.
                    for _ in 1..INBOUND_BATCH {
                        if !matches!(flow, Flow::Continue) || self.out.bytes() >= BATCH_BYTES {
                            break;
                        }
                        match next_inbound(ws, &mut self.held).now_or_never() {
                            Some(inbound) => flow = self.on_inbound(inbound, now),
                            None => break,
                        }
                    }
                    flow
                }
                Some(reply) = self.inflight.next(), if !self.inflight.is_empty() => {
                    if let Some(done) = reply {
                        self.on_done(done);
                    }
                    self.reap_finished();
                    Flow::Continue
                }
                Some(event) = recv_event(&mut self.events) => {
                    self.queue_event(event);
                    Flow::Continue
                }
                () = sleep.as_mut(), if armed.is_some() => self.on_timer(),
            };
            if !matches!(flow, Flow::Continue) {
                return flow;
            }

            self.rearm(&mut armed, sleep.as_mut());
        }
    }

    /// Re-arms the timer only when the earliest deadline moved earlier, or after it fired. The heartbeat
    /// deadline only ever moves later, so a timer armed for an old one fires early and is re-armed then.
    fn rearm(&self, armed: &mut Option<Instant>, mut sleep: Pin<&mut Sleep>) {
        let wanted = self.next_deadline();
        let rearm = match (*armed, wanted) {
            (None, Some(_)) => true,
            (Some(at), Some(want)) => want < at || sleep.is_elapsed(),
            (Some(_), None) => sleep.is_elapsed(),
            (None, None) => false,
        };
        if rearm {
            *armed = wanted;
            if let Some(at) = wanted {
                sleep.as_mut().reset(at);
            }
        }
    }

    fn requested_close(&mut self) -> Flow {
        match self.control.take_close() {
            Some(request) => Flow::Close {
                code: request.code,
                reason: request.reason,
                bye: request.bye,
                drop_output: request.drop_output,
            },
            None => Flow::Continue,
        }
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty()
            || self.needs_flush
            || self.events.as_ref().is_some_and(|(_, rx)| !rx.is_empty())
    }

    /// Writes every queued frame and up to [`EVENT_BATCH`] queued events with `feed`, then flushes once.
    async fn write_out(&mut self, ws: &mut Ws) -> Result<(), WsError> {
        // Until the flush below completes: if this is cancelled, the next loop still flushes.
        self.needs_flush = true;
        let mut events = 0;
        loop {
            self.feed_out(ws).await?;
            if events >= EVENT_BATCH {
                break;
            }
            match self.events.as_mut().and_then(|(_, rx)| rx.try_recv().ok()) {
                Some(event) => {
                    events += 1;
                    self.queue_event(event);
                }
                None => break,
            }
        }
        ws.flush().await?;
        self.needs_flush = false;
        self.publish_counters();
        Ok(())
    }

    /// Feeds every frame of `out` to the socket without flushing. Cancel-safe: a frame leaves `out` only once
    /// the sink has taken it, so a cancelled write loses nothing (a subscriber closed with 1013 has seen an
    /// unbroken run of events).
    async fn feed_out(&mut self, ws: &mut Ws) -> Result<(), WsError> {
        while !self.out.is_empty() {
            std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
            if let Some(message) = self.out.pop() {
                ws.start_send_unpin(message)?;
                self.frames_out += 1;
            }
        }
        Ok(())
    }

    /// Without a socket (fuzzing): hands over the requests finished and events queued by now, then takes
    /// every frame queued for writing. Returns how many frames that was.
    fn drain_now(&mut self) -> usize {
        self.reap_finished();
        while let Some(event) = self.events.as_mut().and_then(|(_, rx)| rx.try_recv().ok()) {
            self.queue_event(event);
        }
        let mut frames = 0;
        while self.out.pop().is_some() {
            frames += 1;
        }
        frames
    }

    fn publish_counters(&mut self) {
        let counters = &self.shared.counters;
        Counters::add(&counters.frames_in, std::mem::take(&mut self.frames_in));
        Counters::add(&counters.frames_out, std::mem::take(&mut self.frames_out));
    }

    /// The earliest of the heartbeat deadline and the reassembler's.
    fn next_deadline(&self) -> Option<Instant> {
        let heartbeat = self
            .shared
            .config
            .heartbeat
            .and_then(|limit| self.last_inbound.checked_add(limit));
        let reassembly = self
            .reassembler
            .poll_timeout()
            .and_then(|at| self.shared.tokio_instant(at));
        match (heartbeat, reassembly) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        if let Some(limit) = self.shared.config.heartbeat {
            if self
                .last_inbound
                .checked_add(limit)
                .is_some_and(|deadline| now >= deadline)
            {
                return Flow::close(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout");
            }
        }
        let expired = self.reassembler.handle_timeout(self.shared.core_now());
        // Only shrinks: expired messages are dropped.
        self.reassembly_charge
            .resize(self.reassembler.buffered_bytes());
        if let Err(violation) = expired {
            self.protocol_error();
            return Flow::close(violation.close_code(), violation.to_string());
        }
        Flow::Continue
    }

    fn protocol_error(&self) {
        Counters::add(&self.shared.counters.protocol_errors, 1);
    }

    /// Handles one result of `ws.next()`, read at about `now`.
    fn on_inbound(&mut self, inbound: Option<Result<Message, WsError>>, now: Instant) -> Flow {
        let message = match inbound {
            Some(Ok(message)) => message,
            None => return Flow::Gone,
            Some(Err(error)) => {
                return match error {
                    WsError::Capacity(e) => {
                        self.protocol_error();
                        Flow::close(CloseCode::MESSAGE_TOO_BIG, e.to_string())
                    }
                    WsError::Protocol(e) => {
                        self.protocol_error();
                        Flow::close(CloseCode::PROTOCOL_ERROR, e.to_string())
                    }
                    WsError::Utf8(_) => {
                        self.protocol_error();
                        Flow::close(CloseCode::INVALID_PAYLOAD, "text frame is not UTF-8")
                    }
                    WsError::Io(e) => {
                        match e.get_ref().and_then(|e| e.downcast_ref::<InboundRefused>()) {
                            Some(refused) => {
                                tracing::info!(connection = self.id, error = %refused, "closing");
                                Flow::close(refused.close_code(), refused.to_string())
                            }
                            None => Flow::Gone,
                        }
                    }
                    _ => Flow::Gone,
                };
            }
        };
        self.last_inbound = now;
        match message {
            Message::Text(text) => {
                self.frames_in += 1;
                if text.as_str() == "ping" {
                    self.out.push_text("pong");
                    Flow::Continue
                } else {
                    // PROTOCOL §1–2: text frames carry only the control words, and `ping` is the only one a
                    // client sends. The protocol names no code for this; it is a protocol error (1002).
                    self.protocol_error();
                    Flow::close(
                        CloseCode::PROTOCOL_ERROR,
                        "text frames carry only control words",
                    )
                }
            }
            Message::Binary(bytes) => {
                self.frames_in += 1;
                self.on_binary(&bytes, now)
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                // tungstenite queued the pong for a ping; a flush sends it.
                self.needs_flush = true;
                Flow::Continue
            }
            Message::Close(_) => Flow::PeerClosed,
        }
    }

    fn on_binary(&mut self, bytes: &[u8], now: Instant) -> Flow {
        let now = self.shared.core_at(now);
        let handled = self.reassembler.handle_frame(now, bytes);
        if !self
            .reassembly_charge
            .resize(self.reassembler.buffered_bytes())
        {
            return reassembly_budget_spent(&self.shared);
        }
        let envelope_bytes = match handled {
            Ok(Some(envelope_bytes)) => envelope_bytes,
            Ok(None) => return Flow::Continue,
            Err(violation) => {
                self.protocol_error();
                return Flow::close(violation.close_code(), violation.to_string());
            }
        };
        match Envelope::decode(&envelope_bytes) {
            Ok(envelope) => self.dispatch(envelope),
            Err(error) => {
                self.protocol_error();
                tracing::debug!(connection = self.id, %error, "invalid envelope");
                match error.refusal() {
                    Refusal::Reply(reply) => {
                        self.send_envelope(reply);
                        Flow::Continue
                    }
                    Refusal::Close(code, reason) => Flow::close(code, reason),
                }
            }
        }
    }

    fn context(&self) -> Context {
        Context {
            identity: self.identity.clone(),
            connection_id: self.id,
            shared: Arc::clone(&self.shared),
        }
    }

    fn dispatch(&mut self, envelope: Envelope) -> Flow {
        match envelope {
            Envelope::Req { id, method, data } => self.on_request(id, method, data),
            Envelope::Msg { name, data } => {
                self.on_message(name, data);
                Flow::Continue
            }
            Envelope::Sub { id, topic, since } => {
                self.on_subscribe(id, &topic, since.as_ref());
                Flow::Continue
            }
            Envelope::Unsub { id, topic } => {
                let reply = self.on_unsubscribe(&topic).map(|()| None);
                self.reply(id, reply);
                Flow::Continue
            }
            Envelope::Pub { id, topic, data } => {
                self.on_publish(id, &topic, data);
                Flow::Continue
            }
            Envelope::Res { id, .. } => {
                tracing::debug!(
                    connection = self.id,
                    id,
                    "res for no request of the server: ignored"
                );
                Flow::Continue
            }
            Envelope::Err {
                id, code, message, ..
            } => {
                let message = quoted(&message);
                tracing::debug!(connection = self.id, ?id, %code, %message, "err from the client");
                Flow::Continue
            }
            Envelope::Evt { .. } => {
                self.protocol_error();
                self.notice(RpcError::invalid_argument("evt is sent by servers only"));
                Flow::Continue
            }
        }
    }

    /// Takes the handlers that have finished out of `inflight`, sending their replies. Inbound frames are
    /// read before `inflight` is polled, so after a burst (a stalled network delivering at once) it holds
    /// handlers that finished long ago; without this they would count against the limit.
    fn reap_finished(&mut self) {
        while let Some(Some(reply)) = self.inflight.next().now_or_never() {
            if let Some(done) = reply {
                self.on_done(done);
            }
        }
    }

    fn on_request(&mut self, id: u64, method: String, data: Option<Payload>) -> Flow {
        if let Err(e) = self.may_start_inflight() {
            self.reply(id, Err(e));
            return Flow::Continue;
        }
        if let Some(handler) = self.shared.app.methods.get(&method) {
            let future = handler(self.context(), data);
            self.spawn_request(id, future);
            return Flow::Continue;
        }
        if self.shared.config.builtins {
            if method == "stats" {
                // Include this connection's frames so far.
                self.publish_counters();
            }
            match builtins::call(&method, data, &self.identity, self.id, &self.shared) {
                Some(Builtin::Reply(result)) => self.reply(id, result),
                Some(Builtin::Later(future)) => self.spawn_request(id, future),
                Some(Builtin::Close { code, reason }) => {
                    self.reply(id, Ok(None));
                    return Flow::close(code, reason);
                }
                None => self.reply(id, Err(unimplemented(&method))),
            }
            return Flow::Continue;
        }
        self.reply(id, Err(unimplemented(&method)));
        Flow::Continue
    }

    fn spawn_request(
        &mut self,
        id: u64,
        future: BoxFuture<'static, Result<Option<Payload>, RpcError>>,
    ) {
        self.inflight.push(Box::pin(async move {
            let result = AssertUnwindSafe(future)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(RpcError::internal("request handler panicked")));
            Some(Done::Send(reply_envelope(id, result)))
        }));
    }

    fn on_message(&mut self, name: String, data: Option<Payload>) {
        let limit = self.shared.config.limits.max_inflight;
        if self.inflight.len() >= limit {
            self.reap_finished();
        }
        if let Some(handler) = self.shared.app.messages.get(&name) {
            if self.inflight.len() >= limit {
                let message = format!(
                    "too many handlers in flight (limit {limit}): msg {:?} dropped",
                    quoted(&name)
                );
                self.notice(RpcError::new(ErrorCode::ResourceExhausted, message));
                return;
            }
            let future = handler(self.context(), data);
            self.inflight.push(Box::pin(async move {
                match AssertUnwindSafe(future).catch_unwind().await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(Done::Send(notice_envelope(e))),
                    Err(_) => Some(Done::Send(notice_envelope(RpcError::internal(
                        "message handler panicked",
                    )))),
                }
            }));
        } else if self.shared.config.builtins && name == "echo" {
            self.send_envelope(Envelope::Msg { name, data });
        } else {
            self.notice(RpcError::new(
                ErrorCode::Unimplemented,
                format!("no handler for msg {:?}", quoted(&name)),
            ));
        }
    }

    /// Subscribes and answers with where the topic stands (PROTOCOL §9), then queues the replayed events.
    /// With Redis, the subscriber is attached here first and the answer comes from Redis; events that arrive
    /// meanwhile wait ([`Delivered::pending`]).
    fn on_subscribe(&mut self, id: u64, topic: &str, since: Option<&TopicPosition>) {
        if let Err(e) = self.may_subscribe(topic) {
            self.reply(id, Err(e));
            return;
        }
        let capacity = self.shared.config.limits.outbound_queue;
        let (sender, _) = self.events.get_or_insert_with(|| mpsc::channel(capacity));
        let subscriber = Subscriber {
            events: sender.clone(),
            control: Arc::clone(&self.control),
        };
        let topics = &self.shared.topics;
        let attached = if self.shared.redis.is_none() {
            topics
                .subscribe(topic, self.id, subscriber, since)
                .map(Some)
        } else {
            topics.attach(topic, self.id, subscriber).map(|()| None)
        };
        match attached {
            Err(full) => {
                let message = format!(
                    "the server's subscription limit ({}) is reached",
                    full.limit
                );
                self.reply(
                    id,
                    Err(RpcError::new(ErrorCode::ResourceExhausted, message)),
                );
                return;
            }
            Ok(Some(subscribed)) => {
                self.start_subscription(id, topic, subscribed);
                return;
            }
            Ok(None) => {}
        }
        let delivered = self
            .subscriptions
            .entry(topic.to_owned())
            .or_insert_with(|| Delivered {
                ep: Arc::from(""),
                seq: 0,
                pending: None,
            });
        delivered.pending.get_or_insert_with(Vec::new);
        let shared = Arc::clone(&self.shared);
        let topic = topic.to_owned();
        let since = since.cloned();
        // At most what this connection's budget has free; few such reads run at once (`RedisBroker`).
        let budget = &self.control.outbound;
        let max_bytes = budget.limit().saturating_sub(budget.used());
        self.inflight.push(Box::pin(async move {
            let result = match &shared.redis {
                Some(redis) => redis.subscribe(&topic, since.as_ref(), max_bytes).await,
                None => Err(RpcError::internal("no redis")),
            };
            Some(Done::Subscribed { id, topic, result })
        }));
    }

    fn may_subscribe(&mut self, topic: &str) -> Result<(), RpcError> {
        self.check_topic(topic, TopicAccess::Subscribe)?;
        let limit = self.shared.config.limits.max_subscriptions;
        if !self.subscriptions.contains_key(topic) && self.subscriptions.len() >= limit {
            let message = format!("too many subscriptions (limit {limit})");
            return Err(RpcError::new(ErrorCode::ResourceExhausted, message));
        }
        if self.shared.redis.is_some() {
            self.may_start_inflight()?;
        }
        Ok(())
    }

    fn may_start_inflight(&mut self) -> Result<(), RpcError> {
        let limit = self.shared.config.limits.max_inflight;
        if self.inflight.len() >= limit {
            self.reap_finished();
        }
        if self.inflight.len() >= limit {
            let message = format!("too many requests in flight (limit {limit})");
            return Err(RpcError::new(ErrorCode::ResourceExhausted, message));
        }
        Ok(())
    }

    /// Something that ran beside the connection finished.
    fn on_done(&mut self, done: Done) {
        match done {
            Done::Send(envelope) => self.send_envelope(envelope),
            Done::Subscribed { id, topic, result } => self.on_subscribed(id, &topic, result),
        }
    }

    /// Redis answered a `sub`: the answer, the replay, then the events that waited, once each.
    fn on_subscribed(&mut self, id: u64, topic: &str, result: Result<Subscribed, RpcError>) {
        let Some(delivered) = self.subscriptions.get_mut(topic) else {
            // Unsubscribed meanwhile: the answer is still owed.
            let reply = result.map(|s| Some(sub_ack(&s.ep, s.seq, s.recovered).to_payload()));
            self.reply(id, reply);
            return;
        };
        let waiting = delivered.pending.take().unwrap_or_default();
        let established = !delivered.ep.is_empty();
        match result {
            Ok(subscribed) => {
                self.shared
                    .topics
                    .observe(topic, &subscribed.ep, subscribed.seq);
                self.start_subscription(id, topic, subscribed);
            }
            Err(e) => {
                if !established {
                    self.subscriptions.remove(topic);
                    self.shared.topics.unsubscribe(topic, self.id);
                }
                self.reply(id, Err(e));
            }
        }
        for event in waiting {
            self.queue_event(event);
        }
    }

    /// Answers a `sub` with `subscribed` and queues its replay. A replay the output budgets cannot hold is
    /// not sent; the answer says `recovered: false` instead. Live events up to the answer's `seq` are not
    /// sent after it (they were replayed, or the answer told the peer they are lost), except after a repeated
    /// `sub` without `since`, which carries on where the subscription was.
    fn start_subscription(&mut self, id: u64, topic: &str, subscribed: Subscribed) {
        let Subscribed {
            ep,
            seq,
            mut recovered,
            replay,
        } = subscribed;
        let floor = match (self.subscriptions.get(topic), recovered) {
            (Some(delivered), None) if delivered.ep == ep => delivered.seq,
            _ => seq,
        };
        let replay = match self.charge_replay(replay.into_iter().map(|(_, frame)| frame).collect())
        {
            Some(replay) => replay,
            None => {
                recovered = Some(false);
                Vec::new()
            }
        };
        let ack = sub_ack(&ep, seq, recovered);
        self.subscriptions.insert(
            topic.to_owned(),
            Delivered {
                ep,
                seq: floor,
                pending: None,
            },
        );
        self.reply(id, Ok(Some(ack.to_payload())));
        for encoded in replay {
            self.queue(encoded);
        }
    }

    /// Charges replayed frames to this connection's output budget and the server's; `None` (nothing
    /// charged) when either cannot hold them all.
    fn charge_replay(&self, frames: Vec<Bytes>) -> Option<Vec<Arc<Encoded>>> {
        let total = frames.iter().map(Bytes::len).sum();
        if !self.control.outbound.try_take(total) {
            return None;
        }
        let charged: Option<Vec<Arc<Encoded>>> = frames
            .into_iter()
            .map(|frame| Encoded::charge(frame, &self.shared.outbound))
            .collect();
        if charged.is_none() {
            self.control.outbound.give(total);
        }
        charged
    }

    fn on_unsubscribe(&mut self, topic: &str) -> Result<(), RpcError> {
        if let Err(e) = validate_topic(topic) {
            self.protocol_error();
            return Err(RpcError::invalid_argument(format!("invalid topic: {e}")));
        }
        if let Some(delivered) = self.subscriptions.remove(topic) {
            self.shared.topics.unsubscribe(topic, self.id);
            for event in delivered.pending.unwrap_or_default() {
                self.control.outbound.give(event.encoded.len());
            }
        }
        Ok(())
    }

    /// Publishes; with an `id`, answers with where the event went (PROTOCOL §9). With Redis the answer
    /// comes once Redis stored and published it.
    fn on_publish(&mut self, id: Option<u64>, topic: &str, data: Option<Payload>) {
        if let Err(e) = self.check_topic(topic, TopicAccess::Publish) {
            self.answer_publish(id, Err(e));
            return;
        }
        let shared = Arc::clone(&self.shared);
        let Some(redis) = &shared.redis else {
            let result = self
                .shared
                .publish(topic, data)
                .map(|published| published.position)
                .map_err(|e| RpcError::new(ErrorCode::ResourceExhausted, e.to_string()));
            self.answer_publish(id, result);
            return;
        };
        let limit = self.shared.config.limits.reassembly.max_message_bytes;
        let queued = self
            .may_start_inflight()
            .and_then(|()| crate::server::check_event_size(topic, data.as_ref(), limit))
            .and_then(|()| redis.publish(topic, data.as_ref()));
        let answer = match queued {
            Ok(answer) => answer,
            Err(e) => {
                self.answer_publish(id, Err(e));
                return;
            }
        };
        self.inflight.push(Box::pin(async move {
            let result = answer.await.unwrap_or_else(|_| {
                Err(RpcError::new(
                    ErrorCode::Unavailable,
                    "server shutting down",
                ))
            });
            match (id, result) {
                (Some(id), result) => Some(Done::Send(reply_envelope(
                    id,
                    result.map(|position| Some(position.to_payload())),
                ))),
                (None, Err(e)) => Some(Done::Send(notice_envelope(e))),
                (None, Ok(_)) => None,
            }
        }));
    }

    /// The answer to a `pub`: `res {ep, seq}` or `err` with its `id`; without one, only an error is told (as
    /// a notice).
    fn answer_publish(&mut self, id: Option<u64>, result: Result<TopicPosition, RpcError>) {
        match (id, result) {
            (Some(id), result) => self.reply(id, result.map(|p| Some(p.to_payload()))),
            (None, Err(e)) => self.notice(e),
            (None, Ok(_)) => {}
        }
    }

    fn check_topic(&self, topic: &str, access: TopicAccess) -> Result<(), RpcError> {
        if let Err(e) = validate_topic(topic) {
            self.protocol_error();
            return Err(RpcError::invalid_argument(format!("invalid topic: {e}")));
        }
        if !self.shared.app.may(&self.identity, topic, access) {
            let verb = match access {
                TopicAccess::Subscribe => "subscribe to",
                TopicAccess::Publish => "publish to",
            };
            return Err(RpcError::new(
                ErrorCode::PermissionDenied,
                format!("may not {verb} {:?}", quoted(topic)),
            ));
        }
        Ok(())
    }

    fn reply(&mut self, id: u64, result: Result<Option<Payload>, RpcError>) {
        self.send_envelope(reply_envelope(id, result));
    }

    /// A connection-level error notice (`err` without `id`).
    fn notice(&mut self, error: RpcError) {
        self.send_envelope(notice_envelope(error));
    }

    /// Encodes and queues an envelope (fragmented, when written, above the threshold). A reply larger than
    /// the message size limit (which the client would refuse) becomes `err RESOURCE_EXHAUSTED`. One that
    /// does not fit this connection's output budget, or the server's, closes the connection with 1013.
    fn send_envelope(&mut self, envelope: Envelope) {
        let frame = Encoded::frame_of(&envelope);
        let size = frame.len() - 1;
        let limit = self.shared.config.limits.reassembly.max_message_bytes;
        if size > limit {
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
                self.reply(
                    id,
                    Err(RpcError::new(ErrorCode::ResourceExhausted, message)),
                );
            }
            return;
        }
        let budget = &self.control.outbound;
        let charged = match Encoded::charge(frame, &self.shared.outbound) {
            None => {
                self.shared.shed_largest_backlog();
                Err(format!(
                    "server output budget of {} bytes spent",
                    self.shared.outbound.limit()
                ))
            }
            Some(encoded) if !budget.try_take(encoded.len()) => Err(format!(
                "outbound budget of {} bytes exceeded: peer not reading",
                budget.limit()
            )),
            Some(encoded) => Ok(encoded),
        };
        match charged {
            Ok(encoded) => self.queue(encoded),
            Err(reason) => {
                tracing::info!(connection = self.id, size, %reason, "closing");
                self.control.request_overflow_close(reason);
            }
        }
    }

    /// Queues an event unless this connection has unsubscribed from its topic since it was published (after
    /// the `res` to `unsub`, no `evt` of that topic follows). Its bytes were taken from this connection's
    /// budget when it was published.
    fn queue_event(&mut self, event: Event) {
        match self.subscriptions.get_mut(&*event.topic) {
            Some(Delivered {
                pending: Some(waiting),
                ..
            }) => waiting.push(event),
            Some(delivered) if delivered.ep == event.ep && event.seq > delivered.seq => {
                delivered.seq = event.seq;
                self.queue(event.encoded);
            }
            _ => self.control.outbound.give(event.encoded.len()),
        }
    }

    fn queue(&mut self, encoded: Arc<Encoded>) {
        if let Err(e) = self.out.push(encoded) {
            tracing::warn!(connection = self.id, error = %e, "cannot fragment an outgoing envelope: dropped");
        }
    }

    /// Ends the connection the way `ending` says, then cleans up (in `Drop`).
    async fn finish(&mut self, ws: &mut Ws, ending: Flow) {
        match ending {
            Flow::Close {
                code,
                reason,
                bye,
                drop_output,
            } => {
                tracing::debug!(connection = self.id, code = code.0, %reason, "closing");
                if drop_output {
                    self.out.clear();
                    self.events = None;
                }
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    if bye {
                        self.out.push_text("bye");
                    }
                    self.feed_out(ws).await?;
                    ws.flush().await
                })
                .await;
                close_socket(ws, code, &reason).await;
            }
            Flow::PeerClosed => {
                tracing::debug!(connection = self.id, "closed by the peer");
                // tungstenite queued the close reply; send it.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
            }
            Flow::Gone | Flow::Continue => {
                tracing::debug!(connection = self.id, "socket gone");
            }
        }
        self.publish_counters();
        // Handlers already started run to completion: a `msg` followed at once by the client's close must
        // still be handled. Their replies have nowhere to go and are dropped.
        let mut inflight = std::mem::take(&mut self.inflight);
        if !inflight.is_empty() {
            tokio::spawn(async move { while inflight.next().await.is_some() {} });
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for topic in std::mem::take(&mut self.subscriptions).into_keys() {
            self.shared.topics.unsubscribe(&topic, self.id);
        }
        self.shared.unregister(self.id);
        self.control.closed.store(true, Ordering::SeqCst);
    }
}

/// Runs one connection of `shared` (past `ready`) without a socket: each message is handled as if it had
/// arrived, and what it queued is taken at once. Stops at the first close. Returns the frames written and
/// the close code and reason, if any. For fuzz targets (`crate::fuzzing`).
pub(crate) fn feed(shared: Arc<Shared>, messages: Vec<Message>) -> (usize, Option<(u16, String)>) {
    let id = shared.next_connection_id();
    let control = Arc::new(ConnControl::new(shared.config.limits.outbound_bytes));
    let mut conn = Conn::new(shared, id, Arc::clone(&control), Identity::anonymous());
    conn.out.push_text("ready");
    let mut frames = conn.drain_now();
    for message in messages {
        let flow = conn.on_inbound(Some(Ok(message)), Instant::now());
        frames += conn.drain_now();
        let flow = match flow {
            Flow::Continue => conn.requested_close(),
            other => other,
        };
        match flow {
            Flow::Continue => {}
            Flow::Close { code, reason, .. } => return (frames, Some((code.0, reason))),
            Flow::PeerClosed | Flow::Gone => return (frames, None),
        }
    }
    (frames, None)
}

/// The next inbound message. A binary message is held (see `Conn::held`) until tungstenite's buffer no
/// longer shares its allocation; the inbound budget is charged for it meanwhile.
async fn next_inbound(ws: &mut Ws, held: &mut Option<Bytes>) -> Option<Result<Message, WsError>> {
    std::future::poll_fn(|cx| {
        let polled = ws.poll_next_unpin(cx);
        if let Some(bytes) = held.take_if(|bytes| bytes.is_unique()) {
            ws.get_mut().release(bytes.len());
        }
        if let Poll::Ready(Some(Ok(message))) = &polled {
            if let Message::Binary(bytes) = message {
                // Held when large, and after a large one until tungstenite has moved off its allocation (the
                // held bytes turn unique, above). Holding every message kept tungstenite from ever reusing its
                // read buffer: server alone, 64 B, 0.59x instead of 0.36x of raw in one run (bench/REPORT.md).
                if bytes.len() > FREE_INBOUND || held.is_some() {
                    // A reference count, not a copy.
                    *held = Some(bytes.clone());
                }
            }
            ws.get_mut().settle(held.as_ref().map_or(0, Bytes::len));
        }
        polled
    })
    .await
}

/// Closes a connection whose partial message would pass the server-wide reassembly budget. 1013, not 1009:
/// the message may be within the limits; the server is short of room for it now.
fn reassembly_budget_spent(shared: &Shared) -> Flow {
    tracing::info!(
        limit = shared.reassembly.limit(),
        "server reassembly budget spent: closing"
    );
    Flow::close(
        CloseCode::TRY_AGAIN_LATER,
        format!(
            "server reassembly budget of {} bytes spent",
            shared.reassembly.limit()
        ),
    )
}

/// Requests and message handlers running on one connection, each ending in the envelope to send (if any).
/// The set is allocated on the first request: `FuturesUnordered` allocates two shared blocks up front, and
/// an idle connection needs none (measured: 0.16 KB per idle connection).
#[derive(Default)]
struct Inflight(Option<FuturesUnordered<BoxFuture<'static, Option<Done>>>>);

impl Inflight {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, future: BoxFuture<'static, Option<Done>>) {
        self.0
            .get_or_insert_with(FuturesUnordered::new)
            .push(future);
    }

    /// The next one to finish; `None` when none is running.
    async fn next(&mut self) -> Option<Option<Done>> {
        match &mut self.0 {
            Some(running) => running.next().await,
            None => None,
        }
    }
}

async fn recv_event(
    events: &mut Option<(mpsc::Sender<Event>, mpsc::Receiver<Event>)>,
) -> Option<Event> {
    match events {
        // Never `None`: this connection holds a sender itself.
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn reply_envelope(id: u64, result: Result<Option<Payload>, RpcError>) -> Envelope {
    match result {
        Ok(data) => Envelope::Res { id, data },
        Err(RpcError {
            code,
            message,
            data,
        }) => Envelope::Err {
            id: Some(id),
            code,
            message,
            data,
        },
    }
}

fn notice_envelope(error: RpcError) -> Envelope {
    Envelope::Err {
        id: None,
        code: error.code,
        message: error.message,
        data: error.data,
    }
}

fn unimplemented(method: &str) -> RpcError {
    RpcError::new(
        ErrorCode::Unimplemented,
        format!("unknown method {:?}", quoted(method)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_names_are_cut_with_a_mark() {
        let name = "x".repeat(3 * 1024 * 1024);
        assert_eq!(quoted(&name).len(), MAX_QUOTED_NAME);
        assert!(quoted(&name).ends_with('…'));
    }

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
