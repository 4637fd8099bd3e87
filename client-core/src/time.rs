//! Time as the shell gives it. The core never reads a clock (the standard library's clock panics on
//! wasm32-unknown-unknown); every input carries `now`.

use core::ops::{Add, Sub};
pub use core::time::Duration;

/// A point in time: milliseconds since an origin the shell picks (process start, `performance.now()`'s
/// origin, …). Only differences between instants from the same shell mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The shell's origin.
    pub const ZERO: Instant = Instant(0);

    /// An instant `ms` milliseconds after the shell's origin.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the shell's origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero when `earlier` is later (clocks handed in by shells may
    /// step backwards; that must never panic).
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Whole milliseconds in `d`, saturating at `u64::MAX`: `Duration::as_millis` without its `u128` (whose
/// arithmetic and formatting cost the browser package code).
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates instead of overflowing: a huge configured timeout means "practically never".
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(millis(rhs)))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = Instant::from_millis(10);
        assert_eq!(t + Duration::from_millis(5), Instant::from_millis(15));
        assert_eq!(Instant::from_millis(3) - t, Duration::ZERO);
        assert_eq!(t + Duration::MAX, Instant::from_millis(u64::MAX));
    }

    #[test]
    fn millis_matches_duration_as_millis_and_saturates() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(999_999),
            Duration::from_micros(1_500),
            Duration::from_millis(12_345),
            Duration::from_secs(u64::MAX / 1000),
            Duration::new(u64::MAX / 1000, 807_999_999),
            Duration::new(u64::MAX / 1000, 808_000_000),
            Duration::MAX,
        ] {
            let expected = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            assert_eq!(millis(d), expected, "{d:?}");
        }
    }
}
