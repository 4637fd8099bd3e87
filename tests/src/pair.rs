//! `Pair`: real client cores (`sockeye_core::Connection`) against real server sessions
//! (`sockeye_server::sim::SimServer`, the server's own `Session`s and embedded broker) in simulated time, over
//! a scripted wire. Shaped after quinn-proto's test `Pair`: no sockets, no sleeping, no runtime; a run is
//! fixed by its seed.
//!
//! The wire carries WebSocket frames between a client socket and a server connection, each link with its own
//! latency (drawn per link, so independent connections overtake each other while each link stays in order,
//! as TCP does). Faults: a link broken at once (both ends see it, like a reset), loss (each frame breaks its
//! link with a probability), a blackhole (a client's path
//! drops every frame both ways, new connections included, and nobody is told), a server crash and restart,
//! and a drain handing over to a new server instance.
//!
//! Time moves only forward, jumping to the next thing due: a frame arriving, a client's deadline
//! (`poll_timeout`), a server's deadline or scheduled drain close. [`Pair::drive_until`] bounds every run by a
//! step count. A step costs what is due, not the number of clients: the wire and the clients' deadlines are
//! kept ordered by time, and the servers visit only the connections woken (`SimServer::poll_all`).

use std::collections::{BTreeMap, BTreeSet};

use sockeye_core::{
    CloseCode, Config, Connection, Duration, Event, Input, Instant, Output, Rng, SocketId,
};
use sockeye_server::sim::{SimOutput, SimServer};

/// Makes a fresh server instance (at the start, after a restart, for a drain's hand-over).
pub type ServerFactory = Box<dyn Fn() -> SimServer>;

/// What travels on a link.
#[derive(Clone, Debug)]
enum Frame {
    /// The client's connection attempt reaches the server.
    Open,
    Text(String),
    Binary(Vec<u8>),
    Close {
        code: CloseCode,
        reason: String,
    },
    /// The connection broke (reset, refused, the server vanished).
    Error(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

#[derive(Debug)]
struct Packet {
    client: usize,
    socket: SocketId,
    direction: Direction,
    frame: Frame,
}

/// A client socket's other end.
#[derive(Clone, Copy, Debug)]
struct Link {
    socket: SocketId,
    /// Index into `Pair::servers` and the server's connection id, once the attempt reached a server.
    server: Option<(usize, u64)>,
    latency: Duration,
}

/// One simulated client: its core and what happened to it.
pub struct SimClient {
    /// Commands go through [`Pair::with_client`], which keeps the pair's timers in step with the core.
    conn: Connection,
    /// The core's deadline as filed in `Pair::timers`.
    deadline: Option<Instant>,
    link: Option<Link>,
    /// Dropped frames both ways until then.
    blackholed_until: Option<Instant>,
    /// When each socket was asked for (`Output::OpenSocket`).
    pub opens: Vec<Instant>,
    /// Close frames and errors the client's sockets saw: code (1006 for an error), when.
    pub closes: Vec<(Instant, CloseCode)>,
    /// Sockets the client closed itself (keepalive timeout, refusal): code, when.
    pub closed_by_client: Vec<(Instant, CloseCode)>,
    /// Every event, when.
    pub events: Vec<(Instant, Event)>,
    /// `ping`s sent.
    pub pings: usize,
}

impl SimClient {
    /// Whether the core says `ready`.
    pub fn is_ready(&self) -> bool {
        self.conn.status() == &sockeye_core::Status::Ready
    }
}

/// Both ends and the wire between them.
pub struct Pair {
    pub now: Instant,
    pub clients: Vec<SimClient>,
    /// Every client's deadline, by time and client.
    timers: BTreeSet<(Instant, usize)>,
    /// Every server instance started; `None` once crashed. New connections go to `current`.
    servers: Vec<Option<SimServer>>,
    current: usize,
    /// The current server is down until then (restarting): attempts are refused.
    down_until: Option<Instant>,
    factory: ServerFactory,
    /// By (arrival, sequence): the sequence keeps sends at the same instant in order.
    wire: BTreeMap<(Instant, u64), Packet>,
    sent: u64,
    /// Server connections → their client and socket.
    peers: BTreeMap<(usize, u64), (usize, SocketId)>,
    /// Each link's latency is drawn from this range (milliseconds).
    pub latency_ms: (u64, u64),
    /// Loss: each frame delivered breaks its link instead, with this probability in millionths (over TCP a
    /// lost segment is retransmitted; what a WebSocket sees of a bad network is its connection breaking).
    pub loss_per_million: u64,
    /// When each attempt reached a server, by server index: the arrivals a drain or storm produces.
    pub arrivals: Vec<Vec<Instant>>,
    /// Close frames the servers sent (whether or not they arrived): client, code, when.
    pub server_closes: Vec<(usize, CloseCode, Instant)>,
    rng: Rng,
}

impl Pair {
    /// A pair with no clients yet, one server from `factory`, links of 1–20 ms.
    pub fn new(seed: u64, factory: ServerFactory) -> Pair {
        Pair {
            now: Instant::ZERO,
            clients: Vec::new(),
            timers: BTreeSet::new(),
            servers: vec![Some(factory())],
            current: 0,
            down_until: None,
            factory,
            wire: BTreeMap::new(),
            sent: 0,
            peers: BTreeMap::new(),
            latency_ms: (1, 20),
            loss_per_million: 0,
            arrivals: vec![Vec::new()],
            server_closes: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    /// Adds a client with `config` (its seed replaced by one from the pair's generator) and starts it.
    pub fn add_client(&mut self, mut config: Config) -> usize {
        config.seed = self.rng.next_u64();
        let conn = Connection::new(config).expect("a valid client configuration");
        self.clients.push(SimClient {
            conn,
            deadline: None,
            link: None,
            blackholed_until: None,
            opens: Vec::new(),
            closes: Vec::new(),
            closed_by_client: Vec::new(),
            events: Vec::new(),
            pings: 0,
        });
        let client = self.clients.len() - 1;
        self.client_input(client, Input::Start);
        client
    }

    /// Runs `command` on client `client`'s core at the current time, then carries out its outputs.
    pub fn with_client<T>(
        &mut self,
        client: usize,
        command: impl FnOnce(&mut Connection, Instant) -> T,
    ) -> T {
        let now = self.now;
        let result = command(&mut self.clients[client].conn, now);
        self.flush_client(client);
        result
    }

    /// The server new connections go to.
    ///
    /// # Panics
    /// While it is down (restarting).
    pub fn server(&mut self) -> &mut SimServer {
        self.servers[self.current]
            .as_mut()
            .expect("the current server is up")
    }

    /// Breaks `client`'s link now: both ends see the connection fail (a reset).
    pub fn break_link(&mut self, client: usize) {
        let Some(link) = self.clients[client].link else {
            return;
        };
        if let Some((server, id)) = link.server {
            self.peers.remove(&(server, id));
            if let Some(server) = self.servers[server].as_mut() {
                server.handle_gone(id);
            }
        }
        self.client_error(client, link.socket, "connection reset");
    }

    /// Drops every frame to and from `client` (new connections included) for `duration`, telling nobody.
    pub fn blackhole(&mut self, client: usize, duration: Duration) {
        self.clients[client].blackholed_until = Some(self.now + duration);
    }

    /// The current server crashes now (its connections break: clients see errors) and a new instance, with
    /// new epochs and no history, takes connections after `down_for`.
    pub fn restart_server(&mut self, down_for: Duration) {
        self.servers[self.current] = None;
        let gone: Vec<_> = self
            .peers
            .range((self.current, 0)..=(self.current, u64::MAX))
            .map(|(key, peer)| (*key, *peer))
            .collect();
        for (key, (client, socket)) in gone {
            self.peers.remove(&key);
            self.send(
                client,
                socket,
                Direction::ToClient,
                Frame::Error("server gone"),
            );
        }
        self.switch_to(None);
        self.down_until = Some(self.now + down_for);
    }

    /// Drains the current server (PROTOCOL §8) over `window` with its own spread schedule, while a new
    /// instance takes the reconnections. Returns the old server's index.
    pub fn drain_to_new_server(&mut self, window: Duration, bye: bool, seed: u64) -> usize {
        let old = self.current;
        let now = self.now;
        self.servers[old]
            .as_mut()
            .expect("the current server is up")
            .drain(now, window, bye, seed);
        let new = (self.factory)();
        self.switch_to(Some(new));
        old
    }

    /// New connections go to a new server instance from now on.
    fn switch_to(&mut self, server: Option<SimServer>) {
        self.servers.push(server);
        self.arrivals.push(Vec::new());
        self.current = self.servers.len() - 1;
    }

    /// The next instant anything is due, if anything ever is.
    fn next_due(&self) -> Option<Instant> {
        let wire = self.wire.keys().next().map(|(at, _)| *at);
        let clients = self.timers.first().map(|(at, _)| *at);
        let servers = self.servers.iter().flatten().filter_map(|server| {
            if server.is_woken() {
                Some(self.now)
            } else {
                server.poll_timeout()
            }
        });
        wire.into_iter()
            .chain(clients)
            .chain(servers)
            .chain(self.down_until)
            .min()
    }

    /// Moves time to the next thing due and handles everything due then. `false` when nothing is ever due.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_due() else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        if self.down_until.is_some_and(|at| at <= now) {
            self.down_until = None;
            self.servers[self.current] = Some((self.factory)());
        }
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let packet = entry.remove();
            self.deliver(packet);
        }
        // Each once (a deadline a timeout leaves in the past waits for the next step), in client order.
        let mut due: Vec<usize> = self
            .timers
            .range(..=(now, usize::MAX))
            .map(|&(_, client)| client)
            .collect();
        due.sort_unstable();
        for client in due {
            self.client_input(client, Input::Timeout);
        }
        for index in 0..self.servers.len() {
            if let Some(server) = self.servers[index].as_mut() {
                if server.poll_timeout().is_some_and(|at| at <= now) {
                    server.handle_timeout(now);
                }
            }
            self.flush_server(index);
        }
        true
    }

    /// Steps until `condition` holds (checked before each step); `false` when it still does not after
    /// `max_steps`, or nothing more is ever due.
    pub fn drive_until(
        &mut self,
        mut condition: impl FnMut(&Pair) -> bool,
        max_steps: usize,
    ) -> bool {
        for _ in 0..max_steps {
            if condition(self) {
                return true;
            }
            if !self.step() {
                return condition(self);
            }
        }
        condition(self)
    }

    /// Steps until time reaches `at` (or nothing more is due), bounded by `max_steps`.
    pub fn drive_to(&mut self, at: Instant, max_steps: usize) {
        for _ in 0..max_steps {
            match self.next_due() {
                Some(next) if next <= at => {
                    self.step();
                }
                _ => break,
            }
        }
        self.now = self.now.max(at);
    }

    fn blackholed(&self, client: usize) -> bool {
        self.clients[client]
            .blackholed_until
            .is_some_and(|until| self.now < until)
    }

    fn send(&mut self, client: usize, socket: SocketId, direction: Direction, frame: Frame) {
        if self.blackholed(client) {
            return;
        }
        let latency = self.clients[client]
            .link
            .filter(|link| link.socket == socket)
            .map_or(Duration::from_millis(self.latency_ms.0), |link| {
                link.latency
            });
        self.sent += 1;
        self.wire.insert(
            (self.now + latency, self.sent),
            Packet {
                client,
                socket,
                direction,
                frame,
            },
        );
    }

    fn deliver(&mut self, packet: Packet) {
        let Packet {
            client,
            socket,
            direction,
            frame,
        } = packet;
        if self.blackholed(client) {
            return;
        }
        let current = self.clients[client]
            .link
            .is_some_and(|link| link.socket == socket && link.server.is_some());
        if current && self.rng.below(1_000_000) < self.loss_per_million {
            return self.break_link(client);
        }
        match direction {
            Direction::ToClient => self.deliver_to_client(client, socket, frame),
            Direction::ToServer => self.deliver_to_server(client, socket, frame),
        }
    }

    fn deliver_to_client(&mut self, client: usize, socket: SocketId, frame: Frame) {
        match frame {
            Frame::Open => {}
            Frame::Text(text) => self.client_input(
                client,
                Input::SocketText {
                    socket,
                    text: &text,
                },
            ),
            Frame::Binary(data) => {
                self.client_input(
                    client,
                    Input::SocketBinary {
                        socket,
                        data: &data,
                    },
                );
            }
            Frame::Close { code, reason } => {
                self.clients[client].closes.push((self.now, code));
                self.client_input(
                    client,
                    Input::SocketClosed {
                        socket,
                        code,
                        reason: &reason,
                    },
                );
            }
            Frame::Error(message) => self.client_error(client, socket, message),
        }
    }

    fn client_error(&mut self, client: usize, socket: SocketId, message: &str) {
        self.clients[client]
            .closes
            .push((self.now, CloseCode::ABNORMAL));
        self.client_input(client, Input::SocketError { socket, message });
    }

    fn deliver_to_server(&mut self, client: usize, socket: SocketId, frame: Frame) {
        let Some(link) = self.clients[client].link.filter(|l| l.socket == socket) else {
            return;
        };
        let now = self.now;
        if let Frame::Open = frame {
            let server = self.current;
            let id = match self.servers[server].as_mut() {
                Some(up) if self.down_until.is_none() => up.connect(now, None),
                _ => None,
            };
            let Some(id) = id else {
                // Refused (down, or draining: HTTP 503).
                self.send(client, socket, Direction::ToClient, Frame::Error("refused"));
                return;
            };
            self.arrivals[server].push(now);
            self.peers.insert((server, id), (client, socket));
            if let Some(link) = self.clients[client].link.as_mut() {
                link.server = Some((server, id));
            }
            self.client_input(client, Input::SocketOpened { socket });
            self.flush_server(server);
            return;
        }
        let Some((index, id)) = link.server else {
            return;
        };
        let Some(server) = self.servers[index].as_mut() else {
            return;
        };
        match frame {
            Frame::Open => {}
            Frame::Text(text) => server.handle_text(now, id, &text),
            Frame::Binary(data) => server.handle_binary(now, id, &data),
            Frame::Close { .. } => server.handle_peer_close(now, id),
            Frame::Error(_) => server.handle_gone(id),
        }
        self.flush_server(index);
    }

    fn client_input(&mut self, client: usize, input: Input<'_>) {
        let now = self.now;
        self.clients[client].conn.handle_input(now, input);
        self.flush_client(client);
    }

    /// Carries out everything client `client`'s core asks (the drain rule).
    fn flush_client(&mut self, client: usize) {
        while let Some(output) = self.clients[client].conn.poll_output() {
            let now = self.now;
            let current = self.clients[client].link;
            match output {
                Output::OpenSocket { socket, .. } => {
                    let (low, high) = self.latency_ms;
                    let latency = Duration::from_millis(low + self.rng.below(high - low + 1));
                    let me = &mut self.clients[client];
                    me.opens.push(now);
                    me.link = Some(Link {
                        socket,
                        server: None,
                        latency,
                    });
                    self.send(client, socket, Direction::ToServer, Frame::Open);
                }
                Output::CloseSocket {
                    socket,
                    code,
                    reason,
                } => {
                    self.clients[client].closed_by_client.push((now, code));
                    self.send(
                        client,
                        socket,
                        Direction::ToServer,
                        Frame::Close {
                            code,
                            reason: reason.as_str().to_owned(),
                        },
                    );
                }
                Output::SendText(text) => {
                    if let Some(link) = current {
                        if text == "ping" {
                            self.clients[client].pings += 1;
                        }
                        self.send(
                            client,
                            link.socket,
                            Direction::ToServer,
                            Frame::Text(text.to_owned()),
                        );
                    }
                }
                Output::SendBinary(data) => {
                    if let Some(link) = current {
                        self.send(
                            client,
                            link.socket,
                            Direction::ToServer,
                            Frame::Binary(data),
                        );
                    }
                }
                Output::Event(event) => self.clients[client].events.push((now, event)),
            }
        }
        let me = &mut self.clients[client];
        let deadline = me.conn.poll_timeout();
        if deadline != me.deadline {
            if let Some(old) = me.deadline {
                self.timers.remove(&(old, client));
            }
            if let Some(at) = deadline {
                self.timers.insert((at, client));
            }
            me.deadline = deadline;
        }
    }

    /// Carries out everything server `index` writes.
    fn flush_server(&mut self, index: usize) {
        let Some(server) = self.servers[index].as_mut() else {
            return;
        };
        for (id, output) in server.poll_all() {
            let Some(&(client, socket)) = self.peers.get(&(index, id)) else {
                continue;
            };
            let frame = match output {
                SimOutput::Text(word) => Frame::Text(word.to_owned()),
                SimOutput::Binary(data) => Frame::Binary(data),
                SimOutput::Close { code, reason } => {
                    self.peers.remove(&(index, id));
                    self.server_closes.push((client, code, self.now));
                    Frame::Close { code, reason }
                }
                SimOutput::Gone => {
                    self.peers.remove(&(index, id));
                    Frame::Error("server dropped the socket")
                }
                SimOutput::PeerClosed => {
                    self.peers.remove(&(index, id));
                    continue;
                }
            };
            self.send(client, socket, Direction::ToClient, frame);
        }
    }
}

/// Counts `times` in buckets of `bucket` from `start`: the histogram of arrivals.
pub fn histogram(times: &[Instant], start: Instant, bucket: Duration) -> Vec<usize> {
    let width = bucket.as_millis().max(1) as u64;
    let mut counts = Vec::new();
    for at in times {
        let index = (at.saturating_duration_since(start).as_millis() as u64 / width) as usize;
        if counts.len() <= index {
            counts.resize(index + 1, 0);
        }
        counts[index] += 1;
    }
    counts
}
