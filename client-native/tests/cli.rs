//! The `sockeye` binary, run as a process against a live in-process reference server.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use common::*;

fn sockeye() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockeye"));
    command
        .env_remove("SOCKEYE_TOKEN")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    command
}

async fn run(args: &[&str]) -> Output {
    within("the CLI", sockeye().args(args).output())
        .await
        .expect("the CLI runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_prints_the_reply_as_json() {
    let server = server().await;
    let output = run(&[
        "request",
        &server.ws_url(),
        "echo",
        r#"{"a":[1,-2,"x",null,2.5]}"#,
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&output),
        [json!({ "a": [1, -2, "x", null, 2.5] })]
    );

    // No payload: null; stdin with `-`.
    let output = run(&["request", &server.ws_url(), "echo"]).await;
    assert_eq!(stdout(&output).trim(), "null");
    let mut child = sockeye()
        .args(["request", &server.ws_url(), "echo", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"["from", "stdin"]"#)
        .await
        .unwrap();
    let output = within("the CLI", child.wait_with_output()).await.unwrap();
    assert_eq!(json_lines(&output), [json!(["from", "stdin"])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_exit_5_with_code_and_message() {
    let server = server().await;
    let output = run(&[
        "request",
        &server.ws_url(),
        "fail",
        r#"{"code":"NOT_FOUND","msg":"no such thing"}"#,
    ])
    .await;
    assert_eq!(output.status.code(), Some(5));
    let err = stderr(&output);
    assert!(
        err.contains("NOT_FOUND") && err.contains("no such thing"),
        "{err}"
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_exit_4() {
    let server = server().await;
    let output = run(&[
        "request",
        "--timeout",
        "200ms",
        &server.ws_url(),
        "sleep",
        r#"{"ms":3000}"#,
    ])
    .await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("deadline exceeded") || stderr(&output).contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_exit_3_and_credentials_work() {
    let server = start(server_builder().tokens(["good"])).await;
    let url = server.ws_url();
    let output = run(&["request", "--token", "bad", &url, "echo", "1"]).await;
    assert_eq!(output.status.code(), Some(3));
    let err = stderr(&output);
    assert!(
        err.contains("authentication failed") && !err.contains("bad"),
        "{err}"
    );

    let output = run(&["request", "--token", "good", &url, "echo", "1"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run(&[
        "request",
        "-H",
        "Authorization: Bearer good",
        &url,
        "echo",
        "2",
    ])
    .await;
    assert_eq!(stdout(&output).trim(), "2", "{}", stderr(&output));
    let output = run(&[
        "request",
        "--token",
        "good",
        "--token-in-query",
        &url,
        "echo",
        "3",
    ])
    .await;
    assert_eq!(stdout(&output).trim(), "3", "{}", stderr(&output));
    let output = within(
        "the CLI",
        sockeye()
            .args(["request", &url, "echo", "4"])
            .env("SOCKEYE_TOKEN", "good")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(stdout(&output).trim(), "4", "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_exit_3() {
    let addr = free_port().await;
    let url = format!("ws://{addr}/ws");
    let output = run(&[
        "request",
        "--max-attempts",
        "2",
        "--base-delay-ms",
        "10",
        &url,
        "echo",
    ])
    .await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("gave up after 2 attempts"),
        "{}",
        stderr(&output)
    );
    let output = run(&["status", "--no-reconnect", &url]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let server = server().await;
    for args in [
        vec!["request", server.ws_url().leak(), "echo", "{not json"],
        vec!["request", "http://example.com/ws", "echo"],
        vec![
            "request",
            "-H",
            "no-colon-here",
            server.ws_url().leak(),
            "echo",
        ],
        vec![
            "request",
            "--ca-cert",
            "/nonexistent.pem",
            server.ws_url().leak(),
            "echo",
        ],
        vec!["publish", server.ws_url().leak(), "$reserved", "1"],
        vec![
            "request",
            "--timeout",
            "soon",
            server.ws_url().leak(),
            "echo",
        ],
        vec!["listen", server.ws_url().leak()],
        vec!["frobnicate"],
    ] {
        let output = run(&args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_delivers_a_message() {
    let server = server().await;
    let output = run(&["send", &server.ws_url(), "note", r#"{"n":5}"#]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(output.stdout.is_empty());
    // The `msg` frame reached the server before the close. (The reference server drops message handlers
    // still pending when the peer closes, so a handler cannot be used to observe this reliably.)
    eventually("the message frame", || server.stats().frames_in >= 1).await;
    eventually("the close", || server.stats().connections_open == 0).await;
    assert_eq!(server.stats().frames_in, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_published_events_as_json_lines() {
    let server = server().await;
    let url = server.ws_url();
    let listener = sockeye()
        .args(["listen", &url, "alpha", "beta", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("both subscriptions", || server.stats().topics == 2).await;
    let output = run(&["publish", &url, "alpha", r#"{"x":1}"#]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run(&["publish", &url, "beta", "[1,2]"]).await;
    assert!(output.status.success(), "{}", stderr(&output));

    let output = within("listen to exit", listener.wait_with_output())
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(
        lines,
        [
            json!({ "topic": "alpha", "seq": 1, "data": { "x": 1 } }),
            json!({ "topic": "beta", "seq": 1, "data": [1, 2] })
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_transitions_until_ready() {
    let server = server().await;
    let output = run(&["status", &server.ws_url()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.first().unwrap()["to"], "connecting");
    assert_eq!(lines.first().unwrap()["attempt"], 1);
    assert_eq!(lines.last().unwrap()["to"], "ready");

    // --watch keeps printing until the timeout.
    let output = run(&["status", "--watch", "--timeout", "300ms", &server.ws_url()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(json_lines(&output).last().unwrap()["to"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_ca_certificate() {
    let server = server().await;
    let (addr, cert_pem) = tls_proxy(server.local_addr()).await;
    let dir = std::env::temp_dir().join(format!(
        "sockeye-cli-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("ca.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    let url = format!("wss://localhost:{}/ws", addr.port());
    let output = run(&[
        "request",
        "--ca-cert",
        cert.to_str().unwrap(),
        &url,
        "echo",
        r#""secure""#,
    ])
    .await;
    assert_eq!(stdout(&output).trim(), r#""secure""#, "{}", stderr(&output));
    // Without it the certificate is not trusted.
    let output = run(&["request", "--max-attempts", "1", &url, "echo"]).await;
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).to_lowercase().contains("certificate"),
        "{}",
        stderr(&output)
    );
    let _ = std::fs::remove_dir_all(dir);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
