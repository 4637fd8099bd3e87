//! Helpers shared by the integration tests: the reference server, a fast-retrying client, a TCP proxy that can
//! go silent, and a TLS-terminating proxy.
#![allow(dead_code)] // each test binary uses a different part

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye::{Client, ClientBuilder, Status};
use sockeye_server::{Server, ServerBuilder, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for anything that should take milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=sockeye=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn server_builder() -> ServerBuilder {
    init_tracing();
    Server::builder().bind(loopback())
}

pub async fn start(builder: ServerBuilder) -> ServerHandle {
    builder.start().await.expect("the reference server starts")
}

pub async fn server() -> ServerHandle {
    start(server_builder()).await
}

/// A port that was free a moment ago (for a server started later on it).
pub async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    listener.local_addr().expect("local addr")
}

/// A client that retries quickly and forever, with short timeouts.
pub fn fast(url: impl Into<String>) -> ClientBuilder {
    Client::builder(url)
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .max_attempts(None)
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(5))
}

/// Awaits `f`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub async fn ready(client: &Client) {
    client
        .wait_for(Status::Ready, PATIENCE)
        .await
        .expect("client reaches ready");
}

/// Polls `condition` every 10 ms until it holds (at most [`PATIENCE`]).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A TCP proxy in front of `target`. [`Proxy::blackhole`] makes every connection open at that moment silent:
/// bytes are read and dropped in both directions, as if the network had gone dark without a FIN. Close codes
/// of the close frames the client sends (parsed from its masked frames) are recorded.
pub struct Proxy {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// While set, the proxy stops reading from clients: their writes back up.
    stalled: Arc<AtomicBool>,
    pub client_close_codes: Arc<Mutex<Vec<u16>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(loopback()).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let connections: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let client_close_codes: Arc<Mutex<Vec<u16>>> = Arc::default();
        let (conns, codes) = (Arc::clone(&connections), Arc::clone(&client_close_codes));
        let stalled = Arc::new(AtomicBool::new(false));
        let stall = Arc::clone(&stalled);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                conns.lock().unwrap().push(Arc::clone(&silent));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let upstream = pipe(
                    client_read,
                    server_write,
                    Arc::clone(&silent),
                    Some(Arc::clone(&codes)),
                );
                tokio::spawn(upstream.stall_with(Arc::clone(&stall)));
                let downstream = pipe(server_read, client_write, silent, None);
                tokio::spawn(downstream.stall_with(Arc::default()));
            }
        });
        Proxy {
            addr,
            connections,
            stalled,
            client_close_codes,
        }
    }

    /// Stops reading from every client (now and later): their TCP send buffers fill and writes stall.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn blackhole(&self) {
        for silent in self.connections.lock().unwrap().iter() {
            silent.store(true, Ordering::SeqCst);
        }
    }

    pub fn close_codes(&self) -> Vec<u16> {
        self.client_close_codes.lock().unwrap().clone()
    }
}

struct Pipe {
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    close_codes: Option<Arc<Mutex<Vec<u16>>>>,
}

fn pipe(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    close_codes: Option<Arc<Mutex<Vec<u16>>>>,
) -> Pipe {
    Pipe {
        from,
        to,
        silent,
        close_codes,
    }
}

impl Pipe {
    async fn stall_with(self, stalled: Arc<AtomicBool>) {
        let Pipe {
            mut from,
            mut to,
            silent,
            close_codes,
        } = self;
        let mut parser = close_codes.map(|codes| (ClientFrames::default(), codes));
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while stalled.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some((frames, codes)) = &mut parser {
                for code in frames.feed(&buf[..n]) {
                    codes.lock().unwrap().push(code);
                }
            }
            if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        if !silent.load(Ordering::SeqCst) {
            let _ = to.shutdown().await;
        }
    }
}

/// Parses the client's side of a WebSocket connection (the HTTP request, then masked frames) just enough to
/// find close frames and their codes.
#[derive(Default)]
struct ClientFrames {
    upgraded: bool,
    buf: Vec<u8>,
}

impl ClientFrames {
    fn feed(&mut self, bytes: &[u8]) -> Vec<u16> {
        self.buf.extend_from_slice(bytes);
        let mut codes = Vec::new();
        if !self.upgraded {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return codes;
            };
            self.buf.drain(..end + 4);
            self.upgraded = true;
        }
        loop {
            if self.buf.len() < 2 {
                return codes;
            }
            let opcode = self.buf[0] & 0x0f;
            let masked = self.buf[1] & 0x80 != 0;
            let (len, mut at) = match self.buf[1] & 0x7f {
                126 if self.buf.len() >= 4 => (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                ),
                127 if self.buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[2..10]);
                    (usize::try_from(u64::from_be_bytes(b)).unwrap(), 10)
                }
                126 | 127 => return codes,
                n => (usize::from(n), 2),
            };
            let mask_at = at;
            if masked {
                at += 4;
            }
            if self.buf.len() < at + len {
                return codes;
            }
            if opcode == 0x8 && len >= 2 {
                let mut payload = self.buf[at..at + 2].to_vec();
                if masked {
                    for (i, byte) in payload.iter_mut().enumerate() {
                        *byte ^= self.buf[mask_at + i];
                    }
                }
                codes.push(u16::from_be_bytes([payload[0], payload[1]]));
            }
            self.buf.drain(..at + len);
        }
    }
}

/// A TLS-terminating proxy in front of `target`, with a self-signed certificate for `localhost` made by
/// rcgen. Returns its address and the certificate (PEM) a client must trust.
pub async fn tls_proxy(target: SocketAddr) -> (SocketAddr, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert_pem = certified.cert.pem();
    let cert_der = certified.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(loopback()).await.expect("bind TLS proxy");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (addr, cert_pem)
}

/// A raw HTTP server answering every request with `status` (to test refused upgrades). Counts requests.
pub async fn http_status_server(
    status: &'static str,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let response =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, hits)
}

/// A raw WebSocket server whose behaviour each test scripts, for servers the reference server will not
/// impersonate (hostile, broken). Every connection is upgraded (echoing the subprotocol), sent `ready`, and
/// handed to `script`. The server stops when the returned handle is dropped.
pub struct RawServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

pub type RawSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

impl RawServer {
    pub async fn start<F, Fut>(script: F) -> RawServer
    where
        F: Fn(RawSocket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        use tokio_tungstenite::tungstenite::http::HeaderValue;

        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let script = Arc::clone(&script);
                connections.spawn(async move {
                    // tungstenite's callback signature, not ours: its error type is large.
                    #[allow(clippy::result_large_err)]
                    let echo = |_: &Request, mut response: Response| {
                        response.headers_mut().insert(
                            "sec-websocket-protocol",
                            HeaderValue::from_static(sockeye::SUBPROTOCOL),
                        );
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, echo).await else {
                        return;
                    };
                    if ws
                        .send(tokio_tungstenite::tungstenite::Message::text("ready"))
                        .await
                        .is_ok()
                    {
                        script(ws).await;
                    }
                });
            }
        });
        RawServer { addr, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One envelope as a COMPLETE frame.
pub fn complete_frame(envelope: &sockeye_core::codec::Envelope) -> Vec<u8> {
    let mut frame = vec![0u8];
    envelope.encode_to(&mut frame);
    frame
}

/// The code of the next close frame the peer sends, skipping everything else; `None` if the stream ends first.
pub async fn next_close_code(ws: &mut RawSocket) -> Option<u16> {
    use futures_util::StreamExt;
    while let Some(Ok(message)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Close(frame) = message {
            return frame.map(|f| u16::from(f.code));
        }
    }
    None
}

/// A log sink for a `tracing_subscriber::fmt` writer (`move || logs.clone()`): everything written, kept.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The secrets the credential tests hand a client (token, token in the query, header value, URL user info).
pub const SECRETS: [&str; 4] = ["SECRET-T", "SECRET-Q", "SECRET-H", "SECRET-U"];

/// A [`RawServer`] that accepts every upgrade, sends `ready` and reads until the client closes.
pub async fn silent_server() -> RawServer {
    use futures_util::StreamExt;
    RawServer::start(|mut ws| async move { while let Some(Ok(_)) = ws.next().await {} }).await
}
