//! HTTP/1.1 on the listening port, with hyper: the WebSocket upgrade on the configured path, static files
//! (tower-http's `ServeDir`) elsewhere.
//!
//! hyper parses requests, enforces the head limits and the header timeout, and keeps connections alive between
//! static requests. An upgrade is answered here (`101`), then the socket is taken back out of hyper and handed
//! to tungstenite with whatever bytes followed the head, so an upgraded connection carries nothing of hyper.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tower_http::services::fs::ServeFileSystemResponseBody;
use tower_http::services::ServeDir;

use crate::budget::Metered;
use crate::server::{ConnControl, Shared};
use crate::session::{OriginRefused, Upgraded};

/// The subprotocol a Sockeye server echoes (PROTOCOL §1).
pub use sockeye_core::SUBPROTOCOL;

/// The largest request head accepted (request line and headers); beyond it hyper answers 431.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header lines accepted; beyond them hyper answers 431.
pub(crate) const MAX_HEADERS: usize = 64;
/// hyper's read buffer may grow to this (its minimum); it holds a head, or a slice of a request body.
const MAX_READ_BUFFER: usize = 8 * 1024 + MAX_HEAD_BYTES;
/// How long a connection refused at the connection cap may take to send its head before it is dropped.
pub(crate) const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

type Body = Either<ServeFileSystemResponseBody, Full<Bytes>>;

/// An upgrade answered with `101`: hyper hands the socket over once the response is written.
struct PendingUpgrade {
    on_upgrade: OnUpgrade,
    upgraded: Upgraded,
}

/// Serves one accepted TCP connection. `slot` is its place under the connection cap; without one, every
/// request on it is answered 503 and the connection closed.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let limits = &shared.config.limits;
    let admitted = slot.is_some();
    let pending: Arc<Mutex<Option<PendingUpgrade>>> = Arc::default();
    let service = {
        let shared = Arc::clone(&shared);
        let pending = Arc::clone(&pending);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let pending = Arc::clone(&pending);
            async move {
                let response = if admitted {
                    route(&shared, peer, request, &pending).await
                } else {
                    plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many connections\n",
                        &[(header::RETRY_AFTER, "1")],
                    )
                };
                Ok::<_, Infallible>(response)
            }
        })
    };
    let header_timeout = if admitted {
        limits.handshake_timeout
    } else {
        REFUSAL_TIMEOUT
    };
    let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
    // Boxed: the connection future is large, and this task lives on as the WebSocket's once upgraded.
    let connection = Box::pin(
        http1::Builder::new()
            .timer(TokioTimer::new())
            // Also the keep-alive idle timeout: hyper starts it whenever it waits for a request head.
            .header_read_timeout(header_timeout)
            .max_header_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_READ_BUFFER)
            .keep_alive(admitted)
            .serve_connection(io, service)
            .with_upgrades(),
    );
    if let Err(e) = connection.await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
    let upgrade = pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    drop(pending);
    let Some(PendingUpgrade {
        on_upgrade,
        upgraded,
    }) = upgrade
    else {
        return;
    };
    let io = match on_upgrade.await {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "upgrade not completed");
            return;
        }
    };
    // Back to the bare TCP stream: an idle WebSocket holds tungstenite's small buffers and nothing else.
    let Ok(parts) = io.downcast::<TokioIo<WriteTimeout>>() else {
        tracing::error!(%peer, "upgraded connection of an unexpected type");
        return;
    };
    let stream = parts.io.into_inner().into_inner();
    let leftover = parts.read_buf.to_vec();
    // Freed now rather than when this (long-lived) function returns.
    drop(parts.read_buf);
    let control = Arc::new(ConnControl::new(shared.config.limits.outbound_bytes));
    let ws = WebSocketStream::from_partially_read(
        Metered::new(stream, &shared, control, &leftover),
        leftover,
        Role::Server,
        Some(shared.ws_config),
    )
    .await;
    crate::shell::run(Arc::clone(&shared), ws, upgraded).await;
    drop(slot);
}

/// Answers one request on an admitted connection.
async fn route(
    shared: &Shared,
    peer: SocketAddr,
    mut request: Request<Incoming>,
    pending: &Mutex<Option<PendingUpgrade>>,
) -> Response<Body> {
    if request.uri().path() == shared.config.path {
        return websocket(shared, peer, &mut request, pending);
    }
    serve_static(shared, request).await
}

/// Whether any of the (comma-separated) values of header `name` holds `token` (case-insensitive). Values
/// that are not text count as not holding it.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The only value of header `name`: `Ok(None)` when absent, `Err` when repeated or not text.
fn single_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => value.to_str().map(|v| Some(v.trim())).map_err(|_| ()),
        (Some(_), Some(_)) => Err(()),
    }
}

/// Checks a WebSocket upgrade request and, when it is one, answers `101` and leaves in `pending` what the
/// connection needs once hyper hands the socket over. Authentication and the origin check are decided after
/// the upgrade (PROTOCOL §5: 4003 / 1008).
fn websocket(
    shared: &Shared,
    peer: SocketAddr,
    request: &mut Request<Incoming>,
    pending: &Mutex<Option<PendingUpgrade>>,
) -> Response<Body> {
    let headers = request.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        return plain(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint\n",
            &[(header::UPGRADE, "websocket")],
        );
    }
    if shared.draining.load(Ordering::SeqCst) {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "server draining\n",
            &[(header::RETRY_AFTER, "1")],
        );
    }
    if request.method() != Method::GET
        || request.version() != Version::HTTP_11
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "not a valid WebSocket upgrade\n",
            &[],
        );
    }
    if single_header(headers, &header::SEC_WEBSOCKET_VERSION) != Ok(Some("13")) {
        return plain(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version\n",
            &[(header::SEC_WEBSOCKET_VERSION, "13")],
        );
    }
    let key = match single_header(headers, &header::SEC_WEBSOCKET_KEY) {
        Ok(Some(key)) if !key.is_empty() => key,
        _ => return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n", &[]),
    };
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        );
    if has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
    }
    let upgraded = Upgraded {
        peer,
        token: bearer_token(headers, request.uri().query()),
        origin: check_origin(headers, &shared.config.allowed_origins),
    };
    let Ok(response) = response.body(Either::Right(Full::default())) else {
        return plain(StatusCode::BAD_REQUEST, "bad request\n", &[]);
    };
    let on_upgrade = hyper::upgrade::on(request);
    *pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(PendingUpgrade {
        on_upgrade,
        upgraded,
    });
    response
}

/// The `Origin` a browser sent, checked against the allowlist (an empty list allows every origin). Fails
/// closed: several `Origin` headers, or one that is not text, are refused whatever the allowlist.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<Option<String>, OriginRefused> {
    match single_header(headers, &header::ORIGIN) {
        Ok(None) => Ok(None),
        Ok(Some(origin)) if allowed.is_empty() || allowed.iter().any(|a| a == origin) => {
            Ok(Some(origin.to_owned()))
        }
        Ok(Some(_)) => Err(OriginRefused::NotAllowed),
        Err(()) => Err(OriginRefused::Malformed),
    }
}

/// The bearer token: `Authorization: Bearer <token>` first, else the `token` query parameter. Fails closed:
/// a repeated or non-text `Authorization` header, or a repeated `token` parameter, yields no token.
fn bearer_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match single_header(headers, &header::AUTHORIZATION) {
        Err(()) => return None,
        Ok(Some(authorization)) => {
            let (scheme, token) = authorization.split_once(' ').unwrap_or((authorization, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(token.trim().to_owned());
            }
            // Another scheme: no usable token in the header; the query may still carry one.
        }
        Ok(None) => {}
    }
    let mut tokens = query?.split('&').filter_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == "token").then_some(value)
    });
    let token = tokens.next()?;
    if tokens.next().is_some() {
        return None;
    }
    // `%XX` escapes only: a `+` stays a `+` (base64 tokens often carry one unescaped).
    percent_decode_str(token)
        .decode_utf8()
        .ok()
        .map(|t| t.into_owned())
}

/// A small complete text response.
fn plain(
    status: StatusCode,
    body: &'static str,
    headers: &[(HeaderName, &'static str)],
) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in headers {
        response_headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    response
}

/// Serves a file from the static directory (GET and HEAD only) with `ServeDir`: MIME types, Range,
/// conditional requests and precompressed `.gz`/`.br` siblings come from it.
async fn serve_static(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
            &[(header::ALLOW, "GET, HEAD")],
        );
    }
    let not_found = || plain(StatusCode::NOT_FOUND, "not found\n", &[]);
    let Some(root) = shared.static_root.as_deref() else {
        return not_found();
    };
    if !may_serve(root, request.uri().path()).await {
        return not_found();
    }
    // TypeScript declarations (the package's `.d.ts`): mime_guess calls `.ts` an MPEG transport stream.
    let typescript = request.uri().path().ends_with(".ts");
    let mut serve_dir = ServeDir::new(root).precompressed_gzip().precompressed_br();
    let mut response = match serve_dir.try_call(request).await {
        Ok(response) => response.map(Either::Left),
        Err(e) => {
            tracing::debug!(error = %e, "static file not readable");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the file\n",
                &[],
            );
        }
    };
    let retype = typescript && response.status().is_success();
    let headers = response.headers_mut();
    if retype {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    // Revalidate on every load (`Last-Modified` makes that cheap), so a rebuilt package is picked up.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// What `ServeDir` does not refuse by itself: any path segment starting with `.` (dotfiles such as `/.env`),
/// files (or the `.gz`/`.br` siblings it may serve instead) that resolve outside `root` through a symlink,
/// and anything that is not a regular file (a FIFO would block the thread that opens it: this checks with
/// `stat`, which does not open). A file swapped for another between this check and `ServeDir`'s open is not
/// caught; the static directory belongs to the operator.
async fn may_serve(root: &Path, url_path: &str) -> bool {
    let Ok(decoded) = percent_decode_str(url_path).decode_utf8() else {
        return false;
    };
    let mut path = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return false;
        }
        let mut components = Path::new(segment).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(part)), None) => path.push(part),
            _ => return false,
        }
    }
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return false;
    };
    if meta.is_dir() {
        if !inside(root, &path).await {
            return false;
        }
        if !url_path.ends_with('/') {
            // `ServeDir` redirects to the path with a slash, which is checked when it comes.
            return true;
        }
        path.push("index.html");
    }
    if !regular_inside(root, &path, true).await {
        return false;
    }
    for suffix in [".gz", ".br"] {
        let mut sibling = path.clone().into_os_string();
        sibling.push(suffix);
        if !regular_inside(root, &PathBuf::from(sibling), false).await {
            return false;
        }
    }
    true
}

/// Whether `path` is a regular file whose real location is under `root` (`required` false: or absent).
async fn regular_inside(root: &Path, path: &Path, required: bool) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(meta) => meta.is_file() && inside(root, path).await,
        Err(e) if e.kind() == io::ErrorKind::NotFound => !required,
        Err(_) => false,
    }
}

/// Whether `path`, symlinks resolved, is under `root` (canonical).
async fn inside(root: &Path, path: &Path) -> bool {
    tokio::fs::canonicalize(path)
        .await
        .is_ok_and(|real| real.starts_with(root))
}

/// A TCP stream whose writes fail with `TimedOut` once the peer has accepted no byte for `timeout`, so a
/// client that stops reading a response cannot hold its task, socket and file forever.
///
/// Written here rather than taken from `tokio-io-timeout`: that crate's stream is `!Unpin` and cannot be taken
/// apart once boxed, and the upgrade must get the bare `TcpStream` back so an idle WebSocket holds no timer
/// (memory per idle connection, measured by `scripts/bench.sh`). The timer is only allocated on the first stall.
pub(crate) struct WriteTimeout {
    stream: TcpStream,
    timeout: Duration,
    /// The deadline of the current stall; armed while a write is pending.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl WriteTimeout {
    fn new(stream: TcpStream, timeout: Duration) -> WriteTimeout {
        WriteTimeout {
            stream,
            timeout,
            stall: None,
            armed: false,
        }
    }

    fn into_inner(self) -> TcpStream {
        self.stream
    }

    /// Passes `poll` through, arming the deadline when it stalls and failing once the deadline passes.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(result) = poll(Pin::new(&mut self.stream), cx) {
            self.armed = false;
            return Poll::Ready(result);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let stall = match &mut self.stall {
            Some(stall) => {
                if !self.armed {
                    stall.as_mut().reset(deadline);
                }
                stall
            }
            None => self
                .stall
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer accepted no data in time",
        )))
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, AsyncWrite::poll_shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                HeaderValue::from_bytes(value).expect("a valid value"),
            );
        }
        map
    }

    #[test]
    fn bearer_header_wins_over_query_token() {
        let h = headers(&[("authorization", b"bearer  abc ")]);
        assert_eq!(bearer_token(&h, Some("token=q")).as_deref(), Some("abc"));
        let none = HeaderMap::new();
        assert_eq!(
            bearer_token(&none, Some("x=1&token=a%2Bb+c")).as_deref(),
            Some("a+b+c")
        );
        assert_eq!(bearer_token(&none, Some("token=%ff")), None);
        let basic = headers(&[("authorization", b"Basic Zm9v")]);
        assert_eq!(bearer_token(&basic, None), None);
        assert_eq!(bearer_token(&basic, Some("token=q")).as_deref(), Some("q"));
    }

    #[test]
    fn ambiguous_credentials_yield_no_token() {
        let two = headers(&[
            ("authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
        ]);
        assert_eq!(bearer_token(&two, Some("token=q")), None);
        let binary = headers(&[("authorization", b"Bearer \xff")]);
        assert_eq!(bearer_token(&binary, Some("token=q")), None);
        assert_eq!(
            bearer_token(&HeaderMap::new(), Some("token=a&token=b")),
            None
        );
    }

    #[test]
    fn origins_fail_closed() {
        let allowed = ["http://good.example".to_owned()];
        let good = headers(&[("origin", b"http://good.example")]);
        assert_eq!(
            check_origin(&good, &allowed),
            Ok(Some("http://good.example".to_owned()))
        );
        assert_eq!(check_origin(&HeaderMap::new(), &allowed), Ok(None));
        let evil = headers(&[("origin", b"http://evil.example")]);
        assert_eq!(
            check_origin(&evil, &allowed),
            Err(OriginRefused::NotAllowed)
        );
        assert!(check_origin(&evil, &[]).is_ok());
        let two = headers(&[
            ("origin", b"http://evil.example"),
            ("origin", b"http://good.example"),
        ]);
        assert_eq!(check_origin(&two, &allowed), Err(OriginRefused::Malformed));
        assert_eq!(check_origin(&two, &[]), Err(OriginRefused::Malformed));
        let binary = headers(&[("origin", b"http://good.example\xff")]);
        assert_eq!(
            check_origin(&binary, &allowed),
            Err(OriginRefused::Malformed)
        );
    }

    #[test]
    fn upgrade_tokens_are_recognised_case_insensitively() {
        let h = headers(&[
            ("connection", b"keep-alive, Upgrade"),
            ("sec-websocket-protocol", b"other"),
            ("sec-websocket-protocol", b" sockeye.v1 "),
        ]);
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(has_token(&h, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL));
        assert!(!has_token(&h, header::UPGRADE, "websocket"));
    }
}
