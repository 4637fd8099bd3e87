//! Everything a shell can tune, with the protocol's defaults.

use core::fmt;

use crate::codec::{ReassemblyLimits, DEFAULT_FRAGMENT_THRESHOLD};
use crate::time::Duration;

/// Configuration of a [`Connection`](crate::Connection). `Config::default()` is the protocol's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    pub reconnect: ReconnectConfig,
    /// An attempt not `ready` within this counts as failed (PROTOCOL §7). Default 10 s.
    pub connect_timeout: Duration,
    /// In `ready`, send `ping` this often. Default 30 s. [`Duration::ZERO`] turns keepalive off.
    pub keepalive_interval: Duration,
    /// No inbound frame this long after a `ping`: close with 4000 and reconnect. Default 10 s.
    pub keepalive_timeout: Duration,
    /// An input arriving more than this after the deadline the shell's timer was armed for means time jumped:
    /// the timer was not serviced (a throttled background tab, a suspended laptop, a stopped process).
    /// Liveness is then unknown, and the core acts as on [`Input::Wake`](crate::Input::Wake): it probes a
    /// `ready` connection at once and cuts a backoff wait short. Default 5 s, well above a busy event loop's
    /// lateness and a hidden tab's 1 s timer alignment. [`Duration::ZERO`] turns detection off.
    pub time_jump_threshold: Duration,
    /// Staying `ready` this long resets the attempt counter (and with it the backoff). Default 5 s.
    pub stable_period: Duration,
    /// Bounds of the offline queue.
    pub queue: QueueLimits,
    /// Envelopes larger than this are fragmented; 0 disables fragmentation. Default 100 KiB.
    pub fragment_threshold: usize,
    /// Limits on reassembling the server's fragmented messages.
    pub reassembly: ReassemblyLimits,
    /// Deadline of a request issued without its own. Default 30 s.
    pub request_timeout: Duration,
    /// Server `req`s received on one connection and not answered yet, at most. One more closes the connection
    /// with 4004 (the server is flooding us); shells that can stop reading at the bound do so instead.
    /// Default 1000.
    pub max_inbound_requests: usize,
    /// Seed of the jitter generator. Shells seed it from their platform's randomness; tests fix it.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reconnect: ReconnectConfig::default(),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            time_jump_threshold: Duration::from_secs(5),
            stable_period: Duration::from_secs(5),
            queue: QueueLimits::default(),
            fragment_threshold: DEFAULT_FRAGMENT_THRESHOLD,
            reassembly: ReassemblyLimits::default(),
            request_timeout: Duration::from_secs(30),
            max_inbound_requests: 1000,
            seed: 0,
        }
    }
}

/// When and how fast to reconnect (PROTOCOL §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Off: the first close or failure ends in `disconnected`.
    pub enabled: bool,
    /// Default 1 s.
    pub base_delay: Duration,
    /// Default 30 s.
    pub max_delay: Duration,
    /// Attempts since the connection was last stable; `None` is unlimited. Default 10.
    pub max_attempts: Option<u32>,
    /// Uniform in `[0, cap)` (default) or `cap` plus 0..20 %.
    pub full_jitter: bool,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            enabled: true,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_attempts: Some(10),
            full_jitter: true,
        }
    }
}

/// Bounds of the offline queue: sends and requests issued while not `ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Default 1000.
    pub max_messages: usize,
    /// Sum of encoded envelope sizes. Default 1 MiB.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: 1000,
            max_bytes: 1 << 20,
        }
    }
}

/// A configuration that cannot work, naming the option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The option's name as the Rust field path, e.g. `reconnect.max_attempts`.
    pub option: &'static str,
    pub problem: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid option `{}`: {}", self.option, self.problem)
    }
}

impl core::error::Error for ConfigError {}

impl Config {
    /// Checks the combination of options.
    ///
    /// # Errors
    /// The first option that cannot work, e.g. a base delay above the maximum delay.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |option, problem| Err(ConfigError { option, problem });
        if self.reconnect.base_delay > self.reconnect.max_delay {
            return fail(
                "reconnect.base_delay",
                "must not exceed reconnect.max_delay",
            );
        }
        if self.reconnect.max_attempts == Some(0) {
            return fail(
                "reconnect.max_attempts",
                "must be at least 1 (None is unlimited)",
            );
        }
        if self.connect_timeout.is_zero() {
            return fail("connect_timeout", "must be greater than zero");
        }
        if !self.keepalive_interval.is_zero() && self.keepalive_timeout.is_zero() {
            return fail(
                "keepalive_timeout",
                "must be greater than zero when keepalive is on",
            );
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout", "must be greater than zero");
        }
        if self.max_inbound_requests == 0 {
            return fail("max_inbound_requests", "must be at least 1");
        }
        if self.reassembly.max_partial_messages == 0 {
            return fail("reassembly.max_partial_messages", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_protocols_and_valid() {
        let c = Config::default();
        assert_eq!(c.reconnect.base_delay, Duration::from_secs(1));
        assert_eq!(c.reconnect.max_delay, Duration::from_secs(30));
        assert_eq!(c.reconnect.max_attempts, Some(10));
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.stable_period, Duration::from_secs(5));
        assert_eq!(c.fragment_threshold, 100 * 1024);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validation_names_the_option() {
        let mut c = Config::default();
        c.reconnect.base_delay = Duration::from_secs(60);
        assert_eq!(c.validate().unwrap_err().option, "reconnect.base_delay");
        let mut c = Config::default();
        c.reconnect.max_attempts = Some(0);
        assert_eq!(c.validate().unwrap_err().option, "reconnect.max_attempts");
    }
}
