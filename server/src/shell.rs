//! The tokio task that drives one [`Session`] over one WebSocket: it feeds the session every frame already
//! read, the tasks that finished, broker events, close orders and the timer, and writes what the session
//! queued with `feed`, flushing once per wake-up.
//!
//! Backpressure: while frames are waiting to be written, nothing more is read, so a peer that does not read
//! its replies cannot make the server buffer without bound (the timer still runs: the heartbeat closes it).
//! Tasks (auth verifier, handlers, Redis round trips) run concurrently inside this task (a
//! `FuturesUnordered`). Events arrive through a bounded queue created on the first `sub`, so an idle
//! connection that never subscribes carries no queue at all.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use sockeye_core::error::{CloseCode, CloseReason};
use sockeye_core::time::Instant as CoreInstant;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::broker::{self, Answer, Event, EventQueue};
use crate::budget::{InboundRefused, Metered, FREE_INBOUND};
use crate::outbound::Frame;
use crate::server::{ConnControl, Counters, Shared};
use crate::session::{
    Action, BrokerCommand, Ending, Inbound, Output, ReadError, Session, Task, Upgraded,
};

type Ws = WebSocketStream<Metered<TcpStream>>;

/// How long the closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbound frames handled before output is written.
const INBOUND_BATCH: usize = 64;
/// Output queued (bytes) after which no further inbound frame is handled before writing.
const BATCH_BYTES: usize = 256 * 1024;
/// Queued events written in one go before inbound frames get another turn.
const EVENT_BATCH: usize = 256;

/// Counts the connection as open for as long as it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
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
    let _open = OpenGuard(Arc::clone(&shared));
    let peer: SocketAddr = upgraded.peer;
    tracing::debug!(connection = id, %peer, "upgraded");
    let control = Arc::clone(ws.get_ref().control());
    let now = shared.core_now();
    let session = Session::new(Arc::clone(&shared), id, Arc::clone(&control), now, upgraded);
    let mut shell = Shell {
        shared,
        control,
        session,
        now,
        held: None,
        needs_flush: false,
        events: None,
        inflight: Inflight::default(),
    };
    let ending = shell.serve(&mut ws).await;
    shell.finish(&mut ws, ending).await;
}

/// One connection's driver.
struct Shell {
    shared: Arc<Shared>,
    control: Arc<ConnControl>,
    session: Session,
    /// The clock at the last wake-up (one reading per wake-up: a reading per frame showed in the profile).
    now: CoreInstant,
    /// The last binary message, kept while tungstenite's read buffer still shares its allocation: that
    /// buffer reuses the allocation of the largest message read (up to the message size limit) whenever it
    /// is the only owner, so holding the message until tungstenite has moved to a buffer of its own lets a
    /// big message's allocation go instead of staying for the connection's lifetime. Meanwhile its bytes
    /// count against the inbound budget (they are alive either way).
    held: Option<Bytes>,
    /// tungstenite queued something (an automatic pong or close reply) that needs a flush.
    needs_flush: bool,
    /// The sending end handed to the topic registry, and the receiving end; created by the first `sub`.
    events: EventQueue,
    inflight: Inflight,
}

impl Shell {
    /// Serves until the session ends; returns the ending when it was already pulled.
    async fn serve(&mut self, ws: &mut Ws) -> Option<Ending> {
        let control = Arc::clone(&self.control);
        let mut armed = self.session.poll_timeout();
        let sleep = tokio::time::sleep_until(self.tokio_at(armed));
        tokio::pin!(sleep);

        loop {
            if self.has_output() {
                // A peer that does not read its replies blocks the write (and with it, reading); the timer
                // still runs, so such a peer is closed with 4002 once the heartbeat limit passes.
                let written = tokio::select! {
                    biased;
                    () = control.notify.notified() => {
                        self.close_requested();
                        false
                    }
                    () = sleep.as_mut(), if armed.is_some() => {
                        self.wake();
                        self.session.handle_timeout(self.now);
                        false
                    }
                    written = self.write_out(ws) => match written {
                        Ok(None) => true,
                        Ok(Some(ending)) => return Some(ending),
                        Err(_) => return Some(Ending::Gone),
                    },
                };
                if self.session.is_ending() {
                    return None;
                }
                self.rearm(&mut armed, sleep.as_mut());
                if !written {
                    // Nothing more is read until what is queued has been written.
                    continue;
                }
            }

            tokio::select! {
                biased;
                () = control.notify.notified() => self.close_requested(),
                inbound = next_inbound(ws, &mut self.held) => {
                    self.wake();
                    self.on_read(inbound);
                    // Handle whatever else has already arrived before writing, so replies go out in one flush.
                    for _ in 1..INBOUND_BATCH {
                        if self.session.is_ending() || self.session.queued_bytes() >= BATCH_BYTES {
                            break;
                        }
                        match next_inbound(ws, &mut self.held).now_or_never() {
                            Some(inbound) => self.on_read(inbound),
                            None => break,
                        }
                    }
                }
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.wake();
                    self.session.handle_done(self.now, done);
                    self.reap_finished();
                }
                Some(event) = recv_event(&mut self.events) => {
                    self.session.handle_event(self.now, event);
                }
                () = sleep.as_mut(), if armed.is_some() => {
                    self.wake();
                    self.session.handle_timeout(self.now);
                }
            }
            if self.session.is_ending() {
                return None;
            }
            self.rearm(&mut armed, sleep.as_mut());
        }
    }

    fn wake(&mut self) {
        self.now = self.shared.core_now();
    }

    fn tokio_at(&self, at: Option<CoreInstant>) -> Instant {
        at.and_then(|at| self.shared.tokio_instant(at))
            .unwrap_or_else(Instant::now)
    }

    /// Re-arms the timer only when the earliest deadline moved earlier, or after it fired. The heartbeat
    /// deadline only ever moves later, so a timer armed for an old one fires early and is re-armed then.
    fn rearm(&self, armed: &mut Option<CoreInstant>, mut sleep: Pin<&mut Sleep>) {
        let wanted = self.session.poll_timeout();
        let rearm = match (*armed, wanted) {
            (None, Some(_)) => true,
            (Some(at), Some(want)) => want < at || sleep.is_elapsed(),
            (Some(_), None) => sleep.is_elapsed(),
            (None, None) => false,
        };
        if rearm {
            *armed = wanted;
            if wanted.is_some() {
                sleep.as_mut().reset(self.tokio_at(wanted));
            }
        }
    }

    fn close_requested(&mut self) {
        if let Some(request) = self.control.take_close() {
            self.wake();
            self.session.handle_close_request(self.now, request);
        }
    }

    fn has_output(&self) -> bool {
        self.session.has_output()
            || self.needs_flush
            || self.events.as_ref().is_some_and(|(_, rx)| !rx.is_empty())
    }

    /// Translates one read for the session.
    fn on_read(&mut self, read: Option<Result<Message, WsError>>) {
        if self.session.inflight_full() {
            self.reap_finished();
        }
        let inbound = match &read {
            None => Inbound::Ended,
            Some(Ok(Message::Text(text))) => Inbound::Text(text.as_str()),
            Some(Ok(Message::Binary(bytes))) => Inbound::Binary(bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                // tungstenite queued the pong for a ping; a flush sends it.
                self.needs_flush = true;
                Inbound::Control
            }
            Some(Ok(Message::Close(_))) => Inbound::Close,
            Some(Err(error)) => Inbound::Failed(read_error(error)),
        };
        self.session.handle_inbound(self.now, inbound);
        while let Some(action) = self.session.poll_action() {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Spawn(task) => self.inflight.push(task),
            Action::Broker(command) => self.broker(command),
        }
    }

    /// Takes the tasks that have finished out of `inflight` and hands their results over. Inbound frames are
    /// read before `inflight` is polled, so after a burst (a stalled network delivering at once) it holds
    /// tasks that finished long ago; without this they would count against the limit.
    fn reap_finished(&mut self) {
        while let Some(Some(done)) = self.inflight.next().now_or_never() {
            self.session.handle_done(self.now, done);
        }
    }

    /// Writes every queued frame and up to [`EVENT_BATCH`] queued events with `feed`, then flushes once.
    /// Returns the session's ending when it was reached.
    async fn write_out(&mut self, ws: &mut Ws) -> Result<Option<Ending>, WsError> {
        // Until the flush below completes: if this is cancelled, the next loop still flushes.
        self.needs_flush = true;
        let mut events = 0;
        loop {
            if let Some(ending) = self.feed_out(ws).await? {
                return Ok(Some(ending));
            }
            if events >= EVENT_BATCH {
                break;
            }
            match self.events.as_mut().and_then(|(_, rx)| rx.try_recv().ok()) {
                Some(event) => {
                    events += 1;
                    self.session.handle_event(self.now, event);
                }
                None => break,
            }
        }
        ws.flush().await?;
        self.needs_flush = false;
        self.session.publish_counters();
        Ok(None)
    }

    /// Acts on the session's outputs, feeding frames to the socket without flushing, until there are none or
    /// the session ends. Cancel-safe: a frame leaves the session only once the sink is ready for it, so a
    /// cancelled write loses nothing (a subscriber closed with 1013 has seen an unbroken run of events).
    async fn feed_out(&mut self, ws: &mut Ws) -> Result<Option<Ending>, WsError> {
        loop {
            if self.session.has_frames() {
                std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
            }
            match self.session.poll_output() {
                None => return Ok(None),
                Some(Output::Frame(frame)) => ws.start_send_unpin(message(frame))?,
                Some(Output::Action(action)) => self.act(action),
                Some(Output::End(ending)) => return Ok(Some(ending)),
            }
        }
    }

    fn broker(&mut self, command: BrokerCommand) {
        let connection = self.session.id();
        let answer = broker::execute(
            &self.shared,
            connection,
            command,
            &self.control,
            &mut self.events,
        );
        match answer {
            Answer::Now(done) => self.session.handle_done(self.now, done),
            Answer::Later(task) => self.inflight.push(task),
            Answer::Nothing => {}
        }
    }

    /// Writes what is left (bounded) and ends the socket the session's way; handlers already started run on.
    async fn finish(&mut self, ws: &mut Ws, ending: Option<Ending>) {
        // An ended session takes no more events: the queue (maybe full, for a subscriber closed for being too
        // slow) goes now, not after the closing handshake.
        self.events = None;
        let ending = match ending {
            Some(ending) => Some(ending),
            None => tokio::time::timeout(CLOSE_TIMEOUT, async {
                let ending = self.feed_out(ws).await;
                let _ = ws.flush().await;
                ending
            })
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
        };
        // Whatever was not written (a timeout, a broken socket) is dropped; tasks still start.
        let ending = ending.unwrap_or_else(|| self.abandon());
        match ending {
            Ending::Close { code, reason } => close_socket(ws, code, &reason).await,
            Ending::PeerClosed => {
                // tungstenite queued the close reply; send it.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
            }
            Ending::Gone => tracing::debug!(connection = self.session.id(), "socket gone"),
        }
        self.session.publish_counters();
        // Handlers already started run to completion: a `msg` followed at once by the client's close must
        // still be handled. Their replies have nowhere to go and are dropped.
        let mut inflight = std::mem::take(&mut self.inflight);
        if !inflight.is_empty() {
            tokio::spawn(async move { while inflight.next().await.is_some() {} });
        }
    }

    /// Drops the frames not written and takes the remaining outputs up to the ending.
    fn abandon(&mut self) -> Ending {
        self.session.discard_frames();
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Action(action) => self.act(action),
                Output::Frame(_) => {}
                Output::End(ending) => return ending,
            }
        }
        Ending::Gone
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        broker::detach(&self.shared, self.session.id(), self.session.topics());
    }
}

fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(word) => Message::text(word),
        Frame::Binary(bytes) => Message::Binary(bytes),
    }
}

fn read_error(error: &WsError) -> ReadError {
    match error {
        WsError::Capacity(e) => ReadError::TooBig(e.to_string()),
        WsError::Protocol(e) => ReadError::Protocol(e.to_string()),
        WsError::Utf8(_) => ReadError::Utf8,
        WsError::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<InboundRefused>()) {
            Some(refused) => ReadError::Refused(refused.clone()),
            None => ReadError::Io,
        },
        _ => ReadError::Io,
    }
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

/// The next inbound message. A binary message is held (see `Shell::held`) until tungstenite's buffer no
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

/// Tasks running beside one connection. The set is allocated on the first task: `FuturesUnordered`
/// allocates two shared blocks up front, and an idle connection needs none (measured: 0.16 KB per idle
/// connection).
#[derive(Default)]
struct Inflight(Option<FuturesUnordered<Task>>);

impl Inflight {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(FuturesUnordered::is_empty)
    }

    fn push(&mut self, task: Task) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(task);
    }

    /// The next one to finish; `None` when none is running.
    async fn next(&mut self) -> Option<crate::session::Done> {
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
