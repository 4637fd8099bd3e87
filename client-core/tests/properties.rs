//! Property tests over random input sequences with time jumps.
#![cfg(feature = "serde")] // the harness builds payloads with serde

mod support;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sockeye_core::codec::{Envelope, SubAck, TopicPosition};
use sockeye_core::{
    CloseCode, Duration, Event, Input, Output, QueueLimits, RequestId, SocketId, Status,
};
use support::{complete_frame, test_config, Sim};

#[derive(Clone, Debug)]
enum Step {
    Start,
    Stop,
    Open,
    Ready,
    /// Whatever it takes to be `ready` from here (a backoff's end, start, open, `ready`), so that topic
    /// traffic happens often.
    Connect,
    Close(u16),
    Error,
    /// Jump to the next deadline and fire it.
    FireTimeout,
    /// Advance the clock by this many ms and fire.
    Advance(u64),
    Send,
    Request(u64),
    /// An acknowledged publish with this deadline in ms: it ends like a request.
    PublishAcked(u64),
    /// Cancel the n-th issued request.
    Cancel(usize),
    /// The server replies to the n-th issued request (whether or not it is still pending).
    Reply(usize),
    /// The server sends a malformed `res` carrying the n-th issued request's id.
    BrokenReply(usize),
    /// The socket refuses a message over the size limit.
    TooBig,
    Subscribe(u8),
    /// The server acknowledges every `sub` sent so far with a §9 position `{ep, seq}` (ep from a small set).
    AckSubs(u8, u64, Option<bool>),
    /// The server sends an `evt` on topic `t{n}` with this `seq`.
    Evt(u8, u64),
    Wake,
    Network(bool),
    Garbage(Vec<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Start),
        1 => Just(Step::Stop),
        3 => Just(Step::Open),
        3 => Just(Step::Ready),
        4 => Just(Step::Connect),
        2 => prop::sample::select(vec![1000u16, 1001, 1006, 1008, 1011, 4002, 4003]).prop_map(Step::Close),
        1 => Just(Step::Error),
        4 => Just(Step::FireTimeout),
        2 => (0u64..40_000).prop_map(Step::Advance),
        4 => Just(Step::Send),
        3 => (1u64..20_000).prop_map(Step::Request),
        2 => (1u64..20_000).prop_map(Step::PublishAcked),
        1 => (0usize..20).prop_map(Step::Cancel),
        2 => (0usize..20).prop_map(Step::Reply),
        1 => (0usize..20).prop_map(Step::BrokenReply),
        1 => Just(Step::TooBig),
        1 => (0u8..3).prop_map(Step::Subscribe),
        3 => (0u8..2, 0u64..12, proptest::option::of(any::<bool>()))
            .prop_map(|(ep, seq, recovered)| Step::AckSubs(ep, seq, recovered)),
        8 => (0u8..3, 0u64..12).prop_map(|(topic, seq)| Step::Evt(topic, seq)),
        1 => Just(Step::Wake),
        1 => any::<bool>().prop_map(Step::Network),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Step::Garbage),
    ]
}

/// What the properties watch across a run.
#[derive(Default)]
struct Observer {
    /// Sockets opened and neither closed by the core nor reported closed.
    live: BTreeSet<SocketId>,
    issued: Vec<RequestId>,
    ended: BTreeMap<RequestId, usize>,
    sent_seq: u64,
    delivered_seq: Vec<u64>,
    last_attempt: u32,
    /// Ids of every `sub` sent.
    subs: Vec<u64>,
    /// Per topic, the `seq` the next event or gap must start at, once known: the delivered sequence has no
    /// hole and no repeat that was not reported.
    expected: BTreeMap<String, u64>,
}

impl Observer {
    fn see(&mut self, outs: &[Output]) -> Result<(), TestCaseError> {
        for out in outs {
            match out {
                Output::OpenSocket { socket, .. } => {
                    prop_assert!(
                        self.live.is_empty(),
                        "a second socket while {:?} live",
                        self.live
                    );
                    self.live.insert(*socket);
                }
                Output::CloseSocket { socket, .. } => {
                    prop_assert!(
                        self.live.remove(socket),
                        "closed a socket that was not live"
                    );
                }
                Output::SendBinary(frame) if frame.first() == Some(&0) => {
                    match Envelope::decode(&frame[1..]) {
                        Ok(Envelope::Msg { name, .. }) => self
                            .delivered_seq
                            .push(name.parse().expect("names are numbers")),
                        Ok(Envelope::Sub { id, .. }) => self.subs.push(id),
                        _ => {}
                    }
                }
                Output::Event(Event::Reply { id, .. } | Event::Published { id, .. }) => {
                    *self.ended.entry(*id).or_default() += 1
                }
                Output::Event(Event::TopicEvent {
                    topic,
                    seq,
                    ep: Some(_),
                    ..
                }) => {
                    if let Some(next) = self.expected.get(topic) {
                        prop_assert_eq!(seq, next, "event out of sequence on {}", topic);
                    }
                    self.expected.insert(topic.clone(), seq + 1);
                }
                Output::Event(Event::TopicGap { topic, from, to }) => {
                    prop_assert!(from <= to);
                    if let Some(next) = self.expected.get(topic) {
                        prop_assert_eq!(from, next, "gap out of sequence on {}", topic);
                    }
                    self.expected.insert(topic.clone(), to + 1);
                }
                Output::Event(Event::TopicReset { topic, .. }) => {
                    self.expected.remove(topic);
                }
                Output::Event(Event::StateChanged(t)) => {
                    if let Status::Connecting { attempt } = t.to {
                        let fresh_start = matches!(t.from, Status::Disconnected { .. });
                        if fresh_start {
                            prop_assert_eq!(attempt, 1);
                        } else {
                            prop_assert!(
                                attempt == self.last_attempt + 1 || attempt == 1,
                                "attempt {} after {}",
                                attempt,
                                self.last_attempt
                            );
                        }
                        self.last_attempt = attempt;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let limits = QueueLimits {
        max_messages: 5,
        max_bytes: 200,
    };
    let mut config = test_config();
    config.queue = limits;
    config.keepalive_interval = Duration::from_millis(3_000);
    config.keepalive_timeout = Duration::from_millis(1_000);
    config.reconnect.max_attempts = Some(6);
    let mut sim = Sim::new(config);
    // Subscribed from the start: every `ready` re-subscribes, so acks, events and reconnects interleave.
    for topic in ["t0", "t1"] {
        sim.conn.subscribe(sim.now, topic).expect("valid topic");
    }
    sim.drain();
    let mut obs = Observer::default();
    for step in steps {
        let socket = sim.socket;
        let outs = match step {
            Step::Start => sim.input(Input::Start),
            Step::Stop => {
                let outs = sim.input(Input::Stop);
                prop_assert_eq!(sim.conn.poll_timeout(), None, "stop leaves no timer armed");
                prop_assert_eq!(sim.conn.pending_requests(), 0);
                outs
            }
            Step::Open => sim.input(Input::SocketOpened { socket }),
            Step::Ready => sim.input(Input::SocketText {
                socket,
                text: "ready",
            }),
            Step::Close(code) => {
                obs.live.remove(&socket);
                sim.input(Input::SocketClosed {
                    socket,
                    code: CloseCode(code),
                    reason: "",
                })
            }
            Step::Error => {
                obs.live.remove(&socket);
                sim.input(Input::SocketError {
                    socket,
                    message: "",
                })
            }
            Step::Connect => {
                let mut outs = Vec::new();
                if matches!(sim.conn.status(), Status::Reconnecting { .. }) {
                    outs.extend(sim.fire_next_timeout().unwrap_or_default());
                }
                outs.extend(sim.input(Input::Start));
                let socket = sim.socket;
                outs.extend(sim.input(Input::SocketOpened { socket }));
                outs.extend(sim.input(Input::SocketText {
                    socket,
                    text: "ready",
                }));
                outs
            }
            Step::FireTimeout => sim.fire_next_timeout().unwrap_or_default(),
            Step::Advance(ms) => sim.advance(ms),
            Step::Send => {
                let name = obs.sent_seq.to_string();
                match sim.conn.send(sim.now, &name, None) {
                    Ok(()) => obs.sent_seq += 1,
                    Err(e) => prop_assert_eq!(e.code(), sockeye_core::ErrorCode::ResourceExhausted),
                }
                sim.drain()
            }
            Step::Request(ms) => {
                if let Ok(id) =
                    sim.conn
                        .request(sim.now, "r", None, Some(Duration::from_millis(ms)))
                {
                    obs.issued.push(id);
                }
                sim.drain()
            }
            Step::PublishAcked(ms) => {
                if let Ok(id) =
                    sim.conn
                        .publish_acked(sim.now, "t0", None, Some(Duration::from_millis(ms)))
                {
                    obs.issued.push(id);
                }
                sim.drain()
            }
            Step::AckSubs(ep, seq, recovered) => {
                let data = SubAck {
                    position: TopicPosition {
                        ep: format!("e{ep}"),
                        seq,
                    },
                    recovered,
                }
                .to_payload();
                let mut outs = Vec::new();
                for id in obs.subs.clone() {
                    outs.extend(sim.binary(&complete_frame(&Envelope::Res {
                        id,
                        data: Some(data.clone()),
                    })));
                }
                outs
            }
            Step::Evt(topic, seq) => sim.binary(&complete_frame(&Envelope::Evt {
                topic: format!("t{topic}"),
                seq,
                data: None,
            })),
            Step::Cancel(n) => {
                if let Some(id) = obs.issued.get(n) {
                    sim.conn.cancel(sim.now, *id);
                }
                sim.drain()
            }
            Step::Reply(n) => match obs.issued.get(n) {
                Some(id) => sim.binary(&complete_frame(&Envelope::Res {
                    id: id.0,
                    data: None,
                })),
                None => vec![],
            },
            Step::BrokenReply(n) => match obs.issued.get(n) {
                // `{"t": "res", "id": id, "d": <a reserved CBOR header>}`
                Some(id) => {
                    let mut frame = vec![
                        0, 0xa3, 0x61, b't', 0x63, b'r', b'e', b's', 0x62, b'i', b'd', 0x1b,
                    ];
                    frame.extend(id.0.to_be_bytes());
                    frame.extend([0x61, b'd', 0x1c]);
                    sim.binary(&frame)
                }
                None => vec![],
            },
            Step::TooBig => sim.input(Input::MessageTooBig {
                socket,
                size: 1 << 30,
            }),
            Step::Subscribe(n) => {
                let _ = sim.conn.subscribe(sim.now, &format!("t{n}"));
                sim.drain()
            }
            Step::Wake => sim.input(Input::Wake),
            Step::Network(online) => sim.input(Input::NetworkChanged { online }),
            Step::Garbage(bytes) => sim.binary(&bytes),
        };
        obs.see(&outs)?;
        // Live sockets exist only in states that hold one.
        if matches!(
            sim.conn.status(),
            Status::Disconnected { .. } | Status::Reconnecting { .. }
        ) {
            prop_assert!(
                obs.live.is_empty(),
                "{:?} with live sockets {:?}",
                sim.conn.status(),
                obs.live
            );
        }
        // What `reconnecting` shows is what the timer is armed for: with no request pending, its
        // `next_attempt_at` is exactly the earliest deadline, and waiting for the network arms none.
        if let Status::Reconnecting {
            next_attempt_at, ..
        } = sim.conn.status()
        {
            let next = sim.conn.poll_timeout();
            if sim.conn.pending_requests() == 0 {
                prop_assert_eq!(
                    next,
                    *next_attempt_at,
                    "reconnecting shows a deadline no timer holds"
                );
            } else if let Some(at) = next_attempt_at {
                prop_assert!(
                    next.is_some_and(|n| n <= *at),
                    "attempt at {:?}, timer {:?}",
                    at,
                    next
                );
            }
        }
        let (count, bytes) = sim.conn.queued();
        prop_assert!(count <= limits.max_messages && bytes <= limits.max_bytes);
        if let Some(at) = sim.conn.poll_timeout() {
            // Timeouts fire everything due, and nothing else moves the clock: no deadline is ever left behind.
            prop_assert!(
                at > sim.now,
                "deadline {:?} not after now {:?}",
                at,
                sim.now
            );
        }
        for (id, n) in &obs.ended {
            prop_assert_eq!(*n, 1, "request {} ended {} times", id, n);
        }
    }
    // Flush order equals send order: every delivered msg in the order it was sent, none twice.
    let mut expected = obs.delivered_seq.clone();
    expected.sort_unstable();
    expected.dedup();
    prop_assert_eq!(&obs.delivered_seq, &expected);
    // Every request ends: drive the clock past every deadline.
    let mut rest = sim.input(Input::Stop);
    while let Some(outs) = sim.fire_next_timeout() {
        rest.extend(outs);
    }
    obs.see(&rest)?;
    for id in &obs.issued {
        prop_assert_eq!(
            obs.ended.get(id).copied(),
            Some(1),
            "request {} ended {:?} times",
            id,
            obs.ended.get(id)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_input_sequences_keep_every_invariant(steps in prop::collection::vec(step(), 1..80)) {
        run(steps)?;
    }
}
