//! The server target: one connection's input handling (`sockeye_server::fuzzing::feed_frames`) fed what a
//! client, honest or not, may send after `ready`.

use arbitrary::{Arbitrary, Unstructured};
use sockeye_core::codec::{Envelope, Fragmenter, TopicPosition, KIND_COMPLETE};
use sockeye_core::ErrorCode;
use sockeye_server::fuzzing::{feed_frames, Frame};

use super::client::PayloadPick;

/// The longest close reason a close frame carries (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;
/// Frames fed to one connection at most: enough to reach every state, few enough to keep runs fast.
const MAX_FRAMES: usize = 64;

#[derive(Arbitrary, Debug)]
enum Input {
    /// A control word (`ping`) or any other text.
    Text(TextPick),
    /// A well-formed envelope in one COMPLETE frame.
    Envelope(ClientEnvelope),
    /// A well-formed envelope split into FRAGMENT frames of `chunk` bytes (some of them maybe left out).
    Fragmented {
        envelope: ClientEnvelope,
        msg_id: u32,
        chunk: u8,
        skip: Option<u8>,
    },
    /// Any bytes as a binary message.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum TextPick {
    Ping,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct ClientEnvelope {
    kind: Kind,
    id: u64,
    name: NamePick,
    topic: TopicPick,
    since: Option<(String, u64)>,
    data: Option<PayloadPick>,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Msg,
    Req,
    Res,
    Err,
    Sub,
    Unsub,
    Pub,
    AckedPub,
    /// Server → client only: the server must refuse it.
    Evt,
}

/// A built-in method (so handlers run), or any name.
#[derive(Arbitrary, Debug)]
enum NamePick {
    Builtin(u8),
    Any(String),
}

/// One of a few topics (so subscriptions and publishes meet), a reserved one, or any text.
#[derive(Arbitrary, Debug)]
enum TopicPick {
    Known(u8),
    Reserved,
    Any(String),
}

/// Feeds the frames the input describes to a fresh connection and checks what can be checked from outside:
/// nothing panics (the harness's own assertions aside), `ready` went out, and a close uses a code the server
/// documents (SECURITY.md, PROTOCOL §6) with a reason a close frame can carry.
pub fn server_session(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(inputs) = input
        .arbitrary_iter::<Input>()
        .and_then(|items| items.take(MAX_FRAMES).collect::<Result<Vec<_>, _>>())
    else {
        return;
    };
    let frames: Vec<Frame> = inputs.into_iter().flat_map(frames_of).collect();
    let outcome = feed_frames(&frames);
    assert!(outcome.frames_out >= 1, "`ready` was not written");
    if let Some((code, reason)) = outcome.closed {
        // 1000-1013 as §6 names them, 4002 heartbeat, and whatever a client asked for through the `close`
        // built-in (which accepts 1000 and 3000-4999 only).
        let documented = matches!(code, 1000 | 1002 | 1007 | 1008 | 1009 | 1011 | 1013)
            || (3000..=4999).contains(&code);
        assert!(documented, "close code {code} ({reason:?})");
        assert!(reason.len() <= MAX_CLOSE_REASON, "{} bytes", reason.len());
    }
}

fn frames_of(input: Input) -> Vec<Frame> {
    match input {
        Input::Text(TextPick::Ping) => vec![Frame::Text("ping".to_owned())],
        Input::Text(TextPick::Other(text)) => vec![Frame::Text(text)],
        Input::Raw(bytes) => vec![Frame::Binary(bytes)],
        Input::Envelope(envelope) => {
            let mut frame = vec![KIND_COMPLETE];
            envelope.build().encode_to(&mut frame);
            vec![Frame::Binary(frame)]
        }
        Input::Fragmented {
            envelope,
            msg_id,
            chunk,
            skip,
        } => {
            let bytes = envelope.build().encode();
            let Ok(Some(plan)) = Fragmenter::new(usize::from(chunk.max(1))).plan(bytes.len())
            else {
                // Small enough for one frame (or too large to split): sent whole.
                return vec![Frame::Binary([&[KIND_COMPLETE][..], &bytes].concat())];
            };
            let skipped = skip.map(u16::from);
            plan.filter(|fragment| Some(fragment.header.index) != skipped)
                .map(|mut fragment| {
                    fragment.header.msg_id = msg_id;
                    Frame::Binary(fragment.frame(&bytes))
                })
                .collect()
        }
    }
}

impl ClientEnvelope {
    fn build(self) -> Envelope {
        const BUILTINS: &[&str] = &["echo", "whoami", "stats", "fail", "close", "sleep"];
        const TOPICS: &[&str] = &["a", "b", "room-1"];
        let name = match self.name {
            NamePick::Builtin(pick) => BUILTINS[usize::from(pick) % BUILTINS.len()].to_owned(),
            NamePick::Any(name) => name,
        };
        let topic = match self.topic {
            TopicPick::Known(pick) => TOPICS[usize::from(pick) % TOPICS.len()].to_owned(),
            TopicPick::Reserved => "$system".to_owned(),
            TopicPick::Any(topic) => topic,
        };
        let data = self.data.map(PayloadPick::payload);
        let id = self.id;
        match self.kind {
            Kind::Msg => Envelope::Msg { name, data },
            Kind::Req => Envelope::Req {
                id,
                method: name,
                data,
            },
            Kind::Res => Envelope::Res { id, data },
            Kind::Err => Envelope::Err {
                id: Some(id),
                code: ErrorCode::parse(&name),
                message: name,
                data,
            },
            Kind::Sub => Envelope::Sub {
                id,
                topic,
                since: self.since.map(|(ep, seq)| TopicPosition { ep, seq }),
            },
            Kind::Unsub => Envelope::Unsub { id, topic },
            Kind::Pub => Envelope::Pub {
                id: None,
                topic,
                data,
            },
            Kind::AckedPub => Envelope::Pub {
                id: Some(id),
                topic,
                data,
            },
            Kind::Evt => Envelope::Evt {
                topic,
                seq: id,
                data,
            },
        }
    }
}
