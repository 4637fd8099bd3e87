//! Every lifecycle state × every input, with the exact next state and effects.
//!
//! Adding a state or an input without extending this table fails: `state_kind` and `row_of` match without
//! a wildcard (a new variant does not compile), and `table_covers_every_state_and_input` checks that every pair
//! has exactly one row.
#![cfg(feature = "serde")] // the harness builds payloads with serde

mod support;

use std::collections::BTreeSet;

use sockeye_core::codec::Envelope;
use sockeye_core::{CloseCode, Input, SocketId, Status};
use support::{complete_frame, describe_all, test_config, Sim};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    /// Never started.
    Fresh,
    Connecting,
    Connected,
    Ready,
    Reconnecting,
    /// Ended terminally (auth failed).
    Ended,
}

const STATES: [State; 6] = [
    State::Fresh,
    State::Connecting,
    State::Connected,
    State::Ready,
    State::Reconnecting,
    State::Ended,
];

/// Which table state a status is; exhaustive over [`Status`].
fn state_kind(status: &Status) -> &'static str {
    match status {
        Status::Disconnected { .. } => "disconnected",
        Status::Connecting { .. } => "connecting",
        Status::Connected { .. } => "connected",
        Status::Ready => "ready",
        Status::Reconnecting { .. } => "reconnecting",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum In {
    Start,
    Stop,
    Opened,
    TextReady,
    TextPong,
    TextBye,
    TextOther,
    BinaryMsg,
    BinaryBadKind,
    /// The socket refused a message over the size limit.
    TooBig,
    Closed1000,
    Closed1001,
    Closed1008,
    Closed4003,
    Error,
    /// Fire the earliest deadline (or advance 1 s when none is armed).
    Timeout,
    Wake,
    Offline,
    Online,
}

const INPUTS: [In; 19] = [
    In::Start,
    In::Stop,
    In::Opened,
    In::TextReady,
    In::TextPong,
    In::TextBye,
    In::TextOther,
    In::BinaryMsg,
    In::BinaryBadKind,
    In::TooBig,
    In::Closed1000,
    In::Closed1001,
    In::Closed1008,
    In::Closed4003,
    In::Error,
    In::Timeout,
    In::Wake,
    In::Offline,
    In::Online,
];

fn setup(state: State) -> Sim {
    let mut sim = Sim::new(test_config());
    match state {
        State::Fresh => {}
        State::Connecting => {
            sim.input(Input::Start);
        }
        State::Connected => {
            sim.input(Input::Start);
            sim.open();
        }
        State::Ready => {
            sim.connect();
        }
        State::Reconnecting => {
            sim.input(Input::Start);
            sim.open();
            sim.closed(1006);
        }
        State::Ended => {
            sim.input(Input::Start);
            sim.closed(4003);
        }
    }
    sim
}

fn apply(sim: &mut Sim, row: In) -> Vec<sockeye_core::Output> {
    let socket = sim.socket;
    let msg = complete_frame(&Envelope::Msg {
        name: "hello".into(),
        data: None,
    });
    let closed = |code| Input::SocketClosed {
        socket,
        code: CloseCode(code),
        reason: "bye",
    };
    let input = match row {
        In::Start => Input::Start,
        In::Stop => Input::Stop,
        In::Opened => Input::SocketOpened { socket },
        In::TextReady => Input::SocketText {
            socket,
            text: "ready",
        },
        In::TextPong => Input::SocketText {
            socket,
            text: "pong",
        },
        In::TextBye => Input::SocketText {
            socket,
            text: "bye",
        },
        In::TextOther => Input::SocketText {
            socket,
            text: "hello",
        },
        In::BinaryMsg => Input::SocketBinary { socket, data: &msg },
        In::BinaryBadKind => Input::SocketBinary {
            socket,
            data: &[7, 1, 2],
        },
        In::TooBig => Input::MessageTooBig {
            socket,
            size: 1 << 30,
        },
        In::Closed1000 => closed(1000),
        In::Closed1001 => closed(1001),
        In::Closed1008 => closed(1008),
        In::Closed4003 => closed(4003),
        In::Error => Input::SocketError {
            socket,
            message: "connection refused",
        },
        In::Timeout => {
            sim.now = sim
                .conn
                .poll_timeout()
                .unwrap_or(sim.now + sockeye_core::Duration::from_secs(1));
            Input::Timeout
        }
        In::Wake => Input::Wake,
        In::Offline => Input::NetworkChanged { online: false },
        In::Online => Input::NetworkChanged { online: true },
    };
    assert_eq!(row_of(&input, &msg), row);
    sim.input(input)
}

/// Which table input an [`Input`] is. Exhaustive over [`Input`]: a new input variant does not compile until it
/// is mapped here and given rows.
fn row_of(input: &Input<'_>, msg: &[u8]) -> In {
    match input {
        Input::Start => In::Start,
        Input::Stop => In::Stop,
        Input::SocketOpened { .. } => In::Opened,
        Input::SocketText { text, .. } => match *text {
            "ready" => In::TextReady,
            "pong" => In::TextPong,
            "bye" => In::TextBye,
            _ => In::TextOther,
        },
        Input::SocketBinary { data, .. } => {
            if *data == msg {
                In::BinaryMsg
            } else {
                In::BinaryBadKind
            }
        }
        Input::SocketClosed { code, .. } => match code.0 {
            1000 => In::Closed1000,
            1001 => In::Closed1001,
            1008 => In::Closed1008,
            _ => In::Closed4003,
        },
        Input::MessageTooBig { .. } => In::TooBig,
        Input::SocketError { .. } => In::Error,
        Input::Timeout => In::Timeout,
        Input::Wake => In::Wake,
        Input::NetworkChanged { online } => {
            if *online {
                In::Online
            } else {
                In::Offline
            }
        }
    }
}

type Effects = &'static [&'static str];
type Row = (State, In, &'static str, Effects);

/// Effects that depend only on the state, for inputs about a socket that is not current (or about none).
macro_rules! ignored {
    ($state:expr, $name:expr) => {
        [
            ($state, In::Opened, $name, &[][..]),
            ($state, In::TextReady, $name, &[]),
            ($state, In::TextPong, $name, &[]),
            ($state, In::TextBye, $name, &[]),
            ($state, In::TextOther, $name, &[]),
            ($state, In::BinaryMsg, $name, &[]),
            ($state, In::BinaryBadKind, $name, &[]),
            ($state, In::TooBig, $name, &[]),
            ($state, In::Closed1000, $name, &[]),
            ($state, In::Closed1001, $name, &[]),
            ($state, In::Closed1008, $name, &[]),
            ($state, In::Closed4003, $name, &[]),
            ($state, In::Error, $name, &[]),
        ]
    };
}

fn table() -> Vec<Row> {
    use State::*;
    let mut rows: Vec<Row> = Vec::new();
    // Disconnected, never started: only Start and Stop do anything.
    rows.extend(ignored!(Fresh, "disconnected"));
    rows.extend([
        (
            Fresh,
            In::Start,
            "connecting",
            &["state:disconnected>connecting", "open#1 attempt 1"][..],
        ),
        (
            Fresh,
            In::Stop,
            "disconnected",
            &["state:disconnected>disconnected"],
        ),
        (Fresh, In::Timeout, "disconnected", &[]),
        (Fresh, In::Wake, "disconnected", &[]),
        (Fresh, In::Offline, "disconnected", &[]),
        (Fresh, In::Online, "disconnected", &[]),
    ]);
    // Disconnected after a terminal close: Start begins again with a new socket.
    rows.extend(ignored!(Ended, "disconnected"));
    rows.extend([
        (
            Ended,
            In::Start,
            "connecting",
            &["state:disconnected>connecting", "open#2 attempt 1"][..],
        ),
        (
            Ended,
            In::Stop,
            "disconnected",
            &["state:disconnected>disconnected"],
        ),
        (Ended, In::Timeout, "disconnected", &[]),
        (Ended, In::Wake, "disconnected", &[]),
        (Ended, In::Offline, "disconnected", &[]),
        (Ended, In::Online, "disconnected", &[]),
    ]);
    // Connecting and connected share most rows: failures reconnect, `ready` (even before `open`) is ready.
    // Only a connection that was open (`connected`, `ready`) reports `disconnected:<code>` when it ends.
    for (state, name) in [(Connecting, "connecting"), (Connected, "connected")] {
        let connected = state == Connected;
        let [fail1000, fail1001, fail1006, end1008, end4003, refuse, timeout, stop]: [Effects; 8] =
            if connected {
                [
                    &["disconnected:1000", "state:connected>reconnecting"],
                    &["disconnected:1001", "state:connected>reconnecting"],
                    &["disconnected:1006", "state:connected>reconnecting"],
                    &["disconnected:1008:final", "state:connected>disconnected"],
                    &["disconnected:4003:final", "state:connected>disconnected"],
                    &[
                        "close#1:4004",
                        "disconnected:4004",
                        "state:connected>reconnecting",
                    ],
                    &[
                        "close#1:4000",
                        "disconnected:4000",
                        "state:connected>reconnecting",
                    ],
                    &[
                        "close#1:1000",
                        "disconnected:1000:final",
                        "state:connected>disconnected",
                    ],
                ]
            } else {
                [
                    &["state:connecting>reconnecting"],
                    &["state:connecting>reconnecting"],
                    &["state:connecting>reconnecting"],
                    &["state:connecting>disconnected"],
                    &["state:connecting>disconnected"],
                    &["close#1:4004", "state:connecting>reconnecting"],
                    &["close#1:4000", "state:connecting>reconnecting"],
                    &["close#1:1000", "state:connecting>disconnected"],
                ]
            };
        rows.extend([
            (state, In::Start, name, &[][..]),
            (state, In::Stop, "disconnected", stop),
            (
                state,
                In::Opened,
                "connected",
                if state == Connecting {
                    &["state:connecting>connected"]
                } else {
                    &[]
                },
            ),
            (
                state,
                In::TextReady,
                "ready",
                if state == Connecting {
                    &["state:connecting>ready"]
                } else {
                    &["state:connected>ready"]
                },
            ),
            (state, In::TextPong, name, &[]),
            (state, In::TextBye, name, &["draining"]),
            (state, In::TextOther, "reconnecting", refuse),
            (state, In::BinaryMsg, "reconnecting", refuse),
            (state, In::BinaryBadKind, "reconnecting", refuse),
            (state, In::TooBig, "reconnecting", refuse),
            (state, In::Closed1000, "reconnecting", fail1000),
            (state, In::Closed1001, "reconnecting", fail1001),
            (state, In::Closed1008, "disconnected", end1008),
            (state, In::Closed4003, "disconnected", end4003),
            (state, In::Error, "reconnecting", fail1006),
            // The connect timeout: the client closes with 4000 and retries.
            (state, In::Timeout, "reconnecting", timeout),
            (state, In::Wake, name, &[]),
            (state, In::Offline, name, &[]),
            (state, In::Online, name, &[]),
        ]);
    }
    rows.extend([
        (Ready, In::Start, "ready", &[][..]),
        (
            Ready,
            In::Stop,
            "disconnected",
            &[
                "close#1:1000",
                "disconnected:1000:final",
                "state:ready>disconnected",
            ],
        ),
        (Ready, In::Opened, "ready", &[]),
        (Ready, In::TextReady, "ready", &[]),
        (Ready, In::TextPong, "ready", &[]),
        (Ready, In::TextBye, "ready", &["draining"]),
        (
            Ready,
            In::TextOther,
            "reconnecting",
            &[
                "close#1:4004",
                "disconnected:4004",
                "state:ready>reconnecting",
            ],
        ),
        (Ready, In::BinaryMsg, "ready", &["message:hello"]),
        (
            Ready,
            In::BinaryBadKind,
            "reconnecting",
            &[
                "close#1:4004",
                "disconnected:4004",
                "state:ready>reconnecting",
            ],
        ),
        (
            Ready,
            In::TooBig,
            "reconnecting",
            &[
                "close#1:4004",
                "disconnected:4004",
                "state:ready>reconnecting",
            ],
        ),
        (
            Ready,
            In::Closed1000,
            "reconnecting",
            &["disconnected:1000", "state:ready>reconnecting"],
        ),
        (
            Ready,
            In::Closed1001,
            "reconnecting",
            &["disconnected:1001", "state:ready>reconnecting"],
        ),
        (
            Ready,
            In::Closed1008,
            "disconnected",
            &["disconnected:1008:final", "state:ready>disconnected"],
        ),
        (
            Ready,
            In::Closed4003,
            "disconnected",
            &["disconnected:4003:final", "state:ready>disconnected"],
        ),
        (
            Ready,
            In::Error,
            "reconnecting",
            &["disconnected:1006", "state:ready>reconnecting"],
        ),
        // The first deadline in `ready` is the stable period (5 s): it resets attempts, with no output.
        (Ready, In::Timeout, "ready", &[]),
        // Liveness unknown: probe at once.
        (Ready, In::Wake, "ready", &["text:ping"]),
        (Ready, In::Offline, "ready", &[]),
        (Ready, In::Online, "ready", &[]),
    ]);
    // Reconnecting holds no socket: socket inputs are stale.
    rows.extend(ignored!(Reconnecting, "reconnecting"));
    rows.extend([
        (Reconnecting, In::Start, "reconnecting", &[][..]),
        (
            Reconnecting,
            In::Stop,
            "disconnected",
            &["state:reconnecting>disconnected"],
        ),
        (
            Reconnecting,
            In::Timeout,
            "connecting",
            &["state:reconnecting>connecting", "open#2 attempt 2"],
        ),
        (
            Reconnecting,
            In::Wake,
            "connecting",
            &["state:reconnecting>connecting", "open#2 attempt 2"],
        ),
        // The attempt waits for the network: the state shows no deadline any more.
        (
            Reconnecting,
            In::Offline,
            "reconnecting",
            &["state:reconnecting>reconnecting"],
        ),
        (
            Reconnecting,
            In::Online,
            "connecting",
            &["state:reconnecting>connecting", "open#2 attempt 2"],
        ),
    ]);
    rows
}

#[test]
fn table_covers_every_state_and_input() {
    let rows = table();
    let pairs: BTreeSet<(State, In)> = rows.iter().map(|(s, i, _, _)| (*s, *i)).collect();
    assert_eq!(
        pairs.len(),
        rows.len(),
        "a (state, input) pair has two rows"
    );
    for state in STATES {
        for input in INPUTS {
            assert!(
                pairs.contains(&(state, input)),
                "no row for {state:?} × {input:?}"
            );
        }
    }
}

#[test]
fn every_state_and_input_gives_the_tabled_state_and_effects() {
    for (state, input, next, effects) in table() {
        let mut sim = setup(state);
        let outs = apply(&mut sim, input);
        assert_eq!(
            (state_kind(sim.conn.status()), describe_all(&outs)),
            (
                next,
                effects.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            ),
            "{state:?} × {input:?}"
        );
    }
}

#[test]
fn inputs_about_a_replaced_socket_are_ignored() {
    let mut sim = setup(State::Ready);
    let stale = SocketId(sim.socket.0 + 100);
    for input in [
        Input::SocketText {
            socket: stale,
            text: "bye",
        },
        Input::SocketClosed {
            socket: stale,
            code: CloseCode(4003),
            reason: "",
        },
        Input::SocketError {
            socket: stale,
            message: "",
        },
        Input::MessageTooBig {
            socket: stale,
            size: 1 << 30,
        },
    ] {
        assert!(sim.input(input).is_empty());
    }
    assert_eq!(sim.conn.status(), &Status::Ready);
}
