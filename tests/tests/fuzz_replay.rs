//! Replays every committed fuzz input on stable: the seeds, each target's corpus (`fuzz/corpus/<target>/`) and
//! its crash reproducers (`fuzz/artifacts/<target>/`), through the same harnesses the fuzz targets run.
//!
//! `cargo test -p sockeye-tests --test fuzz_replay -- --ignored write_seed_corpora` writes the seeds into the
//! corpus directories (before fuzzing a fresh target).

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use sockeye_tests::fuzz::{Target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files directly in `dir`, sorted; none when it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `input` through the target's harness; the panic message when it panics.
fn replay(target: &Target, input: &[u8]) -> Result<(), String> {
    panic::catch_unwind(|| (target.run)(input)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    })
}

#[test]
fn every_seed_corpus_file_and_crash_reproducer_passes_its_harness() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let mut inputs: Vec<(String, Vec<u8>)> = (target.seeds)()
            .into_iter()
            .enumerate()
            .map(|(n, seed)| (format!("seed {n}"), seed))
            .collect();
        let corpus = files_in(&fuzz_dir().join("corpus").join(target.name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{} is empty: every target keeps a committed corpus",
            target.name
        );
        let artifacts = files_in(&fuzz_dir().join("artifacts").join(target.name));
        for path in corpus.iter().chain(&artifacts) {
            let bytes = fs::read(path).expect("corpus files are readable");
            inputs.push((path.display().to_string(), bytes));
        }
        for (name, input) in inputs {
            if let Err(message) = replay(target, &input) {
                failures.push(format!("{} {name}: {message}", target.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "harnesses failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_corpus_directory_belongs_to_a_target() {
    for kind in ["corpus", "artifacts"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let name = entry.expect("directory entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                TARGETS.iter().any(|t| t.name == name),
                "fuzz/{kind}/{name} has no harness in sockeye_tests::fuzz::TARGETS: it would never be replayed"
            );
        }
    }
}

#[test]
fn every_fuzz_target_binary_runs_a_listed_harness() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|table| table.lines().find_map(|l| l.strip_prefix("name = ")))
        .map(|name| name.trim_matches('"'))
        .collect();
    bins.sort_unstable();
    let mut names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    names.sort_unstable();
    assert_eq!(
        bins, names,
        "fuzz/Cargo.toml's [[bin]]s and sockeye_tests::fuzz::TARGETS"
    );
    for name in names {
        let source = fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs")))
            .expect("each target has its source");
        assert!(
            source.contains(&format!("sockeye_tests::fuzz::{name}(")),
            "fuzz_targets/{name}.rs runs another harness"
        );
    }
}

#[test]
#[ignore = "writes files: run by hand to seed the corpora"]
fn write_seed_corpora() {
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target.name);
        fs::create_dir_all(&dir).expect("corpus directory");
        for (n, seed) in (target.seeds)().iter().enumerate() {
            fs::write(dir.join(format!("seed-{n:03}")), seed).expect("seed written");
        }
    }
}
