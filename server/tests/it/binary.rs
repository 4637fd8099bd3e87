//! The `sockeye-server` binary: its stdout line, its flags, and draining on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::*;

const BINARY: &str = env!("CARGO_BIN_EXE_sockeye-server");

/// Starts the binary on a free port and returns it with the address from its stdout line.
/// The third value collects any further stdout lines (there must be none).
async fn spawn(args: &[&str]) -> (Child, String, tokio::task::JoinHandle<Vec<String>>) {
    spawn_with(args, |_| {}).await
}

/// [`spawn`], with `configure` applied to the command last (stderr is discarded unless it says otherwise).
async fn spawn_with(
    args: &[&str],
    configure: impl FnOnce(&mut Command),
) -> (Child, String, tokio::task::JoinHandle<Vec<String>>) {
    let mut command = Command::new(BINARY);
    command
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    configure(&mut command);
    let mut child = command.spawn().expect("the binary starts");
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
        "--token-file",
        "SOCKEYE_TOKENS",
        "--max-connections",
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

/// Collects the child's stderr lines as they come (stderr must have been piped).
fn collect_stderr(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let stderr = child.stderr.take().expect("piped stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let lines = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("not poisoned").push(line);
            }
        })
    };
    (lines, task)
}

async fn exit_on_sigterm(mut child: Child) {
    sigterm(&child);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

async fn whoami(url: &str, headers: &[(&str, &str)]) -> String {
    let mut ws = connect_url(url, headers).await;
    let reply = call(&mut ws, 1, "whoami", None).await;
    get_text(&expect_res(&reply, 1).expect("d"), "identity")
        .expect("an identity")
        .to_owned()
}

#[tokio::test]
async fn tokens_come_from_a_file_and_the_environment_too() {
    let dir = std::env::temp_dir().join(format!("sockeye-server-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create dir");
    let file = dir.join("tokens");
    std::fs::write(&file, b"  f1  \n\nf2\r\n").expect("write");
    let file_arg = file.to_str().expect("a UTF-8 temp path").to_owned();
    let (child, addr, _) = spawn_with(&["--token", "c1", "--token-file", &file_arg], |command| {
        command.env("SOCKEYE_TOKENS", "e1, e2,");
    })
    .await;
    let url = format!("ws://{addr}/ws");
    for (token, identity) in [
        ("c1", "token-1"),
        ("f1", "token-2"),
        ("f2", "token-3"),
        ("e1", "token-4"),
        ("e2", "token-5"),
    ] {
        assert_eq!(
            whoami(&format!("{url}?token={token}"), &[]).await,
            identity,
            "{token}"
        );
    }
    let (mut refused, _) = connect_with(&format!("{url}?token=f3"), &[], true)
        .await
        .expect("upgrade");
    expect_close(&mut refused, 4003).await;
    exit_on_sigterm(child).await;

    // A token source that holds no token is an error, not "authentication off".
    std::fs::write(&file, b"\n  \n").expect("write");
    for (args, env) in [
        (vec!["--token-file", file_arg.as_str()], None),
        (vec![], Some(" , ")),
    ] {
        let mut command = Command::new(BINARY);
        command
            .args(["--addr", "127.0.0.1:0"])
            .args(&args)
            .env_remove("SOCKEYE_TOKENS");
        if let Some(value) = env {
            command.env("SOCKEYE_TOKENS", value);
        }
        let output = tokio::time::timeout(PATIENCE, command.output())
            .await
            .expect("in time")
            .expect("run");
        assert!(!output.status.success(), "{args:?} {env:?} started");
        assert!(output.stdout.is_empty(), "{args:?} {env:?} listened");
        assert!(String::from_utf8_lossy(&output.stderr).contains("no token"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Raises this process's soft open-file limit to at least `want` (within the hard limit).
#[cfg(unix)]
fn raise_own_file_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to one `rlimit` each.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Runs the child with at most `files` open files, logging at `info` to a piped stderr.
#[cfg(unix)]
fn limit_files(command: &mut Command, files: u64) {
    command.stderr(Stdio::piped()).env("RUST_LOG", "info");
    // SAFETY: `setrlimit` is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Log lines containing any of `needles`.
fn count_lines(log: &Mutex<Vec<String>>, needles: &[&str]) -> usize {
    log.lock()
        .expect("not poisoned")
        .iter()
        .filter(|line| needles.iter().any(|n| line.contains(n)))
        .count()
}

#[cfg(unix)]
#[tokio::test]
async fn failing_accepts_are_logged_once_not_per_attempt() {
    // A cap above what 48 files allow: accept() itself fails once the table is full.
    let (mut child, addr, _) = spawn_with(
        &["--max-connections", "1000", "--drain-window-ms", "100"],
        |command| {
            limit_files(command, 48);
        },
    )
    .await;
    let (log, _) = collect_stderr(&mut child);
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect (the backlog takes it)"),
        );
    }
    // The accept loop retries every 50 ms: a second's worth of failures.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    eventually("the failure is logged", || {
        count_lines(&log, &["accept failed"]) > 0
    })
    .await;
    let lines = count_lines(&log, &["accept failed"]);
    assert_eq!(lines, 1, "accept failures logged {lines} times");
    drop(held);
    // Descriptors come back as the held connections close: serving again.
    let url = format!("ws://{addr}/ws");
    let mut admitted = None;
    for _ in 0..200 {
        if let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(1), connect_with(&url, &[], true)).await
        {
            expect_text(&mut ws, "ready").await;
            admitted = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_alive(&mut admitted.expect("admitted again"), 1).await;
    exit_on_sigterm(child).await;
}

#[cfg(unix)]
#[tokio::test]
async fn under_a_1024_file_limit_the_server_caps_connections_and_answers_503() {
    raise_own_file_limit(4096);
    let (mut child, addr, _) = spawn_with(&["--drain-window-ms", "100"], |command| {
        limit_files(command, 1024);
    })
    .await;
    let (log, _) = collect_stderr(&mut child);
    let cap_in_log = || {
        log.lock().expect("not poisoned").iter().find_map(|line| {
            let (_, rest) = line.split_once("max_connections=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        })
    };
    eventually("the listening line names the connection cap", || {
        cap_in_log().is_some()
    })
    .await;
    let cap = cap_in_log().expect("a cap");
    assert!(
        cap > 0 && cap <= 1024 - 64,
        "cap {cap} leaves no room under 1024 files"
    );

    let url = format!("ws://{addr}/ws");
    let mut idle = Vec::with_capacity(cap);
    for _ in 0..cap {
        idle.push(connect_url(&url, &[]).await);
    }
    // Full: a new client is told so at once, over plain HTTP and as a WebSocket.
    let (status, _, _) = http(
        addr.parse().expect("an address"),
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503);
    expect_http_refusal(&url, 503).await;
    // A storm of refused connections logs a line or two, not one per connection.
    for _ in 0..200 {
        let _ = http(
            addr.parse().expect("an address"),
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
    }
    drop(idle);
    // Serving again once connections went away.
    let mut admitted = None;
    for _ in 0..200 {
        if let Ok((mut ws, _)) = connect_with(&url, &[], true).await {
            expect_text(&mut ws, "ready").await;
            admitted = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_alive(&mut admitted.expect("admitted again"), 1).await;
    let refusal_lines = count_lines(&log, &["connection limit reached", "accept failed"]);
    assert!(
        (1..=2).contains(&refusal_lines),
        "{refusal_lines} refusal log lines"
    );
    exit_on_sigterm(child).await;
}

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    const SECRET: &str = "SECRET-7f3a";
    let (mut child, addr, _) = spawn_with(
        &[
            "--token",
            SECRET,
            "--allow-origin",
            "http://good.example",
            "--drain-window-ms",
            "100",
        ],
        |command| {
            command.stderr(Stdio::piped()).env(
                "RUST_LOG",
                "trace,hyper=trace,tungstenite=trace,tokio_tungstenite=trace",
            );
        },
    )
    .await;
    let stderr = child.stderr.take().expect("piped stderr");
    let log = tokio::spawn(async move {
        let mut all = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut all).await;
        all
    });
    let url = format!("ws://{addr}/ws");
    let bearer = format!("Bearer {SECRET}");
    let with_query = format!("{url}?token={SECRET}");

    // Accepted, with the token in both places, and used: the secret also travels in a payload, which
    // tungstenite traces frame by frame unless its level is capped.
    let mut ws = connect_url(&with_query, &[("Authorization", &bearer)]).await;
    let reply = call(&mut ws, 1, "echo", Some(text(SECRET))).await;
    assert_eq!(expect_res(&reply, 1), Some(text(SECRET)));
    drop(ws);
    // Refused: a wrong token (4003), and an origin not allowed (1008), both carrying the secret.
    let wrong = format!("Bearer {SECRET}-wrong");
    let (mut ws, _) = connect_with(
        &format!("{with_query}-wrong"),
        &[("Authorization", &wrong)],
        true,
    )
    .await
    .expect("upgrade");
    expect_close(&mut ws, 4003).await;
    let origin = format!("http://{SECRET}.example");
    let (mut ws, _) = connect_with(
        &with_query,
        &[("Authorization", &bearer), ("Origin", &origin)],
        true,
    )
    .await
    .expect("upgrade");
    expect_close(&mut ws, 1008).await;
    // Plain HTTP on the WebSocket path and elsewhere.
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    for path in ["/ws", "/index.html"] {
        let request = format!(
            "GET {path}?token={SECRET} HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\r\n"
        );
        let (status, _, _) = http(addr, &request).await;
        assert!(status >= 400, "{path}: {status}");
    }

    exit_on_sigterm(child).await;
    let log = tokio::time::timeout(PATIENCE, log)
        .await
        .expect("stderr ends")
        .expect("read stderr");
    assert!(
        log.contains("DEBUG"),
        "logging below info was not on:\n{log}"
    );
    assert!(!log.contains(SECRET), "the secret reached the log:\n{log}");
}
