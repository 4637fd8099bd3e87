//! The codec targets: the frame decoder, the reassembler (against a model), the envelope decoder.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use sockeye_core::codec::{
    Envelope, Fragmenter, Frame, Payload, ProtocolViolation, Reassembler, ReassemblyLimits,
    Refusal, KIND_COMPLETE, KIND_FRAGMENT,
};
use sockeye_core::{CloseCode, Duration, ErrorCode, Instant};

/// The longest close reason a close frame carries (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

/// One binary message through [`Frame::decode`]: an accepted frame re-encodes to the same bytes, a refused one
/// maps to 1002, and a fresh [`Reassembler`] agrees with the decoder.
pub fn frame(data: &[u8]) {
    let decoded = Frame::decode(data);
    match decoded {
        Ok(Frame::Complete(body)) => assert_eq!([&[KIND_COMPLETE][..], body].concat(), data),
        Ok(Frame::Fragment(header, chunk)) => {
            assert!(
                header.count >= 2 && header.index < header.count,
                "{header:?}"
            );
            let mut encoded = vec![KIND_FRAGMENT];
            encoded.extend(header.msg_id.to_be_bytes());
            encoded.extend(header.index.to_be_bytes());
            encoded.extend(header.count.to_be_bytes());
            encoded.extend(chunk);
            assert_eq!(encoded, data);
        }
        Err(ref violation) => {
            // A single frame can only break framing rules; the size and sequence rules are the reassembler's.
            assert_eq!(violation.close_code(), CloseCode::PROTOCOL_ERROR);
            assert!(!violation.to_string().is_empty());
        }
    }
    let mut reassembler = Reassembler::new(ReassemblyLimits::default());
    let reassembled = reassembler.handle_frame(Instant::ZERO, data);
    match (decoded, reassembled) {
        (Ok(Frame::Complete(body)), Ok(Some(got))) => assert_eq!(&*got, body),
        (Ok(Frame::Complete(body)), Err(ProtocolViolation::MessageTooBig { size, .. })) => {
            assert_eq!(size, body.len())
        }
        (Ok(Frame::Fragment(header, _)), Ok(None)) => assert_eq!(header.index, 0),
        (Ok(Frame::Fragment(header, _)), Err(ProtocolViolation::UnexpectedIndex { got, .. })) => {
            assert_eq!(got, header.index)
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (decoded, reassembled) => panic!("decoder {decoded:?} vs reassembler {reassembled:?}"),
    }
}

/// Limits small enough that the fuzzer hits each of them.
#[derive(Arbitrary, Debug)]
struct Limits {
    max_message_bytes: u8,
    max_partial_messages: u8,
    completion_timeout_ms: u16,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A FRAGMENT frame, built from its fields (a small `msg_id` space so messages collide).
    Fragment {
        msg_id: u8,
        index: u16,
        count: u16,
        chunk: Vec<u8>,
        after_ms: u16,
    },
    Complete {
        body: Vec<u8>,
        after_ms: u16,
    },
    /// Any bytes as a frame.
    Raw {
        bytes: Vec<u8>,
        after_ms: u16,
    },
    Timeout {
        after_ms: u16,
    },
    Reset,
}

/// A sequence of frames, timer firings and resets through a [`Reassembler`] with small limits, checked step by
/// step against a plain model of PROTOCOL §3: the same envelopes out, the same errors, the same bytes held and
/// the same deadline.
pub fn reassembler(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(limits) = Limits::arbitrary(&mut u) else {
        return;
    };
    let limits = ReassemblyLimits {
        max_message_bytes: usize::from(limits.max_message_bytes),
        max_partial_messages: usize::from(limits.max_partial_messages % 4) + 1,
        completion_timeout: Duration::from_millis(limits.completion_timeout_ms.into()),
    };
    let mut real = Reassembler::new(limits.clone());
    let mut model = Model {
        limits,
        partials: BTreeMap::new(),
    };
    let mut now = Instant::ZERO;
    let Ok(steps) = u.arbitrary_iter::<Step>() else {
        return;
    };
    // Bounded so one input cannot take unbounded time; `arbitrary_iter` ends when the input runs out.
    for step in steps.take(256).map_while(Result::ok) {
        let mut advance = |ms: u16| now = now + Duration::from_millis(ms.into());
        let frame = match step {
            Step::Fragment {
                msg_id,
                index,
                count,
                chunk,
                after_ms,
            } => {
                advance(after_ms);
                let mut frame = vec![KIND_FRAGMENT];
                frame.extend(u32::from(msg_id).to_be_bytes());
                frame.extend(index.to_be_bytes());
                frame.extend(count.to_be_bytes());
                frame.extend(chunk);
                frame
            }
            Step::Complete { body, after_ms } => {
                advance(after_ms);
                [&[KIND_COMPLETE][..], &body].concat()
            }
            Step::Raw { bytes, after_ms } => {
                advance(after_ms);
                bytes
            }
            Step::Timeout { after_ms } => {
                advance(after_ms);
                let got = real.handle_timeout(now);
                assert_eq!(got, model.expire(now));
                if got.is_ok() {
                    assert!(real.poll_timeout().is_none_or(|at| at > now));
                }
                model.check_against(&real);
                continue;
            }
            Step::Reset => {
                real.reset();
                model.partials.clear();
                model.check_against(&real);
                continue;
            }
        };
        let got = real
            .handle_frame(now, &frame)
            .map(|done| done.map(|bytes| bytes.into_owned()));
        let expected = model.handle_frame(now, &frame);
        assert_eq!(got, expected, "frame {frame:02x?} at {now:?}");
        match got {
            Ok(Some(done)) => assert!(done.len() <= model.limits.max_message_bytes),
            Ok(None) => {}
            Err(_) => {
                // After an error the state is unspecified until a reset: the connection closes.
                real.reset();
                model.partials.clear();
            }
        }
        model.check_against(&real);
    }
}

/// The reassembly rules written as plainly as possible, for comparison.
struct Model {
    limits: ReassemblyLimits,
    /// `msg_id` → (count, next index, bytes so far, deadline).
    partials: BTreeMap<u32, (u16, u16, Vec<u8>, Instant)>,
}

impl Model {
    fn expire(&mut self, now: Instant) -> Result<(), ProtocolViolation> {
        // The first to expire is named; among equal deadlines the lowest msg_id (BTreeMap order).
        let first = self
            .partials
            .iter()
            .filter(|(_, p)| p.3 <= now)
            .min_by_key(|(_, p)| p.3)
            .map(|(&msg_id, _)| msg_id);
        self.partials.retain(|_, p| p.3 > now);
        match first {
            Some(msg_id) => Err(ProtocolViolation::IncompleteMessageExpired { msg_id }),
            None => Ok(()),
        }
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, ProtocolViolation> {
        let frame = Frame::decode(bytes)?;
        self.expire(now)?;
        let limit = self.limits.max_message_bytes;
        let too_big = |size| ProtocolViolation::MessageTooBig { size, limit };
        let (header, chunk) = match frame {
            Frame::Complete(body) if body.len() > limit => return Err(too_big(body.len())),
            Frame::Complete(body) => return Ok(Some(body.to_vec())),
            Frame::Fragment(header, chunk) => (header, chunk),
        };
        let (msg_id, index, count) = (header.msg_id, header.index, header.count);
        let Some(partial) = self.partials.get_mut(&msg_id) else {
            if index != 0 {
                return Err(ProtocolViolation::UnexpectedIndex {
                    msg_id,
                    expected: 0,
                    got: index,
                });
            }
            if self.partials.len() >= self.limits.max_partial_messages {
                return Err(ProtocolViolation::TooManyPartialMessages {
                    limit: self.limits.max_partial_messages,
                });
            }
            if chunk.len() > limit {
                return Err(too_big(chunk.len()));
            }
            let deadline = now + self.limits.completion_timeout;
            self.partials
                .insert(msg_id, (count, 1, chunk.to_vec(), deadline));
            return Ok(None);
        };
        if count != partial.0 {
            return Err(ProtocolViolation::CountChanged {
                msg_id,
                was: partial.0,
                now: count,
            });
        }
        if index != partial.1 {
            return Err(ProtocolViolation::UnexpectedIndex {
                msg_id,
                expected: partial.1,
                got: index,
            });
        }
        if partial.2.len() + chunk.len() > limit {
            return Err(too_big(partial.2.len() + chunk.len()));
        }
        partial.2.extend_from_slice(chunk);
        partial.1 += 1;
        if partial.1 < count {
            return Ok(None);
        }
        Ok(self.partials.remove(&msg_id).map(|p| p.2))
    }

    /// The bytes held and the next deadline match; both stay within the limits.
    fn check_against(&self, real: &Reassembler) {
        let held: usize = self.partials.values().map(|p| p.2.len()).sum();
        assert_eq!(real.buffered_bytes(), held);
        assert!(held <= self.limits.max_partial_messages * self.limits.max_message_bytes);
        assert_eq!(
            real.poll_timeout(),
            self.partials.values().map(|p| p.3).min()
        );
    }
}

/// Bytes through [`Envelope::decode`]. An accepted envelope re-encodes to bytes that decode to the same
/// envelope and re-encode identically (the encoding is canonical), and its payload is one valid item that the
/// application's decoder reads without panicking. A refused one maps to the answer PROTOCOL §4 names: an `err`
/// reply carrying the recovered id, or a close 1007 whose reason fits a close frame.
pub fn envelope(data: &[u8]) {
    match Envelope::decode(data) {
        Ok(envelope) => {
            let encoded = envelope.encode();
            assert_eq!(Envelope::decode(&encoded).as_ref(), Ok(&envelope));
            let mut framed = vec![KIND_COMPLETE];
            envelope.encode_to(&mut framed);
            assert_eq!(framed[1..], encoded);
            if let Some(payload) = envelope.data() {
                let cbor = payload.as_cbor().to_vec();
                assert_eq!(
                    Payload::from_cbor(cbor.clone()).map(Payload::into_cbor),
                    Ok(cbor)
                );
                let _ = payload.decode::<ciborium::Value>();
            }
        }
        Err(error) => match error.refusal() {
            Refusal::Reply(reply) => {
                let Envelope::Err { id, ref code, .. } = reply else {
                    panic!("a refusal replies with an err, not {reply:?}");
                };
                assert_eq!(*code, ErrorCode::InvalidArgument);
                assert_eq!(id, error.id);
                assert_eq!(Envelope::decode(&reply.encode()), Ok(reply));
            }
            Refusal::Close(code, reason) => {
                assert_eq!(code, CloseCode::INVALID_PAYLOAD);
                assert_eq!(error.id, None);
                assert!(reason.len() <= MAX_CLOSE_REASON, "{reason}");
            }
        },
    }
    if let Ok(payload) = Payload::from_cbor(data.to_vec()) {
        assert_eq!(payload.as_cbor(), data);
    }
}

/// Payloads of every CBOR major type, nested, with definite and indefinite lengths.
fn seed_payloads() -> Vec<Payload> {
    let items: [&[u8]; 9] = [
        &[0xf6],                                                 // null
        &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // u64::MAX
        &[0x39, 0x01, 0x00],                                     // -257
        &[0xfb, 0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18], // 3.14159…
        &[0x43, 0x01, 0x02, 0x03],                               // h'010203'
        &[0x7f, 0x62, 0xc3, 0xa9, 0x61, 0x61, 0xff],             // (_ "é", "a")
        &[0xa2, 0x61, 0x6b, 0x82, 0x01, 0xf5, 0x61, 0x6e, 0xa0], // {"k": [1, true], "n": {}}
        &[0x9f, 0x9f, 0xbf, 0x61, 0x78, 0xf4, 0xff, 0xff, 0xff], // [_ [_ {_ "x": false}]]
        &[0xc1, 0x1a, 0x5f, 0x5e, 0x10, 0x00],                   // 1(1600000000)
    ];
    items
        .iter()
        .map(|item| Payload::from_cbor(item.to_vec()).expect("seed payloads are valid CBOR"))
        .collect()
}

/// Valid envelopes of every kind, with and without payloads.
pub(crate) fn seed_envelopes() -> Vec<Envelope> {
    let mut out = Vec::new();
    for data in seed_payloads().into_iter().map(Some).chain([None]) {
        out.extend([
            Envelope::Msg {
                name: "chat".into(),
                data: data.clone(),
            },
            Envelope::Req {
                id: 1,
                method: "echo".into(),
                data: data.clone(),
            },
            Envelope::Res {
                id: 2,
                data: data.clone(),
            },
            Envelope::Err {
                id: Some(3),
                code: ErrorCode::NotFound,
                message: "no such method".into(),
                data: data.clone(),
            },
            Envelope::Err {
                id: None,
                code: ErrorCode::Other("TEAPOT".into()),
                message: "notice".into(),
                data: data.clone(),
            },
            Envelope::Pub {
                topic: "room/1".into(),
                data: data.clone(),
            },
            Envelope::Evt {
                topic: "room/1".into(),
                seq: u64::MAX,
                data,
            },
        ]);
    }
    out.extend([
        Envelope::Sub {
            id: 4,
            topic: "room/ü".into(),
        },
        Envelope::Unsub {
            id: 5,
            topic: "$sys".into(),
        },
    ]);
    out
}

/// Envelopes as bytes, plus hand-written shapes the encoder never produces: an indefinite-length map, keys in
/// another order, a duplicate key, an unknown key, an unknown `t`.
pub(crate) fn envelope_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = seed_envelopes().iter().map(Envelope::encode).collect();
    out.extend([
        // {_ "t": "res", "id": 7, "d": null}
        b"\xbf\x61t\x63res\x62id\x07\x61d\xf6\xff".to_vec(),
        // {"d": 1, "x": [], "id": 7, "t": "res"}
        b"\xa4\x61d\x01\x61x\x80\x62id\x07\x61t\x63res".to_vec(),
        // {"t": "msg", "m": "a", "m": "b"}
        b"\xa3\x61t\x63msg\x61m\x61a\x61m\x61b".to_vec(),
        // {"t": "ping", "id": 9}
        b"\xa2\x61t\x64ping\x62id\x09".to_vec(),
    ]);
    out
}

/// COMPLETE frames of the seed envelopes, and the same envelopes split into fragments.
pub(crate) fn frame_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut fragmenter = Fragmenter::new(4);
    for envelope in seed_envelopes() {
        out.push([&[KIND_COMPLETE][..], &envelope.encode()].concat());
        fragmenter
            .encode(&envelope, |frame| out.push(frame))
            .expect("small envelopes fit in u16::MAX fragments");
    }
    out
}
