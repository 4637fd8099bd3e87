//! The client side of every measure, one per run; prints its result as one JSON line on stdout.
//!
//! Kinds of client: `raw` (tokio-tungstenite, binary echo frames), `proto` (tokio-tungstenite speaking the
//! Sockeye protocol with pre-encoded `req echo` frames: the server alone) and `sockeye` (`sockeye::Client`).
//! Every loop is bounded by a deadline and [`STEP_TIMEOUT`] per wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::json;
use sockeye::{Client, Status};
use sockeye_bench::{
    blob, completes_message, echo_request_frame, rss_bytes, wall_micros, ws_config, Blob, Latency,
    CLIENT_BUFFER, STEP_TIMEOUT, SUBPROTOCOL,
};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections opened at once while building up an idle population (the listen backlog is 1024).
const CONNECT_BATCH: usize = 250;
/// Frames read before the replies they answer are flushed, at most.
const READ_BATCH: usize = 256;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    measure: Measure,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Raw,
    Proto,
    Sockeye,
}

#[derive(Subcommand)]
enum Measure {
    /// Round trips per second with `inflight` requests outstanding.
    Throughput {
        #[arg(long)]
        url: String,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        inflight: usize,
        /// Measured seconds (after a warm-up of a fifth of it).
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
    },
    /// Round-trip time of one request at a time.
    Rtt {
        #[arg(long)]
        url: String,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 5000)]
        samples: usize,
    },
    /// Opens idle connections up to each of `at`, printing this process's RSS at each and waiting for a line
    /// on stdin before going on (the orchestrator reads the server's RSS meanwhile).
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long, value_delimiter = ',')]
        at: Vec<usize>,
    },
    /// `n` Sockeye clients through an in-process switch that sends new connections to `b` once told (a line
    /// on stdin); each client queues one request when it loses its connection.
    Storm {
        /// `host:port` of the first server.
        #[arg(long)]
        a: String,
        /// `host:port` of the second server.
        #[arg(long)]
        b: String,
        #[arg(long)]
        n: usize,
        /// How long to wait for every queued request to be answered after the switch.
        #[arg(long, default_value_t = 30.0)]
        timeout_secs: f64,
    },
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let result = match Args::parse().measure {
        Measure::Throughput {
            url,
            kind,
            size,
            inflight,
            secs,
        } => throughput(&url, kind, size, inflight.max(1), secs).await?,
        Measure::Rtt {
            url,
            kind,
            size,
            samples,
        } => rtt(&url, kind, size, samples).await?,
        Measure::Idle { url, kind, at } => idle(&url, kind, &at).await?,
        Measure::Storm {
            a,
            b,
            n,
            timeout_secs,
        } => storm(a, b, n, Duration::from_secs_f64(timeout_secs)).await?,
    };
    println!("{result}");
    Ok(())
}

/// A raw tungstenite client; `proto` offers the Sockeye subprotocol and waits for `ready`.
async fn raw_connect(url: &str, proto: bool) -> Result<Ws, BoxError> {
    let mut request = url.into_client_request()?;
    if proto {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let (mut ws, _) = timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config(CLIENT_BUFFER)), true),
    )
    .await??;
    if proto {
        loop {
            match timeout(STEP_TIMEOUT, ws.next()).await? {
                Some(Ok(Message::Text(text))) if text.as_str() == "ready" => break,
                Some(Ok(_)) => {}
                other => return Err(format!("no ready: {other:?}").into()),
            }
        }
    }
    Ok(ws)
}

async fn sockeye_connect(url: &str) -> Result<Client, BoxError> {
    let client = Client::builder(url).request_timeout(STEP_TIMEOUT).build()?;
    client.wait_for(Status::Ready, STEP_TIMEOUT).await?;
    Ok(client)
}

/// Counts round trips in `[warm-up end, deadline)`: (count, seconds).
struct Window {
    warm_until: Instant,
    deadline: Instant,
    counter: AtomicU64,
    at_warm: Mutex<Option<(u64, Instant)>>,
}

impl Window {
    fn new(secs: f64) -> Window {
        let start = Instant::now();
        let warm_until = start + Duration::from_secs_f64(secs / 5.0);
        Window {
            warm_until,
            deadline: warm_until + Duration::from_secs_f64(secs),
            counter: AtomicU64::new(0),
            at_warm: Mutex::new(None),
        }
    }

    /// Counts one round trip; false once the deadline has passed.
    fn tick(&self) -> bool {
        let count = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        if now >= self.warm_until {
            let mut at_warm = self
                .at_warm
                .lock()
                .expect("never poisoned: no panics inside");
            at_warm.get_or_insert((count, now));
        }
        now < self.deadline
    }

    fn rate(&self) -> f64 {
        let end = Instant::now();
        let count = self.counter.load(Ordering::Relaxed);
        match *self
            .at_warm
            .lock()
            .expect("never poisoned: no panics inside")
        {
            Some((at, when)) if end > when => (count - at) as f64 / (end - when).as_secs_f64(),
            _ => 0.0,
        }
    }
}

async fn throughput(
    url: &str,
    kind: Kind,
    size: usize,
    inflight: usize,
    secs: f64,
) -> Result<serde_json::Value, BoxError> {
    let window = Arc::new(Window::new(secs));
    match kind {
        Kind::Raw | Kind::Proto => {
            let mut ws = raw_connect(url, kind == Kind::Proto).await?;
            let frame = Bytes::from(match kind {
                Kind::Proto => echo_request_frame(1, size),
                _ => blob(size).0,
            });
            for _ in 0..inflight {
                ws.feed(Message::Binary(frame.clone())).await?;
            }
            ws.flush().await?;
            // One task reads replies and answers each with a new request: feed every one that is ready, then
            // flush once.
            let mut running = true;
            while running {
                let mut next = Some(timeout(STEP_TIMEOUT, ws.next()).await?);
                let mut read = 0;
                while let Some(message) = next.take() {
                    match message {
                        Some(Ok(Message::Binary(data))) => {
                            if kind == Kind::Raw || completes_message(&data) {
                                running &= window.tick();
                                ws.feed(Message::Binary(frame.clone())).await?;
                            }
                        }
                        Some(Ok(_)) => {}
                        other => return Err(format!("connection ended: {other:?}").into()),
                    }
                    read += 1;
                    if read < READ_BATCH {
                        next = ws.next().now_or_never();
                    }
                }
                ws.flush().await?;
            }
        }
        Kind::Sockeye => {
            let client = sockeye_connect(url).await?;
            let payload = blob(size);
            let mut tasks = Vec::new();
            for _ in 0..inflight {
                let (client, payload, window) =
                    (client.clone(), payload.clone(), Arc::clone(&window));
                tasks.push(tokio::spawn(async move {
                    loop {
                        let _: Blob = client.request("echo", &payload).await?;
                        if !window.tick() {
                            return Ok::<(), sockeye::Error>(());
                        }
                    }
                }));
            }
            for task in tasks {
                task.await??;
            }
            client.close().await;
        }
    }
    Ok(json!({ "rate": window.rate() }))
}

async fn rtt(
    url: &str,
    kind: Kind,
    size: usize,
    samples: usize,
) -> Result<serde_json::Value, BoxError> {
    let warm = samples / 10;
    let mut micros = Vec::with_capacity(samples);
    match kind {
        Kind::Raw | Kind::Proto => {
            let mut ws = raw_connect(url, kind == Kind::Proto).await?;
            let frame = Bytes::from(match kind {
                Kind::Proto => echo_request_frame(1, size),
                _ => blob(size).0,
            });
            for i in 0..warm + samples {
                let start = Instant::now();
                ws.send(Message::Binary(frame.clone())).await?;
                loop {
                    match timeout(STEP_TIMEOUT, ws.next()).await? {
                        Some(Ok(Message::Binary(data)))
                            if kind == Kind::Raw || completes_message(&data) =>
                        {
                            break
                        }
                        Some(Ok(_)) => {}
                        other => return Err(format!("connection ended: {other:?}").into()),
                    }
                }
                if i >= warm {
                    micros.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        Kind::Sockeye => {
            let client = sockeye_connect(url).await?;
            let payload = blob(size);
            for i in 0..warm + samples {
                let start = Instant::now();
                let _: Blob = client.request("echo", &payload).await?;
                if i >= warm {
                    micros.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
            client.close().await;
        }
    }
    Ok(serde_json::to_value(Latency::from_samples(micros))?)
}

/// One idle connection of `kind`, kept alive by its owner.
enum IdleConn {
    /// A raw socket, read by its own task (as an application would) until the process ends.
    Raw(tokio::task::JoinHandle<()>),
    Sockeye(Client),
}

async fn open_idle(url: String, kind: Kind) -> Result<IdleConn, BoxError> {
    match kind {
        Kind::Raw | Kind::Proto => {
            let mut ws = raw_connect(&url, kind == Kind::Proto).await?;
            Ok(IdleConn::Raw(tokio::spawn(async move {
                while let Some(Ok(_)) = ws.next().await {}
            })))
        }
        Kind::Sockeye => Ok(IdleConn::Sockeye(sockeye_connect(&url).await?)),
    }
}

async fn idle(url: &str, kind: Kind, at: &[usize]) -> Result<serde_json::Value, BoxError> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // One connection first, so the runtime and allocator are warm before the baseline.
    let mut conns = vec![open_idle(url.to_owned(), kind).await?];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_bytes("self").unwrap_or(0);
    println!("{}", json!({ "stage": "base", "rss": base }));
    let mut points = Vec::new();
    for &target in at {
        while conns.len() < target + 1 {
            let batch = CONNECT_BATCH.min(target + 1 - conns.len());
            let opened =
                futures_util::future::join_all((0..batch).map(|_| open_idle(url.to_owned(), kind)))
                    .await;
            for conn in opened {
                conns.push(conn?);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_bytes("self").unwrap_or(0);
        println!("{}", json!({ "stage": "at", "n": target, "rss": rss }));
        points.push(json!({ "n": target, "rss": rss }));
        // The orchestrator samples the server, then lets us go on.
        timeout(STEP_TIMEOUT, stdin.next_line()).await??;
    }
    for conn in conns {
        match conn {
            IdleConn::Raw(task) => task.abort(),
            IdleConn::Sockeye(client) => drop(client),
        }
    }
    Ok(json!({ "stage": "done", "base": base, "points": points }))
}

/// Relays new connections to `a`, or to `b` once `switched`, recording when each reached `b`.
async fn switch(
    listener: TcpListener,
    a: String,
    b: String,
    switched: Arc<AtomicBool>,
    arrivals: Arc<Mutex<Vec<u64>>>,
) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let to_b = switched.load(Ordering::SeqCst);
        if to_b {
            arrivals
                .lock()
                .expect("never poisoned: no panics inside")
                .push(wall_micros());
        }
        let target = if to_b { b.clone() } else { a.clone() };
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn storm(
    a: String,
    b: String,
    n: usize,
    wait: Duration,
) -> Result<serde_json::Value, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    let switched = Arc::new(AtomicBool::new(false));
    let arrivals = Arc::new(Mutex::new(Vec::with_capacity(n)));
    tokio::spawn(switch(
        listener,
        a,
        b,
        Arc::clone(&switched),
        Arc::clone(&arrivals),
    ));

    let mut clients = VecDeque::with_capacity(n);
    while clients.len() < n {
        let batch = CONNECT_BATCH.min(n - clients.len());
        let opened =
            futures_util::future::join_all((0..batch).map(|_| sockeye_connect(&url))).await;
        for client in opened {
            clients.push_back(client?);
        }
    }
    println!("{}", json!({ "stage": "ready", "n": n }));
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    timeout(STEP_TIMEOUT, stdin.next_line()).await??;
    switched.store(true, Ordering::SeqCst);

    // Each client, once it has lost its connection, issues one request: it waits in the offline queue and
    // must be answered by the second server.
    let replied = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for (i, client) in clients.into_iter().enumerate() {
        let replied = Arc::clone(&replied);
        tasks.push(tokio::spawn(async move {
            let mut status = client.transitions();
            while let Some(Ok(transition)) = status.next().await {
                if transition.to != Status::Ready {
                    break;
                }
            }
            let sent = i as u64;
            if let Ok(echoed) = client
                .request::<u64, u64>("echo", &sent)
                .timeout(wait)
                .await
            {
                if echoed == sent {
                    replied.fetch_add(1, Ordering::Relaxed);
                }
            }
            client.close().await;
        }));
    }
    let _ = timeout(
        wait + Duration::from_secs(5),
        futures_util::future::join_all(tasks),
    )
    .await;
    let arrivals = arrivals
        .lock()
        .expect("never poisoned: no panics inside")
        .clone();
    Ok(json!({
        "stage": "done",
        "n": n,
        "replied": replied.load(Ordering::Relaxed),
        "arrivals": arrivals,
    }))
}
