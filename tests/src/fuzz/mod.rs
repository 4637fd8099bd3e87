//! What each `cargo fuzz` target does with its input bytes, in one place: the targets in `fuzz/` call these
//! functions, and `tests/tests/fuzz_replay.rs` replays every committed corpus file and crash reproducer through
//! them on stable, so a harness that panics fails `cargo test`.
//!
//! Every harness panics (an assertion) when an invariant breaks; none may panic otherwise, for any input.

mod client;
mod codec;
mod server;

pub use client::client_core;
pub use codec::{envelope, frame, reassembler};
pub use server::server_session;

/// A fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` binary and the `fuzz/corpus/<name>/` directory)
/// and the harness it runs.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Inputs worth starting from (valid frames and envelopes), so the fuzzer reaches deep code at once.
    /// Structure-aware targets build valid input from any bytes and need none.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: frame,
        seeds: codec::frame_seeds,
    },
    Target {
        name: "reassembler",
        run: reassembler,
        seeds: Vec::new,
    },
    Target {
        name: "envelope",
        run: envelope,
        seeds: codec::envelope_seeds,
    },
    Target {
        name: "client_core",
        run: client_core,
        seeds: Vec::new,
    },
    Target {
        name: "server_session",
        run: server_session,
        seeds: Vec::new,
    },
];
