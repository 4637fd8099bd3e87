//! `sockeye-core` stays pure: no clock reads, no randomness of its own, no I/O dependencies. A clock read
//! would panic on wasm32-unknown-unknown; randomness would make runs unreproducible.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("client-core/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn core_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-core")
}

#[test]
fn core_source_reads_no_clock_and_draws_no_randomness() {
    let mut files = Vec::new();
    rust_files(&core_dir().join("src"), &mut files);
    assert!(files.len() > 5, "found the core's sources");
    let forbidden = [
        "Instant::now",
        "SystemTime",
        "thread_rng",
        "getrandom",
        "std::net",
        "std::fs",
        "std::thread",
    ];
    for file in files {
        let text = fs::read_to_string(&file).expect("source is UTF-8");
        // Comments may explain why these are absent; code may not use them.
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        for (n, line) in code.enumerate() {
            for word in forbidden {
                assert!(
                    !line.contains(word),
                    "{} uses {word}: {line} (code line {n})",
                    file.display()
                );
            }
        }
    }
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
