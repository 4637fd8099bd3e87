//! The wire format (PROTOCOL §3–4): envelopes, frames, fragmentation and reassembly.
//!
//! Every decoder here is a pure function of its input bytes (plus `now` for reassembly deadlines), so a fuzzer
//! can call it directly. None panics on any input, none allocates from a length the peer declared, and nested
//! CBOR is walked with an explicit depth limit.
//!
//! Receiving: [`Reassembler::handle_frame`] turns binary WebSocket messages into envelope bytes,
//! [`Envelope::decode`] turns those into an [`Envelope`], and [`EnvelopeError::refusal`] /
//! [`ProtocolViolation::close_code`] say how to answer what is broken. Sending: [`Fragmenter::encode`].

mod cbor;
mod envelope;
mod fragment;
mod frame;

pub use envelope::{
    validate_topic, Envelope, EnvelopeError, EnvelopeErrorKind, InvalidTopic, Payload, PayloadError, Refusal,
    MAX_DEPTH,
};
pub use fragment::{FragmentError, Fragmenter, Reassembler, ReassemblyLimits, DEFAULT_FRAGMENT_THRESHOLD};
pub use frame::{FragmentHeader, Frame, ProtocolViolation, KIND_COMPLETE, KIND_FRAGMENT};
