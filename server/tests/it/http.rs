//! Static files and plain HTTP on the WebSocket port.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sockeye_server::{Limits, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sockeye-server-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        TempDir(dir)
    }

    fn write(&self, path: &str, contents: &[u8]) {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create dirs");
        std::fs::write(path, contents).expect("write");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

#[tokio::test]
async fn static_files_are_served_with_their_content_types() {
    let www = TempDir::new();
    www.write("index.html", b"<!doctype html><title>demo</title>");
    www.write("app.js", b"console.log('hi')");
    www.write("style.css", b"body{}");
    www.write("data.json", b"{}");
    www.write("pkg/sockeye_wasm_bg.wasm", b"\0asm\x01\0\0\0");
    www.write("pkg/sockeye_wasm.js", b"export {}");
    www.write("pkg/sockeye.d.ts", b"export {};");
    www.write("sub dir/a b.txt", b"spaced");
    let server = start(Server::builder().static_dir(&www.0)).await;
    let addr = server.local_addr();

    for (path, content_type, body) in [
        ("/", "text/html", &b"<!doctype html><title>demo</title>"[..]),
        (
            "/index.html",
            "text/html",
            b"<!doctype html><title>demo</title>",
        ),
        ("/app.js", "text/javascript", b"console.log('hi')"),
        ("/style.css", "text/css", b"body{}"),
        ("/data.json", "application/json", b"{}"),
        (
            "/pkg/sockeye_wasm_bg.wasm",
            "application/wasm",
            b"\0asm\x01\0\0\0",
        ),
        ("/pkg/sockeye_wasm.js", "text/javascript", b"export {}"),
        ("/pkg/sockeye.d.ts", "text/plain", b"export {};"),
        ("/sub%20dir/a%20b.txt", "text/plain", b"spaced"),
        ("/app.js?v=3", "text/javascript", b"console.log('hi')"),
    ] {
        let (status, headers, got) = http(addr, &get(path)).await;
        assert_eq!(status, 200, "{path}");
        let got_type = headers
            .get("content-type")
            .map(String::as_str)
            .unwrap_or("");
        assert!(
            got_type.starts_with(content_type),
            "{path}: content-type {got_type:?}"
        );
        assert_eq!(got, body, "{path}");
        assert_eq!(
            headers.get("content-length").map(String::as_str),
            Some(body.len().to_string().as_str())
        );
    }

    // HEAD: the headers without the body.
    let (status, headers, body) = http(addr, "HEAD /app.js HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some("17")
    );
    assert!(body.is_empty());
}

#[tokio::test]
async fn missing_files_traversal_and_other_methods_are_refused() {
    let www = TempDir::new();
    www.write("index.html", b"home");
    // A file next to (not inside) the static dir, which traversal would reach.
    let outside = www.0.with_file_name(format!(
        "{}-secret.txt",
        www.0.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&outside, b"secret").expect("write");
    let secret_name = outside
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a name")
        .to_owned();
    let server = start(Server::builder().static_dir(&www.0)).await;
    let addr = server.local_addr();

    for path in [
        "/missing.js".to_owned(),
        format!("/../{secret_name}"),
        format!("/%2e%2e/{secret_name}"),
        format!("/%2E%2E%2F{secret_name}"),
        format!("/..%5c{secret_name}"),
        "/%00".to_owned(),
        "/%zz".to_owned(),
    ] {
        let (status, _, body) = http(addr, &get(&path)).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            !body.starts_with(b"secret"),
            "{path} leaked a file outside the static dir"
        );
    }
    let (status, headers, _) = http(
        addr,
        "POST /index.html HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
    let (status, _, _) = http(addr, "\x16\x03\x01 not http\r\n\r\n").await;
    assert_eq!(status, 400);
    let _ = std::fs::remove_file(outside);
}

#[tokio::test]
async fn without_a_static_dir_everything_but_the_websocket_is_404() {
    let server = start(Server::builder()).await;
    let addr = server.local_addr();
    let (status, _, _) = http(addr, &get("/")).await;
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, &get("/index.html")).await;
    assert_eq!(status, 404);
    // The WebSocket path without an upgrade.
    let (status, headers, _) = http(addr, &get("/ws")).await;
    assert_eq!(status, 426);
    assert_eq!(
        headers.get("upgrade").map(String::as_str),
        Some("websocket")
    );
    // An upgrade with an unsupported version.
    let (status, headers, _) = http(
        addr,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await;
    assert_eq!(status, 426);
    assert_eq!(
        headers.get("sec-websocket-version").map(String::as_str),
        Some("13")
    );
    // The WebSocket still works on the same port.
    let mut ws = connect(&server).await;
    assert_alive(&mut ws, 1).await;
}

#[tokio::test]
async fn the_websocket_path_is_configurable() {
    let server = start(Server::builder().path("/socket")).await;
    assert!(server.ws_url().ends_with("/socket"));
    let mut ws = connect(&server).await;
    assert_alive(&mut ws, 1).await;
    let url = format!("ws://{}/ws", server.local_addr());
    expect_http_refusal(&url, 404).await;
}

/// A FIFO at `path` (opening it for reading blocks until a writer comes).
#[cfg(unix)]
fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[cfg(unix)]
#[tokio::test]
async fn dotfiles_escaping_symlinks_and_non_regular_files_are_refused() {
    let www = TempDir::new();
    www.write("index.html", b"home");
    www.write(".env", b"SECRET=1");
    www.write(".git/config", b"[core]");
    www.write("sub/.hidden", b"hidden");
    www.write("sub/ok.txt", b"fine");
    www.write("pkg/app.wasm", b"\0asm");
    let outside = TempDir::new();
    outside.write("secret.txt", b"secret");
    std::os::unix::fs::symlink(outside.0.join("secret.txt"), www.0.join("leak.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(&outside.0, www.0.join("leakdir")).expect("symlink");
    // A precompressed sibling that escapes: the request for the plain file is refused as a whole.
    std::os::unix::fs::symlink(outside.0.join("secret.txt"), www.0.join("pkg/app.wasm.gz"))
        .expect("symlink");
    // A symlink that stays inside the root is fine.
    std::os::unix::fs::symlink(www.0.join("sub/ok.txt"), www.0.join("alias.txt")).expect("symlink");
    mkfifo(&www.0.join("pipe"));
    mkfifo(&www.0.join("sub/pipe.js"));
    let server = start(Server::builder().static_dir(&www.0)).await;
    let addr = server.local_addr();

    for path in [
        "/.env",
        "/%2eenv",
        "/.git/config",
        "/sub/.hidden",
        "/leak.txt",
        "/leakdir/secret.txt",
        "/leakdir/",
        "/pkg/app.wasm",
        "/pipe",
        "/sub/pipe.js",
    ] {
        let (status, _, body) = http(addr, &get(path)).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            !body.starts_with(b"secret") && !body.starts_with(b"SECRET"),
            "{path} leaked"
        );
    }
    let (status, _, body) = http(addr, &get("/alias.txt")).await;
    assert_eq!((status, &body[..]), (200, &b"fine"[..]));
    // The FIFOs did not tie up the file-system threads: files are still served.
    let (status, _, body) = http(addr, &get("/sub/ok.txt")).await;
    assert_eq!((status, &body[..]), (200, &b"fine"[..]));
}

#[tokio::test]
async fn ranges_conditional_requests_precompressed_files_and_keep_alive() {
    let www = TempDir::new();
    www.write("data.txt", b"0123456789");
    www.write("pkg/sockeye_wasm_bg.wasm", b"\0asm-plain");
    www.write("pkg/sockeye_wasm_bg.wasm.gz", b"gzipped-bytes");
    www.write("pkg/sockeye_wasm_bg.wasm.br", b"brotli-bytes");
    let server = start(Server::builder().static_dir(&www.0)).await;
    let addr = server.local_addr();

    let (status, headers, body) = http(
        addr,
        "GET /data.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=2-5\r\n\r\n",
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(body, b"2345");
    assert_eq!(
        headers.get("content-range").map(String::as_str),
        Some("bytes 2-5/10")
    );

    let (status, headers, _) = http(addr, &get("/data.txt")).await;
    assert_eq!(status, 200);
    let last_modified = headers
        .get("last-modified")
        .expect("a Last-Modified header");
    let (status, _, body) = http(
        addr,
        &format!("GET /data.txt HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: {last_modified}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 304);
    assert!(body.is_empty());

    for (accept, encoding, expected) in [
        ("gzip", Some("gzip"), &b"gzipped-bytes"[..]),
        ("br, gzip;q=0.5", Some("br"), b"brotli-bytes"),
        ("identity", None, b"\0asm-plain"),
    ] {
        let (status, headers, body) = http(
            addr,
            &format!(
                "GET /pkg/sockeye_wasm_bg.wasm HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {accept}\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, 200, "{accept}");
        assert_eq!(
            headers.get("content-encoding").map(String::as_str),
            encoding,
            "{accept}"
        );
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/wasm"),
            "{accept}"
        );
        assert_eq!(body, expected, "{accept}");
    }

    // Two requests on one connection.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(get("/data.txt").as_bytes())
            .await
            .expect("write");
        let (status, _, body) = tokio::time::timeout(PATIENCE, read_response(&mut stream, false))
            .await
            .expect("a response in time");
        assert_eq!((status, &body[..]), (200, &b"0123456789"[..]));
    }
}

/// Reads until the server closes `stream` (or resets it); panics when it stays open past [`PATIENCE`].
async fn expect_closed_by_server(stream: &mut TcpStream, what: &str) {
    let mut sink = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the server kept the connection open"
    );
}

#[tokio::test]
async fn heads_that_never_finish_and_idle_keep_alive_connections_are_closed() {
    let www = TempDir::new();
    www.write("a.txt", b"a");
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_secs(1);
    let server = start(Server::builder().static_dir(&www.0).limits(limits)).await;
    let addr = server.local_addr();

    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    expect_closed_by_server(&mut partial, "a head never finished").await;

    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(get("/a.txt").as_bytes())
        .await
        .expect("write");
    let (status, _, _) = read_response(&mut idle, false).await;
    assert_eq!(status, 200);
    // Kept alive for the next request (well within the timeout)...
    idle.write_all(get("/a.txt").as_bytes())
        .await
        .expect("write");
    let (status, _, _) = read_response(&mut idle, false).await;
    assert_eq!(status, 200);
    // ...and closed once idle.
    expect_closed_by_server(&mut idle, "an idle keep-alive connection").await;
}

#[tokio::test]
async fn oversized_request_heads_are_answered_431() {
    let server = start(Server::builder()).await;
    let addr = server.local_addr();
    let long = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (status, _, _) = http(addr, &long).await;
    assert_eq!(status, 431);
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _, _) = http(addr, &format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).await;
    assert_eq!(status, 431);
    // The WebSocket is unaffected.
    let mut ws = connect(&server).await;
    assert_alive(&mut ws, 1).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_large_file_is_cut_off() {
    const SIZE: usize = 20 * 1024 * 1024;
    let www = TempDir::new();
    www.write("big.bin", &vec![7u8; SIZE]);
    let mut limits = Limits::default();
    limits.write_timeout = Duration::from_millis(300);
    let server = start(Server::builder().static_dir(&www.0).limits(limits)).await;
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(get("/big.bin").as_bytes())
        .await
        .expect("write");
    // Read nothing for a while: the socket buffers fill, the server's writes stall and time out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the server kept sending or kept the connection open"
    );
    assert!(
        received < SIZE,
        "the whole file arrived ({received} bytes): the stalled response was not abandoned"
    );
}

#[tokio::test]
async fn the_connection_cap_answers_503_and_frees_slots_as_connections_close() {
    let server = start(Server::builder().max_connections(2)).await;
    assert_eq!(server.max_connections(), 2);
    let a = connect(&server).await;
    let mut b = connect(&server).await;
    let (status, headers, _) = http(server.local_addr(), &get("/ws")).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
    expect_http_refusal(&server.ws_url(), 503).await;
    drop(a);
    eventually("a slot is free again", || {
        server.stats().connections_open < 2
    })
    .await;
    // The slot is released with the connection's task, just after the count drops.
    let mut c = None;
    for _ in 0..100 {
        if let Ok((mut ws, _)) = connect_with(&server.ws_url(), &[], true).await {
            expect_text(&mut ws, "ready").await;
            c = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = c.expect("a connection is admitted once another closed");
    assert_alive(&mut c, 1).await;
    assert_alive(&mut b, 1).await;
}

#[tokio::test]
async fn timeouts_and_the_cap_are_checked_at_start() {
    let start = |builder: sockeye_server::ServerBuilder| async move {
        builder
            .bind("127.0.0.1:0".parse().expect("an address"))
            .start()
            .await
    };
    for (handshake, write) in [
        (Duration::ZERO, Duration::from_secs(1)),
        (Duration::from_secs(1), Duration::MAX),
    ] {
        let mut limits = Limits::default();
        limits.handshake_timeout = handshake;
        limits.write_timeout = write;
        assert!(matches!(
            start(Server::builder().limits(limits)).await,
            Err(sockeye_server::StartError::InvalidConfig(_))
        ));
    }
    assert!(matches!(
        start(Server::builder().max_connections(0)).await,
        Err(sockeye_server::StartError::InvalidConfig(_))
    ));
    let server = start(Server::builder()).await.expect("the defaults start");
    assert_eq!(
        server.max_connections(),
        sockeye_server::default_max_connections()
    );
}

#[tokio::test]
async fn bytes_sent_right_behind_the_upgrade_request_reach_the_websocket() {
    let server = start(Server::builder()).await;
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    // The upgrade request and a masked `ping` text frame in one write: hyper reads both, and the frame must be
    // handed over with the socket.
    let mut bytes = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let mask = [1u8, 2, 3, 4];
    bytes.extend([0x81, 0x80 | 4]);
    bytes.extend(mask);
    bytes.extend(b"ping".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    stream.write_all(&bytes).await.expect("write");

    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let pong = [0x81, 4, b'p', b'o', b'n', b'g'];
    tokio::time::timeout(PATIENCE, async {
        while !received.windows(pong.len()).any(|w| w == pong) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before pong: {received:?}");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("pong in time");
    assert!(received.starts_with(b"HTTP/1.1 101 "));
}
