//! The client core fed arbitrary server behaviour: frames, text, closes, stale events, time jumps and
//! application commands, decoded from the fuzz input with `arbitrary`.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use sockeye_core::codec::{
    Envelope, Fragmenter, Payload, Reassembler, ReassemblyLimits, KIND_COMPLETE,
};
use sockeye_core::{
    CloseCode, Config, Connection, Duration, ErrorCode, Event, Input, Instant, Output, QueueLimits,
    ReconnectConfig, RequestError, RequestId, SocketId, Status, SubscriptionState,
};

/// Topic names the inputs pick from: valid ones, a reserved one and an empty one (refused by `subscribe`).
const TOPICS: [&str; 5] = ["a", "b", "room/ü", "$sys", ""];

/// How one input ends; long inputs are cut here so one run stays short.
const MAX_OPS: usize = 256;

/// The client's limit on a server message, small so the fuzzer reaches it.
const MAX_MESSAGE_BYTES: usize = 512;

/// The client's bound on unanswered server requests, small so the fuzzer reaches it.
const MAX_INBOUND_REQUESTS: usize = 4;

#[derive(Arbitrary, Debug)]
struct Setup {
    seed: u64,
    /// 0 disables fragmentation of the client's own sends; small values make it fragment everything.
    fragment_threshold: u8,
    /// 0: unlimited attempts.
    max_attempts: u8,
    reconnect: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The server sends a valid envelope built from these fields.
    Envelope(ServerEnvelope),
    /// The server sends a valid envelope in fragments of `chunk` bytes (0: one COMPLETE frame), only the first
    /// `keep` of them when set.
    Fragmented {
        envelope: ServerEnvelope,
        chunk: u8,
        keep: Option<u8>,
    },
    /// Any bytes as a binary frame.
    Binary(Vec<u8>),
    Text(ServerText),
    /// An event about the socket before the current one, which the core must ignore.
    Stale(Stale),
    Opened,
    Closed {
        code: u16,
        reason: String,
    },
    Error,
    /// The clock moves and the timer fires (late, early or on time).
    Advance {
        ms: u32,
    },
    /// The clock jumps to the next deadline and the timer fires.
    FireNextTimeout,
    /// The clock moves and the next input comes before the timer fires.
    Elapse {
        ms: u16,
    },
    Wake,
    Network {
        online: bool,
    },
    Start,
    Stop,
    Send {
        data: Option<PayloadPick>,
    },
    Request {
        timeout_ms: Option<u16>,
        data: Option<PayloadPick>,
    },
    Cancel {
        pick: u8,
    },
    Respond {
        pick: u8,
        ok: bool,
    },
    Subscribe {
        topic: u8,
    },
    Unsubscribe {
        topic: u8,
    },
    Publish {
        topic: u8,
        data: Option<PayloadPick>,
    },
    /// The socket refused a message over the size limit (native shells learn it from the WebSocket).
    TooBig {
        size: u32,
    },
}

#[derive(Arbitrary, Debug)]
enum ServerText {
    Ready,
    Pong,
    Bye,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Stale {
    Opened,
    Ready,
    Binary(ServerEnvelope),
    Closed { code: u16 },
    Error,
    TooBig { size: u32 },
}

#[derive(Arbitrary, Debug)]
struct ServerEnvelope {
    kind: Kind,
    id: IdPick,
    text: String,
    topic: u8,
    seq: u64,
    code: CodePick,
    data: Option<PayloadPick>,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Msg,
    Req,
    Res,
    Err,
    Notice,
    Sub,
    Unsub,
    Pub,
    Evt,
}

/// An id the client knows (one of its requests or `sub`/`unsub`s), or any id.
#[derive(Arbitrary, Debug)]
enum IdPick {
    Known(u8),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum CodePick {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
pub(super) enum PayloadPick {
    Text(String),
    Uint(u64),
    /// Used when it is one valid CBOR item, else `null`.
    Raw(Vec<u8>),
}

impl PayloadPick {
    pub(super) fn payload(self) -> Payload {
        match self {
            PayloadPick::Text(text) => Payload::encode(&text),
            PayloadPick::Uint(n) => Payload::encode(&n),
            PayloadPick::Raw(bytes) => Payload::from_cbor(bytes),
        }
        .unwrap_or_else(|_| Payload::null())
    }
}

/// A connection started, its socket opened and `ready` received, then driven by the input's operations. After
/// every input the outputs are drained and checked:
///
/// - at most one socket is open, and the core closes only the open one;
/// - frames go out only on an open socket, and each is a valid frame of a valid envelope;
/// - every reply names a request the application issued, and no request ends twice;
/// - events name the current socket and subscribed topics; `ready` only with an open socket;
/// - after the timer is handled at `now`, no deadline is at or before `now`;
/// - the offline queue stays within its limits.
///
/// At the end the application stops: every request has ended exactly once and no timer is left.
pub fn client_core(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let mut run = Run::new(setup);
    run.input(Input::Start);
    run.input(Input::SocketOpened { socket: run.socket });
    run.input(Input::SocketText {
        socket: run.socket,
        text: "ready",
    });
    assert_eq!(run.conn.status(), &Status::Ready);
    // `arbitrary_iter` ends when the input runs out (a bare loop would go on with default values).
    let Ok(ops) = u.arbitrary_iter::<Op>() else {
        return;
    };
    for op in ops.take(MAX_OPS).map_while(Result::ok) {
        run.apply(op);
    }
    run.input(Input::Stop);
    run.check_ended();
}

struct Run {
    conn: Connection,
    now: Instant,
    queue_limits: QueueLimits,
    /// The socket the core last asked to open, and whether it is still open.
    socket: SocketId,
    open: bool,
    /// Reassembles what the client sends, as the server would.
    server: Reassembler,
    /// The server has sent something the client may refuse on the current socket (bytes that are not a whole
    /// valid envelope within the limits, an unknown text frame, a frame before `ready`). Until it has, the
    /// client must not refuse it (close 4004).
    server_misbehaved: bool,
    /// Ids the server can answer: the client's requests and its `sub`/`unsub`s.
    known_ids: Vec<u64>,
    issued: Vec<RequestId>,
    ended: BTreeMap<RequestId, u32>,
    /// Subscribers per topic.
    subscribed: BTreeMap<String, u32>,
    /// Server requests delivered to the application: (socket, id).
    inbound: Vec<(SocketId, u64)>,
}

impl Run {
    fn new(setup: Setup) -> Self {
        let queue_limits = QueueLimits {
            max_messages: 5,
            max_bytes: 300,
        };
        let config = Config {
            seed: setup.seed,
            reconnect: ReconnectConfig {
                enabled: setup.reconnect,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(1_600),
                max_attempts: (setup.max_attempts != 0)
                    .then(|| u32::from(setup.max_attempts % 8) + 1),
                ..ReconnectConfig::default()
            },
            keepalive_interval: Duration::from_millis(3_000),
            keepalive_timeout: Duration::from_millis(1_000),
            request_timeout: Duration::from_millis(5_000),
            max_inbound_requests: MAX_INBOUND_REQUESTS,
            queue: queue_limits,
            fragment_threshold: usize::from(setup.fragment_threshold),
            // Small, so the server's frames hit every limit.
            reassembly: ReassemblyLimits {
                max_message_bytes: MAX_MESSAGE_BYTES,
                max_partial_messages: 2,
                completion_timeout: Duration::from_millis(1_000),
            },
            ..Config::default()
        };
        Run {
            conn: Connection::new(config).expect("the harness config is valid"),
            now: Instant::ZERO,
            queue_limits,
            socket: SocketId(0),
            open: false,
            server: Reassembler::new(ReassemblyLimits::default()),
            server_misbehaved: false,
            known_ids: Vec::new(),
            issued: Vec::new(),
            ended: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            inbound: Vec::new(),
        }
    }

    /// The socket before the current one (`SocketId(0)` is never used: ids start at 1).
    fn stale(&self) -> SocketId {
        SocketId(self.socket.0.saturating_sub(1))
    }

    fn apply(&mut self, op: Op) {
        let socket = self.socket;
        match op {
            Op::Envelope(envelope) => {
                let envelope = self.envelope_of(envelope);
                let acceptable = self.acceptable(&envelope);
                self.server_sends(&[complete_frame(&envelope)], acceptable);
            }
            Op::Fragmented {
                envelope,
                chunk,
                keep,
            } => {
                let envelope = self.envelope_of(envelope);
                let mut frames = Vec::new();
                // Fragmenter refuses only more than u16::MAX fragments; fuzz inputs are far smaller.
                let _ = Fragmenter::new(chunk.into()).encode(&envelope, |f| frames.push(f));
                let whole = keep.is_none_or(|keep| usize::from(keep) >= frames.len());
                frames.truncate(keep.map_or(usize::MAX, usize::from));
                let acceptable = whole && self.acceptable(&envelope);
                self.server_sends(&frames, acceptable);
            }
            Op::Binary(data) => self.server_sends(&[data], false),
            Op::Text(text) => {
                let text = match &text {
                    ServerText::Ready => "ready",
                    ServerText::Pong => "pong",
                    ServerText::Bye => "bye",
                    ServerText::Other(other) => {
                        self.server_misbehaved |=
                            !["ready", "pong", "bye"].contains(&other.as_str());
                        other
                    }
                };
                self.input(Input::SocketText { socket, text });
            }
            Op::Stale(stale) => self.stale_input(stale),
            Op::Opened => {
                self.input(Input::SocketOpened { socket });
            }
            Op::Closed { code, reason } => {
                self.socket_gone(socket);
                self.input(Input::SocketClosed {
                    socket,
                    code: CloseCode(code),
                    reason: &reason,
                });
            }
            Op::TooBig { size } => {
                self.server_misbehaved = true;
                self.input(Input::MessageTooBig {
                    socket,
                    size: size as usize,
                });
            }
            Op::Error => {
                self.socket_gone(socket);
                self.input(Input::SocketError {
                    socket,
                    message: "connection reset",
                });
            }
            Op::Advance { ms } => {
                self.now = self.now + Duration::from_millis(ms.into());
                self.timeout();
            }
            Op::FireNextTimeout => {
                if let Some(at) = self.conn.poll_timeout() {
                    self.now = self.now.max(at);
                    self.timeout();
                }
            }
            Op::Elapse { ms } => self.now = self.now + Duration::from_millis(ms.into()),
            Op::Wake => {
                self.input(Input::Wake);
            }
            Op::Network { online } => {
                self.input(Input::NetworkChanged { online });
            }
            Op::Start => {
                self.input(Input::Start);
            }
            Op::Stop => {
                self.input(Input::Stop);
                self.check_ended();
            }
            Op::Send { data } => {
                let result = self
                    .conn
                    .send(self.now, "m", data.map(PayloadPick::payload));
                self.after_command(result.err().map(|e| e.code()));
            }
            Op::Request { timeout_ms, data } => {
                let timeout = timeout_ms.map(|ms| Duration::from_millis(ms.into()));
                let data = data.map(PayloadPick::payload);
                match self.conn.request(self.now, "echo", data, timeout) {
                    Ok(id) => {
                        assert!(!self.issued.contains(&id), "request id {id} reused");
                        self.issued.push(id);
                        self.known_ids.push(id.0);
                        self.after_command(None);
                    }
                    Err(e) => self.after_command(Some(e.code())),
                }
            }
            Op::Cancel { pick } => {
                if let Some(&id) = pick_from(&self.issued, pick) {
                    let cancelled = self.conn.cancel(self.now, id);
                    assert_eq!(cancelled, !self.ended.contains_key(&id), "cancel of {id}");
                    self.drain();
                }
            }
            Op::Respond { pick, ok } => {
                let picked = usize::from(pick) % self.inbound.len().max(1);
                if let Some(&(socket, id)) = self.inbound.get(picked) {
                    let result = match ok {
                        true => Ok(Some(Payload::null())),
                        false => Err(RequestError::local(ErrorCode::Internal, "no")),
                    };
                    if self.conn.respond(self.now, socket, id, result) {
                        self.inbound.swap_remove(picked);
                    }
                    self.drain();
                }
            }
            Op::Subscribe { topic } => {
                let topic = topic_of(topic);
                match self.conn.subscribe(self.now, topic) {
                    Ok(added) => {
                        let count = self.subscribed.entry(topic.to_owned()).or_default();
                        *count += 1;
                        assert_eq!(added, *count == 1);
                        self.drain();
                    }
                    Err(e) => assert_eq!(e.code(), ErrorCode::InvalidArgument),
                }
            }
            Op::Unsubscribe { topic } => {
                let topic = topic_of(topic);
                let removed = self.conn.unsubscribe(self.now, topic);
                let counted = match self.subscribed.get_mut(topic) {
                    Some(count) => {
                        *count -= 1;
                        if *count == 0 {
                            self.subscribed.remove(topic);
                        }
                        true
                    }
                    None => false,
                };
                assert_eq!(removed, counted);
                self.drain();
            }
            Op::Publish { topic, data } => {
                let data = data.map(PayloadPick::payload);
                let result = self.conn.publish(self.now, topic_of(topic), data);
                self.after_command(result.err().map(|e| e.code()));
            }
        }
    }

    fn stale_input(&mut self, stale: Stale) {
        // Any input after a time jump lets the core notice the jump first (a wake: probe or retry at once).
        // Let that wake happen on its own, so what the stale event itself does is checked.
        let threshold = self.conn.config().time_jump_threshold;
        if !threshold.is_zero()
            && self
                .conn
                .poll_timeout()
                .is_some_and(|deadline| self.now > deadline + threshold)
        {
            self.input(Input::Wake);
        }
        let socket = self.stale();
        let before = self.conn.status().clone();
        let outputs = match stale {
            Stale::Opened => self.input(Input::SocketOpened { socket }),
            Stale::Ready => self.input(Input::SocketText {
                socket,
                text: "ready",
            }),
            Stale::Binary(envelope) => {
                let frame = complete_frame(&self.envelope_of(envelope));
                self.input(Input::SocketBinary {
                    socket,
                    data: &frame,
                })
            }
            Stale::Closed { code } => self.input(Input::SocketClosed {
                socket,
                code: CloseCode(code),
                reason: "stale",
            }),
            Stale::Error => self.input(Input::SocketError {
                socket,
                message: "stale",
            }),
            Stale::TooBig { size } => self.input(Input::MessageTooBig {
                socket,
                size: size as usize,
            }),
        };
        assert_eq!(outputs, 0, "a stale event produced output");
        assert_eq!(
            self.conn.status(),
            &before,
            "a stale event changed the state"
        );
    }

    /// A refused command sends and queues nothing; an accepted one leaves the queue within its limits.
    fn after_command(&mut self, refused: Option<ErrorCode>) {
        let outputs = self.drain();
        if let Some(code) = refused {
            assert!(
                matches!(
                    code,
                    ErrorCode::ResourceExhausted | ErrorCode::InvalidArgument
                ),
                "{code:?}"
            );
            assert_eq!(outputs, 0, "a refused command produced output");
        }
        let (messages, bytes) = self.conn.queued();
        assert!(messages <= self.queue_limits.max_messages);
        assert!(bytes <= self.queue_limits.max_bytes);
    }

    fn envelope_of(&self, e: ServerEnvelope) -> Envelope {
        let id = match e.id {
            IdPick::Known(pick) => pick_from(&self.known_ids, pick).copied().unwrap_or(0),
            IdPick::Any(id) => id,
        };
        let topic = topic_of(e.topic).to_owned();
        let data = e.data.map(PayloadPick::payload);
        let code = match e.code {
            CodePick::Known(pick) => {
                let known = [
                    ErrorCode::InvalidArgument,
                    ErrorCode::NotFound,
                    ErrorCode::Unavailable,
                    ErrorCode::Unimplemented,
                    ErrorCode::ResourceExhausted,
                ];
                known[usize::from(pick) % known.len()].clone()
            }
            CodePick::Other(code) => ErrorCode::parse(&code),
        };
        match e.kind {
            Kind::Msg => Envelope::Msg { name: e.text, data },
            Kind::Req => Envelope::Req {
                id,
                method: e.text,
                data,
            },
            Kind::Res => Envelope::Res { id, data },
            Kind::Err => Envelope::Err {
                id: Some(id),
                code,
                message: e.text,
                data,
            },
            Kind::Notice => Envelope::Err {
                id: None,
                code,
                message: e.text,
                data,
            },
            Kind::Sub => Envelope::Sub {
                id,
                topic,
                since: None,
            },
            Kind::Unsub => Envelope::Unsub { id, topic },
            Kind::Pub => Envelope::Pub {
                id: None,
                topic,
                data,
            },
            Kind::Evt => Envelope::Evt {
                topic,
                seq: e.seq,
                data,
            },
        }
    }

    /// Whether the client must accept this envelope: within its size limit, and not a `req` beyond the bound
    /// on unanswered ones.
    fn acceptable(&self, envelope: &Envelope) -> bool {
        let unanswered = self
            .inbound
            .iter()
            .filter(|(s, _)| *s == self.socket)
            .count();
        let flooding =
            matches!(envelope, Envelope::Req { .. }) && unanswered >= MAX_INBOUND_REQUESTS;
        envelope.encode().len() <= MAX_MESSAGE_BYTES && !flooding
    }

    /// The server sends these frames on the current socket; `valid` when they are whole envelopes within the
    /// client's limits (and sent after `ready`).
    fn server_sends(&mut self, frames: &[Vec<u8>], valid: bool) {
        if !valid || self.conn.status() != &Status::Ready {
            self.server_misbehaved = true;
        }
        let socket = self.socket;
        for data in frames {
            self.input(Input::SocketBinary { socket, data });
        }
    }

    /// The shell saw the socket close or fail.
    fn socket_gone(&mut self, socket: SocketId) {
        if socket == self.socket {
            self.open = false;
        }
    }

    /// Feeds one input and drains its outputs (the drain rule); returns how many there were.
    fn input(&mut self, input: Input<'_>) -> usize {
        self.conn.handle_input(self.now, input);
        self.drain()
    }

    fn timeout(&mut self) {
        self.input(Input::Timeout);
        if let Some(at) = self.conn.poll_timeout() {
            assert!(
                at > self.now,
                "deadline {at:?} not after {:?} once the timer was handled",
                self.now
            );
        }
    }

    /// Drains and checks every output; returns how many there were.
    fn drain(&mut self) -> usize {
        let mut count = 0;
        while let Some(output) = self.conn.poll_output() {
            count += 1;
            self.check(output);
        }
        count
    }

    fn check(&mut self, output: Output) {
        match output {
            Output::OpenSocket { socket, .. } => {
                assert!(
                    !self.open,
                    "a second socket while {:?} is open",
                    self.socket
                );
                assert!(socket > self.socket, "socket ids are never reused");
                self.socket = socket;
                self.open = true;
                self.server.reset();
                self.server_misbehaved = false;
            }
            Output::CloseSocket {
                socket,
                code,
                reason,
            } => {
                assert!(
                    self.open && socket == self.socket,
                    "closed {socket:?}, not open"
                );
                assert!(
                    code != CloseCode::REFUSED || self.server_misbehaved,
                    "refused a server that sent only valid frames: {reason}"
                );
                self.open = false;
            }
            Output::SendText(text) => {
                assert!(self.open, "text sent with no socket open");
                assert_eq!(text, "ping");
            }
            Output::SendBinary(frame) => {
                assert!(self.open, "frame sent with no socket open");
                let done = self
                    .server
                    .handle_frame(self.now, &frame)
                    .expect("the client sends valid frames")
                    .map(|bytes| Envelope::decode(&bytes));
                match done {
                    Some(Ok(Envelope::Sub { id, .. } | Envelope::Unsub { id, .. })) => {
                        self.known_ids.push(id)
                    }
                    Some(Ok(_)) | None => {}
                    Some(Err(e)) => panic!("the client sent an invalid envelope: {e}"),
                }
            }
            Output::Event(event) => self.check_event(event),
        }
    }

    fn check_event(&mut self, event: Event) {
        match event {
            Event::StateChanged(transition) => {
                if transition.to == Status::Ready {
                    assert!(self.open, "ready without an open socket");
                }
            }
            Event::Reply { id, .. } | Event::Published { id, .. } => {
                assert!(self.issued.contains(&id), "reply for {id}, never issued");
                let ends = self.ended.entry(id).or_default();
                *ends += 1;
                assert_eq!(*ends, 1, "request {id} ended twice");
            }
            Event::Request { socket, id, .. } => {
                assert!(self.open && socket == self.socket, "request on {socket:?}");
                self.inbound.push((socket, id));
            }
            Event::SubscriptionChanged {
                topic,
                state: SubscriptionState::Failed(_),
            } => {
                assert!(
                    self.subscribed.remove(&topic).is_some(),
                    "sub failed for {topic:?}"
                );
            }
            Event::TopicEvent { topic, .. }
            | Event::SubscriptionChanged { topic, .. }
            | Event::TopicGap { topic, .. }
            | Event::TopicReset { topic, .. }
            | Event::TopicResumed { topic, .. } => {
                assert!(self.subscribed.contains_key(&topic), "event for {topic:?}");
            }
            Event::Message { .. }
            | Event::Notice(_)
            | Event::Draining
            | Event::Disconnected { .. }
            | Event::Reconnected => {}
        }
    }

    /// After `stop`: nothing pending, nothing queued, no timer, no socket, every request ended exactly once.
    fn check_ended(&self) {
        assert_eq!(self.conn.pending_requests(), 0);
        assert_eq!(self.conn.queued(), (0, 0));
        assert_eq!(self.conn.poll_timeout(), None);
        assert!(!self.open, "a socket left open after stop");
        for id in &self.issued {
            assert_eq!(self.ended.get(id), Some(&1), "request {id}");
        }
    }
}

fn pick_from<T>(items: &[T], pick: u8) -> Option<&T> {
    items.get(usize::from(pick) % items.len().max(1))
}

fn topic_of(pick: u8) -> &'static str {
    TOPICS[usize::from(pick) % TOPICS.len()]
}

fn complete_frame(envelope: &Envelope) -> Vec<u8> {
    let mut frame = vec![KIND_COMPLETE];
    envelope.encode_to(&mut frame);
    frame
}
