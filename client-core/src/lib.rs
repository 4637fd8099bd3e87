//! The sans-IO core of Sockeye, a WebSocket client that keeps a connection alive, honest and useful.
//!
//! This crate does no I/O, reads no clock and draws no randomness of its own: it is the connection
//! lifecycle (PROTOCOL §7), full-jitter backoff, keepalive, request correlation with deadlines, the bounded
//! offline queue, topic subscriptions that survive reconnects and resume where they left off (PROTOCOL §9:
//! `since`, duplicates dropped, every gap, reset and resume reported as an [`Event`]), acknowledged publishes,
//! and the wire codec ([`codec`]). Shells bind it to
//! a socket and a timer: `sockeye-wasm` to the browser's `WebSocket`, `sockeye` to tokio.
//!
//! # The driver contract
//!
//! A shell owns one [`Connection`] and:
//!
//! 1. feeds everything that happens with [`Connection::handle_input`]`(now, input)`, and the application's
//!    commands with [`Connection::send`], [`Connection::request`], [`Connection::subscribe`], … — every call
//!    takes `now` first (an [`Instant`] on the shell's own clock);
//! 2. after every call, drains [`Connection::poll_output`] until it returns `None` (**the drain rule**; debug
//!    builds assert it on the next input), acting on each [`Output`] in order: open or close a socket, send a
//!    frame, hand an [`Event`] to the application;
//! 3. arms exactly **one timer** for [`Connection::poll_timeout`] and feeds [`Input::Timeout`] when it fires.
//!    Early or late timeouts are harmless; the core checks every deadline against `now` itself.
//!
//! Randomness (backoff jitter) comes from [`Config::seed`], which shells seed from their platform; tests fix it,
//! so every run is reproducible. `client-core/clippy.toml` makes `cargo clippy -p sockeye-core` refuse clock,
//! randomness and I/O calls in this crate.
//!
//! # Example
//!
//! A whole connection, driven by hand: the "server" here is the test writing frames into the core.
//!
//! ```
//! use sockeye_core::{Config, Connection, Event, Input, Instant, Output, Status};
//! use sockeye_core::codec::{Envelope, Payload};
//!
//! let mut conn = Connection::new(Config::default()).expect("defaults are valid");
//! let t0 = Instant::from_millis(0);
//!
//! // Issued while offline: waits in the queue.
//! let id = conn.request(t0, "echo", Some(Payload::encode(&"hi").unwrap()), None).unwrap();
//!
//! conn.handle_input(t0, Input::Start);
//! let mut socket = None;
//! while let Some(out) = conn.poll_output() {
//!     if let Output::OpenSocket { socket: s, .. } = out {
//!         socket = Some(s); // a shell would open a WebSocket here
//!     }
//! }
//! let socket = socket.expect("start opens a socket");
//!
//! conn.handle_input(t0, Input::SocketOpened { socket });
//! while conn.poll_output().is_some() {}
//! conn.handle_input(t0, Input::SocketText { socket, text: "ready" });
//! assert_eq!(conn.status(), &Status::Ready);
//!
//! // On `ready` the queued request goes out as one binary frame (kind byte 0, then the envelope).
//! let mut sent = Vec::new();
//! while let Some(out) = conn.poll_output() {
//!     if let Output::SendBinary(frame) = out {
//!         sent.push(frame);
//!     }
//! }
//! assert_eq!(Envelope::decode(&sent[0][1..]).unwrap().id(), Some(id.0));
//!
//! // The server's reply completes it.
//! let reply = Envelope::Res { id: id.0, data: Some(Payload::encode(&"hi").unwrap()) };
//! let mut frame = vec![0u8];
//! frame.extend(reply.encode());
//! conn.handle_input(Instant::from_millis(5), Input::SocketBinary { socket, data: &frame });
//! match conn.poll_output() {
//!     Some(Output::Event(Event::Reply { id: done, result: Ok(Some(data)) })) => {
//!         assert_eq!(done, id);
//!         assert_eq!(data.decode::<String>().unwrap(), "hi");
//!     }
//!     other => panic!("expected the reply, got {other:?}"),
//! }
//! ```
//!
//! # Panics
//!
//! Never on input from the network: every decoder returns a typed error that maps to the close code or `err`
//! reply PROTOCOL.md names.
//!
//! # Features
//!
//! `std` (default): [`entropy_seed`]. Without it the crate is `no_std` and needs only `alloc` (the browser
//! package builds it so). `serde` (default): typed payloads, [`Payload::encode`](codec::Payload::encode) and
//! [`Payload::decode`](codec::Payload::decode).

// Tests (unit tests here, with or without `std`) keep the standard library and its prelude.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

extern crate alloc;

mod backoff;
pub mod codec;
mod config;
mod connection;
pub mod error;
pub mod handshake;
mod link;
mod queue;
mod reply;
mod requests;
mod state;
mod text;
pub mod time;
mod topics;

#[cfg(feature = "std")]
pub use backoff::entropy_seed;
pub use backoff::{cap_ms as backoff_cap_ms, delay as backoff_delay, Rng};
pub use config::{Config, ConfigError, QueueLimits, ReconnectConfig};
pub use connection::{Connection, Event, Input, Output, SendError, SocketId};
pub use error::{CloseCode, CloseReason, ErrorCode};
pub use handshake::SUBPROTOCOL;
pub use requests::{RequestError, RequestId};
pub use state::{terminal_reason, DisconnectReason, Status, Transition};
pub use time::{Duration, Instant};
pub use topics::SubscriptionState;
