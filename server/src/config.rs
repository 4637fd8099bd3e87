//! Server configuration: limits, authentication policy and drain options.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sockeye_core::codec::{ReassemblyLimits, DEFAULT_FRAGMENT_THRESHOLD};
use sockeye_core::error::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::app::Identity;

/// Per-connection limits. Every field has a default; change the ones you need:
///
/// ```
/// let mut limits = sockeye_server::Limits::default();
/// limits.max_inflight = 8;
/// limits.reassembly.max_message_bytes = 1024 * 1024;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Reassembly of inbound fragments (PROTOCOL §3): message size (default 16 MiB, also the largest
    /// WebSocket message accepted and the largest reply or event sent), partial messages at once (8), time to
    /// complete one (30 s).
    pub reassembly: ReassemblyLimits,
    /// Requests (and asynchronous message handlers) running at once on one connection; beyond it a request is
    /// answered with `err RESOURCE_EXHAUSTED`. Default 64.
    pub max_inflight: usize,
    /// Events queued for one subscriber. A subscriber whose queue overflows is closed with 1013 (its backlog
    /// dropped: it has seen an unbroken run of events, then the close) rather than silently losing events or
    /// stalling the publisher. Default 256.
    pub outbound_queue: usize,
    /// Bytes of replies and events queued for one connection and not yet written. A connection that goes
    /// over (a subscriber too slow for its events, a peer not reading its replies) is closed with 1013 and
    /// its backlog dropped. Must exceed `max_message_bytes`. Default 32 MiB.
    pub outbound_bytes: usize,
    /// Bytes of encoded replies and events held for writing across all connections (an event counts once,
    /// however many subscribers share it). A reply that does not fit closes its connection with 1013; a
    /// publish that does not fit is refused (`err RESOURCE_EXHAUSTED`); either way the connection with the
    /// most output queued is closed with 1013 too, so room comes back. Default 96 MiB.
    pub total_outbound_bytes: usize,
    /// Bytes read from sockets and not yet handled, across all connections: WebSocket messages still
    /// arriving (each up to `max_message_bytes`) and the last message of each connection while it is held.
    /// The connection whose read would go over is closed with 1013. Default 64 MiB.
    pub total_inbound_bytes: usize,
    /// Bytes of partial (fragmented, incomplete) inbound messages across all connections, besides the
    /// per-connection `reassembly` limits. The connection whose fragment would go over is closed with 1013.
    /// Default 64 MiB.
    pub total_reassembly_bytes: usize,
    /// Topics one connection may be subscribed to at once; beyond it `sub` is answered with
    /// `err RESOURCE_EXHAUSTED`. Default 1024.
    pub max_subscriptions: usize,
    /// Subscriptions across all connections (each costs the server up to a few hundred bytes: the topic name
    /// twice and the entries); beyond it `sub` is answered with `err RESOURCE_EXHAUSTED`. Default 65 536.
    pub max_total_subscriptions: usize,
    /// tungstenite's read buffer per connection (bytes). Small keeps idle connections cheap. Default 4 KiB.
    pub read_buffer_size: usize,
    /// tungstenite's write buffer per connection (bytes): written out once it holds this much. Default 4 KiB.
    pub write_buffer_size: usize,
    /// Time a client has to send a whole HTTP request head, counted from the connection's start or, on a
    /// keep-alive connection, from the end of the previous response: it is also the keep-alive idle timeout.
    /// Positive, at most a year. Default 10 s.
    pub handshake_timeout: Duration,
    /// An HTTP response (a static file) whose client accepts no byte for this long is abandoned and its
    /// connection closed. Not applied after the upgrade (a WebSocket peer that stops reading is closed by the
    /// heartbeat). Positive, at most a year. Default 30 s.
    pub write_timeout: Duration,
    /// Time an asynchronous auth verifier may take before the connection is closed with 4001. Default 10 s.
    pub auth_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            reassembly: ReassemblyLimits::default(),
            max_inflight: 64,
            outbound_queue: 256,
            outbound_bytes: 32 * 1024 * 1024,
            total_outbound_bytes: 96 * 1024 * 1024,
            total_inbound_bytes: 64 * 1024 * 1024,
            total_reassembly_bytes: 64 * 1024 * 1024,
            max_subscriptions: 1024,
            max_total_subscriptions: 64 * 1024,
            read_buffer_size: 4 * 1024,
            write_buffer_size: 4 * 1024,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The tungstenite configuration these limits imply for a server whose fragment threshold is `threshold`.
    ///
    /// The write buffer may hold one whole outgoing WebSocket message beyond `write_buffer_size` (tungstenite
    /// refuses a message that does not fit), and the largest message the server sends is one fragment
    /// (`threshold` plus the 9-byte fragment header) or, with fragmentation off, one whole envelope of at most
    /// `max_message_bytes`.
    pub(crate) fn websocket_config(&self, threshold: usize) -> WebSocketConfig {
        let max_message = self.reassembly.max_message_bytes;
        let largest_out = if threshold == 0 {
            max_message
        } else {
            threshold.min(max_message)
        };
        // Kind byte + fragment header + WebSocket frame header, rounded up generously.
        let largest_out_frame = largest_out.saturating_add(64);
        let write_buffer = self.write_buffer_size;
        // Inbound: one COMPLETE frame carries the whole envelope plus its kind byte.
        let max_in = max_message.saturating_add(16);
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.max(1024))
            .write_buffer_size(write_buffer)
            .max_write_buffer_size(
                write_buffer
                    .saturating_add(largest_out_frame)
                    .saturating_add(1024),
            )
            .max_message_size(Some(max_in))
            .max_frame_size(Some(max_in))
    }
}

/// What a verifier is given to decide who is connecting. The token is never logged (`Debug` redacts it).
#[derive(Clone)]
#[non_exhaustive]
pub struct Credentials {
    /// The bearer token from `Authorization: Bearer <token>`, else from the `?token=` query parameter.
    pub token: Option<String>,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
    /// The peer's address.
    pub peer: SocketAddr,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("origin", &self.origin)
            .field("peer", &self.peer)
            .finish()
    }
}

type VerifyFn = dyn Fn(Credentials) -> BoxFuture<'static, Option<Identity>> + Send + Sync;

/// Who may connect (PROTOCOL §5). Failing connections are upgraded, then closed with 4003 before `ready`.
#[derive(Clone, Default)]
pub enum Auth {
    /// Everyone is accepted as [`Identity::anonymous`].
    #[default]
    Off,
    /// A fixed set of tokens, each mapped to an identity.
    Tokens(Arc<HashMap<String, Identity>>),
    /// An application verifier: `None` refuses the connection.
    Verifier(Arc<VerifyFn>),
}

impl Auth {
    /// A verifier from an async function.
    pub fn verifier<F, Fut>(f: F) -> Auth
    where
        F: Fn(Credentials) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Identity>> + Send + 'static,
    {
        Auth::Verifier(Arc::new(move |credentials| Box::pin(f(credentials))))
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Off => f.write_str("Auth::Off"),
            Auth::Tokens(tokens) => write!(f, "Auth::Tokens({} tokens)", tokens.len()),
            Auth::Verifier(_) => f.write_str("Auth::Verifier"),
        }
    }
}

/// How to drain (PROTOCOL §8).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DrainOptions {
    /// Connections are closed at random moments spread across this window. Default 5 s.
    pub window: Duration,
    /// The close code sent. Default 1001.
    pub close_code: CloseCode,
    /// The close reason sent. Default "Server draining".
    pub reason: String,
    /// When the drain gives up waiting for connections to close; `None` means `window` + 5 s.
    pub deadline: Option<Duration>,
    /// Send the `bye` control word before each close frame.
    pub bye: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            window: Duration::from_secs(5),
            close_code: CloseCode::GOING_AWAY,
            reason: "Server draining".to_owned(),
            deadline: None,
            bye: false,
        }
    }
}

impl DrainOptions {
    /// The defaults with another window.
    pub fn with_window(window: Duration) -> Self {
        DrainOptions {
            window,
            ..DrainOptions::default()
        }
    }

    pub(crate) fn effective_deadline(&self) -> Duration {
        self.deadline
            .unwrap_or(self.window.saturating_add(Duration::from_secs(5)))
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainResult {
    /// Connections open when the drain started that have closed.
    pub closed: usize,
    /// Connections still open when the drain resolved.
    pub remaining: usize,
    /// The deadline passed before every connection had closed.
    pub timed_out: bool,
}

/// Everything [`crate::ServerBuilder`] collects, fixed once the server starts.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub addr: SocketAddr,
    pub path: String,
    pub auth: Auth,
    pub limits: Limits,
    pub heartbeat: Option<Duration>,
    pub fragment_threshold: usize,
    pub static_dir: Option<std::path::PathBuf>,
    pub allowed_origins: Vec<String>,
    pub drain: DrainOptions,
    pub builtins: bool,
    /// TCP connections served at once; `None` until start, which sizes it to the open-file limit.
    pub max_connections: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: "/ws".to_owned(),
            auth: Auth::Off,
            limits: Limits::default(),
            heartbeat: Some(Duration::from_secs(90)),
            fragment_threshold: DEFAULT_FRAGMENT_THRESHOLD,
            static_dir: None,
            allowed_origins: Vec::new(),
            drain: DrainOptions::default(),
            builtins: true,
            max_connections: None,
        }
    }
}
