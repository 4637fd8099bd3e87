//! sockeye-core compiled to wasm32-unknown-unknown and run in a real browser (headless Chromium via
//! `wasm-bindgen-test-runner`; `scripts/test.sh` runs it).
//!
//! Each test is also a plain `#[test]` on the host (`unsupported = test`), so `cargo test --workspace` runs the same
//! assertions natively and any difference between the two builds shows up as a browser-only failure.
//!
//! The reference server's address, when `scripts/test.sh` started one, is baked in at build time as
//! `option_env!("SOCKEYE_TEST_SERVER")` (`ws://127.0.0.1:PORT/ws`); the tests here don't need it yet.

use sockeye_core::codec::{Envelope, EnvelopeErrorKind, Payload, Refusal, TopicPosition};
use sockeye_core::error::{CloseCode, ErrorCode};
use sockeye_core::time::{Duration, Instant};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const KNOWN_ERROR_CODES: [(ErrorCode, &str); 10] = [
    (ErrorCode::InvalidArgument, "INVALID_ARGUMENT"),
    (ErrorCode::NotFound, "NOT_FOUND"),
    (ErrorCode::PermissionDenied, "PERMISSION_DENIED"),
    (ErrorCode::Unauthenticated, "UNAUTHENTICATED"),
    (ErrorCode::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (ErrorCode::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (ErrorCode::Unavailable, "UNAVAILABLE"),
    (ErrorCode::Internal, "INTERNAL"),
    (ErrorCode::Unimplemented, "UNIMPLEMENTED"),
    (ErrorCode::Cancelled, "CANCELLED"),
];

#[wasm_bindgen_test(unsupported = test)]
fn error_codes_round_trip_through_their_wire_spelling() {
    for (code, wire) in KNOWN_ERROR_CODES {
        assert_eq!(code.as_str(), wire);
        assert_eq!(code.to_string(), wire);
        assert_eq!(ErrorCode::parse(wire), code);
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn unknown_error_codes_are_kept_verbatim() {
    for wire in ["TEAPOT", "", "deadline_exceeded", "NOT_FOUND ", "ÜNICODE_✓"] {
        let code = ErrorCode::parse(wire);
        assert_eq!(code, ErrorCode::Other(wire.to_owned()));
        assert_eq!(code.as_str(), wire);
        assert_eq!(ErrorCode::parse(code.as_str()), code);
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn close_codes_round_trip_through_their_number() {
    let named = [
        (CloseCode::NORMAL, 1000),
        (CloseCode::GOING_AWAY, 1001),
        (CloseCode::PROTOCOL_ERROR, 1002),
        (CloseCode::ABNORMAL, 1006),
        (CloseCode::INVALID_PAYLOAD, 1007),
        (CloseCode::POLICY_VIOLATION, 1008),
        (CloseCode::MESSAGE_TOO_BIG, 1009),
        (CloseCode::INTERNAL_ERROR, 1011),
        (CloseCode::SERVICE_RESTART, 1012),
        (CloseCode::TRY_AGAIN_LATER, 1013),
        (CloseCode::KEEPALIVE_TIMEOUT, 4000),
        (CloseCode::AUTH_TIMEOUT, 4001),
        (CloseCode::HEARTBEAT_TIMEOUT, 4002),
        (CloseCode::AUTH_FAILED, 4003),
        (CloseCode::REFUSED, 4004),
    ];
    for (code, number) in named {
        assert_eq!(code.0, number);
        assert_eq!(CloseCode(number), code);
        assert_eq!(code.to_string(), number.to_string());
        assert_eq!(CloseCode(code.to_string().parse().unwrap()), code);
    }
    // Open set: any u16 survives, including the extremes.
    for number in [0, 1, 2999, 3000, 4999, u16::MAX] {
        let code = CloseCode(number);
        assert_eq!(CloseCode(code.to_string().parse().unwrap()), code);
    }
    assert!(CloseCode::NORMAL < CloseCode::KEEPALIVE_TIMEOUT);
}

#[wasm_bindgen_test(unsupported = test)]
fn instants_add_and_subtract_in_milliseconds() {
    let t = Instant::from_millis(1_000);
    assert_eq!(t.as_millis(), 1_000);
    assert_eq!(Instant::ZERO.as_millis(), 0);
    assert_eq!(Instant::default(), Instant::ZERO);

    let later = t + Duration::from_millis(250);
    assert_eq!(later, Instant::from_millis(1_250));
    assert_eq!(later - t, Duration::from_millis(250));
    assert_eq!(
        later.saturating_duration_since(t),
        Duration::from_millis(250)
    );
    assert!(t < later);

    // Sub-millisecond parts are dropped, not rounded.
    assert_eq!(
        t + Duration::from_micros(1_999),
        Instant::from_millis(1_001)
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn instant_arithmetic_saturates_instead_of_panicking() {
    // wasm32 has a 32-bit usize; none of this may overflow or trap there.
    let t = Instant::from_millis(10);
    assert_eq!(Instant::from_millis(3) - t, Duration::ZERO);
    assert_eq!(Instant::ZERO.saturating_duration_since(t), Duration::ZERO);
    assert_eq!(t + Duration::MAX, Instant::from_millis(u64::MAX));
    assert_eq!(
        Instant::from_millis(u64::MAX) + Duration::from_millis(1),
        Instant::from_millis(u64::MAX)
    );
    // Beyond 2^53: exact in Rust's u64 even though a JS number could not hold it.
    let big = Instant::from_millis((1 << 53) + 1);
    assert_eq!((big + Duration::from_millis(1)).as_millis(), (1 << 53) + 2);
    assert_eq!(
        Instant::from_millis(u64::MAX) - Instant::ZERO,
        Duration::from_millis(u64::MAX)
    );
}

/// A payload from raw CBOR (the browser build has no serde, so no `Payload::encode`).
fn cbor(bytes: &[u8]) -> Option<Payload> {
    Some(Payload::from_cbor(bytes.to_vec()).expect("well-formed CBOR"))
}

#[wasm_bindgen_test(unsupported = test)]
fn envelopes_round_trip_through_cbor() {
    let big_id = u64::MAX; // beyond 2^53: must survive exactly on wasm32 too
    let envelopes = [
        Envelope::Msg {
            name: "hello".into(),
            data: None,
        },
        Envelope::Msg {
            name: "ünïcødé ✓".into(),
            data: cbor(&[0xf6]), // null
        },
        Envelope::Req {
            id: 1,
            method: "echo".into(),
            data: cbor(&[0x83, 0x01, 0x02, 0x03]), // [1, 2, 3]
        },
        Envelope::Req {
            id: big_id,
            method: String::new(),
            data: cbor(&[
                0xa1, 0x61, 0x6b, 0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ]), // {"k": u64::MAX}
        },
        Envelope::Res { id: 2, data: None },
        Envelope::Res {
            id: 3,
            data: cbor(&[0x44, 0xde, 0xad, 0xbe, 0xef]), // h'deadbeef'
        },
        Envelope::Err {
            id: Some(4),
            code: ErrorCode::DeadlineExceeded,
            message: "too slow".into(),
            data: None,
        },
        Envelope::Err {
            id: None,
            code: ErrorCode::Other("TEAPOT".into()),
            message: String::new(),
            data: cbor(&[0xf5]), // true
        },
        Envelope::Sub {
            id: 5,
            topic: "news".into(),
            since: Some(TopicPosition {
                ep: "e1".into(),
                seq: 3,
            }),
        },
        Envelope::Unsub {
            id: 6,
            topic: "news".into(),
        },
        Envelope::Pub {
            id: Some(7),
            topic: "chat/room-1".into(),
            data: cbor(&[0x62, 0x68, 0x69]), // "hi"
        },
        Envelope::Evt {
            topic: "chat/room-1".into(),
            seq: big_id,
            data: cbor(&[0xfb, 0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]), // 1.5
        },
    ];
    for envelope in envelopes {
        let bytes = envelope.encode();
        assert_eq!(
            Envelope::decode(&bytes),
            Ok(envelope.clone()),
            "{bytes:02x?}"
        );
        let mut appended = vec![0x00];
        envelope.encode_to(&mut appended);
        assert_eq!(appended[1..], bytes[..]);
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn envelopes_decode_from_known_bytes() {
    // {"t": "msg", "m": "hi"}
    let bytes = [
        0xa2, 0x61, 0x74, 0x63, 0x6d, 0x73, 0x67, 0x61, 0x6d, 0x62, 0x68, 0x69,
    ];
    let expected = Envelope::Msg {
        name: "hi".into(),
        data: None,
    };
    assert_eq!(Envelope::decode(&bytes), Ok(expected.clone()));
    assert_eq!(expected.encode(), bytes);
}

#[wasm_bindgen_test(unsupported = test)]
fn invalid_envelopes_are_refused_without_panicking() {
    // Not a map: nothing to answer, so close with 1007.
    let error = Envelope::decode(&[0x01]).unwrap_err();
    assert_eq!(error.kind, EnvelopeErrorKind::NotAMap);
    assert_eq!(error.id, None);
    assert!(
        matches!(error.refusal(), Refusal::Close(code, _) if code == CloseCode::INVALID_PAYLOAD)
    );

    // {"t": "nope", "id": 7}: unknown type, answered with an err to id 7.
    let unknown = [
        0xa2, 0x61, 0x74, 0x64, 0x6e, 0x6f, 0x70, 0x65, 0x62, 0x69, 0x64, 0x07,
    ];
    let error = Envelope::decode(&unknown).unwrap_err();
    assert_eq!(error.kind, EnvelopeErrorKind::UnknownType("nope".into()));
    assert_eq!(error.id, Some(7));
    match error.refusal() {
        Refusal::Reply(Envelope::Err { id, code, .. }) => {
            assert_eq!(id, Some(7));
            assert_eq!(code, ErrorCode::InvalidArgument);
        }
        other => panic!("expected an err reply, got {other:?}"),
    }

    // Truncated and empty input.
    for bytes in [&[][..], &[0xa2, 0x61][..], &[0xbf][..], &[0xff; 16][..]] {
        assert!(Envelope::decode(bytes).is_err(), "{bytes:02x?}");
    }
}

/// A whole lifecycle in the browser build: start, `ready` racing the `open` event, a queued request flushed on
/// `ready` and answered, a server close, full-jitter backoff, reconnect.
#[wasm_bindgen_test(unsupported = test)]
fn lifecycle_sequence_runs_in_the_wasm_build() {
    use sockeye_core::{Config, Connection, Event, Input, Output, Status};

    fn drain(conn: &mut Connection) -> Vec<Output> {
        std::iter::from_fn(|| conn.poll_output()).collect()
    }

    let mut conn = Connection::new(Config {
        seed: 7,
        ..Config::default()
    })
    .expect("defaults are valid");
    let t0 = Instant::from_millis(1_000);
    let id = conn
        .request(t0, "echo", cbor(&[0x01]), None)
        .expect("queue has room");
    conn.handle_input(t0, Input::Start);
    let socket = match drain(&mut conn).as_slice() {
        [Output::Event(Event::StateChanged(_)), Output::OpenSocket { socket, attempt: 1 }] => {
            *socket
        }
        other => panic!("start: {other:?}"),
    };
    conn.handle_input(
        t0,
        Input::SocketText {
            socket,
            text: "ready",
        },
    );
    assert_eq!(
        conn.status(),
        &Status::Ready,
        "ready before open goes straight to ready"
    );
    let frames: Vec<Vec<u8>> = drain(&mut conn)
        .into_iter()
        .filter_map(|o| match o {
            Output::SendBinary(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(
        Envelope::decode(&frames[0][1..]).expect("valid").id(),
        Some(id.0)
    );

    let mut reply = vec![0u8];
    reply.extend(
        Envelope::Res {
            id: id.0,
            data: cbor(&[0x02]),
        }
        .encode(),
    );
    conn.handle_input(
        t0,
        Input::SocketBinary {
            socket,
            data: &reply,
        },
    );
    assert!(matches!(
        drain(&mut conn).as_slice(),
        [Output::Event(Event::Reply { result: Ok(Some(d)), .. })] if d.as_cbor() == [0x02]
    ));

    conn.handle_input(
        t0,
        Input::SocketClosed {
            socket,
            code: CloseCode::SERVICE_RESTART,
            reason: "restart",
        },
    );
    drain(&mut conn);
    let Status::Reconnecting {
        attempt,
        delay,
        next_attempt_at,
    } = conn.status().clone()
    else {
        panic!("expected reconnecting, got {:?}", conn.status())
    };
    assert_eq!(attempt, 2);
    assert!(
        delay < Duration::from_millis(2_000),
        "full jitter below base·2: {delay:?}"
    );
    let next_attempt_at = next_attempt_at.expect("online: the attempt has a deadline");
    assert_eq!(conn.poll_timeout(), Some(next_attempt_at));
    conn.handle_input(next_attempt_at, Input::Timeout);
    assert!(drain(&mut conn)
        .iter()
        .any(|o| matches!(o, Output::OpenSocket { attempt: 2, .. })));
}
