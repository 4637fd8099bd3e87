//! Before `ready`: the origin check, the authentication decision (PROTOCOL §5), and what a peer may send
//! meanwhile (only `ping`).

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use sockeye_core::error::CloseCode;
use sockeye_core::time::Instant;

use super::{Done, Ending, Inbound, Panicked, Phase, Session};
use crate::app::Identity;
use crate::config::{Auth, Credentials};
use crate::server::Counters;

/// What the HTTP layer learned during the upgrade.
pub(crate) struct Upgraded {
    pub peer: SocketAddr,
    pub token: Option<String>,
    /// The `Origin` header, already checked against the allowlist; a refused one is closed with 1008.
    pub origin: Result<Option<String>, OriginRefused>,
}

/// Why a connection's `Origin` is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OriginRefused {
    #[error("origin not allowed")]
    NotAllowed,
    #[error("several Origin headers, or one that is not text")]
    Malformed,
}

impl Session {
    /// Decides the origin, then who is connecting: at once for no auth or a token set, through a verifier
    /// [`super::Task`] otherwise (bounded by `Limits::auth_timeout`).
    pub(super) fn authenticate(&mut self, now: Instant, upgraded: Upgraded) {
        if let Err(refused) = &upgraded.origin {
            // The header's value is not logged: logs hold no header values.
            tracing::info!(connection = self.id, peer = %upgraded.peer, reason = %refused, "origin refused");
            return self.end_refused(CloseCode::POLICY_VIOLATION, "origin not allowed");
        }
        let verdict = match &self.shared.config.auth {
            Auth::Off => Some(Identity::anonymous()),
            Auth::Tokens(tokens) => upgraded.token.and_then(|token| {
                // Compare against every token in constant time per token, so timing does not tell how much
                // of a guess was right.
                let mut found = None;
                for (known, identity) in tokens.iter() {
                    if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                        found = Some(identity.clone());
                    }
                }
                found
            }),
            Auth::Verifier(verify) => {
                let credentials = Credentials {
                    token: upgraded.token,
                    origin: upgraded.origin.ok().flatten(),
                    peer: upgraded.peer,
                };
                let verdict = AssertUnwindSafe(verify(credentials)).catch_unwind();
                let deadline = now + self.shared.config.limits.auth_timeout;
                self.phase = Phase::Authenticating { deadline };
                self.actions.push_back(super::Action::Spawn(Box::pin(
                    verdict.map(|verdict| Done::Auth(verdict.map_err(|_| Panicked))),
                )));
                return;
            }
        };
        self.on_verdict(now, Ok(verdict));
    }

    /// The verifier answered (or a static policy decided).
    pub(super) fn on_verdict(&mut self, now: Instant, verdict: Result<Option<Identity>, Panicked>) {
        if self.is_ending() {
            return;
        }
        match verdict {
            Ok(Some(identity)) => self.ready(now, identity),
            Ok(None) => self.end_refused(CloseCode::AUTH_FAILED, "authentication failed"),
            Err(Panicked) => {
                tracing::error!(connection = self.id, "auth verifier panicked");
                self.end_refused(CloseCode::INTERNAL_ERROR, "authentication failed");
            }
        }
    }

    /// Authenticated: registers with the server (so drain and shutdown reach it) and says `ready`, unless a
    /// drain started meanwhile.
    fn ready(&mut self, now: Instant, identity: Identity) {
        tracing::debug!(connection = self.id, %identity, "authenticated");
        self.identity = identity;
        self.shared
            .register(self.id, std::sync::Arc::clone(&self.control));
        self.registered = true;
        self.last_inbound = now;
        self.phase = Phase::Ready;
        if self.shared.draining.load(Ordering::SeqCst) {
            // The drain started while this connection was being upgraded.
            return self.close(CloseCode::GOING_AWAY, "Server draining");
        }
        self.out.push_text("ready");
    }

    /// Refuses the connection before `ready`.
    pub(super) fn end_refused(&mut self, code: CloseCode, reason: &str) {
        if code == CloseCode::AUTH_FAILED {
            Counters::add(&self.shared.counters.auth_failures, 1);
        }
        tracing::info!(
            connection = self.id,
            code = code.0,
            reason,
            "connection refused before ready"
        );
        self.close(code, reason);
    }

    /// While the verifier decides, a peer may only `ping`.
    pub(super) fn inbound_before_ready(&mut self, inbound: Inbound<'_>) {
        match inbound {
            Inbound::Text("ping") => {
                self.frames_in += 1;
                self.out.push_text("pong");
            }
            Inbound::Text(_) => {
                self.protocol_error();
                self.end_refused(
                    CloseCode::PROTOCOL_ERROR,
                    "text frames carry only control words",
                );
            }
            Inbound::Binary(_) => {
                self.protocol_error();
                self.end_refused(CloseCode::POLICY_VIOLATION, "binary frame before ready");
            }
            Inbound::Close => self.end(Ending::PeerClosed),
            Inbound::Control => {}
            Inbound::Failed(_) | Inbound::Ended => self.end(Ending::Gone),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
