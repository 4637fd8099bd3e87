//! No token, header value or `?token=` reaches a log at any level, from this crate or a dependency, through the
//! library (every `tracing` event and every `log` record, captured at TRACE) or the CLI (`RUST_LOG=trace`).
//!
//! Its own test binary: the library test installs a global subscriber and the `log` bridge.

mod common;

use futures_util::StreamExt;
use sockeye::Status;
use tokio::process::Command;

use common::*;

const SECRETS: [&str; 4] = ["SECRET-T", "SECRET-Q", "SECRET-H", "SECRET-U"];

/// A server that accepts every upgrade, sends `ready` and reads until the client closes.
async fn server() -> RawServer {
    RawServer::start(|mut ws| async move { while let Some(Ok(_)) = ws.next().await {} }).await
}

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

    let server = server().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_no_secret_with_rust_log_trace() {
    let server = server().await;
    let url = server.url();
    for extra in [&[][..], &["--token-in-query"][..]] {
        let output = Command::new(env!("CARGO_BIN_EXE_sockeye"))
            .args([
                "status",
                &url,
                "--token",
                "SECRET-T",
                "-H",
                "X-Api-Key: SECRET-H",
            ])
            .args(extra)
            .env("RUST_LOG", "trace")
            .env_remove("SOCKEYE_TOKEN")
            .kill_on_drop(true)
            .output();
        let output = within("the CLI", output).await.unwrap();
        assert!(output.status.success(), "{output:?}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains("DEBUG"), "nothing logged: {err}");
        for secret in SECRETS {
            assert!(!err.contains(secret), "{secret} logged:\n{err}");
        }
    }
}
