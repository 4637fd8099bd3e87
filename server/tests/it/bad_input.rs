//! The bad-input table: each case answered as PROTOCOL.md says, the server never panics, and a bystander
//! connection is unaffected.

use std::time::Duration;

use ciborium::Value;
use futures_util::SinkExt;
use sockeye_server::{Limits, Server, ServerHandle};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

const MAX_MESSAGE: usize = 64 * 1024;

/// What the server must do.
#[derive(Debug)]
enum Expect {
    /// Close with this code.
    Close(u16),
    /// Reply `err INVALID_ARGUMENT` with this `id` (`None`: a notice without `id`) and keep the connection.
    Err(Option<u64>),
}

struct Case {
    name: &'static str,
    frames: Vec<Message>,
    expect: Expect,
}

fn bin(bytes: Vec<u8>) -> Message {
    Message::binary(bytes)
}

/// A COMPLETE frame holding raw CBOR bytes.
fn raw(cbor: &[u8]) -> Message {
    let mut frame = vec![0x00];
    frame.extend_from_slice(cbor);
    bin(frame)
}

/// `depth` nested one-element arrays around 0.
fn nested(depth: usize) -> Vec<u8> {
    let mut out = vec![0x81; depth];
    out.push(0x00);
    out
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let envelope = |pairs: &[(&str, Value)]| bin(complete(&map(pairs)));
    let mut deep_req = cbor(&map(&[
        ("t", text("req")),
        ("id", uint(9)),
        ("m", text("echo")),
    ]));
    // Re-open the map with one more entry: `d` = 10 000 nested arrays.
    deep_req[0] += 1;
    deep_req.extend(cbor(&text("d")));
    deep_req.extend(nested(10_000));
    let mut deep_msg = cbor(&map(&[("t", text("msg")), ("m", text("x"))]));
    deep_msg[0] += 1;
    deep_msg.extend(cbor(&text("d")));
    deep_msg.extend(nested(50_000));
    let big = vec![0u8; 40 * 1024];

    vec![
        Case {
            name: "invalid CBOR",
            frames: vec![raw(&[0x1c])],
            expect: Close(1007),
        },
        Case {
            name: "truncated CBOR",
            frames: vec![raw(&[0xa2, 0x61, b't'])],
            expect: Close(1007),
        },
        Case {
            name: "trailing bytes after the map",
            frames: vec![raw(&[0xa0, 0x00])],
            expect: Close(1007),
        },
        Case {
            name: "CBOR that is not a map (integer)",
            frames: vec![raw(&cbor(&uint(1)))],
            expect: Close(1007),
        },
        Case {
            name: "CBOR that is not a map (array)",
            frames: vec![raw(&cbor(&Value::Array(vec![text("req")])))],
            expect: Close(1007),
        },
        Case {
            name: "non-text map key",
            frames: vec![raw(&cbor(&Value::Map(vec![(uint(1), uint(2))])))],
            expect: Close(1007),
        },
        Case {
            name: "missing t, id present",
            frames: vec![envelope(&[("id", uint(3)), ("m", text("echo"))])],
            expect: Err(Some(3)),
        },
        Case {
            name: "req without id",
            frames: vec![envelope(&[("t", text("req")), ("m", text("echo"))])],
            expect: Close(1007),
        },
        Case {
            name: "req without m",
            frames: vec![envelope(&[("t", text("req")), ("id", uint(4))])],
            expect: Err(Some(4)),
        },
        Case {
            name: "m of the wrong type",
            frames: vec![envelope(&[
                ("t", text("req")),
                ("id", uint(5)),
                ("m", uint(5)),
            ])],
            expect: Err(Some(5)),
        },
        Case {
            name: "id of the wrong type",
            frames: vec![envelope(&[
                ("t", text("req")),
                ("id", text("five")),
                ("m", text("echo")),
            ])],
            expect: Close(1007),
        },
        Case {
            name: "sub with a topic of the wrong type",
            frames: vec![envelope(&[
                ("t", text("sub")),
                ("id", uint(6)),
                ("topic", uint(1)),
            ])],
            expect: Err(Some(6)),
        },
        Case {
            name: "msg without m",
            frames: vec![envelope(&[("t", text("msg"))])],
            expect: Close(1007),
        },
        Case {
            name: "unknown envelope type with id",
            frames: vec![envelope(&[("t", text("zap")), ("id", uint(7))])],
            expect: Err(Some(7)),
        },
        Case {
            name: "unknown envelope type without id",
            frames: vec![envelope(&[("t", text("zap"))])],
            expect: Err(None),
        },
        Case {
            name: "evt from a client",
            frames: vec![envelope(&[
                ("t", text("evt")),
                ("topic", text("a")),
                ("seq", uint(1)),
            ])],
            expect: Err(None),
        },
        Case {
            name: "deeply nested d with id",
            frames: vec![raw(&deep_req)],
            expect: Err(Some(9)),
        },
        Case {
            name: "deeply nested d without id",
            frames: vec![raw(&deep_msg)],
            expect: Close(1007),
        },
        Case {
            name: "unknown frame kind",
            frames: vec![bin(vec![0x07, 0xa0])],
            expect: Close(1002),
        },
        Case {
            name: "empty frame",
            frames: vec![bin(vec![])],
            expect: Close(1002),
        },
        Case {
            name: "fragment header too short",
            frames: vec![bin(vec![0x01, 0, 0, 0, 1, 0])],
            expect: Close(1002),
        },
        Case {
            name: "fragment count < 2",
            frames: vec![bin(fragment(1, 0, 1, b"x"))],
            expect: Close(1002),
        },
        Case {
            name: "fragment index >= count",
            frames: vec![bin(fragment(1, 2, 2, b"x"))],
            expect: Close(1002),
        },
        Case {
            name: "fragment set not starting at 0",
            frames: vec![bin(fragment(1, 1, 3, b"x"))],
            expect: Close(1002),
        },
        Case {
            name: "duplicate fragment index",
            frames: vec![bin(fragment(1, 0, 3, b"x")), bin(fragment(1, 0, 3, b"x"))],
            expect: Close(1002),
        },
        Case {
            name: "out-of-order fragment index",
            frames: vec![bin(fragment(1, 0, 3, b"x")), bin(fragment(1, 2, 3, b"x"))],
            expect: Close(1002),
        },
        Case {
            name: "fragment count changes within a msg_id",
            frames: vec![bin(fragment(1, 0, 3, b"x")), bin(fragment(1, 1, 4, b"x"))],
            expect: Close(1002),
        },
        Case {
            name: "reassembled message over the size limit",
            frames: vec![bin(fragment(1, 0, 3, &big)), bin(fragment(1, 1, 3, &big))],
            expect: Close(1009),
        },
        Case {
            name: "one frame over the size limit",
            frames: vec![bin(vec![0u8; MAX_MESSAGE + 100])],
            expect: Close(1009),
        },
        Case {
            name: "too many partial messages",
            frames: (0..9).map(|id| bin(fragment(id, 0, 2, b"x"))).collect(),
            expect: Close(1009),
        },
        Case {
            name: "text frame other than ping",
            frames: vec![Message::text("hello")],
            expect: Close(1002),
        },
        Case {
            name: "server-side control word from a client",
            frames: vec![Message::text("ready")],
            expect: Close(1002),
        },
    ]
}

async fn bad_input_server() -> ServerHandle {
    let mut limits = Limits::default();
    limits.reassembly.max_message_bytes = MAX_MESSAGE;
    limits.reassembly.completion_timeout = Duration::from_millis(300);
    start(Server::builder().limits(limits)).await
}

#[tokio::test]
async fn every_bad_input_is_answered_as_the_protocol_says_and_bystanders_are_unaffected() {
    let server = bad_input_server().await;
    let mut bystander = connect(&server).await;
    let mut errors_before = server.stats().protocol_errors;
    for (n, case) in cases().into_iter().enumerate() {
        let mut ws = connect(&server).await;
        for frame in case.frames {
            // The server may close before every frame of a case is sent; later sends may fail.
            let _ = ws.send(frame).await;
        }
        match case.expect {
            Expect::Close(code) => {
                let (ending, _) = read_until_close(&mut ws).await;
                match ending {
                    Ending::Close(got, reason) => {
                        assert_eq!(got, code, "{}: reason {reason:?}", case.name)
                    }
                    Ending::NoCloseFrame => panic!("{}: no close frame", case.name),
                }
            }
            Expect::Err(id) => {
                let reply = recv(&mut ws).await;
                expect_err(&reply, id, "INVALID_ARGUMENT");
                assert_alive(&mut ws, 1000 + n as u64).await;
            }
        }
        let errors = server.stats().protocol_errors;
        assert!(
            errors > errors_before,
            "{}: not counted as a protocol error",
            case.name
        );
        errors_before = errors;
        assert_alive(&mut bystander, n as u64).await;
    }
}

#[tokio::test]
async fn a_fragment_set_never_completed_is_closed_after_the_time_limit() {
    let server = bad_input_server().await;
    let mut bystander = connect(&server).await;
    let mut ws = connect(&server).await;
    send_binary(&mut ws, fragment(5, 0, 2, b"half")).await;
    let started = tokio::time::Instant::now();
    expect_close(&mut ws, 1002).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert_alive(&mut bystander, 1).await;
}

#[tokio::test]
async fn a_completed_fragment_set_within_the_limits_is_accepted() {
    let server = bad_input_server().await;
    let mut ws = connect(&server).await;
    // Two messages interleaved (allowed: up to 8 partial at once), completed in order per msg_id.
    let a = fragments(1, &req(1, "echo", Some(text("a"))), 4);
    let b = fragments(2, &req(2, "echo", Some(text("b"))), 4);
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    loop {
        let (x, y) = (a.next(), b.next());
        if x.is_none() && y.is_none() {
            break;
        }
        for frame in [x, y].into_iter().flatten() {
            send_binary(&mut ws, frame).await;
        }
    }
    let mut ids = vec![
        get_uint(&recv(&mut ws).await, "id"),
        get_uint(&recv(&mut ws).await, "id"),
    ];
    ids.sort_unstable();
    assert_eq!(ids, [Some(1), Some(2)]);
}
