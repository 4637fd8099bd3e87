//! Server-wide memory budgets: a connection whose input or output would pass one is closed with 1013 (or its
//! publish refused), and everything it held is given back.

use ciborium::Value;
use sockeye_server::{Limits, Server, ServerHandle};

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
