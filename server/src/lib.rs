//! The Sockeye reference server: the protocol's peer (`shared/PROTOCOL.md`) for tests, the demo, and a small
//! but real server to start from.
//!
//! It speaks the whole protocol on tokio + tungstenite and reuses `sockeye_core::codec` for the wire format,
//! so client and server cannot drift: the `sockeye.v1` subprotocol, `ready` after authentication, `ping` →
//! `pong`, fragmentation both ways, concurrent requests, topics with per-topic `seq`, heartbeat (4002),
//! authentication (4003 before `ready`), an origin allowlist (1008 before `ready`), and drain (§8). Static
//! files are served on the same port (hyper + tower-http's `ServeDir`), for the demo page and the npm package.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sockeye_server::{Context, RpcError, Server, TopicAccess};
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//! #[derive(Serialize)]
//! struct Sum { sum: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .bind("127.0.0.1:0".parse()?) // port 0: any free port
//!     .tokens(["secret-token"])      // auth: `Authorization: Bearer secret-token` or `?token=secret-token`
//!     .method("add", |_ctx: Context, req: Add| async move { Ok::<_, RpcError>(Sum { sum: req.a + req.b }) })
//!     .authorize_topics(|_who, topic, access| access == TopicAccess::Subscribe || topic.starts_with("chat."))
//!     .start()
//!     .await?;
//! println!("listening on {}", server.ws_url());
//! assert_ne!(server.local_addr().port(), 0);
//! assert_eq!(server.stats().connections_open, 0);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour worth knowing
//!
//! - **Requests** on one connection run concurrently (a slow `sleep` does not hold up a later `echo`), at most
//!   [`Limits::max_inflight`] at once; beyond that the reply is `err RESOURCE_EXHAUSTED`. Unknown methods get
//!   `err UNIMPLEMENTED`. The built-ins (`echo`, `sleep`, `fail`, `whoami`, `close`, `stats`, and the `echo`
//!   message, which is sent back as a `msg`) are described in [`builtins`]; turn them off with
//!   [`ServerBuilder::builtins`].
//! - **Topics**: `sub`/`unsub` are answered with `res` (or `err INVALID_ARGUMENT` for a bad name,
//!   `PERMISSION_DENIED` when the authoriser refuses). `pub` fans out as `evt` to every subscriber, the
//!   publisher included; each topic has a random epoch and a `seq` that starts at 1 and counts every publish
//!   (with or without subscribers); idle topics are forgotten only past a bound (and come back in a new
//!   epoch). A refused `pub` is answered with an `err` without `id`.
//! - **History and resume** (PROTOCOL §9): each topic keeps its last events ([`ServerBuilder::history_size`],
//!   [`ServerBuilder::history_ttl`], [`Limits::total_history_bytes`]); `sub` is answered with `{ep, seq}`, and
//!   with `since` the missed events are replayed (`recovered: true`) or reported lost (`recovered: false`),
//!   atomically with going live. `pub` with `id` is answered with `{ep, seq}`.
//! - **Scale-out** ([`ServerBuilder::redis`]): instances sharing one Redis serve the same topics, with one
//!   sequence and history per topic kept in Redis.
//! - **Queues**: each subscriber has a bounded event queue
//!   ([`Limits::outbound_queue`]); one that overflows is closed with 1013, so a slow subscriber neither stalls
//!   publishers nor silently misses events. Events are encoded once per publish and shared by every
//!   subscriber.
//! - **Bad input** is answered as PROTOCOL.md says: framing violations close with 1002, oversize messages
//!   with 1009, undecodable envelopes get `err INVALID_ARGUMENT` when an `id` can be recovered and close 1007
//!   otherwise. Text frames other than `ping` close with 1002 (PROTOCOL.md names no code; they break §1–2).
//! - **Connection-level notices**: a `msg` without a handler, a refused `pub`, or an `evt` from a client is
//!   answered with an `err` without `id`.
//! - **Heartbeat**: no inbound frame for the configured limit (default 90 s) closes with 4002.
//! - **Backpressure**: a connection's replies are written before more of its frames are read, so a peer that
//!   stops reading its replies stops being read, and is closed with 4002 once the heartbeat limit passes.
//! - **HTTP**: at most [`ServerBuilder::max_connections`] TCP connections at once (default sized to the
//!   open-file limit and to [`MEMORY_TARGET`], [`default_max_connections`]); beyond it new ones get HTTP 503. A request head must arrive
//!   within [`Limits::handshake_timeout`] (also the keep-alive idle timeout), and a response the client stops
//!   reading is abandoned after [`Limits::write_timeout`]. Static files: dotfiles, symlinks leading out of the
//!   directory and non-regular files are 404. A repeated or non-UTF-8 `Origin` closes with 1008.
//! - **Memory budgets**: queued output per connection ([`Limits::outbound_bytes`]) and, server-wide, queued
//!   output, bytes read and not yet handled, and partial messages ([`Limits::total_outbound_bytes`],
//!   [`Limits::total_inbound_bytes`], [`Limits::total_reassembly_bytes`]). The connection that would pass one
//!   is closed with 1013 (a `pub` the output budget cannot hold is refused instead); when the inbound or output
//!   budget is spent, the connection holding the most of it is closed too, and a reader waits for the room
//!   instead of being closed, so small traffic keeps flowing. What a connection holds outside every budget is
//!   small and fixed, and the default connection cap keeps budgets and connections within [`MEMORY_TARGET`].
//!   `SECURITY.md` lists every limit.
//! - **Drain** ([`ServerHandle::drain`]): new upgrades get HTTP 503, open connections are closed at random
//!   moments spread across the window (each slot of `window / n` gets one connection at a random moment).
//!
//! # Where things are
//!
//! Each connection's protocol is a sans-IO state machine (`session/`: `auth.rs` before `ready`, `dispatch.rs`
//! for requests and messages, `topics.rs` for `sub`/`unsub`/`pub` and events, budgets and the heartbeat in
//! `mod.rs`), driven by a tokio task (`shell.rs`) over tungstenite, or in memory and simulated time by
//! [`sim`] (fuzzing and the tests crate's `Pair`). Topics live in `broker/` (embedded or Redis), the HTTP side
//! (upgrade, static files, caps) in `http.rs`, byte budgets in `budget.rs` and `outbound.rs`.
//!
//! # Memory
//!
//! An idle connection holds tungstenite's small buffers ([`Limits::read_buffer_size`],
//! [`Limits::write_buffer_size`]), the reassembler and fragmenter, and no event queue until it subscribes.

pub mod builtins;

mod app;
mod broker;
mod budget;
mod config;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod outbound;
mod server;
mod session;
mod shell;
#[doc(hidden)]
pub mod sim;

pub use app::{Context, Identity, RpcError, TopicAccess};
pub use config::{
    Auth, Credentials, DrainOptions, DrainResult, Limits, MEMORY_TARGET, SERVER_FRAGMENT_THRESHOLD,
};
pub use http::SUBPROTOCOL;
pub use server::{default_max_connections, Server, ServerBuilder, ServerHandle, Stats};

/// Re-exported for convenience: payloads, codes and limits used in this crate's API.
pub use sockeye_core::codec::{Payload, ReassemblyLimits};
pub use sockeye_core::error::{CloseCode, ErrorCode};

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("static directory {path}: {source}")]
    StaticDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("invalid topic: {0}")]
    InvalidTopic(sockeye_core::codec::InvalidTopic),
    #[error("cannot encode the payload: {0}")]
    Encode(sockeye_core::codec::PayloadError),
    #[error("event of {size} bytes exceeds the message size limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Replies and events already held for writing fill the server-wide budget
    /// ([`Limits::total_outbound_bytes`]).
    #[error("the server's output budget of {limit} bytes is spent: try again later")]
    Busy { limit: usize },
    /// With Redis: the event cannot be handed to Redis now (too many publishes waiting, or too large).
    #[error("{0}")]
    Unavailable(String),
}
