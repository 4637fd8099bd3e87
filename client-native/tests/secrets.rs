//! No token, header value or `?token=` reaches a log at any level, from this crate or a dependency: every
//! `tracing` event and every `log` record of a library client, captured at TRACE. (The CLI's counterpart,
//! under `RUST_LOG=trace`, is in `cli.rs`.)
//!
//! Its own test binary: it installs a global subscriber and the `log` bridge.

mod common;

use sockeye::Status;

use common::*;

/// Before, tungstenite's handshake logged `Request: "GET /ws?token=… Authorization: Bearer …"` at trace.
#[tokio::test]
async fn the_library_logs_no_secret_at_trace_level_through_tracing_or_log() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let logs = Logs::default();
    let writer = logs.clone();
    // `try_init` also installs the `log` → `tracing` bridge, so tungstenite's and rustls' `log` records land here.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        )
        .try_init()
        .expect("the only subscriber in this binary");

    let server = silent_server().await;
    let port = server.addr.port();
    let with_query = format!("ws://user:SECRET-U@127.0.0.1:{port}/ws?x=1");
    for (url, in_query) in [(server.url(), false), (with_query, true)] {
        let token = if in_query { "SECRET-Q" } else { "SECRET-T" };
        let client = fast(url)
            .token(token)
            .token_in_query(in_query)
            .header("X-Api-Key", "SECRET-H")
            .connect();
        let client = within("connect", client).await.unwrap();
        assert_eq!(client.state(), Status::Ready);
        client.close().await;
    }
    let logs = logs.text();
    // The capture works: trace records of this crate and of tungstenite (through `log`) are in it.
    assert!(
        logs.contains("TRACE") && logs.contains("tungstenite"),
        "nothing captured at trace: {logs}"
    );
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}
