//! [`ClientBuilder`]: every option of a client, with the protocol's defaults.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sockeye_core::{Config, Connection, QueueLimits, Status};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::calls::Calls;
use crate::client::{Client, Inner};
use crate::driver::{Driver, DEFAULT_WRITE_BACKLOG};
use crate::handlers::{self, Handlers};
use crate::streams::StreamLimits;
use crate::transport::{self, Certificate, TlsOptions, TokenSource, Transport, TransportOptions};
use crate::Error;

/// Configures a [`Client`]; made by [`Client::builder`].
///
/// Defaults are the protocol's (PROTOCOL §7): reconnect on, base delay 1 s, max delay 30 s, 10 attempts, full
/// jitter; connect timeout 10 s; keepalive every 30 s with a 10 s timeout; stable period 5 s; offline queue of
/// 1000 messages / 1 MiB; fragment threshold 100 KiB; request timeout 30 s; webpki roots for `wss://`.
///
/// Limits on what a server can make the client hold (each documented on its method): messages of at most
/// [16 MiB](ClientBuilder::max_message_size), [8](ClientBuilder::max_partial_messages) of them being reassembled
/// at once, [4 MiB](ClientBuilder::max_write_backlog) of frames waiting to be
/// written, [1000](ClientBuilder::max_inbound_requests) server requests awaiting their handlers, and
/// [1024 items](ClientBuilder::stream_buffer) or [16 MiB](ClientBuilder::stream_buffer_bytes) waiting per stream.
///
/// [`build`](ClientBuilder::build) returns a started client that connects in the background;
/// [`connect`](ClientBuilder::connect) also waits for the first `ready`.
///
/// # Authentication
///
/// A token from [`token`](ClientBuilder::token) or [`token_provider`](ClientBuilder::token_provider) is sent
/// as `Authorization: Bearer <token>` on every upgrade; the provider is called afresh before every attempt,
/// so an expired token is replaced on reconnect. With [`token_in_query`](ClientBuilder::token_in_query) it is
/// sent as `?token=<token>` instead, as browsers must. Other headers are set with
/// [`header`](ClientBuilder::header). Tokens and header values are never logged.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = sockeye_server::Server::builder()
/// #     .bind("127.0.0.1:0".parse()?)
/// #     .tokens(["s3cret"])
/// #     .start()
/// #     .await?;
/// use std::time::Duration;
///
/// let client = sockeye::Client::builder(server.ws_url())
///     .token_provider(|| async { Ok::<_, std::io::Error>("s3cret".to_owned()) })
///     .header("X-Service", "billing")
///     .max_attempts(None) // retry forever
///     .base_delay(Duration::from_millis(200))
///     .keepalive(Duration::from_secs(15), Duration::from_secs(5))
///     .request_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// let who: serde_json::Value = client.request("whoami", &()).await?;
/// assert_eq!(who["identity"], "token-1");
/// # client.close().await;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build` or `connect` is called"]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    token: Option<TokenSource>,
    token_in_query: bool,
    config: Config,
    seed: Option<u64>,
    tls: TlsOptions,
    handlers: Handlers,
    stream_limits: StreamLimits,
    max_write_backlog: usize,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values and tokens are credentials: only their presence is shown.
        f.debug_struct("ClientBuilder")
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("token", &self.token)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: String) -> Self {
        ClientBuilder {
            url,
            headers: Vec::new(),
            token: None,
            token_in_query: false,
            config: Config::default(),
            seed: None,
            tls: TlsOptions::default(),
            handlers: Handlers::default(),
            stream_limits: StreamLimits {
                items: 1024,
                bytes: 16 << 20,
            },
            max_write_backlog: DEFAULT_WRITE_BACKLOG,
        }
    }

    /// Adds a header to every upgrade request (repeatable; the same name twice sends both). Checked by
    /// `build`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A fixed bearer token, sent as `Authorization: Bearer <token>` (replacing an `Authorization` header).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(TokenSource::Static(token.into()));
        self
    }

    /// An async token provider, called before every connection attempt. A provider error fails that attempt
    /// (retried with backoff like any connect failure).
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.token = Some(transport::token_provider(provider));
        self
    }

    /// Sends the token as the `token` query parameter (`?token=…`, percent-encoded) instead of the
    /// `Authorization` header: for servers or proxies that only look at the URL. Default off.
    pub fn token_in_query(mut self, on: bool) -> Self {
        self.token_in_query = on;
        self
    }

    /// Reconnect after a connection is lost (default on). Off: the first close ends in `disconnected`.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.config.reconnect.enabled = on;
        self
    }

    /// The backoff's base delay (default 1 s): the cap before attempt n is `min(max, base · 2^(n-1))`.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.config.reconnect.base_delay = delay;
        self
    }

    /// The backoff's maximum delay (default 30 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.config.reconnect.max_delay = delay;
        self
    }

    /// Attempts before giving up (default `Some(10)`); `None` retries forever. The count resets after the
    /// connection has been `ready` for the [`stable_period`](ClientBuilder::stable_period).
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.config.reconnect.max_attempts = attempts;
        self
    }

    /// Full jitter (default on): delays uniform in `[0, cap)`. Off: `cap` plus 0..20 %.
    pub fn full_jitter(mut self, on: bool) -> Self {
        self.config.reconnect.full_jitter = on;
        self
    }

    /// How long an attempt may take to reach `ready` (default 10 s); the socket is then closed and the attempt
    /// counts as failed.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Keepalive: in `ready`, send `ping` every `interval` (default 30 s; zero turns keepalive off), and close
    /// with 4000 and reconnect if no frame arrives within `timeout` (default 10 s) after a `ping`.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.keepalive_interval = interval;
        self.config.keepalive_timeout = timeout;
        self
    }

    /// How long a connection must stay `ready` before the attempt counter resets (default 5 s).
    pub fn stable_period(mut self, period: Duration) -> Self {
        self.config.stable_period = period;
        self
    }

    /// Bounds of the offline queue (defaults 1000 messages, 1 MiB of encoded envelopes). Beyond them, sends
    /// fail with [`Error::ResourceExhausted`].
    pub fn queue_limits(mut self, max_messages: usize, max_bytes: usize) -> Self {
        self.config.queue = QueueLimits {
            max_messages,
            max_bytes,
        };
        self
    }

    /// Envelopes larger than this many bytes are sent as fragments (default 100 KiB; 0 turns it off).
    pub fn fragment_threshold(mut self, bytes: usize) -> Self {
        self.config.fragment_threshold = bytes;
        self
    }

    /// The largest message accepted from the server, whole or reassembled (default 16 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.reassembly.max_message_bytes = bytes;
        self
    }

    /// Fragmented messages from the server being reassembled at once, at most (default 8, PROTOCOL §3). Each
    /// may hold up to [`max_message_size`](ClientBuilder::max_message_size) until it completes; one more is
    /// refused (the client closes with 4004 and reconnects).
    pub fn max_partial_messages(mut self, messages: usize) -> Self {
        self.config.reassembly.max_partial_messages = messages;
        self
    }

    /// The deadline of requests issued without their own [`RequestFuture::timeout`](crate::RequestFuture::timeout)
    /// (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Bytes of frames waiting to be written to the socket, at most (default 4 MiB). At the bound the client
    /// takes no more work that writes until the backlog drains: sends and requests wait (their futures stay
    /// pending), request handlers' answers wait, and the socket is not read (reading could make the client
    /// answer). A server that stops reading therefore holds at most this much (plus one message, which is
    /// never split) of the client's memory, until the keepalive closes the connection. [`Client::close`] is
    /// never held back. Zero is treated as one byte.
    pub fn max_write_backlog(mut self, bytes: usize) -> Self {
        self.max_write_backlog = bytes.max(1);
        self
    }

    /// Server requests (`req`) whose handler has not answered yet, at most (default 1000). At the bound the
    /// client stops reading from the socket until a handler answers: the server's further frames wait in the
    /// network buffers (backpressure). Handlers still at work for a connection that has since been lost count
    /// too, so handlers that never finish cannot pile up across reconnects. Requests for methods without a
    /// handler are answered `UNIMPLEMENTED` at once and never count.
    pub fn max_inbound_requests(mut self, requests: usize) -> Self {
        self.config.max_inbound_requests = requests;
        self
    }

    /// Items buffered per subscription or listener stream before it reports [`Error::Lagged`] and drops
    /// (default 1024).
    pub fn stream_buffer(mut self, items: usize) -> Self {
        self.stream_limits.items = items.max(1);
        self
    }

    /// Payload bytes buffered per subscription or listener stream before it reports [`Error::Lagged`] and
    /// drops (default 16 MiB). One message larger than this is still delivered when nothing else waits.
    pub fn stream_buffer_bytes(mut self, bytes: usize) -> Self {
        self.stream_limits.bytes = bytes;
        self
    }

    /// Seeds the backoff jitter (default: from the process's randomness). Fix it only for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Every option of the core at once (for options without their own method); applied before `build`
    /// validates. The seed is still taken from [`seed`](ClientBuilder::seed) or the process's randomness.
    pub fn core_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Trusts this root certificate for `wss://`, in addition to the built-in roots.
    pub fn add_root_certificate(mut self, certificate: Certificate) -> Self {
        self.tls.extra_roots.push(certificate);
        self
    }

    /// Trusts the Mozilla roots bundled with `webpki-roots` (default on).
    pub fn webpki_roots(mut self, on: bool) -> Self {
        self.tls.webpki_roots = on;
        self
    }

    /// Trusts the operating system's root certificates (default off).
    pub fn native_roots(mut self, on: bool) -> Self {
        self.tls.native_roots = on;
        self
    }

    /// Registers the handler for server requests calling `method`; see [`Client::on_request`].
    pub fn on_request<Req, Resp, F, Fut>(self, method: impl Into<String>, handler: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        self.handlers
            .insert(method.into(), handlers::typed(handler));
        self
    }

    /// Checks the options and starts the client: its task begins connecting at once, in the background.
    /// Sends, requests and subscriptions can be issued right away; they wait in the offline queue until
    /// `ready`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid option (URL, header, TLS root, a timing combination the core refuses),
    /// or when called outside a tokio runtime.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder().bind("127.0.0.1:0".parse()?).start().await?;
    /// use std::time::Duration;
    ///
    /// let client = sockeye::Client::builder(server.ws_url()).build()?;
    /// // Issued before the connection is up: queued, then sent on `ready`.
    /// let reply: String = client.request("echo", "early").await?;
    /// assert_eq!(reply, "early");
    ///
    /// let invalid = sockeye::Client::builder("http://example.com").build();
    /// assert!(matches!(invalid, Err(sockeye::Error::Config(_))));
    /// let invalid = sockeye::Client::builder(server.ws_url()).base_delay(Duration::from_secs(60)).build();
    /// assert!(invalid.is_err()); // base delay above the 30 s maximum
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self) -> Result<Client, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("build() must be called within a tokio runtime".into()))?;
        let mut config = self.config;
        config.seed = self.seed.unwrap_or_else(sockeye_core::entropy_seed);
        let transport = Transport::new(TransportOptions {
            url: self.url,
            headers: self.headers,
            token: self.token,
            token_in_query: self.token_in_query,
            tls: self.tls,
            max_message_bytes: config.reassembly.max_message_bytes,
            fragment_threshold: config.fragment_threshold,
        })?;
        let conn = Connection::new(config).map_err(|e| Error::Config(e.to_string()))?;
        let span = tracing::info_span!("sockeye", url = %transport.display_url);

        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Status::Disconnected { reason: None });
        let handlers = Arc::new(self.handlers);
        let calls = Arc::new(Calls::default());
        let driver = Box::new(Driver::new(
            conn,
            Arc::new(transport),
            Arc::clone(&handlers),
            commands_rx,
            Arc::clone(&calls),
            status_tx,
            self.max_write_backlog,
        ));
        runtime.spawn(driver.run().instrument(span));
        Ok(Client {
            inner: Arc::new(Inner {
                commands: commands_tx,
                calls,
                status: status_rx,
                handlers,
                next_key: AtomicU64::new(1),
                stream_limits: self.stream_limits,
            }),
        })
    }

    /// [`build`](ClientBuilder::build), then waits for the first `ready`.
    ///
    /// Waits through retries for as long as the reconnect options allow; wrap it in
    /// [`tokio::time::timeout`] to bound the wait.
    ///
    /// # Errors
    /// As `build`, and [`Error::Disconnected`] when the client gives up before `ready` (authentication
    /// failed, attempts exhausted, reconnect disabled); the client is closed then.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = sockeye_server::Server::builder()
    /// #     .bind("127.0.0.1:0".parse()?)
    /// #     .tokens(["right"])
    /// #     .start()
    /// #     .await?;
    /// use sockeye::{Client, ErrorCode};
    ///
    /// let refused = Client::builder(server.ws_url()).token("wrong").connect().await.unwrap_err();
    /// assert_eq!(refused.code(), ErrorCode::Unauthenticated); // 4003 is terminal: no retries
    ///
    /// let client = Client::builder(server.ws_url()).token("right").connect().await?;
    /// # client.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self) -> Result<Client, Error> {
        let client = self.build()?;
        match client.wait_until(&Status::Ready).await {
            Ok(()) => Ok(client),
            Err(e) => {
                client.close().await;
                Err(e)
            }
        }
    }
}
