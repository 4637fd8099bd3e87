//! An in-memory shell: one server's sessions driven without sockets, runtime or clock, in the caller's
//! (simulated) time. For fuzz targets ([`crate::fuzzing`]) and the `Pair` harness of the tests crate, which
//! drives real client cores against real server sessions. Not a stable API: hidden from the docs.
//!
//! It is the same server as the tokio one: the same `Session`s, broker (`broker::execute`), budgets
//! and drain schedule; only the socket and the clock are replaced. Tasks (handlers, the auth verifier) are
//! polled in place with a no-op waker each time their connection's output is pulled, so a handler that waits
//! on tokio (the built-in `sleep`) needs a runtime entered by the caller and completes only in real time.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::noop_waker_ref;
use sockeye_core::codec::Payload;
use sockeye_core::error::CloseCode;
use sockeye_core::time::{Duration, Instant};
use sockeye_core::Rng;
use tokio::sync::mpsc;

use crate::broker::{self, Answer, Event, Subscriber};
use crate::outbound::Frame;
use crate::server::{spread_schedule, CloseRequest, ConnControl, Shared};
use crate::session::{Ending, Inbound, Output, Session, Task, Upgraded};
use crate::{PublishError, Stats};

/// What a simulated connection's server side does, pulled with [`SimServer::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimOutput {
    /// A text frame (`ready`, `pong`, `bye`).
    Text(&'static str),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame; the connection is over on the server's side.
    Close { code: CloseCode, reason: String },
    /// The server answered the peer's close frame; the connection is over.
    PeerClosed,
    /// The server dropped the socket without a close frame.
    Gone,
}

struct SimConnection {
    session: Session,
    control: Arc<ConnControl>,
    events: Option<(mpsc::Sender<Event>, mpsc::Receiver<Event>)>,
    /// Tasks not finished yet, polled again on every pull.
    tasks: Vec<Task>,
}

impl SimConnection {
    /// Hands the session what arrived beside the socket: close orders, events, finished tasks.
    fn gather(&mut self, now: Instant) {
        if let Some(request) = self.control.take_close() {
            self.session.handle_close_request(now, request);
        }
        while let Some(event) = self.events.as_mut().and_then(|(_, rx)| rx.try_recv().ok()) {
            self.session.handle_event(now, event);
        }
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut index = 0;
        while index < self.tasks.len() {
            match self.tasks[index].as_mut().poll(&mut cx) {
                Poll::Ready(done) => {
                    drop(self.tasks.swap_remove(index));
                    self.session.handle_done(now, done);
                }
                Poll::Pending => index += 1,
            }
        }
    }

    fn start(&mut self, now: Instant, task: Task) {
        self.tasks.push(task);
        // Most handlers finish on their first poll.
        self.gather(now);
    }
}

/// One server's sessions in simulated time. Connection ids are the server's own.
pub struct SimServer {
    shared: Arc<Shared>,
    connections: BTreeMap<u64, SimConnection>,
    /// Drain closes not yet due, by when and which connection (one of a connection gone meanwhile is
    /// skipped when due).
    scheduled: BTreeMap<(Instant, u64), CloseRequest>,
    /// The time of the last input, for outputs pulled between inputs.
    now: Instant,
}

impl SimServer {
    pub(crate) fn new(shared: Shared) -> SimServer {
        SimServer {
            shared: Arc::new(shared),
            connections: BTreeMap::new(),
            scheduled: BTreeMap::new(),
            now: Instant::from_millis(0),
        }
    }

    /// A new connection presenting `token`; `None` when the server refuses upgrades (draining: HTTP 503).
    pub fn connect(&mut self, now: Instant, token: Option<&str>) -> Option<u64> {
        self.now = now;
        if self.shared.draining.load(Ordering::SeqCst) {
            return None;
        }
        let id = self.shared.next_connection_id();
        let control = Arc::new(ConnControl::new(self.shared.config.limits.outbound_bytes));
        let upgraded = Upgraded {
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
            token: token.map(str::to_owned),
            origin: Ok(None),
        };
        let session = Session::new(
            Arc::clone(&self.shared),
            id,
            Arc::clone(&control),
            now,
            upgraded,
        );
        self.connections.insert(
            id,
            SimConnection {
                session,
                control,
                events: None,
                tasks: Vec::new(),
            },
        );
        Some(id)
    }

    /// A text frame from the peer of `connection` (ignored when it is over).
    pub fn handle_text(&mut self, now: Instant, connection: u64, text: &str) {
        self.inbound(now, connection, Inbound::Text(text));
    }

    /// A binary frame from the peer of `connection`.
    pub fn handle_binary(&mut self, now: Instant, connection: u64, data: &[u8]) {
        self.inbound(now, connection, Inbound::Binary(data));
    }

    /// The peer of `connection` sent a close frame.
    pub fn handle_peer_close(&mut self, now: Instant, connection: u64) {
        self.inbound(now, connection, Inbound::Close);
    }

    /// The socket of `connection` broke: the connection is gone at once.
    pub fn handle_gone(&mut self, connection: u64) {
        self.remove(connection);
    }

    fn inbound(&mut self, now: Instant, connection: u64, inbound: Inbound<'_>) {
        self.now = now;
        if let Some(conn) = self.connections.get_mut(&connection) {
            conn.gather(now);
            conn.session.handle_inbound(now, inbound);
        }
    }

    /// The next thing `connection` writes; after a close (or a vanished socket) the connection is over and
    /// removed.
    pub fn poll_output(&mut self, connection: u64) -> Option<SimOutput> {
        let now = self.now;
        let shared = Arc::clone(&self.shared);
        let conn = self.connections.get_mut(&connection)?;
        conn.gather(now);
        loop {
            let output = match conn.session.poll_output()? {
                Output::Frame(Frame::Text(word)) => SimOutput::Text(word),
                Output::Frame(Frame::Binary(bytes)) => SimOutput::Binary(bytes.to_vec()),
                Output::Spawn(task) => {
                    conn.start(now, task);
                    continue;
                }
                Output::Broker(command) => {
                    let SimConnection {
                        control, events, ..
                    } = &mut *conn;
                    let capacity = shared.config.limits.outbound_queue;
                    let answer = broker::execute(&shared, connection, command, || {
                        let (sender, _) = events.get_or_insert_with(|| mpsc::channel(capacity));
                        Subscriber {
                            events: sender.clone(),
                            control: Arc::clone(control),
                        }
                    });
                    match answer {
                        Answer::Now(done) => conn.session.handle_done(now, done),
                        Answer::Later(task) => conn.start(now, task),
                        Answer::Nothing => {}
                    }
                    continue;
                }
                Output::End(ending) => {
                    self.remove(connection);
                    match ending {
                        Ending::Close { code, reason } => SimOutput::Close { code, reason },
                        Ending::PeerClosed => SimOutput::PeerClosed,
                        Ending::Gone => SimOutput::Gone,
                    }
                }
            };
            return Some(output);
        }
    }

    /// Every connection's outputs, in connection order (each connection's in its own order): what a shell
    /// polling every socket once would write.
    pub fn poll_all(&mut self) -> Vec<(u64, SimOutput)> {
        let ids: Vec<u64> = self.connections.keys().copied().collect();
        let mut outputs = Vec::new();
        for id in ids {
            while let Some(output) = self.poll_output(id) {
                outputs.push((id, output));
            }
        }
        outputs
    }

    fn remove(&mut self, connection: u64) {
        if let Some(conn) = self.connections.remove(&connection) {
            broker::detach(&self.shared, connection, conn.session.topics());
        }
    }

    /// The earliest deadline of any connection or scheduled drain close.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.connections
            .values()
            .filter_map(|conn| conn.session.poll_timeout())
            .chain(self.scheduled.keys().next().map(|(at, _)| *at))
            .min()
    }

    /// Time passed: every connection's deadlines and the drain schedule are checked against `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), request) = entry.remove_entry();
            if let Some(conn) = self.connections.get(&id) {
                conn.control
                    .request_close(request.code, request.reason, request.bye);
            }
        }
        for conn in self.connections.values_mut() {
            conn.gather(now);
            conn.session.handle_timeout(now);
        }
    }

    /// Drains (PROTOCOL §8) as [`crate::ServerHandle::drain`] does: upgrades are refused from now on, and every
    /// open connection is closed with 1001 at a moment of the server's spread schedule across `window` (after
    /// `bye` when asked), drawn from `seed`. Returns when each connection is due to close.
    pub fn drain(
        &mut self,
        now: Instant,
        window: Duration,
        bye: bool,
        seed: u64,
    ) -> Vec<(u64, Instant)> {
        self.now = now;
        self.shared.draining.store(true, Ordering::SeqCst);
        let ids: Vec<u64> = self.connections.keys().copied().collect();
        let schedule = spread_schedule(ids.len(), window, &mut Rng::new(seed));
        let mut due = Vec::new();
        for (index, offset) in schedule {
            let at = now + offset;
            let request = CloseRequest {
                code: CloseCode::GOING_AWAY,
                reason: "Server draining".to_owned(),
                bye,
                drop_output: false,
            };
            self.scheduled.insert((at, ids[index]), request);
            due.push((ids[index], at));
        }
        due
    }

    /// Publishes as the server ([`crate::ServerHandle::publish`]).
    ///
    /// # Errors
    /// As [`crate::ServerHandle::publish`].
    pub fn publish(&self, topic: &str, data: Option<Payload>) -> Result<usize, PublishError> {
        self.shared.publish_from_app(topic, data)
    }

    /// Connections not over yet.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Whether `connection` is not over yet.
    pub fn is_open(&self, connection: u64) -> bool {
        self.connections.contains_key(&connection)
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Server;

    fn drain_outputs(server: &mut SimServer, connection: u64) -> Vec<SimOutput> {
        std::iter::from_fn(|| server.poll_output(connection)).collect()
    }

    #[test]
    fn before_ready_pings_are_answered_and_a_silent_verifier_is_cut_off_at_the_auth_timeout() {
        let mut server = Server::builder()
            .verifier(|_| std::future::pending())
            .simulate();
        let t0 = Instant::from_millis(1_000);
        let id = server.connect(t0, Some("token")).expect("accepted");
        assert!(drain_outputs(&mut server, id).is_empty(), "no `ready` yet");
        server.handle_text(t0, id, "ping");
        assert_eq!(drain_outputs(&mut server, id), [SimOutput::Text("pong")]);
        let deadline = t0 + crate::Limits::default().auth_timeout;
        assert_eq!(server.poll_timeout(), Some(deadline));
        server.handle_timeout(Instant::from_millis(deadline.as_millis() - 1));
        assert!(drain_outputs(&mut server, id).is_empty(), "early: harmless");
        server.handle_timeout(deadline);
        assert_eq!(
            drain_outputs(&mut server, id),
            [SimOutput::Close {
                code: CloseCode::AUTH_TIMEOUT,
                reason: "not authenticated in time".to_owned()
            }]
        );
        assert!(!server.is_open(id));
    }

    #[test]
    fn every_inbound_frame_moves_the_heartbeat_deadline() {
        let limit = std::time::Duration::from_secs(90);
        let mut server = Server::builder().heartbeat(Some(limit)).simulate();
        let t0 = Instant::ZERO;
        let id = server.connect(t0, None).expect("accepted");
        assert_eq!(drain_outputs(&mut server, id), [SimOutput::Text("ready")]);
        assert_eq!(server.poll_timeout(), Some(t0 + limit));
        let t1 = t0 + std::time::Duration::from_secs(60);
        server.handle_text(t1, id, "ping");
        assert_eq!(drain_outputs(&mut server, id), [SimOutput::Text("pong")]);
        assert_eq!(server.poll_timeout(), Some(t1 + limit));
        server.handle_timeout(t0 + limit);
        assert!(server.is_open(id), "the old deadline no longer counts");
        server.handle_timeout(t1 + limit);
        let closed = drain_outputs(&mut server, id);
        assert!(matches!(
            closed.as_slice(),
            [SimOutput::Close { code, .. }] if *code == CloseCode::HEARTBEAT_TIMEOUT
        ));
    }

    #[test]
    fn a_drain_order_says_bye_then_closes_with_1001_and_refuses_new_connections() {
        let mut server = Server::builder().simulate();
        let t0 = Instant::ZERO;
        let id = server.connect(t0, None).expect("accepted");
        drain_outputs(&mut server, id);
        let due = server.drain(t0, std::time::Duration::from_secs(1), true, 3);
        assert_eq!(due.len(), 1);
        let (_, at) = due[0];
        assert!(
            server.connect(t0, None).is_none(),
            "HTTP 503 while draining"
        );
        server.handle_timeout(at);
        assert_eq!(
            drain_outputs(&mut server, id),
            [
                SimOutput::Text("bye"),
                SimOutput::Close {
                    code: CloseCode::GOING_AWAY,
                    reason: "Server draining".to_owned()
                }
            ]
        );
    }

    #[test]
    fn an_unsub_handled_before_the_broker_answered_the_sub_still_wins() {
        use sockeye_core::codec::Envelope;
        let frame = |envelope: Envelope| {
            let mut frame = vec![0u8];
            frame.extend(envelope.encode());
            frame
        };
        let mut server = Server::builder().simulate();
        let t0 = Instant::ZERO;
        let id = server.connect(t0, None).expect("accepted");
        drain_outputs(&mut server, id);
        // One batch, nothing pulled in between (the tokio shell handles up to 64 frames before writing).
        let topic = "t".to_owned();
        for envelope in [
            Envelope::Sub {
                id: 1,
                topic: topic.clone(),
                since: None,
            },
            Envelope::Unsub {
                id: 2,
                topic: topic.clone(),
            },
            Envelope::Pub {
                id: Some(3),
                topic,
                data: None,
            },
        ] {
            server.handle_binary(t0, id, &frame(envelope));
        }
        let kinds: Vec<String> = drain_outputs(&mut server, id)
            .into_iter()
            .map(|output| match output {
                SimOutput::Binary(frame) => Envelope::decode(&frame[1..])
                    .expect("a valid envelope")
                    .kind()
                    .to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["res", "res", "res"], "no evt after the unsub");
        assert_eq!(server.stats().topics, 0);
    }
}
