//! A simulation harness for the core: a connection, a simulated clock that jumps to the next deadline, and a
//! scripted server that writes frames into it. No sockets, no sleeping.
#![allow(dead_code)] // each test binary uses a different part of the harness

use sockeye_core::codec::{Envelope, Payload};
use sockeye_core::{
    CloseCode, Config, Connection, Event, Input, Instant, Output, SocketId, Status,
    SubscriptionState,
};

pub struct Sim {
    pub conn: Connection,
    pub now: Instant,
    /// The socket the core most recently asked to open.
    pub socket: SocketId,
}

/// A config with small, round numbers: base 100 ms, max 1.6 s, 3 attempts, seeded.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.reconnect.base_delay = sockeye_core::Duration::from_millis(100);
    c.reconnect.max_delay = sockeye_core::Duration::from_millis(1600);
    c.reconnect.max_attempts = Some(3);
    c.seed = 1;
    c
}

impl Sim {
    pub fn new(config: Config) -> Self {
        Sim {
            conn: Connection::new(config).expect("valid config"),
            now: Instant::ZERO,
            socket: SocketId(0),
        }
    }

    /// Feeds an input and drains every output (the drain rule).
    pub fn input(&mut self, input: Input<'_>) -> Vec<Output> {
        self.conn.handle_input(self.now, input);
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(out) = self.conn.poll_output() {
            if let Output::OpenSocket { socket, .. } = out {
                self.socket = socket;
            }
            outs.push(out);
        }
        outs
    }

    /// Jumps the clock to the next deadline and fires it; `None` when nothing is armed.
    pub fn fire_next_timeout(&mut self) -> Option<Vec<Output>> {
        let at = self.conn.poll_timeout()?;
        self.now = self.now.max(at);
        Some(self.input(Input::Timeout))
    }

    pub fn advance(&mut self, ms: u64) -> Vec<Output> {
        self.now = self.now + sockeye_core::Duration::from_millis(ms);
        self.input(Input::Timeout)
    }

    pub fn open(&mut self) -> Vec<Output> {
        let socket = self.socket;
        self.input(Input::SocketOpened { socket })
    }

    pub fn text(&mut self, text: &str) -> Vec<Output> {
        let socket = self.socket;
        self.input(Input::SocketText { socket, text })
    }

    pub fn binary(&mut self, data: &[u8]) -> Vec<Output> {
        let socket = self.socket;
        self.input(Input::SocketBinary { socket, data })
    }

    /// The server sends one envelope as a COMPLETE frame.
    pub fn server_sends(&mut self, envelope: &Envelope) -> Vec<Output> {
        self.binary(&complete_frame(envelope))
    }

    pub fn closed(&mut self, code: u16) -> Vec<Output> {
        let socket = self.socket;
        self.input(Input::SocketClosed {
            socket,
            code: CloseCode(code),
            reason: "server said so",
        })
    }

    /// Subscribes to `topic` and drains (the first subscriber's `pending` event, and the `sub` when ready).
    pub fn subscribe(&mut self, topic: &str) -> Vec<Output> {
        self.conn.subscribe(self.now, topic).expect("a valid topic");
        self.drain()
    }

    /// Start, open, `ready`.
    pub fn connect(&mut self) -> Vec<Output> {
        let mut outs = self.input(Input::Start);
        outs.extend(self.open());
        outs.extend(self.text("ready"));
        assert_eq!(self.conn.status(), &Status::Ready);
        outs
    }
}

pub fn complete_frame(envelope: &Envelope) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend(envelope.encode());
    frame
}

pub fn payload<T: serde::Serialize>(value: &T) -> Payload {
    Payload::encode(value).expect("test values encode")
}

/// The envelopes among outputs (COMPLETE frames only).
pub fn sent_envelopes(outs: &[Output]) -> Vec<Envelope> {
    outs.iter()
        .filter_map(|o| match o {
            Output::SendBinary(frame) if frame.first() == Some(&0) => {
                Some(Envelope::decode(&frame[1..]).expect("the core sends valid envelopes"))
            }
            _ => None,
        })
        .collect()
}

pub fn events(outs: &[Output]) -> Vec<&Event> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// One output in a few words, so tables can state exact effects compactly.
pub fn describe(out: &Output) -> String {
    match out {
        Output::OpenSocket { socket, attempt } => format!("open#{} attempt {attempt}", socket.0),
        Output::CloseSocket { socket, code, .. } => format!("close#{}:{}", socket.0, code.0),
        Output::SendText(t) => format!("text:{t}"),
        Output::SendBinary(frame) => match frame.first() {
            Some(0) => match Envelope::decode(&frame[1..]) {
                Ok(e) => format!("send:{}", e.kind()),
                Err(e) => format!("send:invalid {e}"),
            },
            _ => "send:fragment".into(),
        },
        Output::Event(Event::StateChanged(t)) => format!("state:{}>{}", t.from.name(), t.to.name()),
        Output::Event(Event::Message { name, .. }) => format!("message:{name}"),
        Output::Event(Event::Request { method, .. }) => format!("request:{method}"),
        Output::Event(Event::TopicEvent { topic, seq, .. }) => format!("evt:{topic}#{seq}"),
        Output::Event(Event::TopicGap { topic, from, to }) => format!("gap:{topic}:{from}..={to}"),
        Output::Event(Event::TopicReset { topic, ep }) => format!("reset:{topic}:{ep}"),
        Output::Event(Event::TopicResumed { topic, replayed }) => {
            format!("resumed:{topic}:{replayed}")
        }
        Output::Event(Event::Reply { id, result }) => match result {
            Ok(_) => format!("reply:{}:ok", id.0),
            Err(e) => format!("reply:{}:{}", id.0, e.code),
        },
        Output::Event(Event::Published { id, result }) => match result {
            Ok(at) => format!("published:{}:{}#{}", id.0, at.ep, at.seq),
            Err(e) => format!("published:{}:{}", id.0, e.code),
        },
        Output::Event(Event::SubscriptionChanged { topic, state }) => match state {
            SubscriptionState::Failed(error) => format!("subfail:{topic}:{}", error.code),
            SubscriptionState::Live => format!("subscribed:{topic}"),
            SubscriptionState::Pending => format!("pending:{topic}"),
        },
        Output::Event(Event::Disconnected {
            code,
            will_reconnect,
            ..
        }) => format!(
            "disconnected:{}{}",
            code.0,
            if *will_reconnect { "" } else { ":final" }
        ),
        Output::Event(Event::Reconnected) => "reconnected".into(),
        Output::Event(Event::Notice(e)) => format!("notice:{}", e.code),
        Output::Event(Event::Draining) => "draining".into(),
    }
}

pub fn describe_all(outs: &[Output]) -> Vec<String> {
    outs.iter().map(describe).collect()
}
