//! Sockeye for tokio services: a WebSocket client that keeps its connection alive, honest and useful.
//!
//! `sockeye` binds the sans-IO core [`sockeye_core`] to tokio and tokio-tungstenite. A [`Client`] holds one
//! connection to a Sockeye server (PROTOCOL.md): it authenticates every upgrade, reconnects with full-jitter
//! backoff, keeps the connection alive with `ping`s, queues what is sent while offline, correlates requests
//! with typed replies and deadlines, and keeps topic subscriptions across reconnects. Every decision (when to
//! retry, what a close code means, when a request times out) is the core's; this crate performs them.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = sockeye_server::Server::builder()
//! #     .bind("127.0.0.1:0".parse()?)
//! #     .tokens(["s3cret"])
//! #     .start()
//! #     .await?;
//! # let url = server.ws_url();
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//! use sockeye::{Client, Status};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Greeting {
//!     text: String,
//! }
//!
//! // `url` is e.g. "ws://127.0.0.1:8080/ws".
//! let client = Client::builder(url)
//!     .token("s3cret") // sent as `Authorization: Bearer s3cret`
//!     .request_timeout(Duration::from_secs(5))
//!     .connect() // waits for the server's `ready`
//!     .await?;
//! assert_eq!(client.state(), Status::Ready);
//!
//! let sent = Greeting { text: "hello".into() };
//! let echoed: Greeting = client.request("echo", &sent).await?;
//! assert_eq!(echoed, sent);
//!
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Lifecycle
//!
//! [`ClientBuilder::build`] spawns the client's task, which starts connecting at once;
//! [`ClientBuilder::connect`] also waits for `ready`. States follow PROTOCOL §7 ([`Status`]): `connecting`,
//! `connected` (socket open, waiting for `ready`), `ready`, `reconnecting`, `disconnected`. Observe them with
//! [`Client::state`], [`Client::transitions`] and [`Client::wait_for`]. A close with 4003 (or an upgrade
//! refused with HTTP 401/403) or 1008 is terminal; everything else is retried. [`Client::close`] ends it all.
//!
//! What happens to the connection is reported as the core decides it, never guessed by this crate:
//! [`Client::events`] yields [`ClientEvent::Disconnected`] with the close code, reason and whether the client
//! will reconnect, [`ClientEvent::Reconnected`], [`ClientEvent::Draining`] and the server's connection-level
//! errors; [`Subscription::state`] and [`Subscription::states`] tell whether a topic is pending, live on the
//! current connection, or refused ([`SubscriptionState`]).
//!
//! # Errors
//!
//! One [`Error`] enum, whose [`Error::code`] is the protocol's error code: `DEADLINE_EXCEEDED` for a request
//! timeout, `UNAVAILABLE` for a request cut off by a lost connection, `CANCELLED` for a dropped request
//! future, `RESOURCE_EXHAUSTED` for a full offline queue, and the server's own codes with message and details.
//!
//! # Logging
//!
//! The client emits [`tracing`] events inside a `sockeye` span (carrying the URL without its query): state
//! transitions and disconnect reasons at `info`, attempts, delays and socket failures at `debug`. Tokens and
//! header values are never logged, by this crate or its dependencies, at any level: the upgrade request is sent
//! by hyper (which does not log), never handed to tungstenite (whose handshake logs the whole request at
//! `trace` through the `log` crate), and URLs are logged without user info or query. Text the server controls
//! (close reasons, `err` messages) is logged quoted, with control characters escaped.
//!
//! # The `sockeye` CLI
//!
//! The crate also builds the `sockeye` binary, a command-line client for the protocol (requests, messages,
//! subscriptions, status) with JSON in and out; see `sockeye --help`.
//!
//! # Panics
//!
//! Nothing in this crate panics on input from the network.

mod builder;
mod client;
mod driver;
mod error;
mod handlers;
mod requests;
mod streams;
mod subscriptions;
mod transport;

pub use builder::ClientBuilder;
pub use client::Client;
pub use error::Error;
pub use requests::{PublishFuture, RequestFuture, SendFuture};
pub use sockeye_core::SUBPROTOCOL;
pub use streams::{ClientEvent, Events, Incoming, Listening, Message, Transitions};
pub use subscriptions::{
    Subscription, SubscriptionItem, SubscriptionState, SubscriptionStates, TopicEvent,
};
pub use transport::Certificate;

pub use sockeye_core::codec::{Payload, TopicPosition};
pub use sockeye_core::{
    CloseCode, CloseReason, DisconnectReason, ErrorCode, Instant, Status, Transition,
};
