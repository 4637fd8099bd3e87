//! An in-memory shell: one server's sessions driven without sockets, runtime or clock, in the caller's
//! (simulated) time. For fuzz targets ([`crate::fuzzing`]) and the `Pair` harness of the tests crate, which
//! drives real client cores against real server sessions. Not a stable API: hidden from the docs.
//!
//! It is the same server as the tokio one: the same `Session`s, broker (`broker::execute`), budgets
//! and drain schedule; only the socket and the clock are replaced. Tasks (handlers, the auth verifier) are
//! polled in place each time their connection's output is pulled, so a handler that waits on tokio (the
//! built-in `sleep`) needs a runtime entered by the caller and completes only in real time.
//!
//! A step costs what changed, not the number of connections (a scan of 1000 sessions per simulated event
//! made the `Pair` scenarios take seconds): deadlines sit in a set ordered by time, and each connection's
//! tasks, event queue and close order are polled with a waker that marks the connection woken, so
//! [`SimServer::poll_all`] visits only connections with something to do, as a runtime would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::future::BoxFuture;
use sockeye_core::codec::Payload;
use sockeye_core::error::CloseCode;
use sockeye_core::time::{Duration, Instant};
use sockeye_core::Rng;

use crate::broker::{self, Answer, EventQueue};
use crate::outbound::Frame;
use crate::server::{spread_schedule, CloseRequest, ConnControl, Shared};
use crate::session::{Action, Ending, Inbound, Output, Session, Task, Upgraded};
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

/// Connections with something to do: woken by their tasks, event queue or close order.
type Woken = Arc<Mutex<BTreeSet<u64>>>;

/// Marks one connection woken.
struct ConnWaker {
    id: u64,
    woken: Woken,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken).insert(self.id);
    }
}

fn lock(woken: &Woken) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
    woken.lock().unwrap_or_else(PoisonError::into_inner)
}

struct SimConnection {
    session: Session,
    control: Arc<ConnControl>,
    /// Completes when a close is ordered (`ConnControl::notify`, as the tokio shell waits for it); `None`
    /// once it has: only the first order notifies, and it stands for good.
    close_ordered: Option<BoxFuture<'static, ()>>,
    events: EventQueue,
    /// Tasks not finished yet.
    tasks: Vec<Task>,
    waker: Waker,
    /// The session's deadline as filed in `SimServer::timers`.
    deadline: Option<Instant>,
}

/// A future completing at the next close order for `control`.
fn close_ordered(control: &Arc<ConnControl>) -> BoxFuture<'static, ()> {
    let control = Arc::clone(control);
    Box::pin(async move { control.notify.notified().await })
}

impl SimConnection {
    /// Hands the session what arrived beside the socket (close orders, events, finished tasks), leaving
    /// the connection's waker with everything still pending. Whether it handed over anything.
    fn gather(&mut self, now: Instant) -> bool {
        let mut cx = Context::from_waker(&self.waker);
        let mut handed = false;
        if let Some(order) = self.close_ordered.as_mut() {
            if order.as_mut().poll(&mut cx).is_ready() {
                self.close_ordered = None;
            }
        }
        if let Some(request) = self.control.take_close() {
            // Ignored once the session is ending, so `handed` stays false then.
            handed |= !self.session.is_ending();
            self.session.handle_close_request(now, request);
        }
        while let Some((_, rx)) = self.events.as_mut() {
            let Poll::Ready(Some(event)) = rx.poll_recv(&mut cx) else {
                break;
            };
            handed = true;
            self.session.handle_event(now, event);
        }
        let mut index = 0;
        while index < self.tasks.len() {
            match self.tasks[index].as_mut().poll(&mut cx) {
                Poll::Ready(done) => {
                    drop(self.tasks.swap_remove(index));
                    handed = true;
                    self.session.handle_done(now, done);
                }
                Poll::Pending => index += 1,
            }
        }
        handed
    }

    fn start(&mut self, now: Instant, task: Task) {
        self.tasks.push(task);
        // Most handlers finish on their first poll.
        self.gather(now);
    }

    /// Starts a task, or hands a broker command over (an answer the broker has at once goes straight back).
    fn act(&mut self, now: Instant, shared: &Arc<Shared>, connection: u64, action: Action) {
        match action {
            Action::Spawn(task) => self.start(now, task),
            Action::Broker(command) => {
                let answer =
                    broker::execute(shared, connection, command, &self.control, &mut self.events);
                match answer {
                    Answer::Now(done) => self.session.handle_done(now, done),
                    Answer::Later(task) => self.start(now, task),
                    Answer::Nothing => {}
                }
            }
        }
    }
}

/// One server's sessions in simulated time. Connection ids are the server's own.
pub struct SimServer {
    shared: Arc<Shared>,
    connections: BTreeMap<u64, SimConnection>,
    /// Every session's deadline, by time and connection.
    timers: BTreeSet<(Instant, u64)>,
    woken: Woken,
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
            timers: BTreeSet::new(),
            woken: Woken::default(),
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
        let waker = Waker::from(Arc::new(ConnWaker {
            id,
            woken: Arc::clone(&self.woken),
        }));
        self.connections.insert(
            id,
            SimConnection {
                session,
                close_ordered: Some(close_ordered(&control)),
                control,
                events: None,
                tasks: Vec::new(),
                waker,
                deadline: None,
            },
        );
        // Its first output (`ready`, or the verifier's task) is due now.
        lock(&self.woken).insert(id);
        self.file_deadline(id);
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
            while let Some(action) = conn.session.poll_action() {
                conn.act(now, &self.shared, connection, action);
            }
            lock(&self.woken).insert(connection);
            self.file_deadline(connection);
        }
    }

    /// Files `connection`'s current deadline in `timers` in place of the one filed before.
    fn file_deadline(&mut self, connection: u64) {
        let Some(conn) = self.connections.get_mut(&connection) else {
            return;
        };
        let deadline = conn.session.poll_timeout();
        if deadline == conn.deadline {
            return;
        }
        if let Some(old) = conn.deadline.take() {
            self.timers.remove(&(old, connection));
        }
        if let Some(at) = deadline {
            self.timers.insert((at, connection));
        }
        conn.deadline = deadline;
    }

    /// The next thing `connection` writes; after a close (or a vanished socket) the connection is over and
    /// removed.
    pub fn poll_output(&mut self, connection: u64) -> Option<SimOutput> {
        let now = self.now;
        let shared = Arc::clone(&self.shared);
        let woken = Arc::clone(&self.woken);
        let Some(conn) = self.connections.get_mut(&connection) else {
            // A stray wake (a waker outliving its connection) is forgotten.
            lock(&woken).remove(&connection);
            return None;
        };
        conn.gather(now);
        loop {
            let Some(output) = conn.session.poll_output() else {
                // Unmarked before the last look, so a wake from now on marks it again.
                lock(&woken).remove(&connection);
                if conn.gather(now) {
                    continue;
                }
                self.file_deadline(connection);
                return None;
            };
            let output = match output {
                Output::Frame(Frame::Text(word)) => SimOutput::Text(word),
                Output::Frame(Frame::Binary(bytes)) => SimOutput::Binary(bytes.to_vec()),
                Output::Action(action) => {
                    conn.act(now, &shared, connection, action);
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

    /// The outputs of every connection woken when this is called (by an input, a deadline, an event, a
    /// finished task or a close order), in connection order, each connection's in its own order: what a
    /// shell writes after one turn of its runtime. Connections woken meanwhile (a publish fanning out to
    /// others) wait for the next call: see [`SimServer::is_woken`].
    pub fn poll_all(&mut self) -> Vec<(u64, SimOutput)> {
        let ids = std::mem::take(&mut *lock(&self.woken));
        let mut outputs = Vec::new();
        for id in ids {
            while let Some(output) = self.poll_output(id) {
                outputs.push((id, output));
            }
        }
        outputs
    }

    /// Whether a connection has something to do now ([`SimServer::poll_all`] would visit it).
    pub fn is_woken(&self) -> bool {
        !lock(&self.woken).is_empty()
    }

    fn remove(&mut self, connection: u64) {
        lock(&self.woken).remove(&connection);
        if let Some(conn) = self.connections.remove(&connection) {
            if let Some(at) = conn.deadline {
                self.timers.remove(&(at, connection));
            }
            broker::detach(&self.shared, connection, conn.session.topics());
        }
    }

    /// The earliest deadline of any connection or scheduled drain close.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = self.timers.first().map(|(at, _)| *at);
        let drain = self.scheduled.keys().next().map(|(at, _)| *at);
        session.into_iter().chain(drain).min()
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
                // Wakes the connection through its close order.
                conn.control
                    .request_close(request.code, request.reason, request.bye);
            }
        }
        let due: Vec<u64> = self
            .timers
            .range(..=(now, u64::MAX))
            .map(|&(_, id)| id)
            .collect();
        for id in due {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.gather(now);
                conn.session.handle_timeout(now);
                lock(&self.woken).insert(id);
            }
            self.file_deadline(id);
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
    use sockeye_core::codec::Envelope;

    fn drain_outputs(server: &mut SimServer, connection: u64) -> Vec<SimOutput> {
        std::iter::from_fn(|| server.poll_output(connection)).collect()
    }

    /// A complete binary frame carrying `envelope`.
    fn frame(envelope: Envelope) -> Vec<u8> {
        let mut frame = vec![0u8];
        frame.extend(envelope.encode());
        frame
    }

    /// The envelope kinds and words in `outputs`, by connection.
    fn kinds(outputs: Vec<(u64, SimOutput)>) -> Vec<(u64, String)> {
        outputs
            .into_iter()
            .map(|(id, output)| match output {
                SimOutput::Text(word) => (id, word.to_owned()),
                SimOutput::Binary(frame) => (
                    id,
                    Envelope::decode(&frame[1..])
                        .expect("a valid envelope")
                        .kind()
                        .to_owned(),
                ),
                other => (id, format!("{other:?}")),
            })
            .collect()
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
        let outputs = drain_outputs(&mut server, id)
            .into_iter()
            .map(|output| (id, output))
            .collect();
        let kinds: Vec<String> = kinds(outputs).into_iter().map(|(_, kind)| kind).collect();
        assert_eq!(kinds, ["res", "res", "res"], "no evt after the unsub");
        assert_eq!(server.stats().topics, 0);
    }

    #[test]
    fn a_published_event_wakes_its_subscriber_alone() {
        let mut server = Server::builder().simulate();
        let t0 = Instant::ZERO;
        let subscriber = server.connect(t0, None).expect("accepted");
        let bystander = server.connect(t0, None).expect("accepted");
        let sub = Envelope::Sub {
            id: 1,
            topic: "t".to_owned(),
            since: None,
        };
        server.handle_binary(t0, subscriber, &frame(sub));
        let outputs = kinds(server.poll_all());
        let ready_res_ready = [
            (subscriber, "ready"),
            (subscriber, "res"),
            (bystander, "ready"),
        ];
        assert_eq!(
            outputs,
            ready_res_ready.map(|(id, kind)| (id, kind.to_owned()))
        );
        assert!(!server.is_woken());
        assert_eq!(server.publish("t", None).expect("a valid topic"), 1);
        // Through the event queue's waker: nothing else tells the in-memory shell.
        assert!(server.is_woken());
        assert_eq!(kinds(server.poll_all()), [(subscriber, "evt".to_owned())]);
        assert!(!server.is_woken());
    }

    #[test]
    fn a_handler_finishing_later_wakes_its_connection() {
        let (finish, finished) = tokio::sync::watch::channel(false);
        let mut server = Server::builder()
            .method_raw("wait", move |_, _| {
                let mut finished = finished.clone();
                async move {
                    let _ = finished.wait_for(|done| *done).await;
                    Ok(None)
                }
            })
            .simulate();
        let t0 = Instant::ZERO;
        let id = server.connect(t0, None).expect("accepted");
        let req = Envelope::Req {
            id: 1,
            method: "wait".to_owned(),
            data: None,
        };
        server.handle_binary(t0, id, &frame(req));
        assert_eq!(kinds(server.poll_all()), [(id, "ready".to_owned())]);
        assert!(!server.is_woken(), "the handler is still at work");
        finish.send_replace(true);
        // Through the task's waker.
        assert!(server.is_woken());
        assert_eq!(kinds(server.poll_all()), [(id, "res".to_owned())]);
    }
}
