//! The builder, the running server's shared state, and the handle that controls it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sockeye_core::codec::{validate_topic, Payload};
use sockeye_core::error::{CloseCode, ErrorCode};
use sockeye_core::time::Instant as CoreInstant;
use sockeye_core::{entropy_seed, Rng};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::app::{typed_message, typed_method, App, Context, Identity, RpcError, TopicAccess};
use crate::broker::{HistoryLimits, Published, RedisBroker, Refused, Topics};
use crate::budget::{Budget, Room};
use crate::config::{
    Auth, Config, Credentials, DrainOptions, DrainResult, Limits, MEMORY_TARGET,
    SERVER_FRAGMENT_THRESHOLD,
};
use crate::{PublishError, StartError};

/// The server's counters, for tests, benchmarks and the `stats` method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// WebSocket connections currently open (upgraded and not yet closed).
    pub connections_open: u64,
    /// WebSocket connections upgraded since the start.
    pub connections_total: u64,
    /// Data frames (text and binary WebSocket messages) received.
    pub frames_in: u64,
    /// Data frames sent.
    pub frames_out: u64,
    /// Connections closed, or `err` replies sent, for breaking PROTOCOL.md.
    pub protocol_errors: u64,
    /// Connections closed with 4003.
    pub auth_failures: u64,
    /// Connections closed with 1013 for holding too much: a subscriber whose event queue overflowed, the
    /// largest backlog or the largest inbound holder when a server-wide budget was spent.
    pub overflow_closes: u64,
    /// Topics with at least one subscriber.
    pub topics: u64,
    /// Bytes of encoded replies and events held for writing ([`Limits::total_outbound_bytes`]).
    pub outbound_bytes: u64,
    /// Bytes of partial inbound messages held ([`Limits::total_reassembly_bytes`]).
    pub reassembly_bytes: u64,
    /// Bytes read and not yet handled ([`Limits::total_inbound_bytes`]).
    pub inbound_bytes: u64,
    /// Bytes of topic history kept ([`Limits::total_history_bytes`]).
    pub history_bytes: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub auth_failures: AtomicU64,
    pub overflow_closes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Stats {
        Stats {
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            overflow_closes: self.overflow_closes.load(Ordering::Relaxed),
            topics: 0,
            outbound_bytes: 0,
            reassembly_bytes: 0,
            inbound_bytes: 0,
            history_bytes: 0,
        }
    }
}

/// A request to close one connection, made from outside its task (drain, shutdown, queue overflow).
#[derive(Clone, Debug)]
pub(crate) struct CloseRequest {
    pub code: CloseCode,
    pub reason: String,
    pub bye: bool,
    /// Drop what is queued instead of writing it first (a peer too slow for its output).
    pub drop_output: bool,
}

/// The part of a connection other tasks can reach: its output budget, a close request and the wake-up for it.
pub(crate) struct ConnControl {
    /// Bytes queued for this connection (events and replies), taken when queued, given back once written.
    pub outbound: Budget,
    /// Bytes this connection holds of the server-wide inbound budget (kept by its socket, `Metered`).
    pub inbound: AtomicUsize,
    close: Mutex<Option<CloseRequest>>,
    pub notify: Notify,
    /// Set by the connection's task when it has ended.
    pub closed: AtomicBool,
}

impl ConnControl {
    pub fn new(outbound_limit: usize) -> ConnControl {
        ConnControl {
            outbound: Budget::new(outbound_limit),
            inbound: AtomicUsize::new(0),
            close: Mutex::new(None),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Asks the connection to close. The first request wins; later ones are ignored.
    pub fn request_close(&self, code: CloseCode, reason: String, bye: bool) {
        self.request(CloseRequest {
            code,
            reason,
            bye,
            drop_output: false,
        });
    }

    /// Asks the connection to close with 1013 because its output is over budget, dropping what is queued.
    pub fn request_overflow_close(&self, reason: String) {
        self.request(CloseRequest {
            code: CloseCode::TRY_AGAIN_LATER,
            reason,
            bye: false,
            drop_output: true,
        });
    }

    fn request(&self, request: CloseRequest) {
        let mut slot = self.close.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(request);
            drop(slot);
            self.notify.notify_one();
        }
    }

    pub fn take_close(&self) -> Option<CloseRequest> {
        self.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// State shared by the accept loop, every connection task and the handle.
pub(crate) struct Shared {
    pub config: Config,
    pub app: App,
    pub ws_config: WebSocketConfig,
    /// The static directory, canonicalised at start.
    pub static_root: Option<PathBuf>,
    pub counters: Counters,
    /// Topics: the embedded store, or (with Redis) this instance's subscribers of topics Redis sequences.
    pub topics: Topics,
    /// With `--redis`: where topics are sequenced, kept and shared with other instances.
    pub redis: Option<RedisBroker>,
    /// Bytes of encoded replies and events held for writing, across every connection.
    pub outbound: Arc<Budget>,
    /// Bytes of partial inbound messages, across every connection.
    pub reassembly: Arc<Budget>,
    /// Bytes read from sockets and not yet handled, across every connection.
    pub inbound: Arc<Budget>,
    /// Readers waiting for room in `inbound`.
    pub inbound_room: Arc<Room>,
    pub draining: AtomicBool,
    pub shutting_down: AtomicBool,
    /// Ready connections by id.
    connections: Mutex<HashMap<u64, Arc<ConnControl>>>,
    /// How many connections are registered; drain and shutdown wait on it.
    registered: watch::Sender<usize>,
    next_connection_id: AtomicU64,
    /// The origin of the core's clock (`sockeye_core::time::Instant`).
    origin: tokio::time::Instant,
    stop_accepting: Notify,
}

impl Shared {
    pub fn new(
        config: Config,
        app: App,
        ws_config: WebSocketConfig,
        static_root: Option<PathBuf>,
        redis: Option<RedisBroker>,
    ) -> Shared {
        let limits = &config.limits;
        let outbound = Arc::new(Budget::new(limits.total_outbound_bytes));
        let reassembly = Arc::new(Budget::new(limits.total_reassembly_bytes));
        let inbound = Arc::new(Budget::new(limits.total_inbound_bytes));
        let topics = Topics::new(
            HistoryLimits {
                // With Redis, history lives there.
                size: if redis.is_some() {
                    0
                } else {
                    config.history_size
                },
                ..config.history_limits()
            },
            limits.max_total_subscriptions,
        );
        Shared {
            config,
            app,
            ws_config,
            static_root,
            counters: Counters::default(),
            topics,
            redis,
            outbound,
            reassembly,
            inbound,
            inbound_room: Arc::default(),
            draining: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            registered: watch::channel(0).0,
            next_connection_id: AtomicU64::new(1),
            origin: tokio::time::Instant::now(),
            stop_accepting: Notify::new(),
        }
    }

    /// Now, on the core's clock.
    pub fn core_now(&self) -> CoreInstant {
        self.core_at(tokio::time::Instant::now())
    }

    /// A tokio instant on the core's clock.
    pub fn core_at(&self, at: tokio::time::Instant) -> CoreInstant {
        CoreInstant::from_millis(
            u64::try_from(at.saturating_duration_since(self.origin).as_millis())
                .unwrap_or(u64::MAX),
        )
    }

    /// A core instant back on tokio's clock; `None` when it is too far away to represent (never).
    pub fn tokio_instant(&self, at: CoreInstant) -> Option<tokio::time::Instant> {
        self.origin
            .checked_add(Duration::from_millis(at.as_millis()))
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnControl>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(&self, id: u64, control: Arc<ConnControl>) {
        let mut connections = self.lock_connections();
        connections.insert(id, control);
        self.registered.send_replace(connections.len());
    }

    pub fn unregister(&self, id: u64) {
        let mut connections = self.lock_connections();
        connections.remove(&id);
        self.registered.send_replace(connections.len());
    }

    pub fn stats(&self) -> Stats {
        Stats {
            topics: self.topics.len() as u64,
            outbound_bytes: self.outbound.used() as u64,
            reassembly_bytes: self.reassembly.used() as u64,
            inbound_bytes: self.inbound.used() as u64,
            history_bytes: self.topics.history_bytes() as u64,
            ..self.counters.snapshot()
        }
    }

    /// Stores `data` as `topic`'s next event and fans it out to the topic's subscribers.
    pub fn publish(&self, topic: &str, data: Option<Payload>) -> Result<Published, PublishError> {
        validate_topic(topic).map_err(PublishError::InvalidTopic)?;
        let limit = self.config.limits.reassembly.max_message_bytes;
        let published = self
            .topics
            .publish(topic, data, limit, &self.outbound)
            .map_err(|refused| match refused {
                Refused::TooLarge(size) => PublishError::TooLarge { size, limit },
                Refused::Busy => {
                    self.shed_largest_backlog();
                    PublishError::Busy {
                        limit: self.outbound.limit(),
                    }
                }
            })?;
        Counters::add(
            &self.counters.overflow_closes,
            published.fanout.overflowed as u64,
        );
        Ok(published)
    }

    /// Publishes as the server ([`ServerHandle::publish`], [`Context::publish`]): here, or with Redis, queued
    /// for Redis without waiting (0 subscribers are reported: they are on every instance).
    pub fn publish_from_app(
        &self,
        topic: &str,
        data: Option<Payload>,
    ) -> Result<usize, PublishError> {
        let Some(redis) = &self.redis else {
            return Ok(self.publish(topic, data)?.fanout.delivered);
        };
        validate_topic(topic).map_err(PublishError::InvalidTopic)?;
        let limit = self.config.limits.reassembly.max_message_bytes;
        check_event_size(topic, data.as_ref(), limit)
            .and_then(|()| redis.publish(topic, data.as_ref()))
            .map_err(|e| PublishError::Unavailable(e.message))?;
        Ok(0)
    }

    /// Fans out an event Redis sequenced to this instance's subscribers.
    pub fn deliver_frame(&self, topic: &str, ep: &str, seq: u64, frame: bytes::Bytes) {
        let fanout = self.topics.deliver(topic, ep, seq, frame, &self.outbound);
        Counters::add(&self.counters.overflow_closes, fanout.overflowed as u64);
    }

    /// When the server-wide output budget is spent: asks the connection with the most output queued to close
    /// with 1013 (its backlog dropped), so peers that stop reading cannot keep everyone else's replies and
    /// events refused until the heartbeat closes them.
    pub fn shed_largest_backlog(&self) {
        let largest = self
            .lock_connections()
            .values()
            .max_by_key(|control| control.outbound.used())
            .filter(|control| control.outbound.used() > 0)
            .cloned();
        if let Some(control) = largest {
            Counters::add(&self.counters.overflow_closes, 1);
            control.request_overflow_close(format!(
                "server output budget of {} bytes spent: the largest backlog is dropped",
                self.outbound.limit()
            ));
        }
    }

    /// When the server-wide inbound budget cannot take `reader`'s next read: asks the connection holding the
    /// most of it to close with 1013, unless that is `reader` itself. `false` when it is (the reader is
    /// refused instead), `true` when room is coming back (the reader waits for it).
    pub fn close_largest_inbound(&self, reader: &ConnControl) -> bool {
        let own = reader.inbound.load(Ordering::Relaxed);
        let largest = self
            .lock_connections()
            .values()
            .max_by_key(|control| control.inbound.load(Ordering::Relaxed))
            .filter(|control| control.inbound.load(Ordering::Relaxed) > own)
            .cloned();
        let Some(largest) = largest else {
            return false;
        };
        if largest.take_close().is_none() {
            Counters::add(&self.counters.overflow_closes, 1);
            tracing::info!(
                held = largest.inbound.load(Ordering::Relaxed),
                "server inbound budget spent: closing the connection holding the most"
            );
        }
        largest.request_overflow_close(format!(
            "server inbound budget of {} bytes spent: the largest holder is closed",
            self.inbound.limit()
        ));
        true
    }

    /// Closes every registered connection with `code` now.
    fn close_all(&self, code: CloseCode, reason: &str) {
        let controls: Vec<Arc<ConnControl>> = self.lock_connections().values().cloned().collect();
        for control in controls {
            control.request_close(code, reason.to_owned(), false);
        }
    }

    /// Waits until no connection is registered, or `deadline` passes. Returns how many remain.
    async fn wait_until_empty(&self, deadline: tokio::time::Instant) -> usize {
        let mut registered = self.registered.subscribe();
        let _ = tokio::time::timeout_at(deadline, registered.wait_for(|n| *n == 0)).await;
        let remaining = *registered.borrow();
        remaining
    }
}

/// Refuses, before it goes to Redis, an event whose `evt` envelope would exceed `limit` bytes (checked on the
/// payload and topic plus the most the envelope's other keys take).
pub(crate) fn check_event_size(
    topic: &str,
    data: Option<&Payload>,
    limit: usize,
) -> Result<(), RpcError> {
    // `{t: "evt", topic: …, seq: u64, d: …}` around the topic and payload: at most 40 bytes.
    const ENVELOPE: usize = 40;
    let size = data.map_or(0, |d| d.as_cbor().len()) + topic.len() + ENVELOPE;
    if size > limit {
        return Err(RpcError::new(
            ErrorCode::ResourceExhausted,
            format!("event of about {size} bytes exceeds the message size limit of {limit}"),
        ));
    }
    Ok(())
}

/// Entry point: `Server::builder()`.
pub struct Server;

impl Server {
    /// A builder with the defaults: `127.0.0.1:8080`, path `/ws`, auth off, heartbeat limit 90 s, fragment
    /// threshold 100 KiB, no static files, any origin, drain window 5 s, built-in methods on.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: Config::default(),
            app: App::default(),
        }
    }
}

/// Configures and starts a server. See the crate docs for an example.
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct ServerBuilder {
    config: Config,
    app: App,
}

impl ServerBuilder {
    /// The address to listen on. Port 0 picks a free port: read it from [`ServerHandle::local_addr`].
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.config.addr = addr;
        self
    }

    /// The WebSocket path (default `/ws`). Every other path is served from the static directory.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.config.path = path.into();
        self
    }

    /// The authentication policy (default [`Auth::Off`]).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.config.auth = auth;
        self
    }

    /// Accepts connections presenting `token`, as `identity`. Switches auth to a static token set.
    pub fn token_with_identity(mut self, token: impl Into<String>, identity: Identity) -> Self {
        let mut tokens = match &self.config.auth {
            Auth::Tokens(tokens) => (**tokens).clone(),
            _ => HashMap::new(),
        };
        tokens.insert(token.into(), identity);
        self.config.auth = Auth::Tokens(Arc::new(tokens));
        self
    }

    /// Accepts connections presenting any of `tokens`; the n-th (from 1) is identified as `token-n`.
    /// Switches auth to a static token set (an empty set refuses everyone).
    pub fn tokens<I, S>(mut self, tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = match &self.config.auth {
            Auth::Tokens(existing) => (**existing).clone(),
            _ => HashMap::new(),
        };
        let first = set.len() + 1;
        for (n, token) in tokens.into_iter().enumerate() {
            set.insert(token.into(), Identity::new(format!("token-{}", first + n)));
        }
        self.config.auth = Auth::Tokens(Arc::new(set));
        self
    }

    /// Authenticates with an async verifier: `None` refuses the connection (close 4003).
    pub fn verifier<F, Fut>(self, f: F) -> Self
    where
        F: Fn(Credentials) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Identity>> + Send + 'static,
    {
        self.auth(Auth::verifier(f))
    }

    /// Per-connection limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Closes a connection with 4002 when no frame arrived from it for `limit`; `None` turns it off.
    pub fn heartbeat(mut self, limit: Option<Duration>) -> Self {
        self.config.heartbeat = limit;
        self
    }

    /// Replies and events whose envelope exceeds this many bytes are sent as fragments (0 turns it off).
    pub fn fragment_threshold(mut self, threshold: usize) -> Self {
        self.config.fragment_threshold = threshold;
        self
    }

    /// Serves files from this directory on every path other than the WebSocket path.
    pub fn static_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.static_dir = Some(dir.into());
        self
    }

    /// Allows browser connections from this `Origin` (exact match, e.g. `https://app.example`). Once any
    /// origin is allowed, a connection with another `Origin` header is closed with 1008 before `ready`;
    /// connections without an `Origin` header (not browsers) are unaffected.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.config.allowed_origins.push(origin.into());
        self
    }

    /// TCP connections served at once (WebSocket, static file, or waiting for a request head); beyond it a
    /// new connection is answered HTTP 503 and closed. Default: the smaller of three quarters of the
    /// process's open-file limit (`RLIMIT_NOFILE`, soft) less 32, and ([`MEMORY_TARGET`] − what the
    /// server-wide budgets may hold) ÷ what one connection may hold outside them; 4 210 with the default
    /// limits and at least 6 056 open files ([`default_max_connections`]). A larger cap lets the server
    /// hold more than the target when every connection is busy.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = Some(max);
        self
    }

    /// The drain options [`ServerHandle::default_drain_options`] returns (the binary drains with them).
    pub fn drain_options(mut self, options: DrainOptions) -> Self {
        self.config.drain = options;
        self
    }

    /// Events kept per topic for clients that resume (PROTOCOL §9), default 1000; 0 turns history off (every
    /// `since` is then answered `recovered: false`). The total is bounded by [`Limits::total_history_bytes`].
    pub fn history_size(mut self, events: usize) -> Self {
        self.config.history_size = events;
        self
    }

    /// Age past which a kept event is dropped from a topic's history, default 5 minutes.
    pub fn history_ttl(mut self, ttl: Duration) -> Self {
        self.config.history_ttl = ttl;
        self
    }

    /// Shares topics with every server instance using the Redis at `url` (`redis://HOST:PORT/DB`): a publish
    /// on any instance reaches subscribers on all of them, with one sequence and one history per topic kept in
    /// Redis. The server starts even while Redis is unreachable (acknowledged publishes and subscriptions then
    /// fail with `UNAVAILABLE`). Without it, topics live in this process.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.config.redis = Some(url.into());
        self
    }

    /// Turns the built-in methods (`echo`, `sleep`, `fail`, `whoami`, `close`, `stats`) and the built-in
    /// `echo` message on or off (default on). Application methods with the same name take precedence anyway.
    pub fn builtins(mut self, on: bool) -> Self {
        self.config.builtins = on;
        self
    }

    /// Adds a request method: `d` is decoded as `Req` (an absent `d` as `null`; failure answers
    /// `INVALID_ARGUMENT`), and the `Resp` becomes the `res` payload. Handlers run concurrently with the
    /// connection's other requests.
    pub fn method<Req, Resp, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        self.app.methods.insert(name.into(), typed_method(handler));
        self
    }

    /// Adds a request method working on raw payloads (`None` = no `d`).
    pub fn method_raw<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Context, Option<Payload>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Payload>, RpcError>> + Send + 'static,
    {
        self.app.methods.insert(
            name.into(),
            Arc::new(move |ctx, data| Box::pin(handler(ctx, data))),
        );
        self
    }

    /// Adds a handler for `msg` envelopes named `name`; `d` is decoded as `T` (failure is reported to the
    /// sender as an `err` without `id`).
    pub fn message<T, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.app
            .messages
            .insert(name.into(), typed_message(handler));
        self
    }

    /// Decides which topics an identity may subscribe or publish to (default: every valid topic).
    pub fn authorize_topics<F>(mut self, f: F) -> Self
    where
        F: Fn(&Identity, &str, TopicAccess) -> bool + Send + Sync + 'static,
    {
        self.app.authorize = Some(Arc::new(f));
        self
    }

    /// The server in simulated time, without sockets: see [`crate::sim`]. Not a stable API.
    #[doc(hidden)]
    pub fn simulate(self) -> crate::sim::SimServer {
        let ServerBuilder { config, app } = self;
        let ws_config = config.limits.websocket_config(config.fragment_threshold);
        crate::sim::SimServer::new(Shared::new(config, app, ws_config, None, None))
    }

    /// Binds the listener and starts accepting connections.
    ///
    /// # Errors
    /// [`StartError`] when the address cannot be bound, the static directory is missing, or the
    /// configuration is inconsistent.
    pub async fn start(self) -> Result<ServerHandle, StartError> {
        let ServerBuilder { mut config, app } = self;
        if !config.path.starts_with('/') {
            return Err(StartError::InvalidConfig(format!(
                "path {:?} must start with '/'",
                config.path
            )));
        }
        let limits = &config.limits;
        if limits.reassembly.max_message_bytes == 0 {
            return Err(StartError::InvalidConfig(
                "max_message_bytes must be positive".to_owned(),
            ));
        }
        if limits.outbound_queue == 0 {
            return Err(StartError::InvalidConfig(
                "outbound_queue must be positive".to_owned(),
            ));
        }
        // hyper adds the head timeout to `Instant::now()`, which panics on overflow: a year stands for "never".
        let year = Duration::from_secs(365 * 86_400);
        for (name, timeout) in [
            ("handshake_timeout", limits.handshake_timeout),
            ("write_timeout", limits.write_timeout),
        ] {
            if timeout.is_zero() || timeout > year {
                return Err(StartError::InvalidConfig(format!(
                    "{name} must be positive and at most a year"
                )));
            }
        }
        let max_connections = *config
            .max_connections
            .get_or_insert_with(|| connection_cap(&config.limits, config.fragment_threshold));
        if max_connections == 0 {
            return Err(StartError::InvalidConfig(
                "max_connections must be positive".to_owned(),
            ));
        }
        // The largest reply or event (a COMPLETE frame of `max_message_bytes`) must fit an empty queue.
        let largest = limits.reassembly.max_message_bytes.saturating_add(1);
        if limits.outbound_bytes < largest || limits.total_outbound_bytes < limits.outbound_bytes {
            return Err(StartError::InvalidConfig(format!(
                "need max_message_bytes ({}) < outbound_bytes ({}) <= total_outbound_bytes ({})",
                limits.reassembly.max_message_bytes,
                limits.outbound_bytes,
                limits.total_outbound_bytes
            )));
        }
        let static_root = match &config.static_dir {
            Some(dir) => {
                let root = dir.canonicalize().map_err(|source| StartError::StaticDir {
                    path: dir.clone(),
                    source,
                })?;
                if !root.is_dir() {
                    return Err(StartError::StaticDir {
                        path: dir.clone(),
                        source: std::io::Error::other("not a directory"),
                    });
                }
                Some(root)
            }
            None => None,
        };
        let ws_config = limits.websocket_config(config.fragment_threshold);
        if ws_config.max_write_buffer_size <= ws_config.write_buffer_size {
            // tungstenite would panic on this; only absurd sizes get here.
            return Err(StartError::InvalidConfig(
                "write_buffer_size is too large".to_owned(),
            ));
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.addr,
            source,
        })?;
        let redis = match &config.redis {
            Some(url) => Some(
                RedisBroker::new(url, &config.history_limits(), &config.limits)
                    .map_err(|e| StartError::InvalidConfig(e.to_string()))?,
            ),
            None => None,
        };
        let (redis, jobs) = match redis {
            Some((broker, jobs)) => (Some(broker), Some(jobs)),
            None => (None, None),
        };
        let shared = Arc::new(Shared::new(config, app, ws_config, static_root, redis));
        if let Some(jobs) = jobs {
            RedisBroker::spawn(&shared, jobs);
        }
        tracing::info!(%local_addr, path = %shared.config.path, auth = ?shared.config.auth, max_connections, "sockeye-server listening");
        let accept_task = tokio::spawn(accept_loop(Arc::clone(&shared), listener, max_connections));
        tokio::spawn(sweep_history(Arc::downgrade(&shared)));
        Ok(ServerHandle {
            shared,
            local_addr,
            accept_task: Mutex::new(Some(accept_task)),
        })
    }
}

/// Connections past the cap being answered 503 at once; past this many, further ones are closed unanswered
/// (a storm of connections must not take the descriptors left for files and the listener).
const MAX_REFUSING: usize = 64;
/// At most one warning per this interval for refused or failed accepts.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut full_warning = Throttle::default();
    let mut failure_warning = Throttle::default();
    loop {
        tokio::select! {
            () = shared.stop_accepting.notified() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                        tokio::spawn(crate::http::serve(Arc::clone(&shared), stream, peer, Some(slot)));
                        continue;
                    }
                    if let Some(suppressed) = full_warning.allow() {
                        tracing::warn!(max_connections, suppressed, "connection limit reached: refusing with 503");
                    }
                    if let Ok(refusal) = Arc::clone(&refusing).try_acquire_owned() {
                        let shared = Arc::clone(&shared);
                        tokio::spawn(async move {
                            let answer = crate::http::serve(shared, stream, peer, None);
                            let _ = tokio::time::timeout(crate::http::REFUSAL_TIMEOUT * 2, answer).await;
                            drop(refusal);
                        });
                    }
                    // Otherwise `stream` is dropped here: closed unanswered.
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    if let Some(suppressed) = failure_warning.allow() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::debug!("accept loop stopped");
}

/// Drops history events past their age once a second, so topics nobody touches do not keep them, until the
/// server is gone.
async fn sweep_history(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        shared.topics.expire();
    }
}

/// Lets one warning through per [`WARN_INTERVAL`], counting the ones held back in between.
#[derive(Default)]
struct Throttle {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(number suppressed since the last one)` when a warning may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_INTERVAL) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The connection cap a server with the default [`Limits`] and fragment threshold gets: see
/// [`ServerBuilder::max_connections`] for how it is sized.
pub fn default_max_connections() -> usize {
    connection_cap(&Limits::default(), SERVER_FRAGMENT_THRESHOLD)
}

/// The default connection cap for `limits` and fragment `threshold`: the smaller of
///
/// - files: three quarters of the open-file limit the process has (`RLIMIT_NOFILE`, soft), less 32, so the
///   listener, stdio, the runtime's own descriptors, connections being refused and static files being sent
///   still find descriptors when every connection slot is taken (1 024 files without a known limit);
/// - memory: ([`MEMORY_TARGET`] − what the server-wide budgets may hold) ÷ what one connection may hold
///   outside them, so that the budgets full and every connection holding its most stay within the target.
fn connection_cap(limits: &Limits, threshold: usize) -> usize {
    let files = open_file_limit().unwrap_or(1024).min(1 << 22);
    let by_files = (files / 4 * 3).saturating_sub(32);
    by_files.min(memory_cap(limits, threshold)).max(1)
}

/// The connections that fit in [`MEMORY_TARGET`] beside the budgets, each holding its most outside them.
fn memory_cap(limits: &Limits, threshold: usize) -> usize {
    MEMORY_TARGET.saturating_sub(limits.budgeted_bytes()) / limits.connection_bytes(threshold)
}

#[cfg(unix)]
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer to one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Some(usize::MAX);
    }
    usize::try_from(limit.rlim_cur).ok()
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<usize> {
    None
}

/// Controls a running server. Dropping it shuts the server down without waiting (like
/// [`ServerHandle::shutdown`], but connections are only asked to close).
pub struct ServerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl ServerHandle {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket URL, `ws://ADDR/PATH`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.local_addr, self.shared.config.path)
    }

    /// The connection cap in force (configured, or sized to the open-file limit).
    pub fn max_connections(&self) -> usize {
        self.shared.config.max_connections.unwrap_or(0)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// The drain options configured with [`ServerBuilder::drain_options`].
    pub fn default_drain_options(&self) -> DrainOptions {
        self.shared.config.drain.clone()
    }

    /// Publishes raw `data` to `topic`'s subscribers as the server. Returns how many it was queued for.
    ///
    /// # Errors
    /// [`PublishError::InvalidTopic`] when the name breaks the rules, [`PublishError::TooLarge`] over the
    /// message size limit, [`PublishError::Busy`] when the server's output budget cannot hold it now.
    pub fn publish(&self, topic: &str, data: Option<Payload>) -> Result<usize, PublishError> {
        self.shared.publish_from_app(topic, data)
    }

    /// Drains (PROTOCOL §8): new upgrades get HTTP 503 from now on, and every open connection is closed with
    /// `options.close_code` at a random moment spread across `options.window` (after `bye` when asked).
    /// Resolves when every connection has closed or the deadline passes. The listener stays open (answering
    /// 503) until [`ServerHandle::shutdown`].
    pub async fn drain(&self, options: DrainOptions) -> DrainResult {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::SeqCst);
        let start = tokio::time::Instant::now();
        let deadline = far(start, options.effective_deadline());
        let controls: Vec<Arc<ConnControl>> = shared.lock_connections().values().cloned().collect();
        tracing::info!(
            connections = controls.len(),
            window_ms = options.window.as_millis() as u64,
            "draining"
        );
        let schedule = spread_schedule(
            controls.len(),
            options.window,
            &mut Rng::new(entropy_seed()),
        );
        let closer = {
            let controls = controls.clone();
            let options = options.clone();
            tokio::spawn(async move {
                for (index, at) in schedule {
                    tokio::time::sleep_until(far(start, at)).await;
                    controls[index].request_close(
                        options.close_code,
                        options.reason.clone(),
                        options.bye,
                    );
                }
            })
        };
        let remaining = shared.wait_until_empty(deadline).await;
        // With a deadline shorter than the window, the closer goes on closing on schedule after this returns.
        drop(closer);
        let closed = controls
            .iter()
            .filter(|c| c.closed.load(Ordering::SeqCst))
            .count();
        let result = DrainResult {
            closed,
            remaining,
            timed_out: remaining > 0,
        };
        tracing::info!(?result, "drain finished");
        result
    }

    /// Stops accepting, closes every connection with 1001 at once, and waits (at most 5 s) for them to end.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.shutting_down.store(true, Ordering::SeqCst);
        shared.draining.store(true, Ordering::SeqCst);
        shared.stop_accepting.notify_one();
        shared.close_all(CloseCode::GOING_AWAY, "Server shutting down");
        let task = self
            .accept_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        shared
            .wait_until_empty(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.shutting_down.store(true, Ordering::SeqCst);
        shared.draining.store(true, Ordering::SeqCst);
        shared.stop_accepting.notify_one();
        shared.close_all(CloseCode::GOING_AWAY, "Server shutting down");
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// `start + offset`, or about 30 years on when that cannot be represented (a configured "forever").
fn far(start: tokio::time::Instant, offset: Duration) -> tokio::time::Instant {
    start
        .checked_add(offset)
        .unwrap_or_else(|| start + Duration::from_secs(30 * 365 * 86_400))
}

/// When each of `n` connections is closed: the window is cut into `n` equal slots, each slot gets one
/// connection (in random order) at a uniformly random moment inside it. Every close is at a random moment,
/// and the closes cover the whole window instead of clumping. Sorted by time.
pub(crate) fn spread_schedule(n: usize, window: Duration, rng: &mut Rng) -> Vec<(usize, Duration)> {
    let mut order: Vec<usize> = (0..n).collect();
    // Fisher–Yates.
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    let slot_us = if n == 0 { 0 } else { window_us / n as u64 };
    order
        .into_iter()
        .enumerate()
        .map(|(slot, index)| {
            let offset = slot as u64 * slot_us + rng.below(slot_us.max(1));
            (index, Duration::from_micros(offset.min(window_us)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_schedule_covers_the_window_with_one_close_per_connection() {
        let mut rng = Rng::new(7);
        let window = Duration::from_secs(5);
        let schedule = spread_schedule(10, window, &mut rng);
        assert_eq!(schedule.len(), 10);
        let mut seen: Vec<usize> = schedule.iter().map(|(i, _)| *i).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        for (slot, (_, at)) in schedule.iter().enumerate() {
            assert!(*at >= Duration::from_millis(500) * slot as u32);
            assert!(*at < Duration::from_millis(500) * (slot as u32 + 1));
        }
    }

    #[test]
    fn the_default_cap_keeps_the_budgets_and_busy_connections_within_the_memory_target() {
        let limits = Limits::default();
        let per_connection = limits.connection_bytes(SERVER_FRAGMENT_THRESHOLD);
        let cap = memory_cap(&limits, SERVER_FRAGMENT_THRESHOLD);
        let total = limits.budgeted_bytes() + cap * per_connection;
        assert!(total <= MEMORY_TARGET, "{total}");
        assert!(
            total + per_connection > MEMORY_TARGET,
            "one more would not fit"
        );
        // Thousands of idle connections are still accepted.
        assert!(cap >= 4000, "{cap}");
        // The figures `ServerBuilder::max_connections`, the binary's help and SECURITY.md quote.
        assert_eq!(
            (limits.budgeted_bytes(), per_connection, cap),
            (274_595_840, 56_384, 4_210)
        );
        // Larger budgets leave room for fewer connections.
        let mut larger = limits.clone();
        larger.total_outbound_bytes *= 2;
        assert!(memory_cap(&larger, SERVER_FRAGMENT_THRESHOLD) < cap);
    }

    #[test]
    fn drain_schedule_handles_zero_connections_and_zero_window() {
        assert!(spread_schedule(0, Duration::from_secs(1), &mut Rng::new(1)).is_empty());
        let schedule = spread_schedule(3, Duration::ZERO, &mut Rng::new(1));
        assert!(schedule.iter().all(|(_, at)| at.is_zero()));
    }
}
