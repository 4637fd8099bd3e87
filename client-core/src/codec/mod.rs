//! The wire format (PROTOCOL §3–4): envelopes, frames, fragmentation and reassembly.
//!
//! Every decoder here is a pure function of its input bytes (plus `now` for reassembly deadlines), so a fuzzer
//! can call it directly. None panics on any input, none allocates from a length the peer declared, and nested
//! CBOR is walked with an explicit depth limit.
//!
//! Receiving: [`Reassembler::handle_frame`] turns binary WebSocket messages into envelope bytes,
//! [`Envelope::decode`] turns those into an [`Envelope`], and [`EnvelopeError::refusal`] /
//! [`ProtocolViolation::close_code`] say how to answer what is broken. Sending: [`Fragmenter::encode`].
//!
//! # Choices where PROTOCOL.md leaves one open
//!
//! - **Duplicate keys** in an envelope map: the last occurrence wins (as in most JSON parsers). Only the
//!   known keys are tracked.
//! - **Unknown keys** are skipped (with the depth-limited walker, so they must still be well-formed and no
//!   deeper than [`MAX_DEPTH`]). Known keys that the envelope's `t` does not use are ignored too: a `m` on an
//!   `evt` is not type-checked.
//! - **Text** keys and values may be definite or indefinite-length; text values must be valid UTF-8.
//!   Inside a payload `d` only well-formedness is checked, not UTF-8 (the application's decoder decides).
//! - **`id` recovery** for an err reply: the map's `id`, when it is an unsigned integer and the scan reached
//!   it. A malformed item before the `id` hides it (the encoder writes `t` and `id` first and `d` last).
//! - **Topic names** are not checked by [`Envelope::decode`]; senders and servers call [`validate_topic`].
//!   `$`-topics are reserved for the protocol itself, so a client must still be able to decode them.
//! - **Close codes** for the two limits §3 names no code for: too many partial messages closes with 1009 (a
//!   memory limit, like the size limit); a partial message not completed in time closes with 1002.
//! - **Fragments**: a chunk may be empty; a new `msg_id` must start at index 0; the size limit applies to
//!   each message (COMPLETE or reassembled so far), not to the sum of all partial messages.

pub mod cbor;
mod envelope;
mod fragment;
mod frame;

pub use envelope::{
    validate_epoch, validate_topic, Envelope, EnvelopeError, EnvelopeErrorKind, InvalidTopic,
    Payload, PayloadError, Refusal, SubAck, TopicPosition, MAX_DEPTH, MAX_EPOCH_BYTES,
};
pub use fragment::{
    FragmentError, FragmentPlan, Fragmenter, PlannedFragment, Reassembler, ReassemblyLimits,
    DEFAULT_FRAGMENT_THRESHOLD,
};
pub use frame::{FragmentHeader, Frame, ProtocolViolation, KIND_COMPLETE, KIND_FRAGMENT};

#[cfg(test)]
mod tests {
    //! Properties over random and mutated input: no decoder panics, and valid envelopes round-trip.

    use super::*;
    use crate::error::ErrorCode;
    use crate::time::{Duration, Instant};
    use proptest::prelude::*;

    /// Encoded CBOR items of every major type, nested a few levels.
    fn cbor_item() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(|n| header(0, n)),
            any::<u64>().prop_map(|n| header(1, n)),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| [
                header(2, b.len() as u64),
                b
            ]
            .concat()),
            "[a-zé]{0,8}".prop_map(|s| [header(3, s.len() as u64), s.into_bytes()].concat()),
            Just(vec![0xf4]),
            Just(vec![0xf6]),
            any::<u64>().prop_map(|f| [&[0xfb][..], &f.to_be_bytes()].concat()),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| [
                    header(4, items.len() as u64),
                    items.concat()
                ]
                .concat()),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| [
                    vec![0x9f],
                    items.concat(),
                    vec![0xff]
                ]
                .concat()),
                proptest::collection::vec(("[a-z]{1,3}", inner.clone()), 0..4).prop_map(
                    |entries| {
                        let mut out = header(5, entries.len() as u64);
                        for (k, v) in entries {
                            out.extend(header(3, k.len() as u64));
                            out.extend(k.into_bytes());
                            out.extend(v);
                        }
                        out
                    }
                ),
                (any::<u16>(), inner)
                    .prop_map(|(tag, item)| [header(6, u64::from(tag)), item].concat()),
            ]
        })
    }

    fn header(major: u8, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_header(&mut out, major, value);
        out
    }

    fn payload() -> impl Strategy<Value = Option<Payload>> {
        proptest::option::of(
            cbor_item().prop_map(|b| Payload::from_cbor(b).expect("generated items are valid")),
        )
    }

    fn position() -> impl Strategy<Value = TopicPosition> {
        ("[a-zA-Z0-9ü]{1,16}", any::<u64>()).prop_map(|(ep, seq)| TopicPosition { ep, seq })
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        let text = "[a-z/ü$]{0,12}";
        prop_oneof![
            (text, payload()).prop_map(|(name, data)| Envelope::Msg { name, data }),
            (any::<u64>(), text, payload()).prop_map(|(id, method, data)| Envelope::Req {
                id,
                method,
                data
            }),
            (any::<u64>(), payload()).prop_map(|(id, data)| Envelope::Res { id, data }),
            (any::<Option<u64>>(), "[A-Z_]{0,20}", text, payload()).prop_map(
                |(id, code, message, data)| {
                    Envelope::Err {
                        id,
                        code: ErrorCode::parse(&code),
                        message,
                        data,
                    }
                }
            ),
            (any::<u64>(), text, proptest::option::of(position()))
                .prop_map(|(id, topic, since)| { Envelope::Sub { id, topic, since } }),
            (any::<u64>(), text).prop_map(|(id, topic)| Envelope::Unsub { id, topic }),
            (any::<Option<u64>>(), text, payload()).prop_map(|(id, topic, data)| Envelope::Pub {
                id,
                topic,
                data
            }),
            (text, any::<u64>(), payload()).prop_map(|(topic, seq, data)| Envelope::Evt {
                topic,
                seq,
                data
            }),
        ]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Insert(usize, u8),
        Remove(usize),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Remove),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
        for m in mutations {
            let len = bytes.len();
            match *m {
                Mutation::Flip(i, b) if len > 0 => bytes[i % len] ^= b,
                Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
                Mutation::Remove(i) if len > 0 => {
                    bytes.remove(i % len);
                }
                Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
                _ => {}
            }
        }
    }

    /// Feeds `bytes` to every decoder; none may panic, and every error must map to a refusal.
    fn decode_everything(bytes: &[u8]) {
        if let Err(e) = Envelope::decode(bytes) {
            if let Refusal::Close(code, reason) = e.refusal() {
                assert_eq!(code, crate::error::CloseCode::INVALID_PAYLOAD);
                assert!(reason.len() <= 123);
            }
        }
        if let Err(e) = Frame::decode(bytes) {
            e.close_code();
        }
        let mut reassembler = Reassembler::new(ReassemblyLimits::default());
        let _ = reassembler.handle_frame(Instant::ZERO, bytes);
        if let Ok(p) = Payload::from_cbor(bytes.to_vec()) {
            assert_eq!(p.as_cbor(), bytes);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_decoder_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            decode_everything(&bytes);
            let framed = [&[KIND_COMPLETE][..], &bytes].concat();
            decode_everything(&framed);
        }

        #[test]
        fn valid_envelopes_round_trip(envelope in envelope()) {
            prop_assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
        }

        #[test]
        fn no_decoder_panics_on_mutated_envelopes(
            envelope in envelope(),
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            let mut bytes = envelope.encode();
            mutate(&mut bytes, &mutations);
            decode_everything(&bytes);
            let mut framed = vec![KIND_COMPLETE];
            envelope.encode_to(&mut framed);
            mutate(&mut framed, &mutations);
            decode_everything(&framed);
        }

        #[test]
        fn payload_walker_accepts_every_generated_item_and_no_truncation(item in cbor_item()) {
            prop_assert!(Payload::from_cbor(item.clone()).is_ok());
            for cut in 0..item.len() {
                prop_assert!(Payload::from_cbor(item[..cut].to_vec()).is_err());
            }
        }

        /// The payload decoder (minicbor-serde, then ciborium for what it refuses) reads any item as ciborium
        /// alone did, and where minicbor-serde reads it by itself it reads the same value.
        #[cfg(feature = "serde")]
        #[test]
        fn payload_decode_agrees_with_ciborium_on_every_generated_item(item in cbor_item()) {
            use ciborium::Value;
            // Compared as ciborium's encoding of the value: NaN floats are not equal to themselves.
            let encoded = |value: Value| {
                let mut out = Vec::new();
                ciborium::into_writer(&value, &mut out).map(|()| out).map_err(|e| e.to_string())
            };
            let old = ciborium::de::from_reader_with_recursion_limit::<Value, _>(item.as_slice(), MAX_DEPTH)
                .map_err(|e| e.to_string())
                .and_then(encoded);
            let payload = Payload::from_cbor(item.clone()).expect("generated items are valid");
            let new = payload.decode::<Value>().map_err(|e| e.to_string()).and_then(encoded);
            prop_assert_eq!(new.is_ok(), old.is_ok());
            if old.is_ok() {
                prop_assert_eq!(&new, &old);
            }
            if let Ok(fast) = minicbor_serde::from_slice::<Value>(&item) {
                prop_assert_eq!(encoded(fast), old);
            }
        }

        #[test]
        fn reassembler_never_panics_on_random_fragment_streams(
            steps in proptest::collection::vec(
                (0u32..4, 0u16..5, 0u16..5, proptest::collection::vec(any::<u8>(), 0..40), 0u64..400, any::<bool>()),
                1..40,
            ),
        ) {
            let limits = ReassemblyLimits {
                max_message_bytes: 64,
                max_partial_messages: 2,
                completion_timeout: Duration::from_millis(1000),
            };
            let mut reassembler = Reassembler::new(limits);
            let mut now = Instant::ZERO;
            for (msg_id, index, count, chunk, jump, timeout) in steps {
                now = now + Duration::from_millis(jump);
                let result = if timeout {
                    reassembler.handle_timeout(now).map(|()| None)
                } else {
                    let mut frame = Vec::new();
                    FragmentHeader { msg_id, index, count }.write_to(&mut frame);
                    frame.extend(chunk);
                    reassembler.handle_frame(now, &frame).map(|done| done.map(|b| b.len()))
                };
                if let Ok(Some(len)) = result {
                    prop_assert!(len <= 64);
                }
                if result.is_err() {
                    reassembler.reset();
                }
                prop_assert!(reassembler.buffered_bytes() <= 2 * 64);
                prop_assert!(reassembler.poll_timeout().is_none_or(|deadline| deadline > now || !timeout));
            }
        }

        #[test]
        fn fragmenter_output_always_reassembles(len in 0usize..2000, threshold in 0usize..300) {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut frames = Vec::new();
            Fragmenter::new(threshold).encode_bytes(&bytes, |f| frames.push(f)).unwrap();
            let mut reassembler = Reassembler::new(ReassemblyLimits::default());
            let mut done = Vec::new();
            for frame in &frames {
                if let Some(b) = reassembler.handle_frame(Instant::ZERO, frame).unwrap() {
                    done.push(b.into_owned());
                }
            }
            prop_assert_eq!(done, vec![bytes]);
        }
    }
}
