//! Drain, shutdown, heartbeat and slow subscribers, over sockets. Drain spreads, keepalive and heartbeat over
//! silent or blackholed links are scenarios in simulated time (`tests/tests/pair.rs`).

use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;
use futures_util::SinkExt;
use sockeye_server::{DrainOptions, DrainResult, Limits, Server};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::common::*;

/// A smoke test of the tokio shell and the HTTP layer; the spread of the closes and the clients' reconnections
/// are scenarios of `tests/tests/pair.rs`, in simulated time.
#[tokio::test]
async fn drain_says_bye_closes_with_1001_and_refuses_upgrades() {
    let server = Arc::new(start(Server::builder()).await);
    let mut ws = connect(&server).await;
    let mut options = DrainOptions::with_window(Duration::from_millis(300));
    options.bye = true;
    let drain = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.drain(options).await })
    };
    eventually("the drain has started", || server.is_draining()).await;
    // New upgrades get HTTP 503.
    match connect_with(&server.ws_url(), &[], true).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!(
            "expected HTTP 503, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    let texts = expect_close(&mut ws, 1001).await;
    let result = drain.await.expect("the drain finishes");
    assert_eq!(texts, ["bye"]);
    assert_eq!(
        result,
        DrainResult {
            closed: 1,
            remaining: 0,
            timed_out: false
        }
    );
}

#[tokio::test]
async fn drain_reports_connections_still_open_at_the_deadline() {
    let server = start(Server::builder()).await;
    // This client never reads, so it never answers the close frame: the server keeps the socket for its
    // closing handshake timeout, past the drain's deadline.
    let _silent = connect(&server).await;
    let mut options = DrainOptions::with_window(Duration::ZERO);
    options.deadline = Some(Duration::from_millis(300));
    let result = server.drain(options).await;
    assert_eq!(
        result,
        DrainResult {
            closed: 0,
            remaining: 1,
            timed_out: true
        }
    );
}

#[tokio::test]
async fn shutdown_closes_everyone_with_1001_and_stops_listening() {
    let server = start(Server::builder()).await;
    let addr = server.local_addr();
    let mut ws = connect(&server).await;
    let (_, ending) = tokio::join!(server.shutdown(), read_until_close(&mut ws));
    assert_eq!(
        ending.0,
        Ending::Close(1001, "Server shutting down".to_owned())
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn a_subscriber_that_cannot_keep_up_is_closed_with_1013_without_stalling_the_publisher() {
    let mut limits = Limits::default();
    limits.outbound_queue = 8;
    let reason = slow_subscriber_is_closed_with_1013(limits).await;
    assert!(reason.contains("queue"), "{reason}");
}

#[tokio::test]
async fn a_subscriber_over_its_output_budget_is_closed_with_1013() {
    let mut limits = Limits::default();
    limits.reassembly.max_message_bytes = 128 * 1024;
    limits.outbound_bytes = 1024 * 1024;
    let reason = slow_subscriber_is_closed_with_1013(limits).await;
    assert!(reason.contains("budget"), "{reason}");
}

/// A subscriber stops reading 64 KiB events until the server closes it; it must see an unbroken run of
/// events, then 1013, and the publisher must be served meanwhile. Returns the close reason. The fragment
/// threshold is the protocol's 100 KiB, so each event is one frame.
async fn slow_subscriber_is_closed_with_1013(limits: Limits) -> String {
    let server = start(
        Server::builder()
            .limits(limits)
            .fragment_threshold(100 * 1024),
    )
    .await;
    let mut slow = connect(&server).await;
    let mut publisher = connect(&server).await;
    let sub = map(&[
        ("t", text("sub")),
        ("id", uint(1)),
        ("topic", text("firehose")),
    ]);
    send(&mut slow, &sub).await;
    expect_res(&recv(&mut slow).await, 1);
    // `slow` stops reading. 64 KiB events soon fill the socket buffers, then its queue.
    let payload = Value::Bytes(vec![0xab; 64 * 1024]);
    let pub_evt = map(&[
        ("t", text("pub")),
        ("topic", text("firehose")),
        ("d", payload),
    ]);
    let started = Instant::now();
    let mut published = 0u64;
    while server.stats().overflow_closes == 0 {
        assert!(
            started.elapsed() < PATIENCE,
            "the slow subscriber was never closed"
        );
        for _ in 0..16 {
            send(&mut publisher, &pub_evt).await;
            published += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The publisher is served at once.
    let before = Instant::now();
    assert_alive(&mut publisher, 1).await;
    assert!(
        before.elapsed() < Duration::from_secs(2),
        "publisher stalled: {:?}",
        before.elapsed()
    );

    // The slow subscriber sees an unbroken run of events, then 1013: nothing lost silently.
    let mut expected_seq = 1;
    let reason = loop {
        match next(&mut slow).await {
            Some(Ok(Message::Binary(frame))) => {
                assert_eq!(frame[0], 0x00, "a 64 KiB event fits the 100 KiB threshold");
                let envelope: Value = ciborium::from_reader(&frame[1..]).expect("valid CBOR");
                assert_eq!(get_uint(&envelope, "seq"), Some(expected_seq));
                expected_seq += 1;
            }
            Some(Ok(Message::Close(frame))) => {
                let frame = frame.expect("a close frame with a code");
                assert_eq!(u16::from(frame.code), 1013);
                break frame.reason.to_string();
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        expected_seq - 1 < published,
        "the subscriber cannot have received everything"
    );
    // Everything it held is given back.
    eventually("the output budget given back", || {
        server.stats().outbound_bytes == 0
    })
    .await;
    reason
}

#[tokio::test]
async fn a_peer_that_never_reads_its_replies_is_closed_after_the_heartbeat_limit() {
    let server = start(Server::builder().heartbeat(Some(Duration::from_millis(500)))).await;
    let mut ws = connect(&server).await;
    let mut bystander = connect(&server).await;
    // Keep sending big echo requests without ever reading: the server's writes to this peer block.
    let flood = tokio::spawn(async move {
        let envelope = req(1, "echo", Some(Value::Bytes(vec![1; 64 * 1024])));
        let frame = complete(&envelope);
        for _ in 0..2000 {
            if ws.send(Message::binary(frame.clone())).await.is_err() {
                break;
            }
        }
        ws
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The bystander keeps itself alive and sees the flooder disappear.
        bystander
            .send(Message::text("ping"))
            .await
            .expect("send ping");
        expect_text(&mut bystander, "pong").await;
        if server.stats().connections_open == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flooding peer was never closed: {:?}",
            server.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.abort();
}
