//! The native client against scripted hostile or broken servers: what it holds, how it refuses, what it reports.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use sockeye::{DisconnectReason, ErrorCode, Payload, Status};
use sockeye_core::codec::Envelope;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use common::*;

fn req(id: u64, method: &str) -> Message {
    Message::binary(complete_frame(&Envelope::Req {
        id,
        method: method.to_owned(),
        data: None,
    }))
}

/// A server that floods `req`s and never reads the answers: the client's answers back up, and past its write
/// backlog bound it stops reading, so the server's writes stall. Before, the client read on and buffered every
/// answer (the CLI grew ~40 MB/s).
#[tokio::test]
async fn a_server_that_never_reads_cannot_grow_the_clients_write_backlog() {
    const CAP: usize = 64 << 20;
    let (report, mut written) = mpsc::unbounded_channel();
    let server = RawServer::start(move |mut ws| {
        let report = report.clone();
        async move {
            let method = "m".repeat(60);
            let mut bytes = 0;
            // Until a write stalls for a second (the client stopped reading), or CAP bytes went through.
            for id in 0.. {
                let frame = req(id, &method);
                bytes += frame.len();
                let sent = tokio::time::timeout(Duration::from_secs(1), ws.feed(frame)).await;
                if !matches!(sent, Ok(Ok(()))) || bytes >= CAP {
                    break;
                }
            }
            let _ = report.send(bytes);
            std::future::pending::<()>().await; // keep the socket open, unread
        }
    })
    .await;
    let client = fast(server.url())
        .keepalive(Duration::ZERO, Duration::ZERO)
        .max_write_backlog(64 << 10)
        .connect();
    let client = within("connect", client).await.unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(60), written.recv())
        .await
        .expect("the flood ends")
        .unwrap();
    // What went through fits in the kernel's socket buffers plus the client's small backlog.
    assert!(
        bytes < CAP / 2,
        "the server wrote {bytes} bytes without the client pushing back"
    );
    assert_eq!(client.state(), Status::Ready, "backpressure, not a close");
    client.close().await;
}

/// At most `max_inbound_requests` handlers run at once: the client reads no further `req` until one answers,
/// and then every request is answered.
#[tokio::test]
async fn server_requests_beyond_the_bound_wait_for_a_handler_to_answer() {
    const SENT: u64 = 10;
    let (answers_tx, mut answers) = mpsc::unbounded_channel();
    let server = RawServer::start(move |mut ws| {
        let answers = answers_tx.clone();
        async move {
            for id in 1..=SENT {
                if ws.send(req(id, "slow")).await.is_err() {
                    return;
                }
            }
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Binary(frame) = message {
                    if let Ok(envelope) = Envelope::decode(&frame[1..]) {
                        let _ = answers.send(envelope);
                    }
                }
            }
        }
    })
    .await;
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (gate2, started2) = (Arc::clone(&gate), Arc::clone(&started));
    let client = fast(server.url())
        .max_inbound_requests(4)
        .on_request("slow", move |(): ()| {
            let (gate, started) = (Arc::clone(&gate2), Arc::clone(&started2));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.expect("open").forget();
                Ok::<_, sockeye::Error>(())
            }
        })
        .connect();
    let client = within("connect", client).await.unwrap();
    eventually("four handlers", || started.load(Ordering::SeqCst) == 4).await;
    // Give the client every chance to read the other six requests; it must not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(started.load(Ordering::SeqCst), 4);
    gate.add_permits(usize::try_from(SENT).unwrap());
    let mut answered = Vec::new();
    while answered.len() < usize::try_from(SENT).unwrap() {
        match within("every answer", answers.recv()).await.unwrap() {
            Envelope::Res { id, .. } => answered.push(id),
            other => panic!("{other:?}"),
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=SENT).collect::<Vec<_>>());
    assert_eq!(client.state(), Status::Ready);
    client.close().await;
}

/// A `res` for a pending request whose envelope is otherwise broken ends that request at once with
/// `INVALID_ARGUMENT`, instead of leaving it to its deadline.
#[tokio::test]
async fn a_malformed_reply_fails_its_request_at_once() {
    let server = RawServer::start(|mut ws| async move {
        while let Some(Ok(Message::Binary(frame))) = ws.next().await {
            let Ok(Envelope::Req { id, .. }) = Envelope::decode(&frame[1..]) else {
                continue;
            };
            // `{"t": "res", "id": id, "d": <a reserved CBOR header>}`
            let mut broken = vec![
                0, 0xa3, 0x61, b't', 0x63, b'r', b'e', b's', 0x62, b'i', b'd', 0x1b,
            ];
            broken.extend(id.to_be_bytes());
            broken.extend([0x61, b'd', 0x1c]);
            if ws.send(Message::binary(broken)).await.is_err() {
                return;
            }
        }
    })
    .await;
    let client = fast(server.url())
        .request_timeout(Duration::from_secs(120))
        .connect();
    let client = within("connect", client).await.unwrap();
    let err = within("the request to fail", client.request::<_, ()>("echo", &1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.to_string().contains("malformed"), "{err}");
    assert_eq!(client.state(), Status::Ready);
    client.close().await;
}

/// A message over the size limit, refused by the socket while reading, is closed with 4004 (PROTOCOL §6), and
/// the application sees that code, not an abnormal 1006.
#[tokio::test]
async fn an_oversize_message_is_closed_with_4004_and_reported_as_such() {
    let (codes_tx, mut codes) = mpsc::unbounded_channel();
    let server = RawServer::start(move |mut ws| {
        let codes = codes_tx.clone();
        async move {
            let mut frame = vec![0u8];
            frame.extend(
                Envelope::Msg {
                    name: "big".into(),
                    data: Some(Payload::encode(&vec![7u8; 5000]).unwrap()),
                }
                .encode(),
            );
            if ws.send(Message::binary(frame)).await.is_ok() {
                let _ = codes.send(next_close_code(&mut ws).await);
            }
        }
    })
    .await;
    let client = fast(server.url())
        .reconnect(false)
        .max_message_size(1000)
        .build()
        .unwrap();
    let code = within("the client's close frame", codes.recv())
        .await
        .unwrap();
    assert_eq!(code, Some(4004));
    let _ = client
        .wait_for(Status::Disconnected { reason: None }, PATIENCE)
        .await;
    match client.state() {
        Status::Disconnected {
            reason: Some(DisconnectReason::Closed { code, reason }),
        } => {
            assert_eq!(code.0, 4004);
            assert!(reason.contains("exceeds the 1000-byte limit"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    client.close().await;
}

/// A subscriber that does not keep up holds at most `stream_buffer_bytes` of events (one larger event still
/// goes through when nothing waits); the rest are dropped and reported as lag. Before, only the item count was
/// bounded (1024 events of up to 16 MiB each).
#[tokio::test]
async fn a_slow_subscriber_holds_a_bounded_number_of_bytes() {
    let server = RawServer::start(|mut ws| async move {
        for seq in 1..=5 {
            let evt = Envelope::Evt {
                topic: "t".into(),
                seq,
                data: Some(Payload::encode(&"x".repeat(400)).unwrap()),
            };
            if ws
                .send(Message::binary(complete_frame(&evt)))
                .await
                .is_err()
            {
                return;
            }
        }
        // Frames are handled in order: when this request reaches its handler, every event was delivered.
        let _ = ws.send(req(1, "done")).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let done = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&done);
    let client = fast(server.url())
        .stream_buffer_bytes(1000)
        .on_request("done", move |(): ()| {
            notify.notify_one();
            async { Ok::<_, sockeye::Error>(()) }
        })
        .build()
        .unwrap();
    let mut events = client.subscribe::<String>("t").unwrap();
    within("every event", done.notified()).await;
    match within("lag", events.next()).await.unwrap() {
        Err(sockeye::Error::Lagged { skipped }) => assert_eq!(skipped, 3),
        other => panic!("{other:?}"),
    }
    for seq in 1..=2 {
        let event = within("an event", events.next()).await.unwrap().unwrap();
        assert_eq!(event.into_event().map(|e| e.seq), Some(seq));
    }
    client.close().await;
}

/// A server's connection-level errors (`err` without an `id`) reach `events()` as notices, and a server that
/// floods them cannot grow a stream the application does not read past its byte budget: the rest are dropped
/// and counted.
#[tokio::test]
async fn a_flood_of_notices_is_bounded_in_an_unread_events_stream() {
    const NOTICES: u64 = 100;
    let server = RawServer::start(|mut ws| async move {
        for _ in 0..NOTICES {
            let notice = Envelope::Err {
                id: None,
                code: ErrorCode::Internal,
                message: "x".repeat(1000),
                data: None,
            };
            if ws
                .send(Message::binary(complete_frame(&notice)))
                .await
                .is_err()
            {
                return;
            }
        }
        // Frames are handled in order: once this message is seen, every notice was.
        let done = Envelope::Msg {
            name: "done".to_owned(),
            data: None,
        };
        let _ = ws.send(Message::binary(complete_frame(&done))).await;
        // Read on, so the client's close is answered.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let client = fast(server.url())
        .stream_buffer_bytes(1500)
        .build()
        .unwrap();
    let mut events = client.events();
    let mut incoming = client.incoming();
    let done = within("the last message", incoming.next()).await;
    assert_eq!(done.expect("stream open").expect("no lag").name, "done");

    // One notice of 1000 bytes fits the budget of 1500; the other 99 did not.
    assert!(matches!(
        within("the lag", events.next()).await,
        Some(Err(sockeye::Error::Lagged { skipped })) if skipped == NOTICES - 1
    ));
    match within("the notice", events.next()).await {
        Some(Ok(sockeye::ClientEvent::Notice(sockeye::Error::Server {
            code, message, ..
        }))) => {
            assert_eq!((code, message.len()), (ErrorCode::Internal, 1000));
        }
        other => panic!("{other:?}"),
    }
    assert!(events.next().now_or_never().is_none(), "nothing else held");
    client.close().await;
}
