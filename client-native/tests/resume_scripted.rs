//! PROTOCOL §9 through the tokio shell, against a scripted server that plays each connection's part exactly:
//! what a `Subscription` yields (events, gaps, resets, resumes, in order) and what `publish_acked` resolves to.
//! (The reference server's own history and replay are tested against it in `resume.rs`.)

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use sockeye::{Error, ErrorCode, Payload, SubscriptionItem, TopicPosition};
use sockeye_core::codec::{Envelope, SubAck};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use common::*;

fn position(ep: &str, seq: u64) -> TopicPosition {
    TopicPosition { ep: ep.into(), seq }
}

/// The next envelope the client sends, skipping text frames (`ping`).
async fn next_envelope(ws: &mut RawSocket) -> Option<Envelope> {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Binary(frame) = message {
            return Envelope::decode(&frame[1..]).ok();
        }
    }
    None
}

async fn send(ws: &mut RawSocket, envelope: &Envelope) {
    let _ = ws.send(Message::binary(complete_frame(envelope))).await;
}

async fn evt(ws: &mut RawSocket, seq: u64) {
    let data = Some(Payload::encode(&seq).unwrap());
    send(
        ws,
        &Envelope::Evt {
            topic: "t".into(),
            seq,
            data,
        },
    )
    .await;
}

/// Connection by connection: what the server answers to the `sub` and which events it sends, then it closes
/// with 1012 (restart). The `since` of every `sub` is reported.
#[tokio::test]
async fn a_subscription_yields_gaps_resets_and_resumes_beside_its_events() {
    let (report, mut sinces) = mpsc::unbounded_channel();
    let connections = Arc::new(AtomicUsize::new(0));
    let server = RawServer::start(move |mut ws| {
        let report = report.clone();
        let n = connections.fetch_add(1, Ordering::SeqCst);
        async move {
            let Some(Envelope::Sub { id, since, .. }) = next_envelope(&mut ws).await else {
                return;
            };
            let _ = report.send(since);
            let (ack, events): (SubAck, &[u64]) = match n {
                // First subscription; then a live skip (3 is lost).
                0 => (
                    SubAck {
                        position: position("e1", 0),
                        recovered: None,
                    },
                    &[1, 2, 4],
                ),
                // Resumed: 5 and 6 replayed, then 7 live (and a duplicate of 6).
                1 => (
                    SubAck {
                        position: position("e1", 6),
                        recovered: Some(true),
                    },
                    &[5, 6, 6, 7],
                ),
                // The server lost its history: a new epoch.
                _ => (
                    SubAck {
                        position: position("e2", 3),
                        recovered: Some(false),
                    },
                    &[4],
                ),
            };
            let data = Some(ack.to_payload());
            send(&mut ws, &Envelope::Res { id, data }).await;
            for &seq in events {
                evt(&mut ws, seq).await;
            }
            if n < 2 {
                let _ = ws.close(None).await;
            }
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    let client = fast(server.url()).build().unwrap();
    let mut items = client.subscribe::<u64>("t").unwrap();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let item = within("an item", items.next()).await.unwrap().unwrap();
        seen.push(match item {
            SubscriptionItem::Event(e) => format!("{}@{}", e.data, e.ep.as_deref().unwrap_or("-")),
            SubscriptionItem::Gap { from, to } => format!("gap {from}..={to}"),
            SubscriptionItem::Reset { ep } => format!("reset {ep}"),
            SubscriptionItem::Resumed { replayed } => format!("resumed {replayed}"),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "1@e1",
            "2@e1",
            "gap 3..=3",
            "4@e1",
            "5@e1",
            "6@e1",
            "resumed 2",
            "7@e1",
            "reset e2",
            "4@e2"
        ]
    );
    let mut carried = Vec::new();
    for _ in 0..3 {
        carried.push(within("a sub", sinces.recv()).await.unwrap());
    }
    assert_eq!(
        carried,
        [None, Some(position("e1", 4)), Some(position("e1", 7))]
    );
    client.close().await;
}

#[tokio::test]
async fn publish_acked_resolves_to_where_the_server_stored_the_event_or_its_error() {
    let server = RawServer::start(|mut ws| async move {
        while let Some(envelope) = next_envelope(&mut ws).await {
            let Envelope::Pub {
                id: Some(id), data, ..
            } = envelope
            else {
                continue;
            };
            let reply = match data.map(|d| d.decode::<u64>()) {
                Some(Ok(7)) => Envelope::Res {
                    id,
                    data: Some(position("ep-9", 41).to_payload()),
                },
                _ => Envelope::Err {
                    id: Some(id),
                    code: ErrorCode::PermissionDenied,
                    message: "read-only".into(),
                    data: None,
                },
            };
            send(&mut ws, &reply).await;
        }
    })
    .await;
    let client = within("connect", fast(server.url()).connect())
        .await
        .unwrap();
    let stored = within("the ack", client.publish_acked("t", &7u64))
        .await
        .unwrap();
    assert_eq!(stored, position("ep-9", 41));
    match within("the refusal", client.publish_acked("t", &8u64)).await {
        Err(Error::Server { code, message, .. }) => {
            assert_eq!(
                (code, message.as_str()),
                (ErrorCode::PermissionDenied, "read-only")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.publish_acked("$t", &1).await,
        Err(Error::InvalidTopic(_))
    ));
    client.close().await;
}
