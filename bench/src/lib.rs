//! Benchmarks of Sockeye side by side with raw tokio-tungstenite, on loopback.
//!
//! Three binaries: `bench-echo-server` (the raw baseline server), `bench-load` (every client-side measure,
//! one per run, printing one JSON line) and `sockeye-bench` (the orchestrator: starts servers and loads as
//! separate processes, pinned with `taskset -c 0` and unpinned, takes medians, writes `bench/results.json`,
//! `bench/REPORT.md` and the SVG plots). `scripts/bench.sh` builds and runs them; `benches/codec.rs` is the
//! criterion codec micro-benchmark.

pub mod svg;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sockeye_core::codec::{Envelope, Payload, KIND_COMPLETE, KIND_FRAGMENT};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The subprotocol a raw client offers to `sockeye-server`.
pub const SUBPROTOCOL: &str = "sockeye.v1";

/// Largest message any benchmark sends (the 1 MiB point of the size sweep, plus envelope and framing).
pub const MAX_MESSAGE: usize = 2 << 20;

/// Read/write buffer sizes of `sockeye-server` (its `Limits` defaults): the raw echo server uses the same,
/// so the comparison isolates what Sockeye does beyond tungstenite.
pub const SERVER_BUFFER: usize = 4 * 1024;
/// Read/write buffer sizes of the `sockeye` client's transport: the raw clients use the same.
pub const CLIENT_BUFFER: usize = 8 * 1024;

/// tungstenite's configuration with `buffer`-sized read and write buffers (PERF.md: the default 128 KiB read
/// buffer dominates an idle connection's memory).
pub fn ws_config(buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        // Must exceed `write_buffer_size` (tungstenite panics otherwise) and hold one whole message.
        .max_write_buffer_size(buffer + MAX_MESSAGE + 1024)
        .max_message_size(Some(MAX_MESSAGE + 1024))
        .max_frame_size(Some(MAX_MESSAGE + 1024))
}

/// A payload that CBOR carries as a byte string (serde's own `Vec<u8>` would be an array of integers).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Blob(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// `size` bytes of payload, as a Sockeye application would send them.
pub fn blob(size: usize) -> Blob {
    Blob((0..size).map(|i| i as u8).collect())
}

/// A whole binary frame carrying `req echo` with `size` payload bytes, pre-encoded: what a raw client sends
/// to measure the server alone.
pub fn echo_request_frame(id: u64, size: usize) -> Vec<u8> {
    let data = Payload::encode(&blob(size)).expect("a byte string always encodes");
    let envelope = Envelope::Req {
        id,
        method: "echo".to_owned(),
        data: Some(data),
    };
    let mut frame = vec![KIND_COMPLETE];
    envelope.encode_to(&mut frame);
    frame
}

/// Whether a binary frame from `sockeye-server` completes a message (a COMPLETE frame or the last fragment).
pub fn completes_message(frame: &[u8]) -> bool {
    match frame.first() {
        Some(&KIND_COMPLETE) => true,
        // FRAGMENT: kind, msg_id u32, index u16, count u16.
        Some(&KIND_FRAGMENT) if frame.len() >= 9 => {
            let index = u16::from_be_bytes([frame[5], frame[6]]);
            let count = u16::from_be_bytes([frame[7], frame[8]]);
            index + 1 == count
        }
        _ => false,
    }
}

/// Resident set size of process `pid` (`self` for this one), in bytes, from `/proc`.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The `q`-quantile (0..=1) of sorted samples (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of unsorted values.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub samples: usize,
}

impl Latency {
    pub fn from_samples(mut micros: Vec<f64>) -> Latency {
        micros.sort_by(f64::total_cmp);
        Latency {
            p50: quantile(&micros, 0.50),
            p90: quantile(&micros, 0.90),
            p99: quantile(&micros, 0.99),
            p999: quantile(&micros, 0.999),
            samples: micros.len(),
        }
    }
}

/// Microseconds since the Unix epoch: a clock every process on the machine shares.
pub fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Upper bound on any single wait in a benchmark, so that nothing hangs forever.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
