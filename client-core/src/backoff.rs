//! Reconnect delays: exponential with full jitter (PROTOCOL §7), from a seeded generator.

use crate::config::ReconnectConfig;
use crate::time::{millis, Duration};

/// A small, seedable generator (SplitMix64). Jitter is its only use; seeding it from the config makes every
/// run of the core reproducible, and keeps OS randomness out of the core.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`; 0 when `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Multiply-shift keeps the bias below 2^-64 per draw without a rejection loop.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// A seed from the process's randomness, for shells that run on an operating system (the native client, the
/// server): std's `RandomState` keys come from the OS once per thread and differ for every instance. Not a
/// cryptographic source; jitter needs none. The browser seeds from `Math.random` instead.
///
/// The core never calls this: its decisions use [`Config::seed`](crate::Config::seed), so every run is
/// reproducible. It lives here so that every shell seeds the same way. Needs the `std` feature.
#[cfg(feature = "std")]
#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the one entropy source, for shells to fill Config::seed; the core itself never draws randomness"
)]
pub fn entropy_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5EED_u64)
}

/// The delay cap before attempt `n` (1-based): `min(max_delay, base_delay · 2^(n-1))`, in milliseconds.
pub fn cap_ms(config: &ReconnectConfig, attempt: u32) -> u64 {
    let base = millis(config.base_delay);
    let max = millis(config.max_delay);
    let shift = attempt.saturating_sub(1).min(63);
    base.checked_shl(shift)
        .filter(|v| v >> shift == base)
        .unwrap_or(u64::MAX)
        .min(max)
}

/// The wait before attempt `n` (1-based).
///
/// Full jitter: uniform in `[0, cap)`. Without it: `cap` plus 0..20 % of `cap`.
pub fn delay(config: &ReconnectConfig, attempt: u32, rng: &mut Rng) -> Duration {
    let cap = cap_ms(config, attempt);
    let ms = if config.full_jitter {
        rng.below(cap)
    } else {
        cap.saturating_add(rng.below(cap / 5 + 1))
    };
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(full_jitter: bool) -> ReconnectConfig {
        ReconnectConfig {
            base_delay: Duration::from_millis(1000),
            max_delay: Duration::from_millis(30_000),
            full_jitter,
            ..ReconnectConfig::default()
        }
    }

    #[test]
    fn cap_doubles_per_attempt_until_the_maximum() {
        let c = config(true);
        let caps: Vec<u64> = (1..=7).map(|n| cap_ms(&c, n)).collect();
        assert_eq!(caps, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(
            cap_ms(&c, u32::MAX),
            30000,
            "huge attempt numbers must not overflow"
        );
    }

    #[test]
    fn full_jitter_delays_lie_below_the_cap() {
        let c = config(true);
        let mut rng = Rng::new(7);
        for n in 1..=12 {
            for _ in 0..1000 {
                let d = delay(&c, n, &mut rng).as_millis() as u64;
                assert!(d < cap_ms(&c, n), "attempt {n}: {d}");
            }
        }
    }

    #[test]
    fn full_jitter_mean_is_near_half_the_cap() {
        // Deterministic (seeded); the bound is generous: the standard error of 20 000 uniform draws is ~0.2 %.
        let c = config(true);
        let mut rng = Rng::new(42);
        for n in [1, 3, 6] {
            let cap = cap_ms(&c, n) as f64;
            let draws = 20_000;
            let sum: f64 = (0..draws)
                .map(|_| delay(&c, n, &mut rng).as_millis() as f64)
                .sum();
            let mean = sum / draws as f64;
            assert!(
                (mean / cap - 0.5).abs() < 0.02,
                "attempt {n}: mean {mean} cap {cap}"
            );
        }
    }

    #[test]
    fn without_full_jitter_delays_are_the_cap_plus_up_to_twenty_percent() {
        let c = config(false);
        let mut rng = Rng::new(3);
        for n in 1..=8 {
            let cap = cap_ms(&c, n);
            for _ in 0..500 {
                let d = delay(&c, n, &mut rng).as_millis() as u64;
                assert!(
                    d >= cap && d <= cap + cap / 5,
                    "attempt {n}: {d} vs cap {cap}"
                );
            }
        }
    }

    #[test]
    #[cfg(feature = "std")]
    fn entropy_seeds_differ_between_calls() {
        let seeds: std::collections::BTreeSet<u64> = (0..8).map(|_| entropy_seed()).collect();
        assert_eq!(seeds.len(), 8);
    }

    #[test]
    fn same_seed_same_delays() {
        let c = config(true);
        let a: Vec<_> = (1..10).map(|n| delay(&c, n, &mut Rng::new(9))).collect();
        let b: Vec<_> = (1..10).map(|n| delay(&c, n, &mut Rng::new(9))).collect();
        assert_eq!(a, b);
    }
}
