//! A fault-injecting TCP proxy for chaos tests, and the seeded schedule that drives it.
//!
//! [`ChaosProxy`] sits between clients and a server on loopback and relays bytes both ways. [`run_faults`]
//! picks, at moments drawn from a seeded generator, a live connection and a fault for it:
//!
//! | fault | what the proxy does |
//! |---|---|
//! | [`Fault::Drop`] | closes both sockets with a FIN (`shutdown(Write)`, then close) |
//! | [`Fault::Reset`] | closes both sockets with an RST (`SO_LINGER` 0) |
//! | [`Fault::Blackhole`] | stops forwarding both ways (reads and discards) until one side gives up |
//! | [`Fault::Delay`] | stops reading both ways for 20–300 ms, then goes on |
//! | [`Fault::Cut`] | forwards only a prefix of the next chunk read (either way), then drops or resets |
//! | [`Fault::Restart`] | the caller's restart, e.g. shutting the server down and starting it on the same port |
//!
//! The seed fixes the schedule: the gaps between faults, their kinds and parameters, and which connection (by
//! index among the live ones) each hits. Thread timing still varies, so a failing seed reproduces the same
//! storm, not the same interleaving. [`chaos_seed`] reads `SOCKEYE_CHAOS_SEED` and prints the seed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sockeye_core::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes read per chunk in each direction; also the unit a [`Fault::Cut`] cuts.
const CHUNK: usize = 16 * 1024;
/// Attempts to claim a [`Mode::Cut`] for a chunk before giving up on the connection.
const MAX_CLAIMS: usize = 8;
/// How long the proxy waits for the server when a client connects (a restarting server refuses at once).
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The seed of a chaos run: `SOCKEYE_CHAOS_SEED` when set and not empty (decimal or `0x` hex), else drawn from
/// the clock.
/// Printed to stderr, which the test harness shows when the test fails.
///
/// # Panics
/// When `SOCKEYE_CHAOS_SEED` is set but is not a number: a typo must not silently run another seed.
pub fn chaos_seed() -> u64 {
    let seed = match std::env::var("SOCKEYE_CHAOS_SEED") {
        Ok(text) if !text.trim().is_empty() => parse_seed(&text)
            .unwrap_or_else(|| panic!("SOCKEYE_CHAOS_SEED={text:?} is not a number")),
        _ => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            // Scrambled so that runs started close together differ in every bit.
            Rng::new(nanos as u64).next_u64()
        }
    };
    eprintln!("chaos seed {seed} (rerun with SOCKEYE_CHAOS_SEED={seed})");
    seed
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// One kind of injected fault; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Drop,
    Reset,
    Blackhole,
    Delay,
    Cut,
    Restart,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Drop,
        Fault::Reset,
        Fault::Blackhole,
        Fault::Delay,
        Fault::Cut,
        Fault::Restart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Reset => "reset",
            Fault::Blackhole => "blackhole",
            Fault::Delay => "delay",
            Fault::Cut => "cut",
            Fault::Restart => "restart",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many faults of each kind took effect. A [`Fault::Cut`] counts when its prefix was forwarded (a
/// connection that ends before it carries another byte is not cut).
#[derive(Debug, Default)]
pub struct FaultCounts([AtomicU64; 6]);

impl FaultCounts {
    fn add(&self, fault: Fault) {
        self.0[fault.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, fault: Fault) -> u64 {
        self.0[fault.index()].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        Fault::ALL.iter().map(|&f| self.get(f)).sum()
    }
}

impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} faults:", self.total())?;
        for fault in Fault::ALL {
            write!(f, " {}={}", fault.name(), self.get(fault))?;
        }
        Ok(())
    }
}

/// What both pumps of one connection do with the bytes they read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Read and discard, both ways.
    Blackhole,
    /// Read nothing until then.
    Pause {
        until: Instant,
    },
    /// The next chunk read (by either pump) is forwarded up to `keep_permille` ‰ of its length, then the
    /// connection ends with a FIN, or an RST when `rst`.
    Cut {
        keep_permille: u64,
        rst: bool,
    },
    /// End both sockets now.
    Kill {
        rst: bool,
    },
}

/// One proxied connection: the mode its two pumps follow.
struct Link {
    mode: watch::Sender<Mode>,
    counts: Arc<FaultCounts>,
}

impl Link {
    /// Replaces the mode unless the connection is already ending. A blackhole only ends with the connection:
    /// forwarding again after bytes were discarded would cut a hole in the middle of a TCP stream, which no
    /// network does.
    fn set(&self, mode: Mode) -> bool {
        self.mode.send_if_modified(|m| {
            let ending = matches!(m, Mode::Kill { .. })
                || (*m == Mode::Blackhole && !matches!(mode, Mode::Kill { .. }));
            if ending {
                return false;
            }
            *m = mode;
            true
        })
    }

    /// Replaces `expected` with `mode`; false when another pump or a new fault changed it first.
    fn replace(&self, expected: Mode, mode: Mode) -> bool {
        self.mode.send_if_modified(|m| {
            if *m != expected {
                return false;
            }
            *m = mode;
            true
        })
    }
}

struct Shared {
    target: SocketAddr,
    links: Mutex<Vec<Weak<Link>>>,
    counts: Arc<FaultCounts>,
}

impl Shared {
    /// The connections still open, pruning the ended ones.
    fn live(&self) -> Vec<Arc<Link>> {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links.retain(|l| l.strong_count() > 0);
        links.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A TCP proxy on loopback in front of `target` that injects faults on command; see the [module docs](self).
/// Dropping it stops accepting; connections already open run until they end.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free loopback port.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<ChaosProxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            links: Mutex::default(),
            counts: Arc::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(ChaosProxy {
            addr,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/ws`: the reference server's WebSocket endpoint, through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The faults that took effect so far (restarts included when [`run_faults`] did them).
    pub fn counts(&self) -> &FaultCounts {
        &self.shared.counts
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.live().len()
    }

    /// Applies one connection fault (not [`Fault::Restart`]) to the `pick`-th live connection (modulo their
    /// number), with the parameters drawn for it. False when there was no connection to hit.
    fn inject(&self, fault: Fault, pick: u64, params: &Params) -> bool {
        let live = self.shared.live();
        if live.is_empty() {
            return false;
        }
        let link = &live[(pick % live.len() as u64) as usize];
        let mode = match fault {
            Fault::Drop => Mode::Kill { rst: false },
            Fault::Reset => Mode::Kill { rst: true },
            Fault::Blackhole => Mode::Blackhole,
            Fault::Delay => Mode::Pause {
                until: Instant::now() + params.delay,
            },
            Fault::Cut => Mode::Cut {
                keep_permille: params.keep_permille,
                rst: params.rst,
            },
            Fault::Restart => return false,
        };
        let applied = link.set(mode);
        // A cut counts when it happens (in the pump).
        if applied && fault != Fault::Cut {
            self.shared.counts.add(fault);
        }
        applied
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Ends when the proxy is dropped (the task is aborted) or the listener fails for good.
    while let Ok((client, _)) = listener.accept().await {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let upstream =
                tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(shared.target))
                    .await;
            // The server is down (restarting): the client sees its connection end, as it would.
            let Ok(Ok(server)) = upstream else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mode, _) = watch::channel(Mode::Forward);
            let link = Arc::new(Link {
                mode,
                counts: Arc::clone(&shared.counts),
            });
            shared
                .links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(&link));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, Arc::clone(&link)));
            tokio::spawn(pump(server_read, client_write, link));
        });
    }
}

/// Relays `from` to `to` following the link's mode; ends the link when either side ends or fails. Each pump
/// closes the socket it writes to, so the two pumps together close both.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Arc<Link>) {
    let mut mode = link.mode.subscribe();
    let mut buf = vec![0u8; CHUNK];
    // Bounded by the connection's life: every turn either reads, waits for a mode change, or ends.
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Kill { rst } => return end(to, rst).await,
            Mode::Pause { until } => {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {
                        link.replace(current, Mode::Forward);
                    }
                    _ = mode.changed() => {}
                }
                continue;
            }
            Mode::Forward | Mode::Blackhole | Mode::Cut { .. } => {}
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = mode.changed() => continue,
        };
        let n = match read {
            Ok(0) if current == Mode::Forward => {
                // An orderly half-close is passed on; the other direction goes on until it ends too.
                let _ = to.shutdown().await;
                return;
            }
            Ok(0) => {
                link.set(Mode::Kill { rst: false });
                return end(to, false).await;
            }
            Ok(n) => n,
            Err(_) => {
                // Reset by the peer: pass the reset on, both ways.
                link.set(Mode::Kill { rst: true });
                return end(to, true).await;
            }
        };
        relay_chunk(&buf[..n], &mut to, &link, &mut mode).await;
    }
}

/// Passes one chunk on as the link's mode says. A fault may change the mode while a cut is being claimed:
/// the chunk then follows the new mode (dropping it and forwarding what comes next would cut a hole in the
/// middle of the stream, which no network does).
async fn relay_chunk(
    chunk: &[u8],
    to: &mut OwnedWriteHalf,
    link: &Link,
    mode: &mut watch::Receiver<Mode>,
) {
    // Each failed claim means the mode changed meanwhile; faults come milliseconds apart, so a few turns
    // are plenty. Past them, the connection ends rather than lose the chunk.
    for _ in 0..MAX_CLAIMS {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Forward | Mode::Pause { .. } => {
                if !forward(to, chunk, mode).await {
                    link.set(Mode::Kill { rst: false });
                }
                return;
            }
            Mode::Blackhole | Mode::Kill { .. } => return,
            Mode::Cut { keep_permille, rst } => {
                if link.replace(current, Mode::Kill { rst }) {
                    link.counts.add(Fault::Cut);
                    // The kill is ours: it must not interrupt the prefix.
                    mode.borrow_and_update();
                    let keep = chunk.len() * keep_permille as usize / 1000;
                    let _ = forward(to, &chunk[..keep], mode).await;
                    return;
                }
            }
        }
    }
    link.set(Mode::Kill { rst: false });
}

/// Writes all of `bytes` unless the link starts ending meanwhile (a peer that does not read must not keep a
/// pump from obeying a kill). False when the write failed.
async fn forward(to: &mut OwnedWriteHalf, bytes: &[u8], mode: &mut watch::Receiver<Mode>) -> bool {
    let mut written = 0;
    while written < bytes.len() {
        tokio::select! {
            result = to.write(&bytes[written..]) => match result {
                Ok(0) | Err(_) => return false,
                Ok(n) => written += n,
            },
            changed = mode.changed() => {
                if changed.is_err() || matches!(*mode.borrow(), Mode::Kill { .. } | Mode::Blackhole) {
                    return true;
                }
            }
        }
    }
    true
}

/// Ends the socket `to` writes to: an RST (linger 0, and no FIN first), or a FIN.
async fn end(mut to: OwnedWriteHalf, rst: bool) {
    if rst {
        let _ = to.as_ref().set_zero_linger();
        // Without this, dropping the write half would send a FIN before the reset. The socket closes (with
        // the RST) when the other pump drops the read half.
        to.forget();
    } else {
        let _ = to.shutdown().await;
    }
}

/// The parameters drawn for every fault, whatever its kind, so the schedule's stream of draws does not
/// depend on which kinds came up.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Params {
    delay: Duration,
    keep_permille: u64,
    rst: bool,
}

/// The shape of a chaos run for [`run_faults`].
#[derive(Clone, Debug)]
pub struct Plan {
    /// Stop after this many faults took effect…
    pub faults: u64,
    /// …or after this long, whichever comes first.
    pub max_duration: Duration,
    /// The gap before each fault is uniform in this range (milliseconds, inclusive).
    pub gap_ms: (u64, u64),
    /// Relative weights of [`Fault::ALL`], in that order.
    pub weights: [u64; 6],
}

/// One step of a schedule: wait `gap`, then apply `fault` to the `pick`-th live connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    gap: Duration,
    fault: Fault,
    pick: u64,
    params: Params,
}

/// The endless stream of steps a seed and a plan make.
struct Schedule<'a> {
    rng: Rng,
    plan: &'a Plan,
    total_weight: u64,
}

impl<'a> Schedule<'a> {
    fn new(seed: u64, plan: &'a Plan) -> Self {
        let total_weight = plan.weights.iter().sum();
        assert!(total_weight > 0, "a plan needs at least one fault kind");
        Schedule {
            rng: Rng::new(seed),
            plan,
            total_weight,
        }
    }

    fn next_step(&mut self) -> Step {
        let rng = &mut self.rng;
        let (low, high) = self.plan.gap_ms;
        let gap = Duration::from_millis(low + rng.below(high.saturating_sub(low) + 1));
        let mut draw = rng.below(self.total_weight);
        let mut fault = Fault::Restart;
        for (kind, weight) in Fault::ALL.into_iter().zip(self.plan.weights) {
            if draw < weight {
                fault = kind;
                break;
            }
            draw -= weight;
        }
        Step {
            gap,
            fault,
            pick: rng.next_u64(),
            params: Params {
                delay: Duration::from_millis(20 + rng.below(281)),
                keep_permille: rng.below(1000),
                rst: rng.below(2) == 1,
            },
        }
    }
}

/// Injects faults on `proxy` following `plan`, drawing everything from `seed`; [`Fault::Restart`] calls
/// `restart` (and is counted when it returns). Returns when the plan is done.
///
/// # Panics
/// When every weight of the plan is zero.
pub async fn run_faults<R, Fut>(proxy: &ChaosProxy, seed: u64, plan: &Plan, mut restart: R)
where
    R: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut schedule = Schedule::new(seed, plan);
    let deadline = Instant::now() + plan.max_duration;
    while proxy.counts().total() < plan.faults && Instant::now() < deadline {
        let step = schedule.next_step();
        tokio::time::sleep(step.gap).await;
        if step.fault == Fault::Restart {
            restart().await;
            proxy.shared.counts.add(Fault::Restart);
        } else {
            proxy.inject(step.fault, step.pick, &step.params);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a\n"), Some(42));
        assert_eq!(parse_seed("forty-two"), None);
    }

    /// A client and an echoing server through the proxy; returns (proxy, client socket).
    async fn echo_pair() -> (ChaosProxy, TcpStream) {
        let server = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let target = server.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = ChaosProxy::start(target).await.expect("proxy");
        let client = TcpStream::connect(proxy.addr()).await.expect("connect");
        (proxy, client)
    }

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("within 5 s")
    }

    async fn wait_for_link(proxy: &ChaosProxy) {
        within(async {
            while proxy.open_connections() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    const NO_PARAMS: Params = Params {
        delay: Duration::from_millis(50),
        keep_permille: 500,
        rst: true,
    };

    #[tokio::test]
    async fn relays_bytes_both_ways() {
        let (proxy, mut client) = echo_pair().await;
        client.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        within(client.read_exact(&mut buf)).await.expect("echo");
        assert_eq!(&buf, b"hello");
        assert_eq!(proxy.counts().total(), 0);
    }

    #[tokio::test]
    async fn reset_reaches_the_client_as_an_rst_and_drop_as_a_fin() {
        let (proxy, mut client) = echo_pair().await;
        wait_for_link(&proxy).await;
        assert!(proxy.inject(Fault::Reset, 0, &NO_PARAMS));
        let mut buf = [0u8; 8];
        let read = within(client.read(&mut buf)).await;
        assert_eq!(
            read.expect_err("a reset is an error").kind(),
            std::io::ErrorKind::ConnectionReset
        );

        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        client.write_all(b"x").await.expect("write");
        within(client.read_exact(&mut buf[..1]))
            .await
            .expect("echo");
        assert!(proxy.inject(Fault::Drop, 0, &NO_PARAMS));
        assert_eq!(within(client.read(&mut buf)).await.expect("a FIN"), 0);
        assert_eq!(
            (
                proxy.counts().get(Fault::Reset),
                proxy.counts().get(Fault::Drop)
            ),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn blackhole_swallows_bytes_and_ends_when_the_client_leaves() {
        let (proxy, mut client) = echo_pair().await;
        wait_for_link(&proxy).await;
        assert!(proxy.inject(Fault::Blackhole, 0, &NO_PARAMS));
        client.write_all(b"lost").await.expect("write");
        let mut buf = [0u8; 4];
        let silent = tokio::time::timeout(Duration::from_millis(200), client.read(&mut buf)).await;
        assert!(silent.is_err(), "nothing comes back through a blackhole");
        // Nor does anything after it: a stream with a hole in the middle is not something TCP delivers.
        assert!(!proxy.inject(Fault::Delay, 0, &NO_PARAMS));
        assert!(!proxy.inject(Fault::Cut, 0, &NO_PARAMS));
        drop(client);
        within(async {
            while proxy.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn cut_forwards_a_prefix_then_ends_the_connection() {
        // A server that counts what it receives before the connection ends.
        let server = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let proxy = ChaosProxy::start(server.local_addr().expect("addr"))
            .await
            .expect("proxy");
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        let (mut upstream, _) = within(server.accept()).await.expect("accept");
        wait_for_link(&proxy).await;
        let params = Params {
            keep_permille: 500,
            rst: false,
            ..NO_PARAMS
        };
        assert!(proxy.inject(Fault::Cut, 0, &params));
        client.write_all(&[7u8; 1000]).await.expect("write");
        let mut received = Vec::new();
        within(upstream.read_to_end(&mut received))
            .await
            .expect("a FIN");
        // Half of the chunk read: the whole 1000 bytes on loopback, never more.
        assert!(
            (1..=500).contains(&received.len()),
            "{} bytes",
            received.len()
        );
        let mut rest = Vec::new();
        within(client.read_to_end(&mut rest)).await.expect("a FIN");
        assert_eq!(proxy.counts().get(Fault::Cut), 1);
    }

    #[tokio::test]
    async fn delay_holds_bytes_back_then_delivers_them() {
        let (proxy, mut client) = echo_pair().await;
        wait_for_link(&proxy).await;
        assert!(proxy.inject(Fault::Delay, 0, &NO_PARAMS));
        client.write_all(b"late").await.expect("write");
        let mut buf = [0u8; 4];
        within(client.read_exact(&mut buf))
            .await
            .expect("delivered");
        assert_eq!(&buf, b"late");
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let plan = Plan {
            faults: 100,
            max_duration: Duration::from_secs(1),
            gap_ms: (5, 45),
            weights: [4, 4, 2, 4, 4, 1],
        };
        let steps = |seed| {
            let mut schedule = Schedule::new(seed, &plan);
            (0..200).map(|_| schedule.next_step()).collect::<Vec<_>>()
        };
        assert_eq!(steps(7), steps(7));
        assert_ne!(steps(7), steps(8));
        let kinds: Vec<Fault> = steps(7).into_iter().map(|s| s.fault).collect();
        assert!(
            Fault::ALL.iter().all(|f| kinds.contains(f)),
            "every kind comes up"
        );
    }

    #[tokio::test]
    async fn restarts_are_left_to_the_caller_and_counted() {
        let (proxy, _client) = echo_pair().await;
        let plan = Plan {
            faults: 3,
            max_duration: Duration::from_secs(5),
            gap_ms: (0, 1),
            weights: [0, 0, 0, 0, 0, 1],
        };
        let mut restarts = 0;
        run_faults(&proxy, 7, &plan, || {
            restarts += 1;
            async {}
        })
        .await;
        assert_eq!((restarts, proxy.counts().get(Fault::Restart)), (3, 3));
    }
}
