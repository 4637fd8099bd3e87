//! Topic history and resume without gaps (PROTOCOL §9), with the embedded store.

use std::time::Duration;

use sockeye_server::{Limits, Server};

use crate::common::*;

/// A publisher keeps publishing while a subscriber leaves and comes back with `since`, several times: every
/// `seq` arrives exactly once, in order, across all its connections.
#[tokio::test]
async fn resuming_while_others_publish_delivers_every_event_once_in_order() {
    const EVENTS: u64 = 600;
    let server = start(Server::builder()).await;
    let url = server.ws_url();
    let mut publisher = connect(&server).await;
    let mut ws = connect(&server).await;
    let start = subscribe(&mut ws, 1, "r", None).await;
    assert_eq!((start.seq, start.recovered), (0, None));
    let publishing = tokio::spawn(async move {
        // Acknowledged, so the publisher cannot outrun the subscriber's event queue.
        for n in 1..=EVENTS {
            assert_eq!(publish_acked(&mut publisher, n, "r", uint(n)).await.seq, n);
        }
    });
    let mut seen = Vec::new();
    let mut resumes = 0;
    while seen.last() != Some(&EVENTS) {
        let (seq, d) = expect_evt_of(&recv(&mut ws).await, "r");
        assert_eq!(d, Some(uint(seq)));
        seen.push(seq);
        if seq % 97 == 0 {
            // Leave without a word and come back on a new connection.
            drop(ws);
            ws = connect_url(&url, &[]).await;
            let resumed = subscribe(&mut ws, 2, "r", Some((&start.ep, seq))).await;
            assert_eq!(resumed.ep, start.ep);
            assert_eq!(resumed.recovered, Some(true), "{resumed:?}");
            assert!(resumed.seq >= seq);
            resumes += 1;
        }
    }
    publishing.await.expect("the publisher finished");
    assert_eq!(seen, (1..=EVENTS).collect::<Vec<_>>());
    assert!(resumes >= 6);
}

#[tokio::test]
async fn a_history_too_short_by_count_is_reported_unrecovered() {
    let server = start(Server::builder().history_size(3)).await;
    let mut ws = connect(&server).await;
    let mut ep = String::new();
    for n in 1..=5 {
        let at = publish_acked(&mut ws, n, "c", uint(n)).await;
        assert_eq!(at.seq, n);
        ep = at.ep;
    }
    let mut late = connect(&server).await;
    // Events 3..=5 are kept: since 1 lacks event 2.
    let lost = subscribe(&mut late, 1, "c", Some((&ep, 1))).await;
    assert_eq!((lost.seq, lost.recovered), (5, Some(false)));
    assert_alive(&mut late, 2).await; // nothing replayed
    let mut other = connect(&server).await;
    let kept = subscribe(&mut other, 1, "c", Some((&ep, 2))).await;
    assert_eq!(kept.recovered, Some(true));
    for n in 3..=5 {
        assert_eq!(
            expect_evt_of(&recv(&mut other).await, "c"),
            (n, Some(uint(n)))
        );
    }
    // Then live events.
    publish_acked(&mut ws, 9, "c", uint(6)).await;
    assert_eq!(expect_evt_of(&recv(&mut other).await, "c").0, 6);
    assert_eq!(expect_evt_of(&recv(&mut late).await, "c").0, 6);
}

#[tokio::test]
async fn a_history_too_short_by_age_is_reported_unrecovered() {
    let server = start(Server::builder().history_ttl(Duration::from_millis(100))).await;
    let mut ws = connect(&server).await;
    let at = publish_acked(&mut ws, 1, "a", uint(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resumed = subscribe(&mut ws, 2, "a", Some((&at.ep, 0))).await;
    assert_eq!((resumed.seq, resumed.recovered), (1, Some(false)));
    assert_alive(&mut ws, 3).await;
}

#[tokio::test]
async fn an_acknowledged_publish_is_answered_with_its_place_or_an_error() {
    let server =
        start(Server::builder().authorize_topics(|_who, topic, _access| topic != "closed")).await;
    let mut ws = connect(&server).await;
    let start = subscribe(&mut ws, 1, "p", None).await;
    let first = publish_acked(&mut ws, 2, "p", text("a")).await;
    assert_eq!(
        first,
        Position {
            ep: start.ep.clone(),
            seq: 1,
            recovered: None
        }
    );
    // The subscriber (here the publisher too) gets the event.
    assert_eq!(
        expect_evt_of(&recv(&mut ws).await, "p"),
        (1, Some(text("a")))
    );
    assert_eq!(publish_acked(&mut ws, 3, "p", text("b")).await.seq, 2);
    assert_eq!(expect_evt_of(&recv(&mut ws).await, "p").0, 2);
    send(&mut ws, &pub_env(Some(4), "closed", text("x"))).await;
    expect_err(&recv(&mut ws).await, Some(4), "PERMISSION_DENIED");
    send(&mut ws, &pub_env(Some(5), "$bad", text("x"))).await;
    expect_err(&recv(&mut ws).await, Some(5), "INVALID_ARGUMENT");
    // Without `id`: no reply, as before.
    send(&mut ws, &pub_env(None, "p", text("c"))).await;
    assert_eq!(expect_evt_of(&recv(&mut ws).await, "p").0, 3);
    assert_alive(&mut ws, 6).await;
}

#[tokio::test]
async fn the_history_byte_budget_drops_the_oldest_events_first() {
    let mut limits = Limits::default();
    limits.total_history_bytes = 20_000;
    let server = start(Server::builder().limits(limits)).await;
    let mut ws = connect(&server).await;
    let big = text(&"x".repeat(1_000));
    let mut ep = String::new();
    for n in 1..=100 {
        let topic = if n % 2 == 0 { "even" } else { "odd" };
        let at = publish_acked(&mut ws, n, topic, big.clone()).await;
        if topic == "odd" {
            ep = at.ep;
        }
        assert!(server.stats().history_bytes <= 20_000);
    }
    assert!(
        server.stats().history_bytes > 15_000,
        "{:?}",
        server.stats()
    );
    let even_ep = subscribe(&mut ws, 200, "even", None).await.ep;
    assert_ne!(even_ep, ep, "each topic has its own epoch");
    let mut late = connect(&server).await;
    // About 18 events fit: the odd topic's first are gone, its last ones are kept.
    assert_eq!(
        subscribe(&mut late, 1, "odd", Some((&ep, 0)))
            .await
            .recovered,
        Some(false)
    );
    let kept = subscribe(&mut late, 2, "odd", Some((&ep, 45))).await;
    assert_eq!((kept.seq, kept.recovered), (50, Some(true)));
    for n in 46..=50 {
        assert_eq!(expect_evt_of(&recv(&mut late).await, "odd").0, n);
    }
}

#[tokio::test]
async fn a_topic_forgotten_while_idle_comes_back_in_a_new_epoch() {
    let server = start(Server::builder()).await;
    let mut ws = connect(&server).await;
    let before = publish_acked(&mut ws, 1, "e", uint(1)).await;
    // Past the bound on idle topics remembered (65 536), the one idle longest is forgotten.
    for n in 0..65_536 {
        server
            .publish(&format!("filler-{n}"), None)
            .expect("published");
    }
    let after = subscribe(&mut ws, 2, "e", Some((&before.ep, 1))).await;
    assert_ne!(after.ep, before.ep);
    assert_eq!((after.seq, after.recovered), (0, Some(false)));
    assert_eq!(publish_acked(&mut ws, 3, "e", uint(2)).await.seq, 1);
}

#[tokio::test]
async fn history_size_zero_answers_every_since_unrecovered() {
    let server = start(Server::builder().history_size(0)).await;
    let mut ws = connect(&server).await;
    let at = publish_acked(&mut ws, 1, "z", uint(1)).await;
    let resumed = subscribe(&mut ws, 2, "z", Some((&at.ep, 0))).await;
    assert_eq!((resumed.seq, resumed.recovered), (1, Some(false)));
    assert_alive(&mut ws, 3).await;
    assert_eq!(server.stats().history_bytes, 0);
}
