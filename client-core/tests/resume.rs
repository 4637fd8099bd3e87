//! PROTOCOL §9 through the simulation harness: `since` on re-subscription, replay, duplicates, gaps, resets,
//! and acknowledged publish. Simulated time, a scripted server, no sockets.
#![cfg(feature = "serde")] // the harness builds payloads with serde

mod support;

use sockeye_core::codec::{Envelope, Payload, SubAck, TopicPosition};
use sockeye_core::{Duration, ErrorCode, Event, Output};
use support::{describe_all, events, payload, sent_envelopes, test_config, Sim};

fn position(ep: &str, seq: u64) -> TopicPosition {
    TopicPosition { ep: ep.into(), seq }
}

fn ack(ep: &str, seq: u64, recovered: Option<bool>) -> Option<Payload> {
    Some(
        SubAck {
            position: position(ep, seq),
            recovered,
        }
        .to_payload(),
    )
}

fn evt(topic: &str, seq: u64) -> Envelope {
    Envelope::Evt {
        topic: topic.into(),
        seq,
        data: Some(payload(&seq)),
    }
}

/// The `sub`s among outputs: `(id, topic, since)`.
fn subs(outs: &[Output]) -> Vec<(u64, String, Option<TopicPosition>)> {
    sent_envelopes(outs)
        .into_iter()
        .filter_map(|e| match e {
            Envelope::Sub { id, topic, since } => Some((id, topic, since)),
            _ => None,
        })
        .collect()
}

/// Drops the socket and brings a new one to `ready`; returns the outputs of `ready` (the re-subscriptions).
fn reconnect(sim: &mut Sim) -> Vec<Output> {
    sim.closed(1012);
    sim.fire_next_timeout().expect("a backoff is armed");
    sim.open();
    sim.text("ready")
}

/// A client subscribed to `news` at `{ep, seq}` and ready, with the initial outputs drained.
fn subscribed(ep: &str, seq: u64) -> Sim {
    let mut config = test_config();
    config.reconnect.max_attempts = None; // the scenarios reconnect more often than test_config allows
    let mut sim = Sim::new(config);
    sim.subscribe("news");
    let outs = sim.connect();
    let [(id, _, None)] = &subs(&outs)[..] else {
        panic!("one fresh sub without since: {:?}", describe_all(&outs))
    };
    let outs = sim.server_sends(&Envelope::Res {
        id: *id,
        data: ack(ep, seq, None),
    });
    assert_eq!(describe_all(&outs), ["subscribed:news"]);
    sim
}

/// Reconnects and answers the re-subscription with `reply`; returns the `since` it carried and the outputs.
fn resubscribe(sim: &mut Sim, reply: Option<Payload>) -> (Option<TopicPosition>, Vec<String>) {
    let outs = reconnect(sim);
    let [(id, _, since)] = &subs(&outs)[..] else {
        panic!("one sub: {:?}", describe_all(&outs))
    };
    let outs = sim.server_sends(&Envelope::Res {
        id: *id,
        data: reply,
    });
    (since.clone(), describe_all(&outs))
}

#[test]
fn a_resubscription_carries_since_and_a_recovered_replay_is_delivered_once_then_resumed() {
    let mut sim = subscribed("e1", 3);
    assert_eq!(
        describe_all(&sim.server_sends(&evt("news", 4))),
        ["evt:news#4"]
    );
    let (since, outs) = resubscribe(&mut sim, ack("e1", 7, Some(true)));
    assert_eq!(since, Some(position("e1", 4)));
    assert_eq!(outs, ["subscribed:news"], "the resume waits for the replay");
    let mut seen = Vec::new();
    // The replay 5..=7, with a duplicate of 5 and of the last live event, then live events.
    for seq in [4, 5, 5, 6, 7, 8] {
        seen.extend(describe_all(&sim.server_sends(&evt("news", seq))));
    }
    assert_eq!(
        seen,
        [
            "evt:news#5",
            "evt:news#6",
            "evt:news#7",
            "resumed:news:3",
            "evt:news#8"
        ]
    );
}

#[test]
fn events_carry_the_epoch_the_server_named() {
    let mut sim = subscribed("e1", 0);
    let outs = sim.server_sends(&evt("news", 1));
    assert!(matches!(
        &events(&outs)[..],
        [Event::TopicEvent { seq: 1, ep: Some(ep), data: Some(_), .. }] if &**ep == "e1"
    ));
}

#[test]
fn a_live_event_that_skips_numbers_is_preceded_by_a_gap() {
    let mut sim = subscribed("e1", 0);
    let mut seen = Vec::new();
    for seq in [1, 2, 5, 5, 6] {
        seen.extend(describe_all(&sim.server_sends(&evt("news", seq))));
    }
    assert_eq!(
        seen,
        [
            "evt:news#1",
            "evt:news#2",
            "gap:news:3..=4",
            "evt:news#5",
            "evt:news#6"
        ]
    );
}

#[test]
fn history_too_short_is_a_gap_of_exactly_the_lost_events() {
    let mut sim = subscribed("e1", 10);
    let (since, outs) = resubscribe(&mut sim, ack("e1", 25, Some(false)));
    assert_eq!(since, Some(position("e1", 10)));
    assert_eq!(outs, ["subscribed:news", "gap:news:11..=25"]);
    // Live events continue after the acknowledged seq, with no second gap.
    assert_eq!(
        describe_all(&sim.server_sends(&evt("news", 26))),
        ["evt:news#26"]
    );
}

#[test]
fn a_new_epoch_is_a_reset_and_the_sequence_restarts_in_it() {
    let mut sim = subscribed("e1", 40);
    let (_, outs) = resubscribe(&mut sim, ack("e2", 2, Some(false)));
    assert_eq!(outs, ["subscribed:news", "reset:news:e2"]);
    // seq 2 was the server's latest at the ack: delivered already as far as the new epoch goes.
    assert!(sim.server_sends(&evt("news", 2)).is_empty());
    let outs = sim.server_sends(&evt("news", 3));
    assert!(matches!(
        &events(&outs)[..],
        [Event::TopicEvent { seq: 3, ep: Some(ep), .. }] if &**ep == "e2"
    ));
    let (since, _) = resubscribe(&mut sim, ack("e2", 3, Some(true)));
    assert_eq!(since, Some(position("e2", 3)));
}

#[test]
fn since_is_carried_across_several_reconnects_even_when_no_ack_came() {
    let mut sim = subscribed("e1", 1);
    sim.server_sends(&evt("news", 2));
    // Two connections die before the server acknowledges anything: `since` stays the last delivered event.
    for _ in 0..2 {
        let outs = reconnect(&mut sim);
        assert_eq!(
            subs(&outs).into_iter().map(|s| s.2).collect::<Vec<_>>(),
            [Some(position("e1", 2))]
        );
    }
    let (since, outs) = resubscribe(&mut sim, ack("e1", 4, Some(true)));
    assert_eq!(since, Some(position("e1", 2)));
    assert_eq!(outs, ["subscribed:news"]);
    sim.server_sends(&evt("news", 3));
    // The connection drops mid-replay: the next `since` is what was delivered, and the replay resumes there.
    let (since, outs) = resubscribe(&mut sim, ack("e1", 4, Some(true)));
    assert_eq!(since, Some(position("e1", 3)));
    assert_eq!(outs, ["subscribed:news"]);
    assert_eq!(
        describe_all(&sim.server_sends(&evt("news", 4))),
        ["evt:news#4", "resumed:news:1"]
    );
    let (since, outs) = resubscribe(&mut sim, ack("e1", 4, Some(true)));
    assert_eq!(since, Some(position("e1", 4)));
    assert_eq!(outs, ["subscribed:news", "resumed:news:0"]);
}

#[test]
fn a_server_without_section_9_works_as_before_without_gaps_or_since() {
    let mut sim = Sim::new(test_config());
    sim.subscribe("news");
    let outs = sim.connect();
    let [(id, _, None)] = &subs(&outs)[..] else {
        panic!("sub")
    };
    assert_eq!(
        describe_all(&sim.server_sends(&Envelope::Res {
            id: *id,
            data: None
        })),
        ["subscribed:news"]
    );
    let mut seen = Vec::new();
    for seq in [1, 5, 5, 2] {
        seen.extend(describe_all(&sim.server_sends(&evt("news", seq))));
    }
    assert_eq!(
        seen,
        ["evt:news#1", "evt:news#5", "evt:news#5", "evt:news#2"]
    );
    let outs = sim.server_sends(&evt("news", 9));
    assert!(matches!(
        &events(&outs)[..],
        [Event::TopicEvent { ep: None, .. }]
    ));
    // A `d` that is not a §9 position is no position either.
    let (since, outs) = resubscribe(&mut sim, Some(payload(&"ok")));
    assert_eq!((since, outs), (None, vec!["subscribed:news".to_owned()]));
    let (since, _) = resubscribe(&mut sim, None);
    assert_eq!(since, None);
}

/// The id of the one acknowledged `pub` among outputs.
fn pub_id(outs: &[Output]) -> u64 {
    let ids: Vec<Option<u64>> = sent_envelopes(outs)
        .into_iter()
        .filter_map(|e| match e {
            Envelope::Pub { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    match ids[..] {
        [Some(id)] => id,
        _ => panic!("one acknowledged pub expected: {ids:?}"),
    }
}

#[test]
fn an_acknowledged_publish_resolves_to_where_the_event_was_stored() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let id = sim
        .conn
        .publish_acked(sim.now, "news", Some(payload(&1)), None)
        .unwrap();
    assert_eq!(pub_id(&sim.drain()), id.0);
    let outs = sim.server_sends(&Envelope::Res {
        id: id.0,
        data: Some(position("e1", 12).to_payload()),
    });
    assert_eq!(describe_all(&outs), [format!("published:{}:e1#12", id.0)]);
    // A plain publish still carries no id and gets no reply.
    sim.conn.publish(sim.now, "news", None).unwrap();
    assert!(matches!(
        &sent_envelopes(&sim.drain())[..],
        [Envelope::Pub { id: None, .. }]
    ));
}

#[test]
fn an_acknowledged_publish_fails_with_the_servers_error_or_a_bad_ack() {
    let mut sim = Sim::new(test_config());
    sim.connect();
    let refused = sim.conn.publish_acked(sim.now, "news", None, None).unwrap();
    let malformed = sim.conn.publish_acked(sim.now, "news", None, None).unwrap();
    sim.drain();
    let mut outs = sim.server_sends(&Envelope::Err {
        id: Some(refused.0),
        code: ErrorCode::PermissionDenied,
        message: "read-only topic".into(),
        data: None,
    });
    outs.extend(sim.server_sends(&Envelope::Res {
        id: malformed.0,
        data: None,
    }));
    let results: Vec<_> = events(&outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::Published { id, result: Err(e) } => Some((*id, e.code.clone(), e.from_server)),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        [
            (refused, ErrorCode::PermissionDenied, true),
            (malformed, ErrorCode::InvalidArgument, false)
        ]
    );
}

#[test]
fn an_acknowledged_publish_times_out_queued_or_in_flight_and_fails_unavailable_on_a_drop() {
    let mut sim = Sim::new(test_config());
    // Offline: queued, with its deadline counted from now.
    let queued = sim
        .conn
        .publish_acked(sim.now, "news", None, Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(sim.conn.queued().0, 1);
    let outs = sim.advance(300);
    assert_eq!(
        describe_all(&outs),
        [format!("published:{}:DEADLINE_EXCEEDED", queued.0)]
    );
    assert_eq!(
        sim.conn.queued().0,
        0,
        "an expired publish leaves the queue"
    );
    sim.connect();
    let in_flight = sim
        .conn
        .publish_acked(sim.now, "news", None, Some(Duration::from_millis(50)))
        .unwrap();
    sim.drain();
    assert_eq!(
        describe_all(&sim.advance(50)),
        [format!("published:{}:DEADLINE_EXCEEDED", in_flight.0)]
    );
    // A late acknowledgement is dropped: each publish ends once.
    assert!(sim
        .server_sends(&Envelope::Res {
            id: in_flight.0,
            data: Some(position("e", 1).to_payload()),
        })
        .is_empty());
    let cut_off = sim.conn.publish_acked(sim.now, "news", None, None).unwrap();
    sim.drain();
    let outs = sim.closed(1006);
    assert!(describe_all(&outs).contains(&format!("published:{}:UNAVAILABLE", cut_off.0)));
}
