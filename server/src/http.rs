//! HTTP/1.1 on the listening port: the WebSocket upgrade on the configured path, static files elsewhere.
//!
//! The request head is read and parsed here (with `httparse`) for both, so one read decides between upgrade
//! and file; the upgrade response is written here too, and the socket is handed to tungstenite with whatever
//! bytes followed the head. Every response other than `101` ends the connection (`Connection: close`).

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::budget::Metered;
use crate::connection::{self, Upgraded};
use crate::server::Shared;

/// The subprotocol a Sockeye server echoes (PROTOCOL §1).
pub const SUBPROTOCOL: &str = "sockeye.v1";

/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// What the server needs from a request head.
#[derive(Debug, Default)]
struct RequestHead {
    method: String,
    /// Percent-encoded path, without the query.
    path: String,
    query: Option<String>,
    /// HTTP/1.x minor version.
    minor_version: u8,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    ws_key: Option<String>,
    ws_version: Option<String>,
    offers_subprotocol: bool,
    authorization: Option<String>,
    origin: Option<String>,
}

enum HeadError {
    /// The peer closed or the socket failed before a whole head arrived.
    Io,
    TooLarge,
    Malformed,
}

/// Serves one accepted TCP connection.
pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let timeout = shared.config.limits.handshake_timeout;
    let (head, leftover) = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
        Ok(Ok(read)) => read,
        Ok(Err(HeadError::TooLarge)) => {
            respond(
                &mut stream,
                431,
                "Request Header Fields Too Large",
                &[],
                "request head too large\n",
            )
            .await;
            return;
        }
        Ok(Err(HeadError::Malformed)) => {
            respond(&mut stream, 400, "Bad Request", &[], "malformed request\n").await;
            return;
        }
        Ok(Err(HeadError::Io)) => return,
        Err(_) => {
            tracing::debug!(%peer, "no request head in time");
            return;
        }
    };
    if head.path == shared.config.path {
        upgrade(shared, stream, head, leftover, peer).await;
    } else {
        serve_static(&shared, &mut stream, &head).await;
    }
}

/// Reads until the end of the request head. Returns the parsed head and the bytes read after it.
async fn read_head(stream: &mut TcpStream) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let read = stream.read_buf(&mut buf).await.map_err(|_| HeadError::Io)?;
        if read == 0 {
            return Err(HeadError::Io);
        }
        if let Some((head, len)) = parse_head(&buf)? {
            let leftover = buf.split_off(len);
            return Ok((head, leftover));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Parses a complete head, or `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let mut head = RequestHead {
        method: request.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query,
        minor_version: request.version.unwrap_or(0),
        ..RequestHead::default()
    };
    for header in request.headers.iter() {
        // Values that are not UTF-8 are ignored, as if absent.
        let Ok(value) = std::str::from_utf8(header.value) else {
            continue;
        };
        let value = value.trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            head.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.offers_subprotocol |= value.split(',').any(|p| p.trim() == SUBPROTOCOL);
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.to_owned());
        }
    }
    Ok(Some((head, len)))
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The bearer token: `Authorization: Bearer <token>` first, else the `token` query parameter.
fn bearer_token(head: &RequestHead) -> Option<String> {
    if let Some(authorization) = &head.authorization {
        let (scheme, token) = authorization.split_once(' ').unwrap_or((authorization, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(token.trim().to_owned());
        }
        // Another scheme: no usable token in the header; the query may still carry one.
    }
    let query = head.query.as_deref()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == "token").then(|| percent_decode(value)).flatten()
    })
}

/// Decodes `%XX` escapes (a `+` stays a `+`: base64 tokens often carry one unescaped). `None` when an escape
/// is broken or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Completes (or refuses) a WebSocket upgrade, then runs the connection.
async fn upgrade(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    head: RequestHead,
    leftover: Vec<u8>,
    peer: SocketAddr,
) {
    if !head.upgrade_websocket {
        let headers = [("Upgrade", "websocket")];
        respond(
            &mut stream,
            426,
            "Upgrade Required",
            &headers,
            "this is a WebSocket endpoint\n",
        )
        .await;
        return;
    }
    if shared.draining.load(Ordering::SeqCst) {
        respond(
            &mut stream,
            503,
            "Service Unavailable",
            &[("Retry-After", "1")],
            "server draining\n",
        )
        .await;
        return;
    }
    if head.method != "GET" || head.minor_version < 1 || !head.connection_upgrade {
        respond(
            &mut stream,
            400,
            "Bad Request",
            &[],
            "not a valid WebSocket upgrade\n",
        )
        .await;
        return;
    }
    if head.ws_version.as_deref() != Some("13") {
        let headers = [("Sec-WebSocket-Version", "13")];
        respond(
            &mut stream,
            426,
            "Upgrade Required",
            &headers,
            "unsupported WebSocket version\n",
        )
        .await;
        return;
    }
    let Some(key) = head.ws_key.as_deref().filter(|k| !k.is_empty()) else {
        respond(
            &mut stream,
            400,
            "Bad Request",
            &[],
            "missing Sec-WebSocket-Key\n",
        )
        .await;
        return;
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if head.offers_subprotocol {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(SUBPROTOCOL);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let upgraded = Upgraded {
        peer,
        token: bearer_token(&head),
        origin: head.origin,
    };
    let ws = WebSocketStream::from_partially_read(
        Metered::new(stream, &shared.inbound, &leftover),
        leftover,
        Role::Server,
        Some(shared.ws_config),
    )
    .await;
    connection::run(shared, ws, upgraded).await;
}

/// Writes a small complete response and ends the connection.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        response.push_str(name);
        response.push_str(": ");
        response.push_str(value);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.push_str(body);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves a file from the static directory (GET and HEAD only).
async fn serve_static(shared: &Shared, stream: &mut TcpStream, head: &RequestHead) {
    if head.method != "GET" && head.method != "HEAD" {
        respond(
            stream,
            405,
            "Method Not Allowed",
            &[("Allow", "GET, HEAD")],
            "method not allowed\n",
        )
        .await;
        return;
    }
    let Some(root) = shared.static_root.as_deref() else {
        respond(stream, 404, "Not Found", &[], "not found\n").await;
        return;
    };
    let Some(file_path) = resolve_static(root, &head.path).await else {
        respond(stream, 404, "Not Found", &[], "not found\n").await;
        return;
    };
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(file) => file,
        Err(_) => {
            respond(stream, 404, "Not Found", &[], "not found\n").await;
            return;
        }
    };
    let len = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => {
            respond(stream, 404, "Not Found", &[], "not found\n").await;
            return;
        }
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        content_type(&file_path)
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    if head.method == "GET" {
        let mut file = file;
        if let Err(e) = tokio::io::copy(&mut file, stream).await {
            tracing::debug!(error = %e, "static file transfer cut short");
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// Maps a request path to a file under `root`: percent-decoded, `.`/`..`/backslashes refused, directories
/// to their `index.html`, and the result (symlinks resolved) required to stay under `root`.
async fn resolve_static(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(url_path)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return None;
    }
    let mut path = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        let mut components = Path::new(segment).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(part)), None) => path.push(part),
            _ => return None,
        }
    }
    let meta = tokio::fs::metadata(&path).await.ok()?;
    if meta.is_dir() {
        path.push("index.html");
    }
    let canonical = tokio::fs::canonicalize(&path).await.ok()?;
    canonical.starts_with(root).then_some(canonical)
}

/// The `Content-Type` for a file, by extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "wasm" => "application/wasm",
        "txt" | "md" => "text/plain; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        match parse_head(raw.as_bytes()) {
            Ok(Some((head, len))) => {
                assert_eq!(len, raw.len());
                head
            }
            _ => panic!("head did not parse: {raw:?}"),
        }
    }

    #[test]
    fn bearer_header_wins_over_query_token() {
        let h = head("GET /ws?token=q HTTP/1.1\r\nAuthorization: bearer  abc \r\n\r\n");
        assert_eq!(bearer_token(&h).as_deref(), Some("abc"));
        let h = head("GET /ws?x=1&token=a%2Bb+c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(bearer_token(&h).as_deref(), Some("a+b+c"));
        let h = head("GET /ws?token=%zz HTTP/1.1\r\n\r\n");
        assert_eq!(bearer_token(&h), None);
        let h = head("GET /ws HTTP/1.1\r\nAuthorization: Basic Zm9v\r\n\r\n");
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn upgrade_headers_are_recognised_case_insensitively() {
        let h = head(
            "GET /ws HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Protocol: other, sockeye.v1\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: k\r\n\r\n",
        );
        assert!(h.upgrade_websocket && h.connection_upgrade && h.offers_subprotocol);
        assert_eq!(h.ws_version.as_deref(), Some("13"));
    }

    #[test]
    fn partial_heads_ask_for_more_and_garbage_is_refused() {
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Ok(None)
        ));
        assert!(matches!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type(Path::new("a/b.wasm")), "application/wasm");
        assert!(content_type(Path::new("x.JS")).starts_with("text/javascript"));
        assert!(content_type(Path::new("index.html")).starts_with("text/html"));
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
