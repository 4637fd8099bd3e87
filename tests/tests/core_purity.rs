//! `sockeye-core` stays pure: no clock reads, no randomness of its own, no I/O. A clock read would panic on
//! wasm32-unknown-unknown; randomness would make runs unreproducible.
//!
//! Calls and types are checked by the compiler's view of the code, not here: `client-core/clippy.toml` lists
//! them as `disallowed-methods`/`disallowed-types`, so `cargo clippy -p sockeye-core` fails on a clock, RNG or
//! I/O call. This test keeps the crates that do I/O out of the core's dependencies.

use std::fs;
use std::path::{Path, PathBuf};

fn core_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-core")
}

#[test]
fn core_depends_on_nothing_that_does_io() {
    let manifest = fs::read_to_string(core_dir().join("Cargo.toml")).expect("core manifest");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table");
    let deps = deps.split("\n[").next().unwrap_or(deps);
    for crate_name in [
        "tokio",
        "web-sys",
        "js-sys",
        "getrandom",
        "rand",
        "wasm-bindgen",
        "mio",
        "async-std",
    ] {
        let mentioned = deps
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{crate_name} ")));
        assert!(!mentioned, "sockeye-core depends on {crate_name}");
    }
}
