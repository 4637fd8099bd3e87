//! The driver task: the only owner of the core's [`Connection`].
//!
//! One `tokio::select!` loop waits on the application's commands, the connect attempt in progress, the
//! socket's read half, the write half (while frames are waiting), and one timer armed for
//! [`Connection::poll_timeout`]. Whatever wakes it is fed to the core, and the core's outputs are drained and
//! acted on in order before the loop waits again (the drain rule). The driver decides nothing itself: when to
//! connect, close, retry, ping or fail a request is the core's decision; the driver only performs it.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::future::{poll_fn, BoxFuture};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use sockeye_core::codec::Payload;
use sockeye_core::{
    CloseCode, CloseReason, Connection, ErrorCode, Event, Input, Instant as CoreInstant, Output,
    RequestError, RequestId, SocketId, Status, Transition,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, info, trace, warn};

use crate::client::Command;
use crate::handlers::Handlers;
use crate::requests::{ReplyTo, Target};
use crate::streams::{ClientEvent, Feed, Listener, Message, Weigh};
use crate::subscriptions::{RawItem, SubscriptionState};
use crate::transport::{ConnectError, Transport, WsStream};
use crate::Error;

/// How long a closing socket may take to finish its close handshake before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The default of [`ClientBuilder::max_write_backlog`](crate::ClientBuilder::max_write_backlog).
pub(crate) const DEFAULT_WRITE_BACKLOG: usize = 4 << 20;
/// Timeouts handled per wake-up before the loop yields (a guard against a deadline that does not move).
const MAX_TIMEOUT_ROUNDS: usize = 16;
/// Commands and frames taken per wake-up before what they produced is written (see [`Driver::gather`]).
const GATHER_ROUNDS: usize = 256;
/// Stands in for deadlines too far away to represent.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

struct Connecting {
    socket: SocketId,
    attempt: u32,
    future: BoxFuture<'static, Result<WsStream, ConnectError>>,
}

struct Reader {
    socket: SocketId,
    stream: SplitStream<WsStream>,
}

struct Writer {
    socket: SocketId,
    sink: SplitSink<WsStream, WsMessage>,
    /// Frames the core decided to send, not yet handed to the sink.
    out: VecDeque<WsMessage>,
    out_bytes: usize,
    /// Frames were handed to the sink since the last flush.
    unflushed: bool,
}

impl Writer {
    fn busy(&self) -> bool {
        !self.out.is_empty() || self.unflushed
    }

    /// Feeds every waiting frame, then flushes once (PERF.md: one syscall for a batch).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        while !self.out.is_empty() {
            ready!(self.sink.poll_ready_unpin(cx))?;
            if let Some(frame) = self.out.pop_front() {
                self.out_bytes -= frame.len();
                self.sink.start_send_unpin(frame)?;
                self.unflushed = true;
            }
        }
        if self.unflushed {
            ready!(self.sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// A request handler's answer, to be sent on the connection the request came on.
struct Response {
    socket: SocketId,
    id: u64,
    result: Result<Option<Payload>, RequestError>,
}

struct PendingRequest {
    key: u64,
    reply: ReplyTo,
}

/// What woke the loop.
enum Wake {
    Command(Option<Command>),
    Response(Response),
    /// Boxed: a WebSocket stream is large, and every other wake-up would pay for its size.
    Connected(Box<Result<WsStream, ConnectError>>),
    Frame(SocketId, Option<Result<WsMessage, WsError>>),
    Written(Result<(), WsError>),
    Timer,
    Reaped,
}

/// One stream following a topic; the core counts the topic's subscribers and reports its state.
struct TopicFeed {
    key: u64,
    feed: Feed<RawItem>,
    state: watch::Sender<SubscriptionState>,
}

pub(crate) struct Driver {
    conn: Connection,
    origin: Instant,
    transport: Arc<Transport>,
    handlers: Arc<Handlers>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Commands read while the write backlog was too large, to be handled in order once it has drained.
    held: VecDeque<Command>,
    /// While this many bytes wait to be written, the loop takes no more work that writes: commands are held
    /// back (their futures wait), handlers' answers wait, and the socket is not read (the core's own replies,
    /// like `UNIMPLEMENTED`, are written for what is read). `close` is never held back.
    max_backlog: usize,
    /// Request handlers at work, each ending with its answer. Aborted when the client ends, so a handler that
    /// never finishes cannot outlive the client.
    serving: JoinSet<Response>,
    status: watch::Sender<Status>,
    connecting: Option<Connecting>,
    reader: Option<Reader>,
    writer: Option<Writer>,
    closers: JoinSet<()>,
    timer: Pin<Box<Sleep>>,
    /// The deadline the timer is armed for.
    armed: Option<CoreInstant>,
    /// When the timer was armed and for how long, to notice it firing far later than asked.
    arming: Option<Arming>,
    /// The deadline last handled, to never re-arm for a past instant in a loop.
    last_timeout: Option<CoreInstant>,
    requests: BTreeMap<RequestId, PendingRequest>,
    request_keys: HashMap<u64, RequestId>,
    topics: BTreeMap<String, Vec<TopicFeed>>,
    incoming: BTreeMap<u64, Feed<Message>>,
    transitions: BTreeMap<u64, Feed<Transition>>,
    events: BTreeMap<u64, Feed<ClientEvent>>,
    stopped: bool,
    /// The clock reading of this wake-up, see [`Driver::now`].
    clock: Cell<Option<CoreInstant>>,
    /// Requesters answered since the last yield: how many tasks may be about to issue a request.
    replies_woken: usize,
}

impl Driver {
    pub fn new(
        conn: Connection,
        transport: Arc<Transport>,
        handlers: Arc<Handlers>,
        commands: mpsc::UnboundedReceiver<Command>,
        status: watch::Sender<Status>,
        max_backlog: usize,
    ) -> Self {
        let origin = Instant::now();
        Driver {
            conn,
            origin,
            transport,
            handlers,
            commands,
            held: VecDeque::new(),
            max_backlog,
            serving: JoinSet::new(),
            status,
            connecting: None,
            reader: None,
            writer: None,
            closers: JoinSet::new(),
            timer: Box::pin(tokio::time::sleep_until(origin)),
            armed: None,
            arming: None,
            last_timeout: None,
            requests: BTreeMap::new(),
            request_keys: HashMap::new(),
            topics: BTreeMap::new(),
            incoming: BTreeMap::new(),
            transitions: BTreeMap::new(),
            events: BTreeMap::new(),
            stopped: false,
            clock: Cell::new(None),
            replies_woken: 0,
        }
    }

    /// The core's clock: milliseconds since this driver started, read once per wake-up (a read per command
    /// and frame showed in the profile; the core counts whole milliseconds, and a wake-up's work takes
    /// microseconds).
    fn now(&self) -> CoreInstant {
        if let Some(now) = self.clock.get() {
            return now;
        }
        let now = CoreInstant::from_millis(
            u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX),
        );
        self.clock.set(Some(now));
        now
    }

    fn input(&mut self, input: Input<'_>) {
        let now = self.now();
        self.conn.handle_input(now, input);
        self.drain();
    }

    pub async fn run(mut self) {
        // Commands issued before the task first ran (a `transitions()` stream, a `subscribe`) apply before the
        // first attempt, so they see it from its start.
        while let Ok(command) = self.commands.try_recv() {
            self.handle_command(command);
        }
        if !self.stopped {
            self.input(Input::Start);
        }
        while !self.stopped {
            // Held-back commands go first, in order, once the backlog has drained.
            while self.accepting() {
                let Some(command) = self.held.pop_front() else {
                    break;
                };
                self.handle_command(command);
            }
            if self.stopped {
                break;
            }
            if self.replies_woken > 1
                && self
                    .writer
                    .as_ref()
                    .is_some_and(|w| !w.out.is_empty() && !w.unflushed)
            {
                // Frames wait, none fed yet, and several requesters were just answered: let them run first
                // (each often issues its next request at once), then take what they sent, so the whole round
                // goes out in one flush. One yield per batch, not per frame; none for a lone request, whose
                // latency it would only add to.
                self.replies_woken = 0;
                tokio::task::yield_now().await;
                self.clock.set(None);
                self.gather();
                if self.stopped {
                    break;
                }
            }
            self.arm_timer();
            let writing = self.writer.as_ref().is_some_and(Writer::busy);
            let accepting = self.accepting();
            let reading = accepting && self.serving.len() < self.conn.config().max_inbound_requests;
            let wake = tokio::select! {
                command = self.commands.recv() => Wake::Command(command),
                Some(joined) = self.serving.join_next(), if accepting && !self.serving.is_empty() => match joined {
                    Ok(response) => Wake::Response(response),
                    Err(_) => Wake::Reaped, // aborted; handler panics are caught inside the task
                },
                result = connect_progress(&mut self.connecting) => Wake::Connected(Box::new(result)),
                // Backpressure: at a bound, the server's frames wait in the network buffers, not in ours.
                (socket, frame) = next_frame(&mut self.reader), if reading => Wake::Frame(socket, frame),
                result = write_progress(&mut self.writer), if writing => Wake::Written(result),
                () = &mut self.timer, if self.armed.is_some() => Wake::Timer,
                Some(_) = self.closers.join_next(), if !self.closers.is_empty() => Wake::Reaped,
            };
            self.clock.set(None);
            match wake {
                Wake::Command(command) => self.on_command(command),
                Wake::Response(response) => self.handle_response(response),
                Wake::Connected(result) => self.handle_connected(*result),
                Wake::Frame(socket, frame) => self.handle_frame(socket, frame),
                Wake::Written(result) => self.handle_written(result),
                Wake::Timer => self.handle_timer(),
                Wake::Reaped => {}
            }
            self.gather();
        }
        // By reference: the task's future would otherwise hold a second copy of the driver's space.
        self.shutdown().await;
    }

    fn on_command(&mut self, command: Option<Command>) {
        match command {
            Some(Command::Close) => self.handle_command(Command::Close),
            Some(command) if self.held.is_empty() && self.accepting() => {
                self.handle_command(command)
            }
            Some(command) => self.held.push_back(command),
            None => {
                debug!("every handle was dropped; closing");
                self.stop();
            }
        }
    }

    /// Takes every command and inbound frame that is already waiting (up to [`GATHER_ROUNDS`] of each), so
    /// the frames they produce are fed to the socket together and flushed once: one `sendto` for a batch of
    /// requests or replies instead of one each (issue 14, PERF.md: 1.41 M vs 0.23 M round trips/s).
    fn gather(&mut self) {
        for _ in 0..GATHER_ROUNDS {
            if self.stopped {
                return;
            }
            let mut progressed = false;
            if self.held.is_empty() && self.accepting() {
                match self.commands.try_recv() {
                    Ok(command) => {
                        self.on_command(Some(command));
                        progressed = true;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.on_command(None);
                        return;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if self.accepting() && self.serving.len() < self.conn.config().max_inbound_requests {
                if let Some((socket, frame)) = next_frame(&mut self.reader).now_or_never() {
                    self.handle_frame(socket, frame);
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// False while the write backlog is at or above its bound.
    fn accepting(&self) -> bool {
        self.writer
            .as_ref()
            .is_none_or(|w| w.out_bytes < self.max_backlog)
    }

    /// Arms the one timer for the core's earliest deadline; an unchanged deadline is left alone.
    fn arm_timer(&mut self) {
        let wanted = self.conn.poll_timeout();
        if wanted == self.armed {
            return;
        }
        self.armed = wanted;
        if let Some(at) = wanted {
            // A deadline the core did not move after it was handled would wake us in a loop: wait 1 ms.
            let at = match self.last_timeout {
                Some(handled) if at <= handled => handled + Duration::from_millis(1),
                _ => at,
            };
            // A deadline beyond what the clock can represent (a huge configured timeout) is "far future".
            let deadline = self
                .origin
                .checked_add(Duration::from_millis(at.as_millis()))
                .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
            self.timer.as_mut().reset(deadline);
            self.arming = Some(Arming::new(deadline));
        }
    }

    /// The timer fired: feed `Timeout` while a deadline is due by our own clock (a timeout can produce work
    /// that is itself due, and a wake-up may come early).
    fn handle_timer(&mut self) {
        self.armed = None;
        let threshold = self.conn.config().time_jump_threshold;
        if self.arming.take().is_some_and(|a| a.fired_late(threshold)) {
            // The core sees lateness on the monotonic clock itself; a suspended machine stops that clock, and
            // only the wall clock shows the sleep.
            debug!("the timer fired far later than asked: liveness unknown");
            self.input(Input::Wake);
        }
        for _ in 0..MAX_TIMEOUT_ROUNDS {
            let now = self.now();
            match self.conn.poll_timeout() {
                Some(at) if at <= now => self.last_timeout = Some(at),
                _ => return,
            }
            self.input(Input::Timeout);
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Send { name, data, ack } => {
                let result = self.conn.send(now, &name, data).map_err(Error::from);
                self.drain();
                let _ = ack.send(result);
            }
            Command::Publish { topic, data, ack } => {
                let result = self.conn.publish(now, &topic, data).map_err(Error::from);
                self.drain();
                let _ = ack.send(result);
            }
            Command::Call {
                key,
                target,
                data,
                timeout,
                reply,
            } => {
                if reply.is_closed() {
                    return; // dropped before the driver saw it; its Cancel follows
                }
                let issued = match &target {
                    Target::Method(method) => self.conn.request(now, method, data, timeout),
                    Target::Publish(topic) => self.conn.publish_acked(now, topic, data, timeout),
                };
                match issued {
                    Ok(id) => {
                        trace!(id = id.0, "request issued");
                        self.requests.insert(id, PendingRequest { key, reply });
                        self.request_keys.insert(key, id);
                    }
                    Err(e) => reply.fail(e.into()),
                }
                self.drain();
            }
            Command::Cancel { key } => {
                if let Some(id) = self.request_keys.remove(&key) {
                    trace!(id = id.0, "request cancelled by drop");
                    self.conn.cancel(now, id);
                    self.drain();
                }
            }
            Command::Subscribe {
                topic,
                key,
                feed,
                state,
            } => {
                if let Err(e) = self.conn.subscribe(now, &topic) {
                    let e = Error::from(e);
                    state.send_replace(SubscriptionState::Failed(e.clone()));
                    feed.deliver(Err(e));
                    return;
                }
                if let Some(sockeye_core::SubscriptionState::Live) = self.conn.subscription(&topic)
                {
                    state.send_replace(SubscriptionState::Live);
                }
                self.topics
                    .entry(topic)
                    .or_default()
                    .push(TopicFeed { key, feed, state });
                self.drain();
            }
            Command::Unsubscribe { topic, key } => {
                let Some(feeds) = self.topics.get_mut(&topic) else {
                    return;
                };
                let Some(at) = feeds.iter().position(|f| f.key == key) else {
                    return; // ended with the topic's refusal: the core no longer counts it
                };
                feeds.swap_remove(at);
                if feeds.is_empty() {
                    self.topics.remove(&topic);
                }
                self.conn.unsubscribe(now, &topic);
                self.drain();
            }
            Command::Listen { key, listener } => match listener {
                Listener::Incoming(feed) => {
                    self.incoming.insert(key, feed);
                }
                Listener::Transitions(feed) => {
                    self.transitions.insert(key, feed);
                }
                Listener::Events(feed) => {
                    self.events.insert(key, feed);
                }
            },
            Command::Unlisten { key } => {
                self.incoming.remove(&key);
                self.transitions.remove(&key);
                self.events.remove(&key);
            }
            Command::Close => {
                debug!("closed by the application");
                self.stop();
            }
        }
    }

    fn stop(&mut self) {
        self.input(Input::Stop);
        self.stopped = true;
    }

    fn handle_response(&mut self, response: Response) {
        let now = self.now();
        // The core refuses a reply whose connection is gone (the server has failed that request already).
        if !self
            .conn
            .respond(now, response.socket, response.id, response.result)
        {
            debug!(
                id = response.id,
                "dropped a handler's reply: its connection is gone"
            );
        }
        self.drain();
    }

    fn handle_connected(&mut self, result: Result<WsStream, ConnectError>) {
        let Some(Connecting {
            socket, attempt, ..
        }) = self.connecting.take()
        else {
            return;
        };
        match result {
            Ok(ws) => {
                debug!(attempt, "socket open");
                let (sink, stream) = ws.split();
                self.reader = Some(Reader { socket, stream });
                self.writer = Some(Writer {
                    socket,
                    sink,
                    out: VecDeque::new(),
                    out_bytes: 0,
                    unflushed: false,
                });
                self.input(Input::SocketOpened { socket });
            }
            Err(ConnectError::Auth(reason)) => {
                warn!(attempt, %reason, "upgrade refused");
                self.input(Input::SocketClosed {
                    socket,
                    code: CloseCode::AUTH_FAILED,
                    reason: &reason,
                });
            }
            Err(ConnectError::Other(message)) => {
                debug!(attempt, error = %message, "connect attempt failed");
                self.input(Input::SocketError {
                    socket,
                    message: &message,
                });
            }
        }
    }

    fn handle_frame(&mut self, socket: SocketId, frame: Option<Result<WsMessage, WsError>>) {
        match frame {
            Some(Ok(WsMessage::Text(text))) => self.input(Input::SocketText {
                socket,
                text: text.as_str(),
            }),
            Some(Ok(WsMessage::Binary(data))) => self.input(Input::SocketBinary {
                socket,
                data: &data,
            }),
            // tungstenite answers pings itself; keepalive is the application-level `ping` word.
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
            Some(Ok(WsMessage::Close(frame))) => {
                let (code, reason) = match &frame {
                    Some(frame) => (CloseCode(u16::from(frame.code)), frame.reason.as_str()),
                    // RFC 6455 §7.4.1: 1005, no status code was present.
                    None => (CloseCode(1005), ""),
                };
                debug!(%code, reason, "closed by the server"); // a `&str` field is written quoted, escaped
                let reason = reason.to_owned();
                self.retire_socket();
                self.input(Input::SocketClosed {
                    socket,
                    code,
                    reason: &reason,
                });
            }
            // tungstenite refused a message over `max_message_size` before buffering it whole; the socket is
            // still open, and closing it is the core's decision.
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, .. }))) => {
                self.input(Input::MessageTooBig { socket, size });
            }
            Some(Err(e)) => {
                let message = e.to_string();
                debug!(error = %message, "socket failed");
                self.retire_socket();
                self.input(Input::SocketError {
                    socket,
                    message: &message,
                });
            }
            None => {
                debug!("socket ended without a close frame");
                self.retire_socket();
                self.input(Input::SocketClosed {
                    socket,
                    code: CloseCode::ABNORMAL,
                    reason: "connection ended without a close frame",
                });
            }
        }
    }

    fn handle_written(&mut self, result: Result<(), WsError>) {
        if let Err(e) = result {
            let Some(socket) = self.writer.as_ref().map(|w| w.socket) else {
                return;
            };
            let message = e.to_string();
            debug!(error = %message, "write failed");
            self.retire_socket();
            self.input(Input::SocketError {
                socket,
                message: &message,
            });
        }
    }

    /// The peer ended the socket (or it failed): finish the close handshake in the background.
    fn retire_socket(&mut self) {
        let reader = self.reader.take();
        if let Some(mut writer) = self.writer.take() {
            self.closers.spawn(async move {
                // Flushes tungstenite's reply to the peer's close frame, if any.
                let _ = tokio::time::timeout(CLOSE_GRACE, writer.sink.close()).await;
                drop(reader);
            });
        }
    }

    /// The core closes a socket: send what was decided before, then the close frame, then wait (briefly) for
    /// the peer's close frame.
    fn close_socket(&mut self, socket: SocketId, code: CloseCode, reason: CloseReason) {
        if self.connecting.as_ref().is_some_and(|c| c.socket == socket) {
            debug!("connect attempt abandoned");
            self.connecting = None;
        }
        if self.writer.as_ref().is_none_or(|w| w.socket != socket) {
            return;
        }
        let (Some(mut writer), Some(mut reader)) = (self.writer.take(), self.reader.take()) else {
            return;
        };
        debug!(%code, reason = reason.as_str(), "closing the socket"); // may quote the server
        let frame = CloseFrame {
            code: WsCloseCode::from(code.0),
            // The core bounds its reasons to what a close frame carries.
            reason: reason.into_string().into(),
        };
        self.closers.spawn(async move {
            let _ = tokio::time::timeout(CLOSE_GRACE, async move {
                for message in writer.out.drain(..) {
                    writer.sink.feed(message).await?;
                }
                writer.sink.send(WsMessage::Close(Some(frame))).await?;
                // The peer's close frame ends the stream.
                while let Some(Ok(_)) = reader.stream.next().await {}
                Ok::<(), WsError>(())
            })
            .await;
        });
    }

    /// Acts on every output of the core, in order (the drain rule).
    fn drain(&mut self) {
        while let Some(output) = self.conn.poll_output() {
            match output {
                Output::OpenSocket { socket, attempt } => {
                    debug!(attempt, "connecting");
                    if self.reader.is_some() {
                        // The core closes a socket before it opens the next; be safe anyway.
                        self.retire_socket();
                    }
                    let future = Arc::clone(&self.transport).connect().boxed();
                    self.connecting = Some(Connecting {
                        socket,
                        attempt,
                        future,
                    });
                }
                Output::CloseSocket {
                    socket,
                    code,
                    reason,
                } => self.close_socket(socket, code, reason),
                Output::SendText(text) => self.write(WsMessage::text(text)),
                Output::SendBinary(frame) => self.write(WsMessage::binary(frame)),
                Output::Event(event) => self.dispatch(event),
            }
        }
    }

    fn write(&mut self, message: WsMessage) {
        match &mut self.writer {
            Some(writer) => {
                writer.out_bytes += message.len();
                writer.out.push_back(message);
            }
            None => debug!("no open socket for an outgoing frame; dropped"),
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::StateChanged(transition) => self.transitioned(transition),
            Event::Message { name, data } => {
                if self.incoming.is_empty() {
                    trace!(%name, "message dropped: no incoming() stream");
                }
                broadcast(&mut self.incoming, &Message { name, data });
            }
            Event::TopicEvent {
                topic,
                seq,
                ep,
                data,
            } => self.hand_to_subscribers(&topic, || RawItem::Event {
                topic: topic.clone(),
                seq,
                ep: ep.clone(),
                data: data.clone(),
            }),
            Event::TopicGap { topic, from, to } => {
                // `?`: the topic is the application's, but written quoted like every other topic here.
                warn!(topic = ?topic, from, to, "events lost");
                self.hand_to_subscribers(&topic, || RawItem::Gap { from, to });
            }
            Event::TopicReset { topic, ep } => {
                warn!(topic = ?topic, ep = ?ep, "topic sequence reset");
                self.hand_to_subscribers(&topic, || RawItem::Reset { ep: ep.clone() });
            }
            Event::TopicResumed { topic, replayed } => {
                debug!(topic = ?topic, replayed, "topic resumed");
                self.hand_to_subscribers(&topic, || RawItem::Resumed { replayed });
            }
            Event::Reply { id, result } => {
                if let Some(PendingRequest {
                    reply: ReplyTo::Call(reply),
                    ..
                }) = self.end_request(id)
                {
                    let _ = reply.send(result.map_err(Error::from));
                }
            }
            Event::Published { id, result } => {
                if let Some(PendingRequest {
                    reply: ReplyTo::Publish(reply),
                    ..
                }) = self.end_request(id)
                {
                    let _ = reply.send(result.map_err(Error::from));
                }
            }
            Event::Request {
                socket,
                id,
                method,
                data,
            } => self.serve(socket, id, method, data),
            Event::SubscriptionChanged { topic, state } => self.subscription_changed(topic, state),
            Event::Disconnected {
                code,
                reason,
                will_reconnect,
            } => {
                // `?` on peer-controlled text: written quoted, with every control character escaped.
                info!(%code, reason = ?reason.as_str(), will_reconnect, "connection lost");
                let event = ClientEvent::Disconnected {
                    code,
                    reason,
                    will_reconnect,
                };
                broadcast(&mut self.events, &event);
            }
            Event::Reconnected => {
                info!("reconnected");
                broadcast(&mut self.events, &ClientEvent::Reconnected);
            }
            Event::Notice(error) => {
                warn!(error = ?error.to_string(), "the server reported an error");
                broadcast(&mut self.events, &ClientEvent::Notice(error.into()));
            }
            Event::Draining => {
                info!("the server is draining");
                broadcast(&mut self.events, &ClientEvent::Draining);
            }
        }
    }

    /// Hands an item to every stream following `topic`. A stream that is gone stays listed until its
    /// `Unsubscribe` (sent when it is dropped) releases it in the core too.
    fn hand_to_subscribers(&mut self, topic: &str, item: impl Fn() -> RawItem) {
        for TopicFeed { feed, .. } in self.topics.get(topic).into_iter().flatten() {
            feed.deliver(Ok(item()));
        }
    }

    /// The core's word on a topic, passed to every stream following it: [`Subscription::state`] and
    /// [`Subscription::subscribed`](crate::Subscription::subscribed) read it, and a refusal ends the streams.
    ///
    /// [`Subscription::state`]: crate::Subscription::state
    fn subscription_changed(&mut self, topic: String, state: sockeye_core::SubscriptionState) {
        let state = SubscriptionState::from(state);
        match &state {
            SubscriptionState::Failed(error) => {
                // `?` on peer-controlled text: written quoted, with every control character escaped.
                warn!(topic = ?topic, error = ?error.to_string(), "subscription refused");
                for f in self.topics.remove(&topic).unwrap_or_default() {
                    f.state.send_replace(state.clone());
                    f.feed.deliver(Err(error.clone()));
                }
                return;
            }
            SubscriptionState::Live => debug!(topic = ?topic, "subscribed"),
            SubscriptionState::Pending => {}
        }
        for f in self.topics.get(&topic).into_iter().flatten() {
            // Changes only: a stream that joined a pending topic must not see `pending` twice.
            f.state.send_if_modified(|current| {
                let changed = std::mem::discriminant(current) != std::mem::discriminant(&state);
                if changed {
                    *current = state.clone();
                }
                changed
            });
        }
    }

    /// A request or acknowledged publish ended: forget it. (The core decides each id's kind, so the event
    /// always matches the stored [`ReplyTo`].)
    fn end_request(&mut self, id: RequestId) -> Option<PendingRequest> {
        let pending = self.requests.remove(&id)?;
        self.request_keys.remove(&pending.key);
        // Either kind wakes a requester that may send at once: counts towards the batching yield above.
        self.replies_woken += 1;
        Some(pending)
    }

    /// A server `req`: run its handler as a task, or let the core give its `UNIMPLEMENTED` answer.
    fn serve(&mut self, socket: SocketId, id: u64, method: String, data: Option<Payload>) {
        let Some(handler) = self.handlers.get(&method) else {
            debug!(method = ?method.chars().take(64).collect::<String>(), "no handler");
            let now = self.now();
            self.conn.respond_unimplemented(now, socket, id, &method);
            return;
        };
        self.serving.spawn(async move {
            let result = match AssertUnwindSafe(handler(data)).catch_unwind().await {
                Ok(Ok(data)) => Ok(data),
                Ok(Err(e)) => Err(e.to_request_error()),
                Err(_) => Err(RequestError::local(
                    ErrorCode::Internal,
                    "the request handler panicked",
                )),
            };
            Response { socket, id, result }
        });
    }

    fn transitioned(&mut self, transition: Transition) {
        match &transition.to {
            Status::Reconnecting { attempt, delay, .. } => {
                info!(
                    attempt,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "reconnecting"
                );
            }
            Status::Disconnected {
                reason: Some(reason),
            } => info!(reason = ?reason.to_string(), "disconnected"),
            to => info!(from = %transition.from, %to, "state changed"),
        }
        self.status.send_replace(transition.to.clone());
        broadcast(&mut self.transitions, &transition);
    }

    async fn shutdown(&mut self) {
        self.connecting = None;
        // Answers could only be dropped now: stop the handlers still at work.
        self.serving.abort_all();
        self.handlers.clear();
        self.retire_socket();
        // Requests the core still holds (none after `Stop`) end with their senders: `Error::Closed`.
        self.requests.clear();
        self.topics.clear();
        self.incoming.clear();
        self.transitions.clear();
        self.events.clear();
        let closers = async { while self.closers.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(CLOSE_GRACE + Duration::from_millis(500), closers).await;
        debug!("client task finished");
        // Dropping the driver (and `self.status` with it) right after this tells `Client::close` that the task
        // has ended.
    }
}

/// Hands `item` to every listener stream in `feeds`, forgetting those whose stream is gone.
fn broadcast<T: Weigh + Clone>(feeds: &mut BTreeMap<u64, Feed<T>>, item: &T) {
    feeds.retain(|_, feed| feed.deliver(Ok(item.clone())));
}

/// When the one timer was armed, on the monotonic and the wall clock, and the wait it asked for.
struct Arming {
    at: Instant,
    wall: SystemTime,
    asked: Duration,
}

impl Arming {
    fn new(deadline: Instant) -> Self {
        let at = Instant::now();
        Arming {
            at,
            wall: SystemTime::now(),
            asked: deadline.saturating_duration_since(at),
        }
    }

    /// The timer fired more than `threshold` later than asked, on either clock. The monotonic clock stops
    /// while the machine is suspended (Linux's `CLOCK_MONOTONIC`, macOS's uptime clock); the wall clock does
    /// not, but may be stepped: a false alarm costs one `ping`.
    fn fired_late(&self, threshold: Duration) -> bool {
        let waited_wall = SystemTime::now()
            .duration_since(self.wall)
            .unwrap_or_default();
        late_by_more_than(self.asked, self.at.elapsed(), waited_wall, threshold)
    }
}

fn late_by_more_than(
    asked: Duration,
    waited_monotonic: Duration,
    waited_wall: Duration,
    threshold: Duration,
) -> bool {
    !threshold.is_zero() && waited_monotonic.max(waited_wall) > asked.saturating_add(threshold)
}

/// Resolves when the connect attempt in progress ends; never while there is none.
async fn connect_progress(connecting: &mut Option<Connecting>) -> Result<WsStream, ConnectError> {
    match connecting {
        Some(c) => (&mut c.future).await,
        None => std::future::pending().await,
    }
}

/// The next frame from the open socket; never resolves while there is none.
async fn next_frame(reader: &mut Option<Reader>) -> (SocketId, Option<Result<WsMessage, WsError>>) {
    match reader {
        Some(r) => (r.socket, r.stream.next().await),
        None => std::future::pending().await,
    }
}

/// Resolves when every waiting frame is written and flushed (or writing failed).
async fn write_progress(writer: &mut Option<Writer>) -> Result<(), WsError> {
    match writer {
        Some(w) => poll_fn(|cx| w.poll_write(cx)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_is_late_when_either_clock_waited_past_the_threshold() {
        let s = Duration::from_secs;
        // On time, or late within the threshold.
        assert!(!late_by_more_than(s(30), s(30), s(30), s(5)));
        assert!(!late_by_more_than(s(30), s(34), s(34), s(5)));
        // A stopped process: the monotonic clock ran on.
        assert!(late_by_more_than(s(30), s(90), s(90), s(5)));
        // A suspended machine: only the wall clock shows the hour.
        assert!(late_by_more_than(s(30), s(30), s(3600), s(5)));
        // Detection off.
        assert!(!late_by_more_than(s(30), s(3600), s(3600), Duration::ZERO));
    }
}
