//! Scale-out over Redis with the native client (issue 16 §4): two reference-server instances in this process
//! share one `redis-server` the test starts. A publish on one instance reaches subscribers on both with the same
//! `seq`s; a subscriber whose instance stops comes back on the other and resumes from the shared history with
//! nothing lost and nothing twice.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sockeye::{Subscription, SubscriptionItem, TopicPosition};
use sockeye_server::ServerHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

/// A `redis-server` on a free loopback port with no persistence and a temporary directory; killed (and the
/// directory removed) when dropped. A local copy of the few lines of sockeye-server's test helper
/// (server/tests/it/common.rs) this file needs: sharing that one would mean a test-support crate or a `#[path]`
/// into another package, and its `redis` client for readiness, for a spawn and a PING.
struct RedisServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// `None` (with the reason printed) when `redis-server` is not installed and `CI` is not `true`; in CI a
    /// missing `redis-server` fails the test (scripts/install.sh installs it).
    async fn start() -> Option<RedisServer> {
        let installed = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !installed {
            assert!(
                std::env::var("CI").map_or(true, |ci| ci != "true"),
                "redis-server is missing in CI: scripts/install.sh installs it"
            );
            eprintln!("SKIPPED: redis-server is not installed (scripts/install.sh installs it)");
            return None;
        }
        let port = free_port().await.port();
        let dir = std::env::temp_dir().join(format!(
            "sockeye-native-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // Dropped (killing the process) if it never answers.
        let server = RedisServer { child, port, dir };
        within("redis-server to answer PING", async {
            while !server.pong().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Some(server)
    }

    /// One inline `PING` on a connection of its own.
    async fn pong(&self) -> bool {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut answer = [0u8; 7];
        tcp.write_all(b"PING\r\n").await.is_ok()
            && tcp.read_exact(&mut answer).await.is_ok()
            && &answer == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn instance(redis: &RedisServer) -> ServerHandle {
    start(server_builder().redis(redis.url())).await
}

async fn subscribed(client: &sockeye::Client, topic: &str) -> Subscription<u64> {
    let subscription = client.subscribe::<u64>(topic).unwrap();
    within("subscribed", subscription.subscribed())
        .await
        .unwrap();
    subscription
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_instance_reaches_native_subscribers_on_both_with_the_same_seqs() {
    const EVENTS: u64 = 50;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let on_a = within("connect to A", fast(a.ws_url()).connect())
        .await
        .unwrap();
    let on_b = within("connect to B", fast(b.ws_url()).connect())
        .await
        .unwrap();
    let mut subscriptions = [
        subscribed(&on_a, "shared").await,
        subscribed(&on_b, "shared").await,
    ];
    let publisher = within("connect to B", fast(b.ws_url()).connect())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for n in 1..=EVENTS {
        acked.push(
            within("an ack", publisher.publish_acked("shared", &n))
                .await
                .unwrap(),
        );
    }
    let ep = acked[0].ep.clone();
    assert!(acked.iter().all(|at| at.ep == ep), "one epoch: {acked:?}");
    for subscription in &mut subscriptions {
        let mut got = Vec::new();
        while got.len() < acked.len() {
            match next_item(subscription).await {
                SubscriptionItem::Event(e) => got.push((
                    e.data,
                    TopicPosition {
                        ep: e.ep.expect("an epoch").to_string(),
                        seq: e.seq,
                    },
                )),
                other => panic!("only events expected: {other:?}"),
            }
        }
        let published: Vec<_> = (1..=EVENTS).zip(acked.iter().cloned()).collect();
        assert_eq!(
            got, published,
            "every event once, in order, at the seq its publisher was told"
        );
    }
    for client in [on_a, on_b, publisher] {
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_subscriber_whose_instance_stops_resumes_on_the_other_with_no_gap() {
    const LAST: u64 = 300;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    // The subscriber's one URL is a proxy standing in for a load balancer: it sends connections to A until the
    // test moves it to B (the native client has no URL list of its own). While `away` is set its connection
    // attempts fail, so that events are published on B while it is gone and must come from the history.
    let balancer = Proxy::start(a.local_addr()).await;
    let away = Arc::new(AtomicBool::new(false));
    let client = subscriber(balancer.url(), Arc::clone(&away)).await;
    let mut moving = subscribed(&client, "moving").await;
    assert_eq!(a.stats().connections_total, 1, "the subscriber is on A");

    let publisher = within("connect to B", fast(b.ws_url()).connect())
        .await
        .unwrap();
    let first = publisher.publish_acked("moving", &0u64).await.unwrap();
    let (published, publishing) = publish_numbers(publisher, "moving", first.clone(), LAST);
    eventually("some events before A stops", || {
        published.load(Ordering::SeqCst) >= 20
    })
    .await;
    away.store(true, Ordering::SeqCst);
    balancer.retarget(b.local_addr());
    within("A to shut down", a.shutdown()).await;
    let gone_at = published.load(Ordering::SeqCst);
    eventually("events published on B while the subscriber is away", || {
        published.load(Ordering::SeqCst) >= gone_at + 30
    })
    .await;
    away.store(false, Ordering::SeqCst);

    let (data, resumed) = events_and_resumes(&mut moving, &first, LAST).await;
    within("the publisher", publishing).await.unwrap();
    assert_eq!(
        data,
        (0..=LAST).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert_eq!(resumed.len(), 1, "one move, one resume: {resumed:?}");
    assert!(
        resumed[0] >= 30,
        "the events published on B while away came from the shared history: {resumed:?}"
    );
    assert_eq!(
        b.stats().connections_total,
        2,
        "the publisher and the subscriber that moved"
    );
    client.close().await;
}
