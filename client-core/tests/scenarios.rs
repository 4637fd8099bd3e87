//! Whole scenarios through the simulation harness: simulated time, a scripted server, no sockets.
#![cfg(feature = "serde")] // the harness builds payloads with serde

mod support;

use sockeye_core::codec::{Envelope, Fragmenter, Payload};
use sockeye_core::{
    CloseCode, DisconnectReason, Duration, ErrorCode, Event, Input, Instant, Output, QueueLimits,
    RequestId, SendError, Status, SubscriptionState,
};
use support::{complete_frame, describe_all, events, payload, sent_envelopes, test_config, Sim};

fn replies(outs: &[Output]) -> Vec<(RequestId, Result<Option<Payload>, ErrorCode>)> {
    events(outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::Reply { id, result } => Some((*id, result.clone().map_err(|e| e.code))),
            _ => None,
        })
        .collect()
}

#[test]
fn request_sent_when_ready_completes_with_the_servers_reply() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let id = sim
        .conn
        .request(sim.now, "echo", Some(payload(&"hi")), None)
        .unwrap();
    let sent = sent_envelopes(&sim.drain());
    assert_eq!(
        sent,
        [Envelope::Req {
            id: id.0,
            method: "echo".into(),
            data: Some(payload(&"hi"))
        }]
    );
    let outs = sim.server_sends(&Envelope::Res {
        id: id.0,
        data: Some(payload(&"hi")),
    });
    assert_eq!(replies(&outs), [(id, Ok(Some(payload(&"hi"))))]);
}

#[test]
fn server_err_reply_fails_the_request_with_its_code_message_and_details() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let id = sim.conn.request(sim.now, "fail", None, None).unwrap();
    sim.drain();
    let outs = sim.server_sends(&Envelope::Err {
        id: Some(id.0),
        code: ErrorCode::NotFound,
        message: "no such thing".into(),
        data: Some(payload(&7)),
    });
    match &events(&outs)[..] {
        [Event::Reply { result: Err(e), .. }] => {
            assert_eq!(
                (e.code.clone(), e.message.as_str()),
                (ErrorCode::NotFound, "no such thing")
            );
            assert_eq!(e.data, Some(payload(&7)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn request_times_out_with_deadline_exceeded_counted_from_issue_time() {
    let mut sim = Sim::new(test_config());
    // Issued while offline, 300 ms deadline: it expires in the queue and is never sent.
    let id = sim
        .conn
        .request(sim.now, "slow", None, Some(Duration::from_millis(300)))
        .unwrap();
    sim.input(Input::Start);
    sim.open();
    sim.advance(299);
    let outs = sim.advance(1);
    assert_eq!(replies(&outs), [(id, Err(ErrorCode::DeadlineExceeded))]);
    let outs = sim.text("ready");
    assert!(
        sent_envelopes(&outs).is_empty(),
        "an expired request is not sent: {:?}",
        describe_all(&outs)
    );
}

#[test]
fn late_reply_after_timeout_is_dropped_so_each_request_ends_once() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let id = sim
        .conn
        .request(sim.now, "slow", None, Some(Duration::from_millis(50)))
        .unwrap();
    sim.drain();
    assert_eq!(
        replies(&sim.advance(50)),
        [(id, Err(ErrorCode::DeadlineExceeded))]
    );
    assert!(sim
        .server_sends(&Envelope::Res {
            id: id.0,
            data: None
        })
        .is_empty());
}

#[test]
fn cancel_fails_the_request_with_cancelled_and_a_queued_one_is_never_sent() {
    let mut sim = Sim::new(test_config());
    let id = sim.conn.request(sim.now, "echo", None, None).unwrap();
    assert!(sim.conn.cancel(sim.now, id));
    assert_eq!(replies(&sim.drain()), [(id, Err(ErrorCode::Cancelled))]);
    assert!(!sim.conn.cancel(sim.now, id), "a request ends once");
    let outs = sim.connect();
    assert!(sent_envelopes(&outs).is_empty());
}

#[test]
fn in_flight_requests_fail_unavailable_on_drop_while_queued_ones_stay_queued() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let in_flight = sim.conn.request(sim.now, "a", None, None).unwrap();
    sim.drain();
    let outs = sim.closed(1006);
    assert_eq!(replies(&outs), [(in_flight, Err(ErrorCode::Unavailable))]);
    let queued = sim.conn.request(sim.now, "b", None, None).unwrap();
    sim.fire_next_timeout(); // backoff over: attempt 2
    sim.open();
    let outs = sim.text("ready");
    assert_eq!(
        sent_envelopes(&outs),
        [Envelope::Req {
            id: queued.0,
            method: "b".into(),
            data: None
        }]
    );
}

#[test]
fn on_ready_topics_are_resubscribed_then_the_queue_flushes_in_order() {
    let mut sim = Sim::new(test_config());
    sim.subscribe("room-b");
    sim.subscribe("room-a");
    for i in 0..3 {
        sim.conn.send(sim.now, &format!("m{i}"), None).unwrap();
    }
    sim.conn
        .publish(sim.now, "room-a", Some(payload(&1)))
        .unwrap();
    let outs = sim.connect();
    let kinds: Vec<String> = sent_envelopes(&outs)
        .into_iter()
        .map(|e| match e {
            Envelope::Sub { topic, .. } => format!("sub {topic}"),
            Envelope::Msg { name, .. } => format!("msg {name}"),
            Envelope::Pub { topic, .. } => format!("pub {topic}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "sub room-a",
            "sub room-b",
            "msg m0",
            "msg m1",
            "msg m2",
            "pub room-a"
        ]
    );
}

#[test]
fn subscriptions_survive_reconnects_and_events_route_by_topic() {
    let mut sim = Sim::new(test_config());
    sim.subscribe("news");
    sim.connect();
    sim.closed(1012);
    sim.fire_next_timeout();
    sim.open();
    let outs = sim.text("ready");
    assert!(matches!(&sent_envelopes(&outs)[..], [Envelope::Sub { topic, .. }] if topic == "news"));
    let outs = sim.server_sends(&Envelope::Evt {
        topic: "news".into(),
        seq: 4,
        data: None,
    });
    assert_eq!(describe_all(&outs), ["evt:news#4"]);
    let outs = sim.server_sends(&Envelope::Evt {
        topic: "other".into(),
        seq: 1,
        data: None,
    });
    assert!(
        outs.is_empty(),
        "events for topics not subscribed are not delivered"
    );
}

#[test]
fn refused_subscription_is_reported_and_forgotten() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.conn.subscribe(sim.now, "secret").unwrap();
    let Envelope::Sub { id, .. } = sent_envelopes(&sim.drain()).remove(0) else {
        panic!("sub expected")
    };
    let outs = sim.server_sends(&Envelope::Err {
        id: Some(id),
        code: ErrorCode::PermissionDenied,
        message: "no".into(),
        data: None,
    });
    assert_eq!(describe_all(&outs), ["subfail:secret:PERMISSION_DENIED"]);
    assert!(
        sim.conn.subscribe(sim.now, "secret").unwrap(),
        "it can be subscribed again"
    );
}

#[test]
fn invalid_topics_are_refused_with_invalid_argument() {
    let mut sim = Sim::new(test_config());
    for topic in ["", "$sys", &"x".repeat(257)] {
        let err = sim.conn.subscribe(sim.now, topic).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{topic:?}");
        assert_eq!(
            sim.conn.publish(sim.now, topic, None).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
    }
}

#[test]
fn full_offline_queue_refuses_with_resource_exhausted_and_loses_nothing_queued() {
    let mut config = test_config();
    config.queue = QueueLimits {
        max_messages: 2,
        max_bytes: 1 << 20,
    };
    let mut sim = Sim::new(config);
    sim.conn.send(sim.now, "a", None).unwrap();
    sim.conn.request(sim.now, "b", None, None).unwrap();
    let err = sim.conn.send(sim.now, "c", None).unwrap_err();
    assert!(matches!(err, SendError::QueueFull { .. }));
    assert_eq!(err.code(), ErrorCode::ResourceExhausted);
    assert_eq!(
        sim.conn
            .request(sim.now, "d", None, None)
            .unwrap_err()
            .code(),
        ErrorCode::ResourceExhausted
    );
    assert_eq!(sent_envelopes(&sim.connect()).len(), 2);
}

#[test]
fn offline_queue_is_bounded_by_bytes_too() {
    let mut config = test_config();
    config.queue = QueueLimits {
        max_messages: 100,
        max_bytes: 64,
    };
    let mut sim = Sim::new(config);
    sim.conn.send(sim.now, "small", None).unwrap();
    let big = payload(&serde_bytes_like(100));
    assert_eq!(
        sim.conn.send(sim.now, "big", Some(big)).unwrap_err().code(),
        ErrorCode::ResourceExhausted
    );
    assert!(sim.conn.queued().1 <= 64);
}

fn serde_bytes_like(n: usize) -> String {
    "x".repeat(n)
}

#[test]
fn keepalive_pings_every_interval_and_closes_4000_when_the_server_is_silent() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.advance(5_000); // stable period: attempts reset
    let outs = sim.advance(25_000);
    assert_eq!(describe_all(&outs), ["text:ping"]);
    let outs = sim.text("pong");
    assert!(outs.is_empty());
    let outs = sim.advance(30_000);
    assert_eq!(describe_all(&outs), ["text:ping"]);
    // Silence for the keepalive timeout: close 4000 and reconnect from attempt 1.
    let outs = sim.advance(10_000);
    assert_eq!(
        describe_all(&outs),
        [
            "close#1:4000",
            "disconnected:4000",
            "state:ready>reconnecting"
        ]
    );
    assert!(matches!(
        sim.conn.status(),
        Status::Reconnecting { attempt: 1, .. }
    ));
}

/// Jumps the clock `ms` forward in one step, as a machine waking from sleep (or a frozen tab resuming) sees it:
/// the timer armed for the earliest deadline fires only now.
fn jump(sim: &mut Sim, ms: u64) -> Vec<Output> {
    sim.advance(ms)
}

#[test]
fn a_probe_overdue_after_a_sleep_is_renewed_instead_of_ending_the_connection() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.advance(5_000);
    assert_eq!(describe_all(&sim.advance(25_000)), ["text:ping"]);
    // Suspended right after the ping; the server's answer waits, unread, until the machine wakes an hour later.
    let outs = jump(&mut sim, 3_600_000);
    assert_eq!(
        describe_all(&outs),
        ["text:ping"],
        "liveness unknown: probe at once"
    );
    assert_eq!(
        sim.conn.poll_timeout(),
        Some(sim.now + Duration::from_secs(10))
    );
    assert!(sim.text("pong").is_empty());
    assert_eq!(sim.conn.status(), &Status::Ready);
}

#[test]
fn after_a_time_jump_a_dead_connection_is_found_within_the_keepalive_timeout() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.advance(5_000);
    // Asleep for an hour with the next ping 25 s away: the probe goes out at the wake, not an interval later.
    let woke = sim.now + Duration::from_secs(3_600);
    sim.now = woke;
    let outs = sim.input(Input::Timeout);
    assert_eq!(describe_all(&outs), ["text:ping"]);
    let outs = sim.fire_next_timeout().expect("the probe's deadline");
    assert_eq!(
        describe_all(&outs),
        [
            "close#1:4000",
            "disconnected:4000",
            "state:ready>reconnecting"
        ]
    );
    assert_eq!(sim.now, woke + Duration::from_secs(10));
}

#[test]
fn any_input_after_a_time_jump_probes_before_it_acts() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.advance(5_000);
    sim.advance(25_000); // ping, pong deadline in 10 s
    sim.now = sim.now + Duration::from_secs(600);
    // A frame read first after the wake: the probe goes out before it, and the frame answers for the socket.
    let outs = sim.server_sends(&Envelope::Msg {
        name: "late".into(),
        data: None,
    });
    assert_eq!(describe_all(&outs), ["text:ping", "message:late"]);
    assert_eq!(sim.conn.status(), &Status::Ready);
}

#[test]
fn a_socket_reported_gone_after_a_time_jump_gets_no_probe() {
    // Found by the client_core fuzz target: the wake probe went out on a socket the shell had just reported
    // closed, before the core handled the report.
    for gone in ["error", "closed"] {
        let mut sim = Sim::new(test_config());
        sim.connect();
        sim.now = sim.now + Duration::from_secs(600);
        let socket = sim.socket;
        let outs = match gone {
            "error" => sim.input(Input::SocketError {
                socket,
                message: "reset",
            }),
            _ => sim.input(Input::SocketClosed {
                socket,
                code: CloseCode::ABNORMAL,
                reason: "",
            }),
        };
        let described = describe_all(&outs);
        assert!(
            !described.iter().any(|o| o == "text:ping"),
            "{gone}: {described:?}"
        );
        assert!(
            matches!(sim.conn.status(), Status::Reconnecting { .. }),
            "{gone}"
        );
    }
}

#[test]
fn where_timers_are_always_late_a_dead_connection_is_still_found() {
    // An intensively throttled tab: every timer fires a minute late. A probe sent on a jump is not renewed by
    // the next jump, so silence still ends the connection.
    let mut sim = Sim::new(test_config());
    sim.connect();
    let mut closed_at = None;
    for _ in 0..10 {
        let at = sim.conn.poll_timeout().expect("keepalive keeps a deadline");
        sim.now = at + Duration::from_secs(60);
        let outs = sim.input(Input::Timeout);
        if describe_all(&outs).contains(&"close#1:4000".to_string()) {
            closed_at = Some(sim.now);
            break;
        }
    }
    let closed_at = closed_at.expect("the silent connection was closed");
    assert!(
        closed_at <= Instant::from_millis(5_000 + 3 * 60_000 + 10_000),
        "{closed_at:?}"
    );
}

#[test]
fn a_time_jump_cuts_a_backoff_wait_short() {
    let mut config = test_config();
    config.reconnect.base_delay = Duration::from_secs(20);
    config.reconnect.max_delay = Duration::from_secs(20);
    config.reconnect.full_jitter = false;
    let mut sim = Sim::new(config);
    sim.connect();
    sim.closed(1011);
    assert!(matches!(sim.conn.status(), Status::Reconnecting { .. }));
    // A request's deadline (1 s) is the earliest; the tab was frozen past it by far, not past the backoff.
    sim.conn
        .request(sim.now, "x", None, Some(Duration::from_secs(1)))
        .expect("queued");
    sim.drain();
    let outs = sim.advance(10_000);
    assert!(
        describe_all(&outs).contains(&"open#2 attempt 2".to_string()),
        "{:?}",
        describe_all(&outs)
    );
}

#[test]
fn with_detection_off_an_overdue_probe_ends_the_connection() {
    let mut config = test_config();
    config.time_jump_threshold = Duration::ZERO;
    let mut sim = Sim::new(config);
    sim.connect();
    sim.advance(5_000);
    sim.advance(25_000);
    let outs = jump(&mut sim, 3_600_000);
    assert_eq!(
        describe_all(&outs),
        [
            "close#1:4000",
            "disconnected:4000",
            "state:ready>reconnecting"
        ]
    );
}

#[test]
fn a_refusal_quoting_long_non_ascii_text_still_fits_a_close_frame() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    // 32 emoji quoted after the prefix: 152 bytes, more than a close frame carries.
    let outs = sim.text(&"🎉".repeat(40));
    match &outs[0] {
        Output::CloseSocket { code, reason, .. } => {
            assert_eq!(code.0, 4004);
            assert!(reason.len() <= 123, "{} bytes", reason.len());
            assert!(reason.starts_with("unexpected text frame \"🎉"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn any_inbound_frame_proves_liveness() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.advance(30_000); // ping
    sim.advance(9_000);
    sim.server_sends(&Envelope::Msg {
        name: "x".into(),
        data: None,
    });
    let outs = sim.advance(1_000);
    assert!(!describe_all(&outs).contains(&"close#1:4000".to_string()));
    assert_eq!(sim.conn.status(), &Status::Ready);
}

#[test]
fn ready_may_arrive_before_the_open_event() {
    let mut sim = Sim::new(test_config());
    sim.input(Input::Start);
    let outs = sim.text("ready");
    assert_eq!(describe_all(&outs), ["state:connecting>ready"]);
    assert!(sim.open().is_empty(), "the late open event changes nothing");
}

#[test]
fn connect_timeout_counts_as_a_failed_attempt() {
    let mut sim = Sim::new(test_config());
    sim.input(Input::Start);
    sim.open();
    let outs = sim.advance(10_000);
    assert_eq!(
        describe_all(&outs),
        [
            "close#1:4000",
            "disconnected:4000",
            "state:connected>reconnecting"
        ]
    );
    assert!(matches!(
        sim.conn.status(),
        Status::Reconnecting { attempt: 2, .. }
    ));
}

#[test]
fn gives_up_after_max_attempts_with_the_last_close() {
    let mut sim = Sim::new(test_config()); // 3 attempts
    sim.input(Input::Start);
    sim.closed(1006);
    for attempt in 2..=3 {
        sim.fire_next_timeout();
        assert_eq!(sim.conn.status(), &Status::Connecting { attempt });
        sim.closed(1011);
    }
    match sim.conn.status() {
        Status::Disconnected {
            reason:
                Some(DisconnectReason::MaxAttemptsExceeded {
                    attempts: 3, code, ..
                }),
        } => {
            assert_eq!(code.0, 1011)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.conn.poll_timeout(), None, "nothing left armed");
}

#[test]
fn attempts_reset_only_after_a_stable_ready_period() {
    let mut sim = Sim::new(test_config());
    sim.input(Input::Start);
    sim.closed(1006);
    sim.fire_next_timeout();
    sim.open();
    sim.text("ready"); // ready on attempt 2 …
    sim.advance(100);
    sim.closed(1006); // … but dropped before the stable period: the count goes on
    assert!(matches!(
        sim.conn.status(),
        Status::Reconnecting { attempt: 3, .. }
    ));
    sim.fire_next_timeout();
    sim.open();
    sim.text("ready");
    sim.advance(5_000); // stable
    sim.closed(1001);
    match sim.conn.status() {
        Status::Reconnecting {
            attempt: 1, delay, ..
        } => assert!(*delay < Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn backoff_delays_stay_within_the_full_jitter_cap() {
    let mut config = test_config();
    config.reconnect.max_attempts = None;
    let mut sim = Sim::new(config);
    sim.input(Input::Start);
    for attempt in 2..12u32 {
        sim.closed(1006);
        let Status::Reconnecting {
            attempt: a, delay, ..
        } = sim.conn.status().clone()
        else {
            panic!()
        };
        assert_eq!(a, attempt);
        let cap = (100u64 << (attempt - 1)).min(1600);
        assert!(
            (delay.as_millis() as u64) < cap,
            "attempt {attempt}: {delay:?} >= {cap}"
        );
        sim.fire_next_timeout();
    }
}

#[test]
fn auth_failure_is_terminal_with_its_reason() {
    let mut sim = Sim::new(test_config());
    sim.input(Input::Start);
    sim.open();
    let socket = sim.socket;
    sim.input(Input::SocketClosed {
        socket,
        code: sockeye_core::CloseCode(4003),
        reason: "authentication failed",
    });
    assert_eq!(
        sim.conn.status(),
        &Status::Disconnected {
            reason: Some(DisconnectReason::AuthFailed {
                reason: "authentication failed".into()
            })
        }
    );
    assert_eq!(sim.conn.poll_timeout(), None);
}

#[test]
fn reconnect_disabled_ends_in_disconnected_closed() {
    let mut config = test_config();
    config.reconnect.enabled = false;
    let mut sim = Sim::new(config);
    sim.connect();
    sim.closed(1001);
    assert!(matches!(
        sim.conn.status(),
        Status::Disconnected {
            reason: Some(DisconnectReason::Closed {
                code: sockeye_core::CloseCode(1001),
                ..
            })
        }
    ));
}

#[test]
fn stop_closes_1000_cancels_everything_and_leaves_no_deadline() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let a = sim.conn.request(sim.now, "a", None, None).unwrap();
    sim.drain();
    sim.closed(1006);
    let b = sim.conn.request(sim.now, "b", None, None).unwrap();
    sim.conn.send(sim.now, "m", None).unwrap();
    let outs = sim.input(Input::Stop);
    assert_eq!(
        replies(&outs),
        [(b, Err(ErrorCode::Cancelled))],
        "a already failed UNAVAILABLE ({a})"
    );
    assert_eq!(sim.conn.queued(), (0, 0));
    assert_eq!(sim.conn.poll_timeout(), None);
    assert_eq!(
        sim.conn.status(),
        &Status::Disconnected {
            reason: Some(DisconnectReason::Stopped)
        }
    );
}

#[test]
fn offline_waits_without_burning_attempts_and_online_retries_at_once() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.advance(5_000); // stable: the next attempt is 1
    sim.input(Input::NetworkChanged { online: false });
    sim.closed(1006);
    assert!(matches!(
        sim.conn.status(),
        Status::Reconnecting {
            attempt: 1,
            next_attempt_at: None,
            ..
        }
    ));
    assert_eq!(
        sim.conn.poll_timeout(),
        None,
        "no backoff deadline while offline"
    );
    sim.advance(60_000);
    assert!(
        matches!(sim.conn.status(), Status::Reconnecting { attempt: 1, .. }),
        "no attempt while offline"
    );
    let outs = sim.input(Input::NetworkChanged { online: true });
    assert_eq!(
        describe_all(&outs),
        ["state:reconnecting>connecting", "open#2 attempt 1"]
    );
}

#[test]
fn going_offline_during_a_backoff_wait_shows_no_deadline_and_arms_none() {
    let mut config = test_config();
    config.reconnect.full_jitter = false; // a delay of at least the base: never zero
    let mut sim = Sim::new(config);
    sim.connect();
    sim.closed(1006);
    let Status::Reconnecting {
        next_attempt_at: Some(at),
        ..
    } = *sim.conn.status()
    else {
        panic!("waiting with a deadline: {:?}", sim.conn.status())
    };
    assert_eq!(
        sim.conn.poll_timeout(),
        Some(at),
        "the state's deadline is the timer's"
    );
    let outs = sim.input(Input::NetworkChanged { online: false });
    assert_eq!(describe_all(&outs), ["state:reconnecting>reconnecting"]);
    assert!(matches!(
        sim.conn.status(),
        Status::Reconnecting {
            next_attempt_at: None,
            ..
        }
    ));
    assert_eq!(sim.conn.poll_timeout(), None);
}

#[test]
fn server_requests_reach_the_application_and_responses_go_back() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let outs = sim.server_sends(&Envelope::Req {
        id: 9,
        method: "hello".into(),
        data: None,
    });
    assert_eq!(describe_all(&outs), ["request:hello"]);
    assert!(sim
        .conn
        .respond(sim.now, sim.socket, 9, Ok(Some(payload(&"hi")))));
    assert_eq!(
        sent_envelopes(&sim.drain()),
        [Envelope::Res {
            id: 9,
            data: Some(payload(&"hi"))
        }]
    );
}

#[test]
fn invalid_envelope_with_an_id_gets_an_err_reply_and_keeps_the_connection() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    // A `req` without `m`, but with an id: refused with err INVALID_ARGUMENT for that id.
    let mut bytes = Vec::new();
    ciborium_ll_map(&mut bytes);
    let mut frame = vec![0];
    frame.extend(bytes);
    let outs = sim.binary(&frame);
    match &sent_envelopes(&outs)[..] {
        [Envelope::Err {
            id: Some(5),
            code: ErrorCode::InvalidArgument,
            ..
        }] => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.conn.status(), &Status::Ready);
}

/// `{"t": "req", "id": 5}` written by hand.
fn ciborium_ll_map(out: &mut Vec<u8>) {
    out.extend([
        0xa2, 0x61, b't', 0x63, b'r', b'e', b'q', 0x62, b'i', b'd', 0x05,
    ]);
}

#[test]
fn invalid_bytes_without_an_id_close_4004_and_reconnect() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let outs = sim.binary(&[0, 0xff, 0x00]);
    assert_eq!(
        describe_all(&outs),
        [
            "close#1:4004",
            "disconnected:4004",
            "state:ready>reconnecting"
        ]
    );
}

#[test]
fn large_messages_are_fragmented_and_large_replies_reassembled() {
    let mut config = test_config();
    config.fragment_threshold = 1024;
    let mut sim = Sim::new(config);
    sim.connect();
    let big = payload(&"y".repeat(5000));
    let id = sim
        .conn
        .request(sim.now, "echo", Some(big.clone()), None)
        .unwrap();
    let outs = sim.drain();
    assert!(
        outs.len() >= 5
            && outs
                .iter()
                .all(|o| matches!(o, Output::SendBinary(f) if f[0] == 1))
    );
    // The server replies in fragments of its own.
    let mut server = Fragmenter::new(700);
    let mut frames = Vec::new();
    server
        .encode(
            &Envelope::Res {
                id: id.0,
                data: Some(big.clone()),
            },
            |f| frames.push(f),
        )
        .unwrap();
    let mut outs = Vec::new();
    for frame in &frames {
        outs.extend(sim.binary(frame));
    }
    assert_eq!(replies(&outs), [(id, Ok(Some(big)))]);
    assert!(complete_frame(&Envelope::Res { id: 1, data: None }).len() < 700);
}

#[test]
fn bye_is_reported_as_draining() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    assert_eq!(describe_all(&sim.text("bye")), ["draining"]);
    assert!(describe_all(&sim.closed(1001)) == ["disconnected:1001", "state:ready>reconnecting"]);
}

#[test]
fn a_response_never_reaches_a_newer_connection_and_is_sent_once() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let old = sim.socket;
    sim.server_sends(&Envelope::Req {
        id: 3,
        method: "slow".into(),
        data: None,
    });
    sim.server_sends(&Envelope::Req {
        id: 4,
        method: "fast".into(),
        data: None,
    });
    assert!(sim.conn.respond(sim.now, old, 4, Ok(None)));
    assert!(
        !sim.conn.respond(sim.now, old, 4, Ok(None)),
        "answered already"
    );
    assert_eq!(sent_envelopes(&sim.drain()).len(), 1);
    sim.closed(1012);
    sim.fire_next_timeout();
    sim.open();
    sim.text("ready");
    // The new connection's server reuses id 3 for another request.
    sim.server_sends(&Envelope::Req {
        id: 3,
        method: "other".into(),
        data: None,
    });
    // Request 3 of the old socket: the server already failed it; its answer must not reach the new request 3.
    assert!(!sim.conn.respond(sim.now, old, 3, Ok(None)));
    assert!(sent_envelopes(&sim.drain()).is_empty());
    assert!(sim.conn.respond(sim.now, sim.socket, 3, Ok(None)));
}

#[test]
fn an_acknowledged_subscription_is_reported_on_every_ready() {
    let mut sim = Sim::new(test_config());
    sim.subscribe("news");
    for _ in 0..2 {
        let outs = if sim.conn.status() == &Status::Ready {
            sim.closed(1012);
            sim.fire_next_timeout();
            sim.open();
            sim.text("ready")
        } else {
            sim.connect()
        };
        let Envelope::Sub { id, .. } = sent_envelopes(&outs).remove(0) else {
            panic!("sub first")
        };
        assert_eq!(
            describe_all(&sim.server_sends(&Envelope::Res { id, data: None })),
            ["subscribed:news"]
        );
    }
}

#[test]
fn server_errors_are_told_apart_from_local_failures_with_the_same_code() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let remote = sim.conn.request(sim.now, "a", None, None).unwrap();
    let local = sim
        .conn
        .request(sim.now, "b", None, Some(Duration::from_millis(10)))
        .unwrap();
    sim.drain();
    let mut outs = sim.server_sends(&Envelope::Err {
        id: Some(remote.0),
        code: ErrorCode::DeadlineExceeded,
        message: "upstream timed out".into(),
        data: None,
    });
    outs.extend(sim.advance(10));
    let origins: Vec<(RequestId, ErrorCode, bool)> = events(&outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::Reply { id, result: Err(e) } => Some((*id, e.code.clone(), e.from_server)),
            _ => None,
        })
        .collect();
    assert_eq!(
        origins,
        [
            (remote, ErrorCode::DeadlineExceeded, true),
            (local, ErrorCode::DeadlineExceeded, false)
        ]
    );
}

#[test]
fn a_zero_backoff_draw_still_passes_through_reconnecting() {
    let mut config = test_config();
    config.reconnect.base_delay = Duration::ZERO;
    config.reconnect.max_delay = Duration::ZERO;
    let mut sim = Sim::new(config);
    sim.connect();
    let outs = sim.closed(1001);
    assert_eq!(
        describe_all(&outs),
        [
            "disconnected:1001",
            "state:ready>reconnecting",
            "state:reconnecting>connecting",
            "open#2 attempt 2"
        ]
    );
}

#[test]
fn a_late_ack_of_an_earlier_subscription_does_not_count_for_a_new_one() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.conn.subscribe(sim.now, "news").unwrap();
    let Envelope::Sub { id: first, .. } = sent_envelopes(&sim.drain()).remove(0) else {
        panic!("sub")
    };
    assert!(sim.conn.unsubscribe(sim.now, "news"));
    sim.conn.subscribe(sim.now, "news").unwrap();
    let second = sent_envelopes(&sim.drain())
        .into_iter()
        .find_map(|e| match e {
            Envelope::Sub { id, .. } => Some(id),
            _ => None,
        })
        .expect("a second sub");
    // The first `sub`'s refusal arrives late: it must not remove the new subscription.
    let outs = sim.server_sends(&Envelope::Err {
        id: Some(first),
        code: ErrorCode::PermissionDenied,
        message: "late".into(),
        data: None,
    });
    assert!(outs.is_empty(), "{:?}", describe_all(&outs));
    let outs = sim.server_sends(&Envelope::Res {
        id: second,
        data: None,
    });
    assert_eq!(describe_all(&outs), ["subscribed:news"]);
    let outs = sim.server_sends(&Envelope::Evt {
        topic: "news".into(),
        seq: 1,
        data: None,
    });
    assert_eq!(describe_all(&outs), ["evt:news#1"]);
}

#[test]
fn a_message_needing_more_fragments_than_a_header_can_count_is_refused_queued_or_not() {
    let mut config = test_config();
    config.fragment_threshold = 1;
    let mut sim = Sim::new(config);
    let huge = payload(&"z".repeat(usize::from(u16::MAX) + 1));
    // Offline: refused before it enters the queue, so a flush can never fail.
    let err = sim
        .conn
        .send(sim.now, "big", Some(huge.clone()))
        .unwrap_err();
    assert!(matches!(err, SendError::TooLarge(_)), "{err:?}");
    assert_eq!(sim.conn.queued(), (0, 0));
    sim.connect();
    let err = sim
        .conn
        .request(sim.now, "big", Some(huge), None)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResourceExhausted);
    assert!(sim.drain().is_empty(), "nothing emitted");
    assert_eq!(sim.conn.pending_requests(), 0);
}

#[test]
fn a_malformed_reply_fails_its_request_at_once_with_invalid_argument() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let id = sim.conn.request(sim.now, "echo", None, None).unwrap();
    let other = sim.conn.request(sim.now, "echo", None, None).unwrap();
    sim.drain();
    // `{"t": "res", "id": <id>, "d": <a reserved CBOR header>}`: the id is readable, the envelope is not.
    let mut broken = vec![
        0, 0xa3, 0x61, b't', 0x63, b'r', b'e', b's', 0x62, b'i', b'd',
    ];
    broken.push(u8::try_from(id.0).expect("a small id"));
    broken.extend([0x61, b'd', 0x1c]);
    let outs = sim.binary(&broken);
    match &events(&outs)[..] {
        [Event::Reply {
            id: failed,
            result: Err(e),
        }] => {
            assert_eq!(
                (*failed, &e.code, e.from_server),
                (id, &ErrorCode::InvalidArgument, false)
            );
            assert!(e.message.contains("malformed"), "{}", e.message);
        }
        other => panic!("expected the request to fail at once: {other:?}"),
    }
    // The protocol's answer to an invalid envelope with an id still goes out; the connection stays.
    assert!(matches!(
        &sent_envelopes(&outs)[..],
        [Envelope::Err {
            code: ErrorCode::InvalidArgument,
            ..
        }]
    ));
    assert_eq!(sim.conn.status(), &Status::Ready);
    assert_eq!(
        sim.conn.pending_requests(),
        1,
        "only the answered request ended"
    );
    // A broken `req` that happens to carry the same id as our other request is not a reply to it.
    let mut req = vec![
        0, 0xa2, 0x61, b't', 0x63, b'r', b'e', b'q', 0x62, b'i', b'd',
    ];
    req.push(u8::try_from(other.0).expect("a small id"));
    assert!(replies(&sim.binary(&req)).is_empty());
    assert_eq!(sim.conn.pending_requests(), 1);
}

#[test]
fn too_many_unanswered_server_requests_close_4004() {
    let mut config = test_config();
    config.max_inbound_requests = 3;
    let mut sim = Sim::new(config);
    sim.connect();
    let req = |id| Envelope::Req {
        id,
        method: "slow".into(),
        data: None,
    };
    for id in 1..=3 {
        assert_eq!(describe_all(&sim.server_sends(&req(id))), ["request:slow"]);
    }
    // An answer makes room for one more.
    assert!(sim.conn.respond(sim.now, sim.socket, 2, Ok(None)));
    sim.drain();
    assert_eq!(describe_all(&sim.server_sends(&req(4))), ["request:slow"]);
    let outs = sim.server_sends(&req(5));
    assert_eq!(
        describe_all(&outs),
        [
            "close#1:4004",
            "disconnected:4004",
            "state:ready>reconnecting"
        ]
    );
    match &outs[0] {
        Output::CloseSocket { reason, .. } => {
            assert_eq!(reason, "more than 3 unanswered server requests")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_message_too_big_for_the_socket_closes_4004_naming_the_limit() {
    let mut config = test_config();
    config.reconnect.enabled = false;
    config.reassembly.max_message_bytes = 1000;
    let mut sim = Sim::new(config);
    sim.connect();
    let socket = sim.socket;
    let outs = sim.input(Input::MessageTooBig { socket, size: 5000 });
    assert_eq!(
        describe_all(&outs),
        [
            "close#1:4004",
            "disconnected:4004:final",
            "state:ready>disconnected"
        ]
    );
    match sim.conn.status() {
        Status::Disconnected {
            reason: Some(DisconnectReason::Closed { code, reason }),
        } => {
            assert_eq!(code.0, 4004);
            assert!(
                reason.contains("5000") && reason.contains("1000"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A stale socket's report changes nothing.
    assert!(sim
        .input(Input::MessageTooBig {
            socket: sockeye_core::SocketId(99),
            size: 5000
        })
        .is_empty());
}

/// The `SubscriptionChanged` events among outputs, as `topic:state`.
fn sub_states(outs: &[Output]) -> Vec<String> {
    events(outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::SubscriptionChanged { topic, state } => {
                Some(format!("{topic}:{}", state.name()))
            }
            _ => None,
        })
        .collect()
}

fn sub_ids(outs: &[Output]) -> Vec<u64> {
    sent_envelopes(outs)
        .into_iter()
        .filter_map(|e| match e {
            Envelope::Sub { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

#[test]
fn a_subscription_goes_pending_live_pending_on_loss_and_live_again() {
    let mut sim = Sim::new(test_config());
    assert_eq!(sub_states(&sim.subscribe("news")), ["news:pending"]);
    assert_eq!(
        sim.conn.subscription("news"),
        Some(SubscriptionState::Pending)
    );
    let outs = sim.connect();
    let [id] = sub_ids(&outs)[..] else {
        panic!("one sub")
    };
    let outs = sim.server_sends(&Envelope::Res { id, data: None });
    assert_eq!(sub_states(&outs), ["news:live"]);
    assert_eq!(sim.conn.subscription("news"), Some(SubscriptionState::Live));
    // The socket ends: live on it means nothing any more.
    let outs = sim.closed(1012);
    assert_eq!(sub_states(&outs), ["news:pending"]);
    assert_eq!(
        sim.conn.subscription("news"),
        Some(SubscriptionState::Pending)
    );
    sim.fire_next_timeout();
    sim.open();
    let outs = sim.text("ready");
    assert!(sub_states(&outs).is_empty(), "pending until acknowledged");
    let [id] = sub_ids(&outs)[..] else {
        panic!("one sub")
    };
    let outs = sim.server_sends(&Envelope::Res { id, data: None });
    assert_eq!(sub_states(&outs), ["news:live"]);
    // Stopping ends the socket too.
    assert_eq!(sub_states(&sim.input(Input::Stop)), ["news:pending"]);
}

#[test]
fn a_refused_subscription_fails_for_every_subscriber() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let outs = sim.subscribe("secret");
    sim.subscribe("secret");
    let [id] = sub_ids(&outs)[..] else {
        panic!("one sub")
    };
    let outs = sim.server_sends(&Envelope::Err {
        id: Some(id),
        code: ErrorCode::PermissionDenied,
        message: "no".into(),
        data: None,
    });
    assert_eq!(sub_states(&outs), ["secret:failed"]);
    assert_eq!(sim.conn.subscription("secret"), None);
    assert!(
        !sim.conn.unsubscribe(sim.now, "secret"),
        "nothing left to release"
    );
}

#[test]
fn subscriptions_are_counted_one_sub_for_many_and_unsub_with_the_last() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let first = sim.subscribe("news");
    assert_eq!(sub_ids(&first).len(), 1);
    let second = sim.subscribe("news");
    assert!(second.is_empty(), "{:?}", describe_all(&second));
    assert!(sim.conn.unsubscribe(sim.now, "news"));
    assert!(sim.drain().is_empty(), "a subscriber is left");
    assert_eq!(
        sim.conn.subscription("news"),
        Some(SubscriptionState::Pending)
    );
    assert!(sim.conn.unsubscribe(sim.now, "news"));
    assert!(matches!(
        &sent_envelopes(&sim.drain())[..],
        [Envelope::Unsub { topic, .. }] if topic == "news"
    ));
    assert!(!sim.conn.unsubscribe(sim.now, "news"));
    // Re-subscribed while offline: counted, and one `sub` on the next `ready`.
    sim.closed(1006);
    sim.subscribe("news");
    sim.subscribe("news");
    sim.fire_next_timeout();
    sim.open();
    assert_eq!(sub_ids(&sim.text("ready")).len(), 1);
}

#[test]
fn a_ready_after_an_earlier_ready_is_a_reconnect_until_the_next_start() {
    let mut sim = Sim::new(test_config());
    let outs = sim.connect();
    assert!(!describe_all(&outs).contains(&"reconnected".to_owned()));
    sim.closed(1012);
    sim.fire_next_timeout();
    sim.open();
    assert_eq!(
        describe_all(&sim.text("ready")),
        ["state:connected>ready", "reconnected"]
    );
    sim.input(Input::Stop);
    let outs = sim.connect();
    assert!(
        !describe_all(&outs).contains(&"reconnected".to_owned()),
        "a new start is not a reconnect"
    );
}

#[test]
fn disconnected_reports_code_reason_and_whether_it_reconnects_before_the_transition() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let outs = sim.input(Input::SocketClosed {
        socket: sim.socket,
        code: CloseCode(1012),
        reason: "restarting",
    });
    match &events(&outs)[..] {
        [Event::Disconnected {
            code,
            reason,
            will_reconnect: true,
        }, Event::StateChanged(_), ..] => {
            assert_eq!((code.0, reason.as_str()), (1012, "restarting"));
        }
        other => panic!("{other:?}"),
    }
    // A connect attempt that never opened ends without one.
    sim.fire_next_timeout();
    assert!(!describe_all(&sim.closed(1006))
        .iter()
        .any(|o| o.starts_with("disconnected")));
}

#[test]
fn an_unhandled_server_request_gets_the_one_unimplemented_answer() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    sim.server_sends(&Envelope::Req {
        id: 4,
        method: "nope".into(),
        data: None,
    });
    assert!(sim
        .conn
        .respond_unimplemented(sim.now, sim.socket, 4, "nope"));
    assert_eq!(
        sent_envelopes(&sim.drain()),
        [Envelope::Err {
            id: Some(4),
            code: ErrorCode::Unimplemented,
            message: r#"unknown method "nope""#.into(),
            data: None,
        }]
    );
    assert!(
        !sim.conn
            .respond_unimplemented(sim.now, sim.socket, 4, "nope"),
        "answered once"
    );
}
