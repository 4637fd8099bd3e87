//! Server-wide memory budgets: a connection whose input or output would pass one is closed with 1013 (or its
//! publish refused), and everything it held is given back.

use ciborium::Value;
use futures_util::SinkExt;
use sockeye_server::{Limits, Server, ServerHandle};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// Waits until every budget is back to zero.
async fn all_given_back(server: &ServerHandle) {
    eventually("every budget given back", || {
        let stats = server.stats();
        stats.inbound_bytes == 0 && stats.outbound_bytes == 0 && stats.reassembly_bytes == 0
    })
    .await;
}

#[tokio::test]
async fn a_partial_message_past_the_server_reassembly_budget_closes_with_1013() {
    let mut limits = Limits::default();
    limits.total_reassembly_bytes = 100 * 1024;
    let server = start(Server::builder().limits(limits)).await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    let request = req(3, "echo", Some(Value::Bytes(vec![1; 100 * 1024])));
    let frames = fragments(0, &request, 80 * 1024);
    assert_eq!(frames.len(), 2);
    send_binary(&mut first, frames[0].clone()).await;
    assert_alive(&mut first, 1).await;
    assert_eq!(server.stats().reassembly_bytes, 80 * 1024);
    // Within its own limits (8 partial messages of 16 MiB), but not within the server's room.
    send_binary(&mut second, fragment(0, 0, 2, &[1; 40 * 1024])).await;
    let (ending, _) = read_until_close(&mut second).await;
    let Ending::Close(1013, reason) = ending else {
        panic!("expected 1013, got {ending:?}")
    };
    assert!(reason.contains("reassembly budget"), "{reason}");
    // The first connection completes its message.
    send_binary(&mut first, frames[1].clone()).await;
    expect_res(&Inbox::default().recv(&mut first).await.envelope, 3);
    all_given_back(&server).await;
}

#[tokio::test]
async fn a_message_past_the_server_inbound_budget_closes_with_1013() {
    let mut limits = Limits::default();
    limits.total_inbound_bytes = 64 * 1024;
    let server = start(Server::builder().limits(limits)).await;
    let mut ws = connect(&server).await;
    // Smaller messages come and go within the budget.
    for id in 1..=20 {
        let reply = call(&mut ws, id, "echo", Some(Value::Bytes(vec![2; 40 * 1024]))).await;
        assert!(expect_res(&reply, id).is_some());
    }
    send(
        &mut ws,
        &req(30, "echo", Some(Value::Bytes(vec![2; 200 * 1024]))),
    )
    .await;
    let (ending, _) = read_until_close(&mut ws).await;
    let Ending::Close(1013, reason) = ending else {
        panic!("expected 1013, got {ending:?}")
    };
    assert!(reason.contains("inbound budget"), "{reason}");
    all_given_back(&server).await;
}

#[tokio::test]
async fn a_publish_past_the_server_output_budget_is_refused_and_the_largest_backlog_closed() {
    let mut limits = Limits::default();
    limits.reassembly.max_message_bytes = 64 * 1024;
    limits.outbound_bytes = 128 * 1024;
    limits.total_outbound_bytes = 128 * 1024;
    let server = start(Server::builder().limits(limits)).await;
    let mut slow = connect(&server).await;
    send(
        &mut slow,
        &map(&[("t", text("sub")), ("id", uint(1)), ("topic", text("t"))]),
    )
    .await;
    expect_res(&recv(&mut slow).await, 1);
    // `slow` stops reading: once the socket buffers are full, its backlog fills the server's whole budget.
    let mut publisher = connect(&server).await;
    let event = map(&[
        ("t", text("pub")),
        ("topic", text("t")),
        ("d", Value::Bytes(vec![5; 60 * 1024])),
    ]);
    let mut refusal = None;
    for id in 1..=1000 {
        send(&mut publisher, &event).await;
        send(&mut publisher, &req(id, "echo", None)).await;
        let envelope = recv(&mut publisher).await;
        if get_text(&envelope, "t") == Some("err") {
            refusal = Some(envelope);
            expect_res(&recv(&mut publisher).await, id);
            break;
        }
        expect_res(&envelope, id);
    }
    let refusal = refusal.expect("a publish was refused");
    expect_err(&refusal, None, "RESOURCE_EXHAUSTED");
    let message = get_text(&refusal, "msg").expect("msg");
    assert!(message.contains("output budget"), "{message}");
    // The subscriber holding the budget is closed, so publishing works again.
    let (ending, _) = read_until_close(&mut slow).await;
    let Ending::Close(1013, reason) = ending else {
        panic!("expected 1013, got {ending:?}")
    };
    assert!(reason.contains("largest backlog"), "{reason}");
    all_given_back(&server).await;
    send(&mut publisher, &event).await;
    assert_alive(&mut publisher, 2000).await;
}

/// `bytes` as a WebSocket message of two frames: all but the last 100 bytes, then those.
fn in_two_frames(bytes: &[u8]) -> [Message; 2] {
    let (first, last) = bytes.split_at(bytes.len() - 100);
    [
        Message::Frame(Frame::message(
            first.to_vec(),
            OpCode::Data(Data::Binary),
            false,
        )),
        Message::Frame(Frame::message(
            last.to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )),
    ]
}

#[tokio::test]
async fn a_message_in_several_websocket_frames_must_use_small_frames() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    // Small frames are fine.
    let small = complete(&req(1, "echo", Some(Value::Bytes(vec![6; 50 * 1024]))));
    for frame in in_two_frames(&small) {
        ws.send(frame).await.expect("send");
    }
    expect_res(&recv(&mut ws).await, 1);
    // A large frame would leave tungstenite's buffer at its size for the connection's life.
    let large = complete(&req(2, "echo", Some(Value::Bytes(vec![6; 300 * 1024]))));
    for frame in in_two_frames(&large) {
        if ws.send(frame).await.is_err() {
            break;
        }
    }
    let (ending, _) = read_until_close(&mut ws).await;
    let Ending::Close(1009, reason) = ending else {
        panic!("expected 1009, got {ending:?}")
    };
    assert!(reason.contains("several frames"), "{reason}");
    // One large frame is a message like any other.
    let mut ws = connect(&server).await;
    send_binary(&mut ws, large).await;
    expect_res(&recv(&mut ws).await, 2);
    // (Its buffer may be held, and charged, until more input comes or the connection ends.)
    drop(ws);
    all_given_back(&server).await;
}

#[tokio::test]
async fn subscriptions_across_connections_are_bounded() {
    let mut limits = Limits::default();
    limits.max_total_subscriptions = 3;
    let server = start(Server::builder().limits(limits)).await;
    let sub =
        |id: u64, topic: &str| map(&[("t", text("sub")), ("id", uint(id)), ("topic", text(topic))]);
    let mut first = connect(&server).await;
    for id in 1..=2 {
        send(&mut first, &sub(id, &format!("t{id}"))).await;
        expect_res(&recv(&mut first).await, id);
    }
    let mut second = connect(&server).await;
    send(&mut second, &sub(1, "t1")).await;
    expect_res(&recv(&mut second).await, 1);
    send(&mut second, &sub(2, "t9")).await;
    expect_err(&recv(&mut second).await, Some(2), "RESOURCE_EXHAUSTED");
    // The first connection's subscriptions go with it.
    drop(first);
    eventually("the first connection gone", || {
        server.stats().connections_open == 1
    })
    .await;
    send(&mut second, &sub(3, "t9")).await;
    expect_res(&recv(&mut second).await, 3);
}
