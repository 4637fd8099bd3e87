//! Integration tests: the server driven by a raw tokio-tungstenite client over loopback.

mod auth;
mod bad_input;
mod binary;
mod budgets;
mod common;
mod http;
mod lifecycle;
mod protocol;
