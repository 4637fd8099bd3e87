//! Handshake, control words, built-in methods, concurrency, topics, fragmentation, application hooks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;
use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use sockeye_server::{Context, Limits, RpcError, Server, TopicAccess};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test]
async fn handshake_echoes_the_subprotocol_and_sends_ready() {
    let server = start(Server::builder()).await;
    let (mut ws, response) = connect_with(&server.ws_url(), &[], true)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap_or(""));
    assert_eq!(protocol, Some("sockeye.v1"));
    expect_text(&mut ws, "ready").await;
    assert_alive(&mut ws, 1).await;
    assert_eq!(server.stats().connections_open, 1);
}

#[tokio::test]
async fn a_client_without_the_subprotocol_is_served_without_the_header() {
    let server = start(Server::builder()).await;
    let (mut ws, response) = connect_with(&server.ws_url(), &[], false)
        .await
        .expect("upgrade");
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    expect_text(&mut ws, "ready").await;
    assert_alive(&mut ws, 1).await;
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    for _ in 0..3 {
        ws.send(Message::text("ping")).await.expect("send ping");
        expect_text(&mut ws, "pong").await;
    }
}

#[tokio::test]
async fn echo_returns_d_and_keeps_an_absent_d_absent() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let d = map(&[
        ("n", uint(7)),
        ("s", text("héllo")),
        ("b", Value::Bytes(vec![0, 1, 2])),
    ]);
    let reply = call(&mut ws, 1, "echo", Some(d.clone())).await;
    assert_eq!(expect_res(&reply, 1), Some(d));
    let reply = call(&mut ws, 2, "echo", None).await;
    assert_eq!(expect_res(&reply, 2), None);
}

#[tokio::test]
async fn sleep_replies_after_the_delay_and_refuses_more_than_ten_seconds() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let started = Instant::now();
    let reply = call(&mut ws, 1, "sleep", Some(map(&[("ms", uint(200))]))).await;
    expect_res(&reply, 1);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let reply = call(&mut ws, 2, "sleep", Some(map(&[("ms", uint(10_001))]))).await;
    expect_err(&reply, Some(2), "INVALID_ARGUMENT");
    let reply = call(&mut ws, 3, "sleep", Some(text("soon"))).await;
    expect_err(&reply, Some(3), "INVALID_ARGUMENT");
}

#[tokio::test]
async fn fail_answers_with_the_requested_error() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let reply = call(
        &mut ws,
        4,
        "fail",
        Some(map(&[
            ("code", text("NOT_FOUND")),
            ("msg", text("no such thing")),
        ])),
    )
    .await;
    expect_err(&reply, Some(4), "NOT_FOUND");
    assert_eq!(get_text(&reply, "msg"), Some("no such thing"));
}

#[tokio::test]
async fn whoami_is_anonymous_with_auth_off() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let reply = call(&mut ws, 1, "whoami", None).await;
    let d = expect_res(&reply, 1).expect("whoami has d");
    assert_eq!(get_text(&d, "identity"), Some("anonymous"));
    assert!(get_uint(&d, "connection").is_some());
}

#[tokio::test]
async fn close_answers_then_closes_with_the_requested_code() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let reply = call(
        &mut ws,
        1,
        "close",
        Some(map(&[("code", uint(4321)), ("reason", text("asked to"))])),
    )
    .await;
    expect_res(&reply, 1);
    let (ending, _) = read_until_close(&mut ws).await;
    assert_eq!(ending, Ending::Close(4321, "asked to".to_owned()));

    let mut ws = connect(&server).await;
    let reply = call(&mut ws, 2, "close", Some(map(&[("code", uint(1005))]))).await;
    expect_err(&reply, Some(2), "INVALID_ARGUMENT");
    assert_alive(&mut ws, 3).await;
}

#[tokio::test]
async fn stats_reports_the_counters() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let _other = connect(&server).await;
    let reply = call(&mut ws, 1, "stats", None).await;
    let d = expect_res(&reply, 1).expect("stats has d");
    assert_eq!(get_uint(&d, "connections_open"), Some(2));
    assert_eq!(get_uint(&d, "connections_total"), Some(2));
    assert!(get_uint(&d, "frames_in").is_some_and(|n| n >= 1));
    assert!(get_uint(&d, "frames_out").is_some_and(|n| n >= 2), "{d:?}");
    assert_eq!(get_uint(&d, "protocol_errors"), Some(0));
    let stats = server.stats();
    assert_eq!((stats.connections_open, stats.connections_total), (2, 2));
}

#[tokio::test]
async fn an_unknown_method_is_unimplemented() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let reply = call(&mut ws, 9, "no.such.method", None).await;
    expect_err(&reply, Some(9), "UNIMPLEMENTED");
}

#[tokio::test]
async fn a_slow_sleep_does_not_hold_up_a_later_echo() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let started = Instant::now();
    send(&mut ws, &req(1, "sleep", Some(map(&[("ms", uint(1500))])))).await;
    send(&mut ws, &req(2, "echo", Some(text("fast")))).await;
    let first = recv(&mut ws).await;
    assert_eq!(expect_res(&first, 2), Some(text("fast")));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "echo waited for sleep: {:?}",
        started.elapsed()
    );
    let second = recv(&mut ws).await;
    expect_res(&second, 1);
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_resource_exhausted() {
    let mut limits = Limits::default();
    limits.max_inflight = 4;
    let server = start(Server::builder().limits(limits)).await;
    let mut ws = connect(&server).await;
    for id in 1..=4 {
        send(&mut ws, &req(id, "sleep", Some(map(&[("ms", uint(800))])))).await;
    }
    let reply = call(&mut ws, 5, "echo", None).await;
    expect_err(&reply, Some(5), "RESOURCE_EXHAUSTED");
    let mut done = Vec::new();
    for _ in 1..=4 {
        let reply = recv(&mut ws).await;
        assert_eq!(get_text(&reply, "t"), Some("res"));
        done.push(get_uint(&reply, "id").expect("id"));
    }
    done.sort_unstable();
    assert_eq!(done, [1, 2, 3, 4]);
    assert_alive(&mut ws, 6).await;
}

#[tokio::test]
async fn a_burst_of_instant_handlers_is_not_refused_as_too_many_in_flight() {
    // 200 messages and 200 requests arrive in one burst (as after a network stall). Each handler finishes at
    // once, so none is ever really in flight beyond the 64 allowed: none may be refused or dropped.
    let notes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&notes);
    let server = start(
        Server::builder()
            .method("rec", |_ctx: Context, n: u64| async move {
                Ok::<_, RpcError>(n)
            })
            .message("note", move |_ctx: Context, _n: u64| {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }),
    )
    .await;
    let mut ws = connect(&server).await;
    for n in 1..=200u64 {
        let note = map(&[("t", text("msg")), ("m", text("note")), ("d", uint(n))]);
        ws.feed(Message::binary(complete(&note)))
            .await
            .expect("feed");
        ws.feed(Message::binary(complete(&req(n, "rec", Some(uint(n))))))
            .await
            .expect("feed");
    }
    ws.flush().await.expect("flush");
    let mut answered = Vec::new();
    for _ in 0..200 {
        let reply = recv(&mut ws).await;
        let Some(id) = get_uint(&reply, "id") else {
            panic!("a reply to a request, not {reply:?}");
        };
        assert_eq!(expect_res(&reply, id), Some(uint(id)), "{reply:?}");
        answered.push(id);
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=200).collect::<Vec<_>>());
    eventually("every message handled", || {
        notes.load(Ordering::SeqCst) == 200
    })
    .await;
}

fn sub(id: u64, topic: &str) -> Value {
    map(&[("t", text("sub")), ("id", uint(id)), ("topic", text(topic))])
}

fn unsub(id: u64, topic: &str) -> Value {
    map(&[
        ("t", text("unsub")),
        ("id", uint(id)),
        ("topic", text(topic)),
    ])
}

fn publish(topic: &str, d: Value) -> Value {
    map(&[("t", text("pub")), ("topic", text(topic)), ("d", d)])
}

fn expect_evt(envelope: &Value, topic: &str, seq: u64, d: &Value) {
    assert_eq!(
        get_text(envelope, "t"),
        Some("evt"),
        "expected evt, got {envelope:?}"
    );
    assert_eq!(get_text(envelope, "topic"), Some(topic));
    assert_eq!(get_uint(envelope, "seq"), Some(seq), "{envelope:?}");
    assert_eq!(get(envelope, "d"), Some(d));
}

#[tokio::test]
async fn pub_fans_out_to_every_subscriber_including_the_publisher_with_per_topic_seq() {
    let server = start(Server::builder()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let mut c = connect(&server).await;
    send(&mut a, &sub(1, "room")).await;
    expect_res(&recv(&mut a).await, 1);
    send(&mut b, &sub(1, "room")).await;
    expect_res(&recv(&mut b).await, 1);
    send(&mut c, &sub(1, "other")).await;
    expect_res(&recv(&mut c).await, 1);

    for n in 1..=3 {
        send(&mut a, &publish("room", uint(n * 10))).await;
    }
    send(&mut b, &publish("other", text("x"))).await;
    for ws in [&mut a, &mut b] {
        for n in 1..=3 {
            expect_evt(&recv(ws).await, "room", n, &uint(n * 10));
        }
    }
    expect_evt(&recv(&mut c).await, "other", 1, &text("x"));

    // After unsub, b gets nothing more; a gets seq 4.
    send(&mut b, &unsub(2, "room")).await;
    expect_res(&recv(&mut b).await, 2);
    send(&mut a, &publish("room", uint(40))).await;
    expect_evt(&recv(&mut a).await, "room", 4, &uint(40));
    assert_alive(&mut b, 3).await; // the next thing b sees is its own reply, not an evt
}

#[tokio::test]
async fn seq_counts_every_publish_so_a_returning_subscriber_sees_the_gap() {
    let server = start(Server::builder()).await;
    let mut a = connect(&server).await;
    send(&mut a, &sub(1, "news")).await;
    expect_res(&recv(&mut a).await, 1);
    send(&mut a, &publish("news", uint(1))).await;
    expect_evt(&recv(&mut a).await, "news", 1, &uint(1));
    // The only subscriber leaves (as on a dropped connection); two events are published meanwhile.
    send(&mut a, &unsub(2, "news")).await;
    expect_res(&recv(&mut a).await, 2);
    let mut b = connect(&server).await;
    for n in 2..=3 {
        send(&mut b, &publish("news", uint(n))).await;
    }
    assert_alive(&mut b, 1).await;
    // Back again: the next event is seq 4, so the subscriber knows it missed 2 and 3.
    send(&mut a, &sub(3, "news")).await;
    expect_res(&recv(&mut a).await, 3);
    send(&mut b, &publish("news", uint(4))).await;
    expect_evt(&recv(&mut a).await, "news", 4, &uint(4));
}

#[tokio::test]
async fn topic_names_are_checked_and_the_authoriser_is_asked() {
    let server = start(Server::builder().authorize_topics(|_who, topic, access| {
        !(topic == "secret" || (topic == "readonly" && access == TopicAccess::Publish))
    }))
    .await;
    let mut ws = connect(&server).await;
    let too_long = "x".repeat(257);
    for (id, topic) in [(1, ""), (2, "$sys"), (3, too_long.as_str())] {
        send(&mut ws, &sub(id, topic)).await;
        expect_err(&recv(&mut ws).await, Some(id), "INVALID_ARGUMENT");
        send(&mut ws, &unsub(id + 10, topic)).await;
        expect_err(&recv(&mut ws).await, Some(id + 10), "INVALID_ARGUMENT");
        send(&mut ws, &publish(topic, uint(1))).await;
        expect_err(&recv(&mut ws).await, None, "INVALID_ARGUMENT");
    }
    send(&mut ws, &sub(4, &"y".repeat(256))).await;
    expect_res(&recv(&mut ws).await, 4);
    send(&mut ws, &sub(5, "secret")).await;
    expect_err(&recv(&mut ws).await, Some(5), "PERMISSION_DENIED");
    send(&mut ws, &sub(6, "readonly")).await;
    expect_res(&recv(&mut ws).await, 6);
    send(&mut ws, &publish("readonly", uint(1))).await;
    expect_err(&recv(&mut ws).await, None, "PERMISSION_DENIED");
    assert_alive(&mut ws, 7).await;
}

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize)]
struct Sum {
    sum: i64,
}

#[derive(Deserialize)]
struct Note {
    text: String,
}

#[tokio::test]
async fn application_methods_and_message_handlers_are_typed() {
    let notes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&notes);
    let server = start(
        Server::builder()
            .method("add", |_ctx: Context, req: Add| async move {
                Ok::<_, RpcError>(Sum { sum: req.a + req.b })
            })
            .method("echo", |_ctx: Context, _req: ()| async move {
                Ok::<_, RpcError>("shadowed")
            })
            .message("note", move |ctx: Context, note: Note| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = ctx.publish("notes", &note.text);
                }
            }),
    )
    .await;
    let mut ws = connect(&server).await;
    let reply = call(
        &mut ws,
        1,
        "add",
        Some(map(&[("a", uint(2)), ("b", uint(40))])),
    )
    .await;
    assert_eq!(expect_res(&reply, 1), Some(map(&[("sum", uint(42))])));
    let reply = call(&mut ws, 2, "add", Some(text("nope"))).await;
    expect_err(&reply, Some(2), "INVALID_ARGUMENT");
    let reply = call(&mut ws, 3, "echo", None).await;
    assert_eq!(expect_res(&reply, 3), Some(text("shadowed")));

    send(&mut ws, &sub(4, "notes")).await;
    expect_res(&recv(&mut ws).await, 4);
    send(
        &mut ws,
        &map(&[
            ("t", text("msg")),
            ("m", text("note")),
            ("d", map(&[("text", text("hi"))])),
        ]),
    )
    .await;
    expect_evt(&recv(&mut ws).await, "notes", 1, &text("hi"));
    assert_eq!(notes.load(Ordering::SeqCst), 1);

    // A payload of the wrong shape, and a message nobody handles: err notices without id.
    send(
        &mut ws,
        &map(&[("t", text("msg")), ("m", text("note")), ("d", uint(3))]),
    )
    .await;
    expect_err(&recv(&mut ws).await, None, "INVALID_ARGUMENT");
    send(&mut ws, &map(&[("t", text("msg")), ("m", text("nobody"))])).await;
    expect_err(&recv(&mut ws).await, None, "UNIMPLEMENTED");
}

#[tokio::test]
async fn the_echo_message_comes_back_as_a_message() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let msg = map(&[("t", text("msg")), ("m", text("echo")), ("d", uint(5))]);
    send(&mut ws, &msg).await;
    let back = recv(&mut ws).await;
    assert_eq!(get_text(&back, "t"), Some("msg"));
    assert_eq!(get_text(&back, "m"), Some("echo"));
    assert_eq!(get(&back, "d"), Some(&uint(5)));
}

#[tokio::test]
async fn large_messages_are_reassembled_and_large_replies_fragmented() {
    // Server threshold 100 KiB (the protocol's default): a 300 KB echo comes back in 3 fragments.
    let server = start(Server::builder().fragment_threshold(100 * 1024)).await;
    let mut ws = connect(&server).await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let envelope = req(1, "echo", Some(Value::Bytes(blob.clone())));
    for frame in fragments(77, &envelope, 64 * 1024) {
        send_binary(&mut ws, frame).await;
    }
    let mut inbox = Inbox::default();
    let reply = inbox.recv(&mut ws).await;
    assert_eq!(expect_res(&reply.envelope, 1), Some(Value::Bytes(blob)));
    assert_eq!(
        reply.fragments, 3,
        "a 300 KB reply over a 100 KiB threshold is 3 fragments"
    );

    // A small reply is one COMPLETE frame.
    let small = inbox
        .recv_after(&mut ws, &req(2, "echo", Some(text("small"))))
        .await;
    assert_eq!(small.fragments, 0);

    // A configured threshold applies; fragments of two messages do not interleave.
    let server = start(Server::builder().fragment_threshold(1024)).await;
    let mut ws = connect(&server).await;
    let reply = inbox
        .recv_after(&mut ws, &req(3, "echo", Some(Value::Bytes(vec![7; 5000]))))
        .await;
    assert!(reply.fragments >= 5, "{} fragments", reply.fragments);
    assert_eq!(
        expect_res(&reply.envelope, 3),
        Some(Value::Bytes(vec![7; 5000]))
    );
}

impl Inbox {
    async fn recv_after(&mut self, ws: &mut Client, envelope: &Value) -> Received {
        send(ws, envelope).await;
        self.recv(ws).await
    }
}

#[tokio::test]
async fn a_message_followed_at_once_by_the_close_is_still_handled() {
    let handled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&handled);
    let server = start(
        Server::builder().message("note", move |_ctx: Context, _note: Note| {
            let seen = Arc::clone(&seen);
            async move {
                // Slower than the close that follows the message.
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }),
    )
    .await;
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        &map(&[
            ("t", text("msg")),
            ("m", text("note")),
            ("d", map(&[("text", text("bye"))])),
        ]),
    )
    .await;
    ws.close(None).await.expect("close frame sent");
    drop(ws);
    eventually("the message handler ran", || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// Requests read together are answered in the order they were asked, the embedded broker's `sub` included: a
/// client may use a request after its `sub` as a barrier for the acknowledgement.
#[tokio::test]
async fn a_sub_is_acknowledged_before_the_reply_to_a_request_sent_after_it() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    for round in 0..20u64 {
        let (sub, echo) = (10 * round + 1, 10 * round + 2);
        // One write, so the server reads both before it answers either.
        let topic = format!("ordered-{round}");
        ws.feed(Message::binary(complete(&sub_since(sub, &topic, None))))
            .await
            .expect("feed");
        ws.feed(Message::binary(complete(&req(echo, "echo", None))))
            .await
            .expect("feed");
        ws.flush().await.expect("flush");
        let ids = [
            get_uint(&recv(&mut ws).await, "id"),
            get_uint(&recv(&mut ws).await, "id"),
        ];
        assert_eq!(ids, [Some(sub), Some(echo)], "round {round}");
    }
}
