//! The `sockeye-server` binary: its stdout line, its flags, and draining on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::*;

const BINARY: &str = env!("CARGO_BIN_EXE_sockeye-server");

/// Starts the binary on a free port and returns it with the address from its stdout line.
/// The third value collects any further stdout lines (there must be none).
async fn spawn(args: &[&str]) -> (Child, String, tokio::task::JoinHandle<Vec<String>>) {
    let mut child = Command::new(BINARY)
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read stdout")
        .expect("one line");
    let addr = line
        .strip_prefix("sockeye-server listening on http://")
        .expect("the documented line")
        .to_owned();
    assert!(
        !addr.ends_with(":0"),
        "the line names the bound port: {line}"
    );
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(extra)) = lines.next_line().await {
            rest.push(extra);
        }
        rest
    });
    (child, addr, rest)
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("the child is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn the_binary_prints_its_address_and_drains_on_sigterm() {
    let (mut child, addr, rest) = spawn(&["--drain-window-ms", "300", "--bye"]).await;
    let url = format!("ws://{addr}/ws");
    let mut a = connect_url(&url, &[]).await;
    let mut b = connect_url(&url, &[]).await;
    assert_alive(&mut a, 1).await;
    sigterm(&child);
    let (texts_a, texts_b) = tokio::join!(expect_close(&mut a, 1001), expect_close(&mut b, 1001));
    assert_eq!(
        (texts_a, texts_b),
        (vec!["bye".to_owned()], vec!["bye".to_owned()])
    );
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    let rest = rest.await.expect("the stdout reader finishes");
    assert!(
        rest.is_empty(),
        "stdout has more than the one line: {rest:?}"
    );
}

#[tokio::test]
async fn the_binary_checks_tokens_and_serves_static_files() {
    let dir = std::env::temp_dir().join(format!("sockeye-server-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create dir");
    std::fs::write(dir.join("index.html"), b"<h1>demo</h1>").expect("write");
    let dir_arg = dir.to_str().expect("a UTF-8 temp path").to_owned();
    let (mut child, addr, _) =
        spawn(&["--token", "t1", "--token", "t2", "--static-dir", &dir_arg]).await;
    let url = format!("ws://{addr}/ws");
    let mut ws = connect_url(&format!("{url}?token=t2"), &[]).await;
    let reply = call(&mut ws, 1, "whoami", None).await;
    assert_eq!(
        get_text(&expect_res(&reply, 1).expect("d"), "identity"),
        Some("token-2")
    );
    let (mut refused, _) = connect_with(&url, &[], true).await.expect("upgrade");
    expect_close(&mut refused, 4003).await;
    let (status, headers, body) =
        http(addr.parse().expect("an address"), "GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(headers
        .get("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert_eq!(body, b"<h1>demo</h1>");
    sigterm(&child);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn help_documents_every_flag() {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(BINARY).arg("--help").output(),
    )
    .await
    .expect("in time")
    .expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--addr",
        "--path",
        "--static-dir",
        "--token",
        "--allow-origin",
        "--heartbeat-ms",
        "--fragment-threshold",
        "--max-message-bytes",
        "--max-inflight",
        "--outbound-queue",
        "--outbound-bytes",
        "--total-outbound-bytes",
        "--total-inbound-bytes",
        "--total-reassembly-bytes",
        "--max-total-subscriptions",
        "--drain-window-ms",
        "--bye",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[tokio::test]
async fn a_port_in_use_is_a_clean_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let output = tokio::time::timeout(
        PATIENCE,
        Command::new(BINARY).args(["--addr", &addr]).output(),
    )
    .await
    .expect("in time")
    .expect("run");
    assert!(!output.status.success());
    assert!(
        output.stdout.is_empty(),
        "no listening line when not listening"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot listen"));
}
