//! The native client against the real reference server, in-process, on ports chosen at run time.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sockeye::{
    Certificate, Client, ClientEvent, CloseCode, DisconnectReason, Error, ErrorCode, Payload,
    Status, SubscriptionState, Transition,
};
use sockeye_server::{Context, DrainOptions, RpcError};
use tokio::time::Instant;

use common::*;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    sum: i64,
}

/// Collects transitions in the background.
fn record(client: &Client) -> Arc<Mutex<Vec<(Instant, Transition)>>> {
    let seen: Arc<Mutex<Vec<(Instant, Transition)>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let mut transitions = client.transitions();
    tokio::spawn(async move {
        while let Some(Ok(t)) = transitions.next().await {
            sink.lock().unwrap().push((Instant::now(), t));
        }
    });
    seen
}

fn names(seen: &Mutex<Vec<(Instant, Transition)>>) -> Vec<&'static str> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.to.name())
        .collect()
}

/// Waits until the subscription is acknowledged, then publishes once from the server: the event must arrive.
async fn publish_when_subscribed<T: serde::de::DeserializeOwned>(
    server: &sockeye_server::ServerHandle,
    subscription: &mut sockeye::Subscription<T>,
    topic: &str,
    value: i64,
) -> sockeye::TopicEvent<T> {
    within("the acknowledgement", subscription.subscribed())
        .await
        .expect("subscribed");
    let delivered = server
        .publish(topic, Some(Payload::encode(&value).unwrap()))
        .expect("valid topic");
    assert_eq!(delivered, 1, "one subscriber");
    within("the event", subscription.next())
        .await
        .expect("stream open")
        .expect("event decodes")
        .into_event()
        .expect("an event, not a gap")
}

#[tokio::test]
async fn connects_and_reaches_ready() {
    let server = server().await;
    let client = fast(server.ws_url()).build().unwrap();
    let seen = record(&client);
    ready(&client).await;
    assert_eq!(client.state(), Status::Ready);
    eventually("ready transition recorded", || {
        names(&seen).last() == Some(&"ready")
    })
    .await;
    let path = names(&seen);
    assert!(
        path == ["connecting", "connected", "ready"] || path == ["connecting", "ready"],
        "unexpected path {path:?}"
    );
    assert_eq!(server.stats().connections_open, 1);
    client.close().await;
    assert!(matches!(
        client.state(),
        Status::Disconnected {
            reason: Some(DisconnectReason::Stopped)
        }
    ));
    eventually("server sees the close", || {
        server.stats().connections_open == 0
    })
    .await;
}

#[tokio::test]
async fn typed_requests_get_typed_replies_and_server_errors() {
    let server = start(
        server_builder().method("add", |_: Context, req: Add| async move {
            Ok::<_, RpcError>(Sum { sum: req.a + req.b })
        }),
    )
    .await;
    let client = fast(server.ws_url()).connect().await.unwrap();

    let sum: Sum = client.request("add", &Add { a: 2, b: 40 }).await.unwrap();
    assert_eq!(sum, Sum { sum: 42 });

    // Many at once, from many tasks, on clones.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.request::<_, Sum>("add", &Add { a: i, b: i }).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap().sum, 2 * i as i64);
    }

    let err = client
        .request::<_, ()>(
            "fail",
            &json!({ "code": "NOT_FOUND", "msg": "no such thing" }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Server { code: ErrorCode::NotFound, message, .. } if message == "no such thing")
    );

    let err = client
        .request::<_, ()>("no-such-method", &())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unimplemented);

    // A reply that does not fit the requested type is a decode error, not a panic.
    let err = client
        .request::<_, Sum>("echo", "not a sum")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Payload(_)), "{err:?}");
    client.close().await;
}

#[tokio::test]
async fn request_times_out_with_deadline_exceeded() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let started = Instant::now();
    let err = client
        .request::<_, ()>("sleep", &json!({ "ms": 3000 }))
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );

    // The builder's default deadline applies when the request has none of its own.
    let short = fast(server.ws_url())
        .request_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let err = short
        .request::<_, ()>("sleep", &json!({ "ms": 3000 }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded);

    // The connection is unaffected.
    let echoed: String = client.request("echo", "still here").await.unwrap();
    assert_eq!(echoed, "still here");
    short.close().await;
    client.close().await;
}

#[tokio::test]
async fn dropping_a_request_cancels_it() {
    // `record` counts the requests that reach the server.
    let reached = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&reached);
    let addr = free_port().await;
    let client = fast(format!("ws://{addr}/ws")).build().unwrap();

    // Issued while the server is down: queued. Dropped (by the timeout) before the server is up: never sent.
    let queued = client.request::<_, u32>("record", &());
    assert!(tokio::time::timeout(Duration::from_millis(50), queued)
        .await
        .is_err());

    let server = start(
        server_builder()
            .bind(addr)
            .method("record", move |_: Context, (): ()| {
                let counter = Arc::clone(&counter);
                async move { Ok::<_, RpcError>(counter.fetch_add(1, Ordering::SeqCst) + 1) }
            }),
    )
    .await;
    ready(&client).await;
    let count: u32 = client.request("record", &()).await.unwrap();
    assert_eq!(count, 1, "the dropped request must not have been sent");

    // Dropped while in flight: the late reply is discarded and the connection carries on.
    let in_flight = client.request::<_, ()>("sleep", &json!({ "ms": 200 }));
    assert!(tokio::time::timeout(Duration::from_millis(50), in_flight)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let echoed: u32 = client.request("echo", &7).await.unwrap();
    assert_eq!(echoed, 7);
    assert_eq!(client.state(), Status::Ready);
    client.close().await;
    drop(server);
}

#[tokio::test]
async fn in_flight_requests_fail_unavailable_when_the_server_closes() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let seen = record(&client);
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request::<_, ()>("sleep", &json!({ "ms": 5000 }))
                .timeout(Duration::from_secs(8))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The built-in `close` answers, then closes the connection with the given code.
    client
        .request::<_, ()>("close", &json!({ "code": 1011, "reason": "test" }))
        .await
        .unwrap();
    let err = within("the in-flight request to fail", slow)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Unavailable);

    // … and the client comes back by itself.
    eventually("a reconnect", || names(&seen).contains(&"reconnecting")).await;
    ready(&client).await;
    let echoed: String = client.request("echo", "back").await.unwrap();
    assert_eq!(echoed, "back");
    client.close().await;
}

#[tokio::test]
async fn queued_sends_are_delivered_in_order_after_the_server_restarts() {
    let received: Arc<Mutex<Vec<u32>>> = Arc::default();
    let note_server = |addr| {
        let received = Arc::clone(&received);
        server_builder()
            .bind(addr)
            .message("note", move |_: Context, n: u32| {
                let received = Arc::clone(&received);
                async move { received.lock().unwrap().push(n) }
            })
    };
    let first = start(note_server(loopback())).await;
    let addr = first.local_addr();
    let client = fast(first.ws_url()).connect().await.unwrap();
    client.send("note", &0u32).await.unwrap();
    eventually("the first note", || received.lock().unwrap().len() == 1).await;

    first.shutdown().await;
    drop(first);
    within("the client to notice", async {
        while client.state() == Status::Ready {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for n in 1..=20u32 {
        client.send("note", &n).await.expect("queued while offline");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "nothing can arrive while the server is down"
    );

    let second = start(note_server(addr)).await;
    ready(&client).await;
    eventually("every queued note", || received.lock().unwrap().len() == 21).await;
    assert_eq!(*received.lock().unwrap(), (0..=20).collect::<Vec<u32>>());
    client.close().await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_full_offline_queue_is_resource_exhausted() {
    let addr = free_port().await;
    let client = fast(format!("ws://{addr}/ws"))
        .queue_limits(3, 1 << 20)
        .build()
        .unwrap();
    for n in 0..3 {
        client.send("note", &n).await.unwrap();
    }
    let err = client.send("note", &3).await.unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::ResourceExhausted);
    let err = client.request::<_, ()>("echo", &()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResourceExhausted);
    client.close().await;
}

#[tokio::test]
async fn subscriptions_resume_after_reconnect() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let seen = record(&client);
    let mut news = client.subscribe::<i64>("news").unwrap();
    let event = publish_when_subscribed(&server, &mut news, "news", 1).await;
    assert_eq!((event.topic.as_str(), event.data), ("news", 1));

    client
        .request::<_, ()>("close", &json!({ "code": 1012 }))
        .await
        .unwrap();
    eventually("a reconnect", || names(&seen).contains(&"reconnecting")).await;
    ready(&client).await;

    // No new subscribe call: the client re-subscribed on `ready` by itself, from the event it had (PROTOCOL §9),
    // and nothing was missed.
    match within("the resume", news.next()).await.unwrap().unwrap() {
        sockeye::SubscriptionItem::Resumed { replayed: 0 } => {}
        other => panic!("resumed with nothing replayed expected: {other:?}"),
    }
    let event = publish_when_subscribed(&server, &mut news, "news", 2).await;
    assert_eq!(event.data, 2);
    // Nothing else was published.
    assert!(tokio::time::timeout(Duration::from_millis(50), news.next())
        .await
        .is_err());

    // Dropping the stream unsubscribes: the server's topic goes away.
    drop(news);
    eventually("the unsubscribe", || server.stats().topics == 0).await;
    client.close().await;
}

#[tokio::test]
async fn streams_of_one_topic_share_one_subscription_until_the_last_is_dropped() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let mut first = client.subscribe::<i64>("news").unwrap();
    let mut second = client.subscribe::<i64>("news").unwrap();
    // One `sub` on the wire: the server counts one subscriber, and each stream gets the event.
    within("the second stream", second.subscribed())
        .await
        .unwrap();
    let event = publish_when_subscribed(&server, &mut first, "news", 1).await;
    assert_eq!(event.data, 1);
    let item = within("the event", second.next()).await.unwrap().unwrap();
    assert_eq!(item.into_event().map(|e| e.data), Some(1));

    // The first stream gone (and its receiver with it): the other still follows the topic.
    drop(first);
    let event = publish_when_subscribed(&server, &mut second, "news", 2).await;
    assert_eq!(event.data, 2);
    drop(second);
    eventually("the unsubscribe", || server.stats().topics == 0).await;
    client.close().await;
}

#[tokio::test]
async fn client_publish_reaches_subscribers() {
    let server = server().await;
    let alice = fast(server.ws_url()).connect().await.unwrap();
    let bob = fast(server.ws_url()).connect().await.unwrap();
    let mut room = bob.subscribe::<String>("room").unwrap();
    within("bob's subscription", room.subscribed())
        .await
        .unwrap();
    alice.publish("room", "hi").await.unwrap();
    let event = within("bob's event", room.next()).await.unwrap().unwrap();
    let event = event.into_event().expect("an event");
    assert_eq!(event.data, "hi");
    assert_eq!(event.seq, 1);
    assert!(matches!(
        alice.publish("$sys", "x").await,
        Err(Error::InvalidTopic(_))
    ));
    assert!(matches!(
        alice.subscribe::<String>(""),
        Err(Error::InvalidTopic(_))
    ));
    alice.close().await;
    bob.close().await;
}

/// The next subscription state, which must come within [`PATIENCE`]; `None` when the stream ended.
async fn next_state(states: &mut sockeye::SubscriptionStates) -> Option<SubscriptionState> {
    within("a subscription state", states.next()).await
}

#[tokio::test]
async fn subscribed_follows_the_servers_acknowledgement_across_reconnects() {
    let server = start(server_builder().authorize_topics(|_, topic, _| topic != "secret")).await;
    // A reconnect delay of 300-360 ms: long enough to look at the subscription while disconnected.
    let client = fast(server.ws_url())
        .base_delay(Duration::from_millis(300))
        .max_delay(Duration::from_secs(1))
        .full_jitter(false)
        .build()
        .unwrap();
    // Issued while offline: acknowledged only once connected.
    let news = client.subscribe::<i64>("news").unwrap();
    let mut states = news.states();
    let acked = news.subscribed();
    assert!(matches!(
        next_state(&mut states).await,
        Some(SubscriptionState::Pending)
    ));
    ready(&client).await;
    within("the acknowledgement", acked).await.unwrap();
    assert!(matches!(
        next_state(&mut states).await,
        Some(SubscriptionState::Live)
    ));
    assert!(matches!(news.state(), SubscriptionState::Live));
    // A second stream on a live topic is live at once.
    let also = client.subscribe::<i64>("news").unwrap();
    within("the second stream", also.subscribed())
        .await
        .unwrap();

    // Lost with the connection; live again once the new connection acknowledged the re-subscription.
    client
        .request::<_, ()>("close", &json!({ "code": 1012 }))
        .await
        .unwrap();
    within("the disconnect", async {
        while client.state() == Status::Ready {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        news.subscribed().now_or_never().is_none(),
        "still live while disconnected"
    );
    assert!(matches!(news.state(), SubscriptionState::Pending));
    assert!(matches!(
        next_state(&mut states).await,
        Some(SubscriptionState::Pending)
    ));
    within("the new acknowledgement", news.subscribed())
        .await
        .unwrap();
    assert!(matches!(
        next_state(&mut states).await,
        Some(SubscriptionState::Live)
    ));
    assert_eq!(client.state(), Status::Ready);

    // Refused: the error, the failed state, and the streams end.
    let mut secret = client.subscribe::<i64>("secret").unwrap();
    let mut secret_states = secret.states();
    let err = within("the refusal", secret.subscribed())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert!(matches!(
        within("the error item", secret.next()).await,
        Some(Err(Error::Server { .. }))
    ));
    assert!(within("the end", secret.next()).await.is_none());
    match next_state(&mut secret_states).await {
        Some(SubscriptionState::Failed(Error::Server { code, .. })) => {
            assert_eq!(code, ErrorCode::PermissionDenied)
        }
        other => panic!("{other:?}"),
    }
    assert!(next_state(&mut secret_states).await.is_none());
    assert!(matches!(secret.state(), SubscriptionState::Failed(_)));

    // Closing the client ends the acknowledgement, then the stream of states.
    client.close().await;
    assert!(matches!(news.subscribed().await, Err(Error::Closed)));
    assert!(matches!(
        next_state(&mut states).await,
        Some(SubscriptionState::Pending)
    ));
    assert!(next_state(&mut states).await.is_none());
}

/// The next lifecycle event, which must come within [`PATIENCE`].
async fn next_event(events: &mut sockeye::Events) -> ClientEvent {
    within("a lifecycle event", events.next())
        .await
        .expect("stream open")
        .expect("no lag")
}

/// The next lifecycle event, which must be a disconnect: its code, reason and `will_reconnect`.
async fn next_disconnect(events: &mut sockeye::Events) -> (CloseCode, String, bool) {
    match next_event(events).await {
        ClientEvent::Disconnected {
            code,
            reason,
            will_reconnect,
        } => (code, reason.as_str().to_owned(), will_reconnect),
        other => panic!("not a disconnect: {other:?}"),
    }
}

#[tokio::test]
async fn events_report_why_the_connection_was_lost_and_whether_it_comes_back() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let mut events = client.events();

    // The server closes with a code and reason of its own: retried.
    client
        .request::<_, ()>("close", &json!({ "code": 1012, "reason": "restarting ✓" }))
        .await
        .unwrap();
    assert_eq!(
        next_disconnect(&mut events).await,
        (CloseCode(1012), "restarting ✓".to_owned(), true)
    );
    assert!(matches!(
        next_event(&mut events).await,
        ClientEvent::Reconnected
    ));
    assert_eq!(client.state(), Status::Ready);

    // A drain announced with `bye`: draining, then the server's close, retried.
    let mut options = DrainOptions::with_window(Duration::from_millis(50));
    options.bye = true;
    let drained = server.drain(options).await;
    assert_eq!(drained.closed, 1);
    assert!(matches!(
        next_event(&mut events).await,
        ClientEvent::Draining
    ));
    assert_eq!(
        next_disconnect(&mut events).await,
        (CloseCode::GOING_AWAY, "Server draining".to_owned(), true)
    );

    // Closed while reconnecting (the draining server answers 503): no connection was open, nothing to
    // report, and the stream ends.
    client.close().await;
    assert!(within("the end", events.next()).await.is_none());
}

#[tokio::test]
async fn events_report_a_refused_token_and_a_close_as_final() {
    let server = start(server_builder().tokens(["good"])).await;
    let client = fast(server.ws_url()).token("bad").build().unwrap();
    let mut events = client.events();
    let (code, _, will_reconnect) = next_disconnect(&mut events).await;
    assert_eq!((code, will_reconnect), (CloseCode::AUTH_FAILED, false));
    client.close().await;
    assert!(within("the end", events.next()).await.is_none());

    // Closed by the application while ready: the client's own 1000, final.
    let client = fast(server.ws_url()).token("good").connect().await.unwrap();
    let mut events = client.events();
    client.close().await;
    assert_eq!(
        next_disconnect(&mut events).await,
        (CloseCode::NORMAL, "client closed".to_owned(), false)
    );
    assert!(within("the end", events.next()).await.is_none());
}

#[tokio::test]
async fn bad_token_is_terminal() {
    let server = start(server_builder().tokens(["good"])).await;
    let client = fast(server.ws_url()).token("bad").build().unwrap();
    let seen = record(&client);
    let err = client.wait_for(Status::Ready, PATIENCE).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Disconnected(DisconnectReason::AuthFailed { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Unauthenticated);
    // No retry follows, even with unlimited attempts and a 20 ms base delay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = names(&seen).iter().filter(|n| **n == "connecting").count();
    assert_eq!(attempts, 1);
    assert_eq!(server.stats().auth_failures, 1);

    // `connect()` reports the same, and the right token works.
    let err = fast(server.ws_url())
        .token("bad")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthenticated);
    let client = fast(server.ws_url()).token("good").connect().await.unwrap();
    client.close().await;
}

#[tokio::test]
async fn upgrade_refused_with_401_is_terminal_and_503_is_retried() {
    let (addr, hits) = http_status_server("401 Unauthorized").await;
    let err = fast(format!("ws://{addr}/ws")).connect().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Disconnected(DisconnectReason::AuthFailed { .. })
        ),
        "{err:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let (addr, hits) = http_status_server("503 Service Unavailable").await;
    let client = fast(format!("ws://{addr}/ws")).build().unwrap();
    eventually("three attempts", || hits.load(Ordering::SeqCst) >= 3).await;
    assert!(!matches!(client.state(), Status::Disconnected { .. }));
    client.close().await;

    // With a limit, the client gives up with the reason of the last failure.
    let err = fast(format!("ws://{addr}/ws"))
        .max_attempts(Some(2))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Disconnected(DisconnectReason::MaxAttemptsExceeded { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Unavailable);
}

#[tokio::test]
async fn header_auth_and_a_token_provider_called_on_every_attempt() {
    let tokens_seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = Arc::clone(&tokens_seen);
    let server = start(server_builder().verifier(move |credentials| {
        let log = Arc::clone(&log);
        async move {
            let token = credentials.token.clone();
            log.lock().unwrap().push(token.clone());
            let ok = token
                .as_deref()
                .is_some_and(|t| t.starts_with("tok-") || t == "static-header");
            ok.then(|| sockeye_server::Identity::new(token.unwrap_or_default()))
        }
    }))
    .await;

    // A plain header.
    let client = fast(server.ws_url())
        .header("Authorization", "Bearer static-header")
        .connect()
        .await
        .unwrap();
    let who: serde_json::Value = client.request("whoami", &()).await.unwrap();
    assert_eq!(who["identity"], "static-header");
    client.close().await;

    // A provider: called before every attempt; the first call fails (that attempt is retried).
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let client = fast(server.ws_url())
        .token_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(std::io::Error::other("token service warming up"))
                } else {
                    Ok(format!("tok-{n}"))
                }
            }
        })
        .connect()
        .await
        .unwrap();
    for _ in 0..2 {
        let before = calls.load(Ordering::SeqCst);
        client
            .request::<_, ()>("close", &json!({ "code": 1012 }))
            .await
            .unwrap();
        eventually("a fresh token", || calls.load(Ordering::SeqCst) > before).await;
        ready(&client).await;
    }
    let who: serde_json::Value = client.request("whoami", &()).await.unwrap();
    let n = calls.load(Ordering::SeqCst);
    assert!(n >= 4, "one failed call and one per connection: {n}");
    assert_eq!(who["identity"], format!("tok-{}", n - 1));
    let seen = tokens_seen.lock().unwrap().clone();
    assert!(
        seen.ends_with(&[
            Some("tok-1".into()),
            Some("tok-2".into()),
            Some("tok-3".into())
        ]),
        "{seen:?}"
    );
    client.close().await;

    // The browser style: `?token=`.
    let client = fast(server.ws_url())
        .token("tok-query")
        .token_in_query(true)
        .connect()
        .await
        .unwrap();
    let who: serde_json::Value = client.request("whoami", &()).await.unwrap();
    assert_eq!(who["identity"], "tok-query");
    client.close().await;
}

/// Smoke test of the keepalive over a socket: the driver's timer sends `ping`, a silent link is closed with
/// 4000 and the client reconnects. How soon (within interval + timeout) and that an idle link stays open are
/// scenarios in simulated time (`tests/tests/pair.rs`).
#[tokio::test]
async fn keepalive_detects_a_silent_server_and_reconnects_with_4000() {
    let server = server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let client = fast(proxy.url())
        .keepalive(Duration::from_millis(100), Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let seen = record(&client);
    proxy.blackhole();
    eventually("the keepalive to fire", || {
        names(&seen).contains(&"reconnecting")
    })
    .await;
    eventually("the 4000 close frame", || {
        proxy.close_codes().contains(&4000)
    })
    .await;
    // A new connection through the proxy works (only the old one was blackholed).
    ready(&client).await;
    let echoed: String = client.request("echo", "alive").await.unwrap();
    assert_eq!(echoed, "alive");
    client.close().await;
}

#[tokio::test]
async fn a_stalled_socket_holds_senders_back_but_never_close() {
    let server = server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let client = fast(proxy.url())
        .keepalive(Duration::ZERO, Duration::ZERO)
        .connect()
        .await
        .unwrap();
    proxy.stall();
    let blob = "x".repeat(1 << 20);
    let mut held_back = false;
    for _ in 0..64 {
        // Each send resolves once written or buffered; past the write backlog bound it waits.
        if tokio::time::timeout(Duration::from_secs(2), client.send("blob", &blob))
            .await
            .is_err()
        {
            held_back = true;
            break;
        }
    }
    assert!(
        held_back,
        "64 MiB went into a stalled socket without backpressure"
    );
    let started = Instant::now();
    within("close", client.close()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(client.send("late", &1).await, Err(Error::Closed)));
}

/// Smoke test of a drain over sockets: every client is closed, reconnects to the next instance on the same
/// address and is served there. The spread of the closes and of the reconnections (full jitter) is a scenario
/// in simulated time (`tests/tests/pair.rs`).
#[tokio::test]
async fn drain_reconnects_every_client_to_the_next_instance() {
    const CLIENTS: usize = 3;
    let first = server().await;
    let addr = first.local_addr();
    let mut clients = Vec::new();
    let mut records = Vec::new();
    for _ in 0..CLIENTS {
        let client = fast(first.ws_url()).connect().await.unwrap();
        records.push(record(&client));
        clients.push(client);
    }
    let result = first
        .drain(DrainOptions::with_window(Duration::from_millis(100)))
        .await;
    assert_eq!(
        (result.closed, result.remaining, result.timed_out),
        (CLIENTS, 0, false)
    );
    first.shutdown().await;
    drop(first);
    let second = start(server_builder().bind(addr)).await;
    for (client, seen) in clients.iter().zip(&records) {
        eventually("the client to leave ready", || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|(_, t)| t.from == Status::Ready)
        })
        .await;
        ready(client).await;
        let echoed: String = client.request("echo", "back").await.unwrap();
        assert_eq!(echoed, "back");
    }
    assert_eq!(second.stats().connections_open, CLIENTS as u64);
    for client in &clients {
        client.close().await;
    }
}

#[tokio::test]
async fn wss_through_a_tls_terminating_proxy() {
    let server = server().await;
    let (addr, cert_pem) = tls_proxy(server.local_addr()).await;
    let url = format!("wss://localhost:{}/ws", addr.port());
    let client = fast(url.clone())
        .add_root_certificate(Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .connect()
        .await
        .unwrap();
    let echoed: Vec<String> = client.request("echo", &["over", "tls"]).await.unwrap();
    assert_eq!(echoed, ["over", "tls"]);
    client.close().await;

    // Without trusting the certificate, the attempt fails (and is retried, up to the limit).
    let err = fast(url).max_attempts(Some(1)).connect().await.unwrap_err();
    match err {
        Error::Disconnected(DisconnectReason::MaxAttemptsExceeded { reason, .. }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn fragments_a_large_request_and_reply() {
    let server = start(server_builder().fragment_threshold(16 * 1024)).await;
    let client = fast(server.ws_url())
        .fragment_threshold(16 * 1024)
        .connect()
        .await
        .unwrap();
    let before = server.stats();
    let big: String = (0..300_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let echoed: String = client.request("echo", &big).await.unwrap();
    assert_eq!(echoed, big);
    let after = server.stats();
    // 300 kB in 16 KiB pieces: at least 18 frames each way.
    assert!(
        after.frames_in - before.frames_in >= 18,
        "{before:?} → {after:?}"
    );
    assert!(
        after.frames_out - before.frames_out >= 18,
        "{before:?} → {after:?}"
    );
    client.close().await;
}

#[tokio::test]
async fn close_cancels_pending_requests_and_ends_streams() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request::<_, ()>("sleep", &json!({ "ms": 5000 }))
                .await
        }
    });
    let mut subscription = client.subscribe::<i64>("t").unwrap();
    let mut incoming = client.incoming();
    tokio::time::sleep(Duration::from_millis(100)).await;
    within("close", client.close()).await;
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert!(within("the subscription to end", subscription.next())
        .await
        .is_none());
    assert!(within("incoming to end", incoming.next()).await.is_none());
    assert!(matches!(client.send("x", &1).await, Err(Error::Closed)));
    assert!(matches!(
        client.request::<_, ()>("echo", &()).await,
        Err(Error::Closed)
    ));
    eventually("the server sees the close", || {
        server.stats().connections_open == 0
    })
    .await;
}

#[tokio::test]
async fn incoming_messages_reach_every_listener() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let mut first = client.incoming();
    let mut second = client.incoming();
    client.send("echo", &json!({ "n": 1 })).await.unwrap();
    for stream in [&mut first, &mut second] {
        let message = within("the echoed message", stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.name, "echo");
        assert_eq!(
            message.decode::<serde_json::Value>().unwrap(),
            json!({ "n": 1 })
        );
    }
    client.close().await;
}

#[tokio::test]
async fn huge_timeouts_mean_never_rather_than_overflow() {
    let server = server().await;
    let client = fast(server.ws_url())
        .request_timeout(Duration::MAX)
        .keepalive(Duration::MAX, Duration::MAX)
        .stable_period(Duration::MAX)
        .connect()
        .await
        .unwrap();
    let echoed: u8 = client
        .request("echo", &1u8)
        .timeout(Duration::MAX)
        .await
        .unwrap();
    assert_eq!(echoed, 1);
    client.wait_for(Status::Ready, Duration::MAX).await.unwrap();
    client.close().await;
}

#[tokio::test]
async fn wait_for_times_out_with_deadline_exceeded() {
    let addr = free_port().await;
    let client = fast(format!("ws://{addr}/ws")).build().unwrap();
    let err = client
        .wait_for(Status::Ready, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded);
    client.close().await;
}

#[tokio::test]
async fn server_requests_are_answered_by_registered_handlers() {
    let server = mini::Server::start(true).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let client = fast(server.url())
        .on_request("add", move |req: Add| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Error>(Sum { sum: req.a + req.b }) }
        })
        .connect();
    let client = within("connect", client).await.unwrap();
    client.on_request("refuse", |_: ()| async {
        Err::<(), _>(Error::server(ErrorCode::PermissionDenied, "no"))
    });

    let reply = server.request(1, "add", &Add { a: 1, b: 2 }).await;
    assert_eq!(reply, Ok(Some(Payload::encode(&Sum { sum: 3 }).unwrap())));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let reply = server.request(2, "refuse", &()).await.unwrap_err();
    assert_eq!(
        (reply.0, reply.1.as_str()),
        (ErrorCode::PermissionDenied, "no")
    );
    let reply = server.request(3, "unknown", &()).await.unwrap_err();
    assert_eq!(reply.0, ErrorCode::Unimplemented);
    let reply = server.request(4, "add", "not an Add").await.unwrap_err();
    assert_eq!(reply.0, ErrorCode::InvalidArgument);
    client.close().await;
}

#[tokio::test]
async fn close_stops_request_handlers_still_at_work() {
    let server = mini::Server::start(true).await;
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let client = fast(server.url())
        .on_request("hang", move |_: ()| {
            let started_tx = started_tx.clone();
            async move {
                let alive = Arc::new(());
                let _ = started_tx.send(Arc::downgrade(&alive));
                std::future::pending::<()>().await;
                drop(alive);
                Ok::<_, Error>(())
            }
        })
        .connect();
    let client = within("connect", client).await.unwrap();
    server.send_request(1, "hang", &());
    let alive = within("the handler to start", started.recv())
        .await
        .unwrap();
    assert!(alive.upgrade().is_some());
    within("close", client.close()).await;
    eventually("the handler to be stopped", || alive.upgrade().is_none()).await;
}

#[tokio::test]
async fn a_handler_holding_its_client_does_not_keep_it_alive_after_close() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let guard = Arc::new(());
    let (held, in_handler) = (client.clone(), Arc::clone(&guard));
    client.on_request("status", move |_: ()| {
        let state = held.state();
        let _ = &in_handler;
        async move { Ok::<_, Error>(state.name()) }
    });
    client.close().await;
    drop(client);
    // The handler (and the client it holds) is freed: no cycle through the handler registry.
    eventually("the handler to be dropped", || {
        Arc::strong_count(&guard) == 1
    })
    .await;
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let server = server().await;
    let client = fast(server.ws_url()).connect().await.unwrap();
    let subscription = client.subscribe::<i64>("t").unwrap();
    within("the acknowledgement", subscription.subscribed())
        .await
        .unwrap();
    drop(client);
    // A subscription is a handle too: the connection stays.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats().connections_open, 1);
    drop(subscription);
    eventually("the server sees the close", || {
        server.stats().connections_open == 0
    })
    .await;
}

#[tokio::test]
async fn a_server_that_does_not_echo_the_subprotocol_is_accepted() {
    let server = mini::Server::start(false).await;
    let client = within("connect", fast(server.url()).connect())
        .await
        .unwrap();
    let reply = server.request(1, "missing", &()).await.unwrap_err();
    assert_eq!(reply.0, ErrorCode::Unimplemented);
    client.close().await;
}

/// A minimal scripted Sockeye server (the reference server does not send requests to clients). It serves one
/// connection at a time, sends `ready`, answers `ping`, and forwards what the client sends.
mod mini {
    use futures_util::{SinkExt, StreamExt};
    use serde::Serialize;
    use sockeye::{ErrorCode, Payload};
    use sockeye_core::codec::Envelope;
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, Mutex};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;

    pub struct Server {
        addr: std::net::SocketAddr,
        to_client: mpsc::UnboundedSender<Vec<u8>>,
        from_client: Mutex<mpsc::UnboundedReceiver<Envelope>>,
    }

    impl Server {
        pub async fn start(echo_subprotocol: bool) -> Server {
            let listener = TcpListener::bind(super::loopback()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (to_client, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
            let (incoming, from_client) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    // tungstenite's callback signature, not ours: its error type is large.
                    #[allow(clippy::result_large_err)]
                    let callback = |_: &Request, mut response: Response| {
                        if echo_subprotocol {
                            response.headers_mut().insert(
                                "sec-websocket-protocol",
                                HeaderValue::from_static(sockeye::SUBPROTOCOL),
                            );
                        }
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                    else {
                        continue;
                    };
                    if ws.send(Message::text("ready")).await.is_err() {
                        continue;
                    }
                    loop {
                        tokio::select! {
                            Some(frame) = outgoing.recv() => {
                                if ws.send(Message::binary(frame)).await.is_err() { break }
                            }
                            message = ws.next() => match message {
                                Some(Ok(Message::Binary(frame))) if frame.first() == Some(&0) => {
                                    let _ = incoming.send(Envelope::decode(&frame[1..]).unwrap());
                                }
                                Some(Ok(Message::Text(text))) if text.as_str() == "ping" => {
                                    if ws.send(Message::text("pong")).await.is_err() { break }
                                }
                                Some(Ok(_)) => {}
                                _ => break,
                            },
                        }
                    }
                }
            });
            Server {
                addr,
                to_client,
                from_client: Mutex::new(from_client),
            }
        }

        pub fn url(&self) -> String {
            format!("ws://{}/ws", self.addr)
        }

        /// Sends a `req` without waiting for the answer.
        pub fn send_request<T: Serialize + ?Sized>(&self, id: u64, method: &str, data: &T) {
            let envelope = Envelope::Req {
                id,
                method: method.to_owned(),
                data: Some(Payload::encode(data).unwrap()),
            };
            let mut frame = vec![0u8];
            frame.extend(envelope.encode());
            self.to_client.send(frame).unwrap();
        }

        /// Sends a `req` and waits for the client's `res` or `err` with the same id.
        pub async fn request<T: Serialize + ?Sized>(
            &self,
            id: u64,
            method: &str,
            data: &T,
        ) -> Result<Option<Payload>, (ErrorCode, String)> {
            let envelope = Envelope::Req {
                id,
                method: method.to_owned(),
                data: Some(Payload::encode(data).unwrap()),
            };
            let mut frame = vec![0u8];
            frame.extend(envelope.encode());
            self.to_client.send(frame).unwrap();
            let mut from_client = self.from_client.lock().await;
            loop {
                match super::within("the client's reply", from_client.recv())
                    .await
                    .unwrap()
                {
                    Envelope::Res { id: got, data } if got == id => return Ok(data),
                    Envelope::Err {
                        id: Some(got),
                        code,
                        message,
                        ..
                    } if got == id => return Err((code, message)),
                    _ => {}
                }
            }
        }
    }
}

/// Everything the client logs at every level, for a connection made with every kind of credential.
#[test]
fn credentials_never_reach_the_logs() {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let logs = Logs::default();
    let writer = logs.clone();
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_filter(filter_fn(|meta| {
            meta.target() == "sockeye" || meta.target().starts_with("sockeye::")
        }));
    let subscriber = tracing_subscriber::registry().with(layer);
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread: every task of the client logs through the subscriber set above.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = start(server_builder().tokens(["tok-SECRET-A"])).await;
        let port = server.local_addr().port();
        let client = fast(format!("ws://user:SECRET-U@127.0.0.1:{port}/ws?x=SECRET-Q"))
            .token_provider(|| async { Ok::<_, std::io::Error>("tok-SECRET-A".to_owned()) })
            .header("X-Api-Key", "SECRET-H")
            .connect()
            .await
            .unwrap();
        let _: String = client.request("echo", "hi").await.unwrap();
        client.close().await;
        // Refused, and unreachable with the token in the query.
        let err = fast(server.ws_url())
            .token("SECRET-BAD")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthenticated);
        let addr = free_port().await;
        let err = fast(format!("ws://{addr}/ws"))
            .token("SECRET-QUERY")
            .token_in_query(true)
            .max_attempts(Some(1))
            .connect()
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    });
    let logs = logs.text();
    assert!(logs.contains("connecting"), "nothing logged: {logs}");
    assert!(!logs.contains("SECRET"), "{logs}");
}
