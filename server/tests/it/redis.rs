//! Scale-out over Redis: two server instances in this process share one `redis-server` the test starts.

use std::time::Duration;

use sockeye_server::{Server, ServerHandle};

use crate::common::*;

async fn instance(redis: &RedisServer) -> ServerHandle {
    start(Server::builder().redis(redis.url())).await
}

/// Reads `evt`s of `topic` until one with `seq` `last`; returns their `seq`s.
async fn events_until(ws: &mut Client, topic: &str, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last) {
        let (seq, _) = expect_evt_of(&recv(ws).await, topic);
        assert!(seq <= last, "{seq} after {seqs:?}");
        seqs.push(seq);
    }
    seqs
}

#[tokio::test]
async fn a_publish_on_either_instance_reaches_subscribers_on_both_with_one_sequence() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let mut on_a = connect(&a).await;
    let mut on_b = connect(&b).await;
    let at_a = subscribe(&mut on_a, 1, "shared", None).await;
    let at_b = subscribe(&mut on_b, 1, "shared", None).await;
    assert_eq!(at_a, at_b, "one epoch and counter for both");
    assert_eq!((at_a.seq, at_a.recovered), (0, None));
    let mut publisher_a = connect(&a).await;
    let mut publisher_b = connect(&b).await;
    for n in 1..=20 {
        let publisher = if n % 2 == 0 {
            &mut publisher_a
        } else {
            &mut publisher_b
        };
        let at = publish_acked(publisher, 100 + n, "shared", uint(n)).await;
        assert_eq!((at.ep.as_str(), at.seq), (at_a.ep.as_str(), n));
    }
    for ws in [&mut on_a, &mut on_b] {
        for n in 1..=20 {
            assert_eq!(expect_evt_of(&recv(ws).await, "shared"), (n, Some(uint(n))));
        }
    }
    assert_eq!(a.stats().topics, 1);
}

#[tokio::test]
async fn a_client_whose_instance_stops_resumes_on_another_without_a_gap() {
    const EVENTS: u64 = 300;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let b_url = b.ws_url();
    let mut client = connect(&a).await;
    let start_at = subscribe(&mut client, 1, "moving", None).await;
    let mut publisher = connect(&b).await;
    let publishing = tokio::spawn(async move {
        for n in 1..=EVENTS {
            assert_eq!(
                publish_acked(&mut publisher, n, "moving", uint(n))
                    .await
                    .seq,
                n
            );
        }
    });
    let mut seen = events_until(&mut client, "moving", 50).await;
    // Instance A goes away while B keeps publishing; whatever A still sent before its close counts.
    a.shutdown().await;
    let (_, _) = read_until_close_collecting(&mut client, "moving", &mut seen).await;
    let last = *seen.last().expect("events seen");
    let mut client = connect_url(&b_url, &[]).await;
    let resumed = subscribe(&mut client, 1, "moving", Some((&start_at.ep, last))).await;
    assert_eq!(resumed.recovered, Some(true), "{resumed:?}");
    seen.extend(events_until(&mut client, "moving", EVENTS).await);
    publishing.await.expect("the publisher finished");
    assert_eq!(seen, (1..=EVENTS).collect::<Vec<_>>());
}

/// Reads until the close frame, adding the `seq`s of `topic`'s events to `seen`.
async fn read_until_close_collecting(
    ws: &mut Client,
    topic: &str,
    seen: &mut Vec<u64>,
) -> (u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the close within patience");
        match message {
            Some(Ok(Message::Binary(frame))) => {
                let envelope: ciborium::Value =
                    ciborium::from_reader(&frame[1..]).expect("a CBOR envelope");
                seen.push(expect_evt_of(&envelope, topic).0);
            }
            Some(Ok(Message::Close(frame))) => {
                let frame = frame.expect("a close code");
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_flushed_redis_shows_as_a_new_epoch() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let mut client = connect(&a).await;
    let before = subscribe(&mut client, 1, "flushed", None).await;
    let mut publisher = connect(&b).await;
    for n in 1..=3 {
        publish_acked(&mut publisher, n, "flushed", uint(n)).await;
    }
    assert_eq!(events_until(&mut client, "flushed", 3).await, [1, 2, 3]);
    redis.command(&["FLUSHALL"]).await.expect("flushed");
    let after = publish_acked(&mut publisher, 4, "flushed", uint(4)).await;
    assert_ne!(after.ep, before.ep);
    assert_eq!(after.seq, 1);
    // A sees the new epoch and asks its subscriber to come back, which then learns of the reset.
    let mut ignored = Vec::new();
    let (code, _) = read_until_close_collecting(&mut client, "flushed", &mut ignored).await;
    assert_eq!(code, 1012);
    assert!(
        ignored.is_empty(),
        "no event of the new epoch under the old one: {ignored:?}"
    );
    let mut client = connect(&a).await;
    let resumed = subscribe(&mut client, 1, "flushed", Some((&before.ep, 3))).await;
    assert_eq!(
        resumed,
        Position {
            ep: after.ep,
            seq: 1,
            recovered: Some(false)
        }
    );
    publish_acked(&mut publisher, 5, "flushed", uint(5)).await;
    assert_eq!(expect_evt_of(&recv(&mut client).await, "flushed").0, 2);
}

#[tokio::test]
async fn while_redis_is_down_acknowledged_publishes_fail_and_fan_out_resumes_after() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let mut on_a = connect(&a).await;
    let mut on_b = connect(&b).await;
    let at = subscribe(&mut on_a, 1, "outage", None).await;
    subscribe(&mut on_b, 1, "outage", None).await;
    let mut publisher_a = connect(&a).await;
    let mut publisher_b = connect(&b).await;
    for n in 1..=2 {
        publish_acked(&mut publisher_a, 10 + n, "outage", uint(n)).await;
    }
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(events_until(ws, "outage", 2).await, [1, 2]);
    }
    // Persisted, so the restarted Redis continues the same epoch.
    redis.command(&["SAVE"]).await.expect("saved");
    redis.stop();
    send(&mut publisher_a, &pub_env(Some(20), "outage", uint(0))).await;
    expect_err(&recv(&mut publisher_a).await, Some(20), "UNAVAILABLE");
    send(&mut publisher_b, &pub_env(Some(21), "outage", uint(0))).await;
    expect_err(&recv(&mut publisher_b).await, Some(21), "UNAVAILABLE");
    assert_alive(&mut on_a, 22).await; // connections are kept
    assert_alive(&mut on_b, 22).await;
    // A subscription cannot be answered without Redis either.
    send(&mut publisher_a, &sub_since(23, "elsewhere", None)).await;
    expect_err(&recv(&mut publisher_a).await, Some(23), "UNAVAILABLE");
    redis.resume().await;
    let mut published = None;
    for attempt in 0..100 {
        send(
            &mut publisher_b,
            &pub_env(Some(100 + attempt), "outage", uint(3)),
        )
        .await;
        let reply = recv(&mut publisher_b).await;
        if get_text(&reply, "t") == Some("res") {
            published = Some(expect_position(&reply, 100 + attempt));
            break;
        }
        expect_err(&reply, Some(100 + attempt), "UNAVAILABLE");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = published.expect("publishing works again once Redis is back");
    assert_eq!((published.ep.as_str(), published.seq), (at.ep.as_str(), 3));
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(expect_evt_of(&recv(ws).await, "outage"), (3, Some(uint(3))));
    }
}

#[tokio::test]
async fn an_instance_that_lost_the_events_channel_catches_up_from_the_history() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let mut on_a = connect(&a).await;
    subscribe(&mut on_a, 1, "caught", None).await;
    let mut publisher = connect(&b).await;
    publish_acked(&mut publisher, 1, "caught", uint(1)).await;
    assert_eq!(events_until(&mut on_a, "caught", 1).await, [1]);
    // Both instances lose their channel connection; events published until they are back are missed live.
    redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .expect("killed");
    for n in 2..=30 {
        publish_acked(&mut publisher, n, "caught", uint(n)).await;
    }
    assert_eq!(
        events_until(&mut on_a, "caught", 30).await,
        (2..=30).collect::<Vec<_>>()
    );
    drop(b);
}
