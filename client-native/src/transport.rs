//! Opening one WebSocket: the token, the upgrade request (headers, subprotocol), TLS and tungstenite's limits.
//!
//! Nothing here decides *when* to connect or what a failure means for the lifecycle; it only reports how an
//! attempt ended, in the two classes the core distinguishes (PROTOCOL §6): an upgrade refused with HTTP 401/403
//! (terminal, like 4003) and every other failure (retried with backoff).
//!
//! # Why the upgrade goes through hyper
//!
//! tungstenite's client handshake logs the whole upgrade request at trace level through the `log` crate
//! (`Request: "GET /ws?token=… Authorization: Bearer …"`), and a library cannot stop that whatever logger the
//! application installs (`log`'s `max_level_*` features are global). So tungstenite never sees the request:
//! hyper's HTTP/1 client sends it and reads the `101` (hyper emits no logs unless built with
//! `--cfg hyper_unstable_tracing`), this module checks the answer as RFC 6455 §4.1 requires, and tungstenite
//! takes over the upgraded stream with [`WebSocketStream::from_partially_read`], so nothing is lost or copied.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Error;

/// The WebSocket subprotocol every Sockeye client offers (PROTOCOL §1).
pub const SUBPROTOCOL: &str = "sockeye.v1";

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type TokenFn = dyn Fn() -> BoxFuture<'static, Result<String, BoxError>> + Send + Sync;

/// Where the bearer token comes from.
#[derive(Clone)]
pub(crate) enum TokenSource {
    Static(String),
    Provider(Arc<TokenFn>),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
            TokenSource::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

pub(crate) fn token_provider<F, Fut, E>(f: F) -> TokenSource
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<BoxError>,
{
    TokenSource::Provider(Arc::new(move || {
        let fut = f();
        Box::pin(async move { fut.await.map_err(Into::into) })
    }))
}

/// A trusted root certificate for `wss://` (in addition to, or instead of, the built-in roots).
///
/// # Example
///
/// ```
/// let pem = b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
/// assert!(sockeye::Certificate::from_pem(pem).is_err());
/// let der = sockeye::Certificate::from_der(vec![0x30, 0x00]); // parsed when the client is built
/// # let _ = der;
/// ```
#[derive(Clone, Debug)]
pub struct Certificate(CertificateDer<'static>);

impl Certificate {
    /// The first certificate in a PEM document.
    ///
    /// # Errors
    /// [`Error::Config`] when there is no well-formed `CERTIFICATE` block.
    pub fn from_pem(pem: &[u8]) -> Result<Certificate, Error> {
        Certificate::from_pem_bundle(pem)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Config("no CERTIFICATE block in the PEM document".into()))
    }

    /// Every certificate in a PEM document (a CA bundle).
    ///
    /// # Errors
    /// [`Error::Config`] when a block is malformed or there is none.
    pub fn from_pem_bundle(pem: &[u8]) -> Result<Vec<Certificate>, Error> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|c| c.map(Certificate))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Config(format!("invalid PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(
                "no CERTIFICATE block in the PEM document".into(),
            ));
        }
        Ok(certs)
    }

    /// A DER-encoded certificate. It is checked when the client is built.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Certificate {
        Certificate(CertificateDer::from(der.into()))
    }
}

/// TLS trust settings collected by the builder.
#[derive(Clone, Debug)]
pub(crate) struct TlsOptions {
    pub extra_roots: Vec<Certificate>,
    pub webpki_roots: bool,
    pub native_roots: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            extra_roots: Vec::new(),
            webpki_roots: true,
            native_roots: false,
        }
    }
}

impl TlsOptions {
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let mut roots = rustls::RootCertStore::empty();
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if self.native_roots {
            let found = rustls_native_certs::load_native_certs();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(
                added,
                ignored,
                errors = found.errors.len(),
                "loaded the system's root certificates"
            );
        }
        for Certificate(der) in &self.extra_roots {
            roots
                .add(der.clone())
                .map_err(|e| Error::Config(format!("invalid root certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Config(
                "wss:// needs at least one trusted root certificate".into(),
            ));
        }
        // One explicit provider, so the choice never depends on which rustls features other crates enable.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// How an attempt failed, in the classes the core distinguishes.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The upgrade was refused with HTTP 401 or 403: reported as close 4003.
    Auth(String),
    /// Anything else: reported as a socket error (1006), retried.
    Other(String),
}

/// Everything needed to open a socket, fixed when the client is built.
pub(crate) struct Transport {
    url: String,
    /// `scheme://host:port/path`, without user info or query (either may carry a credential): the only form
    /// ever logged.
    pub display_url: String,
    /// Where to connect: the URL's host (without an IPv6 literal's brackets) and port (default 80 / 443).
    host: String,
    port: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    token: Option<TokenSource>,
    token_in_query: bool,
    /// For `wss://`: the connector and the name the server's certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    ws_config: WebSocketConfig,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("url", &self.display_url)
            .finish_non_exhaustive()
    }
}

pub(crate) struct TransportOptions {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub token: Option<TokenSource>,
    pub token_in_query: bool,
    pub tls: TlsOptions,
    pub max_message_bytes: usize,
    pub fragment_threshold: usize,
}

/// tungstenite buffers: small, so idle connections stay cheap (PERF.md), with bounded growth.
const READ_BUFFER: usize = 8 * 1024;
const WRITE_BUFFER: usize = 8 * 1024;

impl Transport {
    /// Checks the URL, headers and TLS settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong (never a header's value).
    pub fn new(options: TransportOptions) -> Result<Transport, Error> {
        let uri: http::Uri = options
            .url
            .parse()
            .map_err(|e| Error::Config(format!("invalid URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(Error::Config(
                    "the URL scheme must be ws:// or wss://".into(),
                ))
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(Error::Config("the URL has no host".into()));
        };
        // Without the user info (`user:password@`) either: it is a credential.
        let host = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host);
        let display_url = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("ws"),
            host,
            uri.path()
        );

        let mut headers = Vec::with_capacity(options.headers.len());
        for (name, value) in options.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| Error::Config(format!("invalid header name {name:?}")))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|_| Error::Config(format!("invalid value for header {header}")))?;
            // Header values may be credentials: keep them out of every `Debug` output.
            value.set_sensitive(true);
            headers.push((header, value));
        }

        let host = uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tls = if tls {
            let name = ServerName::try_from(host.clone()).map_err(|_| {
                Error::Config("the URL's host is not a valid TLS server name".into())
            })?;
            Some((TlsConnector::from(options.tls.client_config()?), name))
        } else {
            None
        };

        let max_in = options.max_message_bytes.saturating_add(16);
        let largest_out = if options.fragment_threshold == 0 {
            options.max_message_bytes
        } else {
            options.fragment_threshold
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            // Room for one whole outgoing message beyond the buffer (tungstenite refuses one that does not
            // fit); must exceed `write_buffer_size` or tungstenite panics.
            .max_write_buffer_size(WRITE_BUFFER + largest_out.saturating_add(1024))
            .max_message_size(Some(max_in))
            .max_frame_size(Some(max_in));

        Ok(Transport {
            url: options.url,
            display_url,
            host,
            port,
            headers,
            token: options.token,
            token_in_query: options.token_in_query,
            tls,
            ws_config,
        })
    }

    /// One connection attempt: a fresh token, then the upgrade.
    pub async fn connect(self: Arc<Self>) -> Result<WsStream, ConnectError> {
        let token = match &self.token {
            None => None,
            Some(TokenSource::Static(token)) => Some(token.clone()),
            Some(TokenSource::Provider(provider)) => match provider().await {
                Ok(token) => Some(token),
                Err(e) => {
                    return Err(ConnectError::Other(format!(
                        "the token provider failed: {e}"
                    )))
                }
            },
        };
        let bearer = match token.as_deref() {
            Some(token) if !self.token_in_query => {
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(mut value) => {
                        value.set_sensitive(true);
                        Some(value)
                    }
                    Err(_) => {
                        return Err(ConnectError::Other(
                            "the token has characters a header cannot carry".into(),
                        ))
                    }
                }
            }
            _ => None,
        };
        let token = token.as_deref();
        self.open(token, bearer).await.map_err(|e| match e {
            ConnectError::Other(message) => ConnectError::Other(redact(message, token)),
            auth => auth,
        })
    }

    /// TCP, TLS, the upgrade through hyper, then tungstenite on the upgraded stream (see the module docs).
    async fn open(
        &self,
        token: Option<&str>,
        bearer: Option<HeaderValue>,
    ) -> Result<WsStream, ConnectError> {
        let failed = |what: &str, e: &dyn fmt::Display| ConnectError::Other(format!("{what}: {e}"));
        let url = match token {
            Some(token) if self.token_in_query => with_query_token(&self.url, token),
            _ => self.url.clone(),
        };
        // `Host`, `Connection`, `Upgrade`, `Sec-WebSocket-Version` and a fresh `Sec-WebSocket-Key`.
        let mut request = url
            .into_client_request()
            .map_err(|e| failed("invalid URL", &e))?;
        // Origin form: hyper sends the target as given, and only the path and query belong in it.
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| failed("invalid URL", &e))?;
        *request.uri_mut() = target;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(bearer) = bearer {
            headers.insert(AUTHORIZATION, bearer);
        }
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let key = headers
            .get(SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| ConnectError::Other("no Sec-WebSocket-Key".into()))?;

        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| failed("cannot connect", &e))?;
        // PERF.md measured Nagle halving throughput.
        tcp.set_nodelay(true)
            .map_err(|e| failed("cannot connect", &e))?;
        let stream = match &self.tls {
            None => MaybeTlsStream::Plain(tcp),
            Some((connector, name)) => MaybeTlsStream::Rustls(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| failed("TLS handshake failed", &e))?,
            ),
        };

        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            // Some servers compare header names case-sensitively (as tungstenite's handshake also allows for).
            .title_case_headers(true)
            .handshake::<_, String>(TokioIo::new(stream))
            .await
            .map_err(|e| failed("the upgrade failed", &e))?;
        // The connection must be driven while the request is answered and until it hands the socket to the
        // upgrade; it may finish before the response is picked up.
        let mut connection = std::pin::pin!(connection.with_upgrades());
        let mut send = std::pin::pin!(sender.send_request(request.map(|()| String::new())));
        let mut driving = true;
        let response = loop {
            tokio::select! {
                response = &mut send => break response.map_err(|e| failed("the upgrade failed", &e))?,
                ended = &mut connection, if driving => {
                    driving = false;
                    ended.map_err(|e| failed("the upgrade failed", &e))?;
                }
            }
        };
        check_upgrade(&response, &key)?;
        let upgrade = hyper::upgrade::on(response);
        let upgraded = if driving {
            let (upgraded, ended) = tokio::join!(upgrade, connection);
            ended.map_err(|e| failed("the upgrade failed", &e))?;
            upgraded
        } else {
            upgrade.await
        };
        let upgraded = upgraded.map_err(|e| failed("the upgrade failed", &e))?;
        let parts = upgraded
            .downcast::<TokioIo<MaybeTlsStream<TcpStream>>>()
            .map_err(|_| ConnectError::Other("the upgraded stream is not the socket".into()))?;
        // Bytes the server sent right after its `101` (often `ready`) were read with the response: hand them on.
        Ok(WebSocketStream::from_partially_read(
            parts.io.into_inner(),
            parts.read_buf.to_vec(),
            Role::Client,
            Some(self.ws_config),
        )
        .await)
    }
}

/// Checks the server's answer to the upgrade (RFC 6455 §4.1) and sorts a refusal into the core's two classes.
/// Messages never quote the server's header values.
fn check_upgrade<B>(response: &Response<B>, key: &HeaderValue) -> Result<(), ConnectError> {
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let message = format!("the upgrade was refused with HTTP {status}");
        return Err(
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                ConnectError::Auth(message)
            } else {
                ConnectError::Other(message)
            },
        );
    }
    let headers = response.headers();
    let lists = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !lists(UPGRADE, "websocket") || !lists(CONNECTION, "upgrade") {
        return Err(ConnectError::Other(
            "the server answered 101 without switching to WebSocket".into(),
        ));
    }
    let accept = derive_accept_key(key.as_bytes());
    if headers.get(SEC_WEBSOCKET_ACCEPT).map(HeaderValue::as_bytes) != Some(accept.as_bytes()) {
        return Err(ConnectError::Other(
            "the server's Sec-WebSocket-Accept does not match the key".into(),
        ));
    }
    // PROTOCOL §1: a server that does not echo the subprotocol is accepted; one that picks another is not.
    match headers.get(SEC_WEBSOCKET_PROTOCOL) {
        Some(chosen) if chosen != SUBPROTOCOL => Err(ConnectError::Other(format!(
            "the server chose a subprotocol other than {SUBPROTOCOL}"
        ))),
        _ => Ok(()),
    }
}

/// Removes the token from a message (a URL with `?token=` can end up in an error's text).
fn redact(message: String, token: Option<&str>) -> String {
    match token {
        Some(token) if !token.is_empty() => message
            .replace(token, "<redacted>")
            .replace(&percent_encode(token), "<redacted>"),
        _ => message,
    }
}

/// Appends `token=<token>` to the URL's query (the browser style of PROTOCOL §5).
fn with_query_token(url: &str, token: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    let mut out = format!("{base}{separator}token={}", percent_encode(token));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> TransportOptions {
        TransportOptions {
            url: url.into(),
            headers: Vec::new(),
            token: None,
            token_in_query: false,
            tls: TlsOptions::default(),
            max_message_bytes: 1 << 20,
            fragment_threshold: 100 * 1024,
        }
    }

    #[test]
    fn query_tokens_are_percent_encoded_and_appended() {
        assert_eq!(
            with_query_token("ws://h/ws", "a b+c"),
            "ws://h/ws?token=a%20b%2Bc"
        );
        assert_eq!(
            with_query_token("ws://h/ws?x=1#f", "t"),
            "ws://h/ws?x=1&token=t#f"
        );
    }

    #[test]
    fn messages_never_carry_the_token() {
        let m = redact(
            "cannot reach ws://h/ws?token=s%2Fcret".into(),
            Some("s/cret"),
        );
        assert_eq!(m, "cannot reach ws://h/ws?token=<redacted>");
    }

    #[test]
    fn urls_and_headers_are_checked_without_echoing_values() {
        assert!(Transport::new(options("http://h/ws")).is_err());
        assert!(Transport::new(options("not a url")).is_err());
        let t = Transport::new(options("ws://h:1/ws?token=secret")).unwrap();
        assert_eq!(t.display_url, "ws://h:1/ws");
        let t = Transport::new(options("ws://user:pa55word@h:1/ws")).unwrap();
        assert_eq!(t.display_url, "ws://h:1/ws");
        let mut o = options("ws://h/ws");
        o.headers.push(("X-Key".into(), "bad\nvalue".into()));
        let err = Transport::new(o).unwrap_err().to_string();
        assert!(err.contains("x-key") && !err.contains("bad"), "{err}");
    }

    #[test]
    fn wss_builds_a_tls_config_and_401_is_an_auth_failure() {
        assert!(Transport::new(options("wss://example.com/ws")).is_ok());
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let answer = |status: u16| Response::builder().status(status);
        assert!(matches!(
            check_upgrade(&answer(401).body(()).unwrap(), &key),
            Err(ConnectError::Auth(_))
        ));
        assert!(matches!(
            check_upgrade(&answer(503).body(()).unwrap(), &key),
            Err(ConnectError::Other(_))
        ));
        // RFC 6455 §1.3's example key and accept value.
        let switched = || {
            answer(101)
                .header("upgrade", "WebSocket")
                .header("connection", "keep-alive, Upgrade")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        };
        assert!(check_upgrade(&switched().body(()).unwrap(), &key).is_ok());
        let echoed = switched().header("sec-websocket-protocol", SUBPROTOCOL);
        assert!(check_upgrade(&echoed.body(()).unwrap(), &key).is_ok());
        let other = switched().header("sec-websocket-protocol", "chat");
        assert!(check_upgrade(&other.body(()).unwrap(), &key).is_err());
        let wrong = HeaderValue::from_static("x3JJHMbDL1EzLkh9GBhXDw==");
        assert!(check_upgrade(&switched().body(()).unwrap(), &wrong).is_err());
    }
}
