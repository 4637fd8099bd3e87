//! `sockeye-server`: the reference server as a process.
//!
//! Prints exactly one line to stdout once listening (`sockeye-server listening on http://ADDR`), logs to
//! stderr (`RUST_LOG` filters, default `info`), and drains on SIGTERM or SIGINT, then exits 0. A second signal
//! during the drain shuts down at once.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sockeye_server::{DrainOptions, Limits, Server};

/// The Sockeye reference server: WebSocket endpoint (PROTOCOL.md) and static files on one port.
#[derive(Debug, Parser)]
#[command(name = "sockeye-server", version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the line printed on stdout names the real one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// Path of the WebSocket endpoint.
    #[arg(long, default_value = "/ws")]
    path: String,

    /// Directory served as static files on every other path (e.g. `www`, holding the demo and `pkg/`).
    #[arg(long, value_name = "DIR")]
    static_dir: Option<PathBuf>,

    /// Accepted bearer token (repeatable). Visible to other users in `ps`: prefer --token-file or the
    /// SOCKEYE_TOKENS environment variable (comma-separated tokens). Tokens from all three are accepted;
    /// without any, authentication is off. The n-th token's identity is `token-n` (--token first, then the
    /// file, then SOCKEYE_TOKENS). Tokens are never logged.
    #[arg(long = "token", value_name = "TOKEN")]
    tokens: Vec<String>,

    /// File of accepted bearer tokens, one per line (surrounding whitespace and blank lines ignored). A file
    /// holding no token is an error, not "authentication off".
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Allowed browser `Origin` (repeatable, exact match such as `http://localhost:8080`). Without any, every
    /// origin is allowed; with some, other origins are closed with 1008 before `ready`.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,

    /// Close a connection with 4002 after this long without an inbound frame (0 turns it off).
    #[arg(long, value_name = "MS", default_value_t = 90_000)]
    heartbeat_ms: u64,

    /// Replies and events whose envelope is larger than this are fragmented (0 turns it off).
    #[arg(long, value_name = "BYTES", default_value_t = sockeye_core::codec::DEFAULT_FRAGMENT_THRESHOLD)]
    fragment_threshold: usize,

    /// Largest message accepted (whole, or reassembled from fragments) and sent.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,

    /// Requests running at once per connection; beyond it requests get `err RESOURCE_EXHAUSTED`.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_inflight: usize,

    /// Events queued per subscriber before it is closed with 1013.
    #[arg(long, value_name = "N", default_value_t = 256)]
    outbound_queue: usize,

    /// TCP connections served at once (WebSocket, static file, or waiting for a request); beyond it new
    /// connections get HTTP 503. Default: three quarters of the open-file limit (ulimit -n) less 32.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Bytes of replies and events queued per connection before it is closed with 1013 (more than
    /// --max-message-bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024 * 1024)]
    outbound_bytes: usize,

    /// Bytes of replies and events held for writing across all connections (an event counts once).
    #[arg(long, value_name = "BYTES", default_value_t = 96 * 1024 * 1024)]
    total_outbound_bytes: usize,

    /// Subscriptions across all connections; beyond it `sub` gets `err RESOURCE_EXHAUSTED`.
    #[arg(long, value_name = "N", default_value_t = 64 * 1024)]
    max_total_subscriptions: usize,

    /// Bytes read from sockets and not yet handled, across all connections; the connection whose read would
    /// pass it is closed with 1013.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    total_inbound_bytes: usize,

    /// Bytes of partial fragmented messages held across all connections; the connection that would pass it
    /// is closed with 1013.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    total_reassembly_bytes: usize,

    /// On SIGTERM/SIGINT, close connections at random moments spread over this window.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    drain_window_ms: u64,

    /// Send the `bye` control word before each close frame of a drain.
    #[arg(long)]
    bye: bool,
}

/// The environment variable holding comma-separated accepted tokens.
const TOKENS_VAR: &str = "SOCKEYE_TOKENS";

/// Libraries that log request lines, headers or frames (tokens included) below `info`: capped at `info`
/// whatever `RUST_LOG` says.
const CHATTY_DEPENDENCIES: &[&str] = &[
    "hyper",
    "hyper_util",
    "tower_http",
    "tungstenite",
    "tokio_tungstenite",
    "h2",
    "rustls",
    "mio",
];

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    let tokens = match collect_tokens(&args) {
        Ok(tokens) => tokens,
        Err(e) => {
            eprintln!("sockeye-server: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut limits = Limits::default();
    limits.reassembly.max_message_bytes = args.max_message_bytes;
    limits.max_inflight = args.max_inflight;
    limits.outbound_queue = args.outbound_queue;
    limits.outbound_bytes = args.outbound_bytes;
    limits.total_outbound_bytes = args.total_outbound_bytes;
    limits.max_total_subscriptions = args.max_total_subscriptions;
    limits.total_inbound_bytes = args.total_inbound_bytes;
    limits.total_reassembly_bytes = args.total_reassembly_bytes;
    let mut drain = DrainOptions::with_window(Duration::from_millis(args.drain_window_ms));
    drain.bye = args.bye;

    let mut builder = Server::builder()
        .bind(args.addr)
        .path(args.path)
        .limits(limits)
        .heartbeat((args.heartbeat_ms > 0).then(|| Duration::from_millis(args.heartbeat_ms)))
        .fragment_threshold(args.fragment_threshold)
        .drain_options(drain);
    if !tokens.is_empty() {
        builder = builder.tokens(tokens);
    }
    if let Some(max) = args.max_connections {
        builder = builder.max_connections(max);
    }
    for origin in args.allowed_origins {
        builder = builder.allow_origin(origin);
    }
    if let Some(dir) = &args.static_dir {
        builder = builder.static_dir(dir);
    }

    // Before the listening line: a SIGTERM sent as soon as it is read must drain, not kill.
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let server = match builder.start().await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("sockeye-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "sockeye-server listening on http://{}",
            server.local_addr()
        );
        let _ = stdout.flush();
    }
    if let Some(dir) = &args.static_dir {
        tracing::info!(dir = %dir.display(), "open http://{}/ in a browser", server.local_addr());
    }

    let which = signals.next().await;
    tracing::info!(signal = which, "draining");
    tokio::select! {
        result = server.drain(server.default_drain_options()) => {
            tracing::info!(closed = result.closed, remaining = result.remaining, timed_out = result.timed_out, "drained");
        }
        which = signals.next() => {
            tracing::warn!(signal = which, "second signal: shutting down at once");
        }
    }
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), with [`CHATTY_DEPENDENCIES`] capped at `info`.
fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let wanted = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let caps = CHATTY_DEPENDENCIES.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |caps, target| caps.with_target(*target, LevelFilter::INFO),
    );
    // Both must let an event through, so no `RUST_LOG` directive lifts a cap.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(wanted.and(caps));
    tracing_subscriber::registry().with(layer).init();
}

/// Why the accepted tokens could not be read.
#[derive(Debug, thiserror::Error)]
enum TokenError {
    #[error("--token-file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--token-file {0} holds no token")]
    EmptyFile(PathBuf),
    #[error("{TOKENS_VAR} is not valid UTF-8")]
    NotText,
    #[error("{TOKENS_VAR} is set but holds no token")]
    EmptyVar,
}

/// The accepted tokens: `--token`s, then the lines of `--token-file`, then `SOCKEYE_TOKENS`. A source that is
/// given but holds no token is an error (it would otherwise turn authentication off).
fn collect_tokens(args: &Args) -> Result<Vec<String>, TokenError> {
    let mut tokens = args.tokens.clone();
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
            path: path.clone(),
            source,
        })?;
        extend_tokens(
            &mut tokens,
            text.lines(),
            TokenError::EmptyFile(path.clone()),
        )?;
    }
    if let Some(value) = std::env::var_os(TOKENS_VAR) {
        let value = value.into_string().map_err(|_| TokenError::NotText)?;
        extend_tokens(&mut tokens, value.split(','), TokenError::EmptyVar)?;
    }
    Ok(tokens)
}

/// Adds the non-blank `items` (trimmed) to `tokens`; `empty` when there is none.
fn extend_tokens<'a>(
    tokens: &mut Vec<String>,
    items: impl Iterator<Item = &'a str>,
    empty: TokenError,
) -> Result<(), TokenError> {
    let before = tokens.len();
    tokens.extend(
        items
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
    );
    if tokens.len() == before {
        return Err(empty);
    }
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
