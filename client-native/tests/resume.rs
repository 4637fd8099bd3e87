//! PROTOCOL §9 end to end: the native client against the reference server's history. A subscriber is kicked off
//! (the server's `close` method) and kept away (its token provider fails every attempt) while another client
//! publishes; when it comes back it must get every missed event exactly once and hear that it resumed — or, when
//! the history no longer reaches back, hear exactly which events are lost.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sockeye::{Client, Status, Subscription, SubscriptionItem, TopicPosition};

use common::*;

/// Asks the server to close this client's connection, and waits until the client noticed.
async fn kick(client: &Client) {
    let close = serde_json::json!({ "code": 1012, "reason": "restart" });
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        client.request::<_, serde_json::Value>("close", &close),
    )
    .await;
    eventually("the client to notice the close", || {
        client.state() != Status::Ready
    })
    .await;
}

/// A subscriber (which a test can keep away) to `news`, a publisher, and the first event, delivered.
struct Scene {
    away: Arc<AtomicBool>,
    client: Client,
    news: Subscription<u64>,
    publisher: Client,
    first: TopicPosition,
}

async fn scene(server: &sockeye_server::ServerHandle) -> Scene {
    let away = Arc::new(AtomicBool::new(false));
    let client = subscriber(server.ws_url(), Arc::clone(&away)).await;
    let mut news = client.subscribe::<u64>("news").unwrap();
    within("subscribed", news.subscribed()).await.unwrap();
    let publisher = within("connect", fast(server.ws_url()).connect())
        .await
        .unwrap();
    let first = publisher.publish_acked("news", &0u64).await.unwrap();
    match next_item(&mut news).await {
        SubscriptionItem::Event(e) => assert_eq!(
            (e.data, e.seq, e.ep.as_deref()),
            (0, first.seq, Some(&*first.ep))
        ),
        other => panic!("{other:?}"),
    }
    Scene {
        away,
        client,
        news,
        publisher,
        first,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_a_subscriber_is_away_arrive_exactly_once_then_resumed() {
    let server = server().await;
    let Scene {
        away,
        client,
        mut news,
        publisher,
        first,
    } = scene(&server).await;

    // Events keep being published, one after another, while the subscriber is kicked off, kept away, and let
    // back in.
    const LAST: u64 = 300;
    let (published, publishing) = publish_numbers(publisher, "news", first.clone(), LAST);
    eventually("some events before the kick", || {
        published.load(Ordering::SeqCst) >= 20
    })
    .await;
    away.store(true, Ordering::SeqCst);
    kick(&client).await;
    let gone_at = published.load(Ordering::SeqCst);
    eventually("events published while away", || {
        published.load(Ordering::SeqCst) >= gone_at + 30
    })
    .await;
    away.store(false, Ordering::SeqCst);

    let (data, resumed) = events_and_resumes(&mut news, &first, LAST).await;
    within("the publisher", publishing).await.unwrap();
    assert_eq!(
        data,
        (1..=LAST).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert_eq!(resumed.len(), 1, "one reconnect, one resume: {resumed:?}");
    assert!(
        resumed[0] >= 30,
        "the events published while away were replayed: {resumed:?}"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_away_longer_than_the_history_reaches_hears_exactly_what_was_lost() {
    let server = start(server_builder().history_size(10)).await;
    let Scene {
        away,
        client,
        mut news,
        publisher,
        first,
    } = scene(&server).await;

    away.store(true, Ordering::SeqCst);
    kick(&client).await;
    let mut last = first.clone();
    for n in 1..=25u64 {
        last = publisher.publish_acked("news", &n).await.unwrap();
    }
    assert_eq!(
        last,
        TopicPosition {
            ep: first.ep.clone(),
            seq: first.seq + 25
        }
    );
    away.store(false, Ordering::SeqCst);
    // Only the last 10 are kept: nothing is replayed, and the whole range is reported lost.
    match next_item(&mut news).await {
        SubscriptionItem::Gap { from, to } => assert_eq!((from, to), (first.seq + 1, last.seq)),
        other => panic!("a gap expected: {other:?}"),
    }
    publisher.publish_acked("news", &26u64).await.unwrap();
    match next_item(&mut news).await {
        SubscriptionItem::Event(e) => assert_eq!((e.data, e.seq), (26, last.seq + 1)),
        other => panic!("{other:?}"),
    }
    publisher.close().await;
    client.close().await;
}
