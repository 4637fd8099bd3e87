//! Static files and plain HTTP on the WebSocket port.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use sockeye_server::Server;

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
    match connect_with(&url, &[], true).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!(
            "expected HTTP 404, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
}
