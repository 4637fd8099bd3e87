//! Everything that lives and dies with one socket, held by the connection as `Option<Link>`.
//!
//! A socket's deadlines, its half-reassembled messages, the server requests it carried and the `sub`
//! acknowledgements it owes all mean nothing once it is gone. Holding them in one value that is dropped with
//! the socket (`link.take()`) means no field can be forgotten when a connection ends, and none can disagree
//! with the socket it belongs to: the states without a socket (`reconnecting`, `disconnected`) have no `Link`.

use alloc::{borrow::ToOwned, string::String, vec::Vec};

use crate::codec::{Reassembler, ReassemblyLimits};
use crate::connection::SocketId;
use crate::time::Instant;

/// One socket, from `Output::OpenSocket` until it closes, fails or is closed.
#[derive(Debug)]
pub(crate) struct Link {
    pub socket: SocketId,
    pub deadlines: Deadlines,
    pub reassembler: Reassembler,
    /// Ids of server `req`s received on this socket and not answered yet.
    pub inbound_requests: Vec<u64>,
    /// The `sub`s sent on this socket and not yet answered, sorted by id (ids are allocated in increasing
    /// order, so inserts append): `(id, topic)`.
    sub_acks: Vec<(u64, String)>,
}

/// The socket's deadlines. The backoff deadline is not here: it belongs to `reconnecting`, which has no
/// socket, and lives in [`Status::Reconnecting`](crate::Status::Reconnecting) itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// `ready` is due by then (PROTOCOL §7); cleared on `ready`.
    pub connect: Option<Instant>,
    /// The next keepalive `ping`.
    pub ping: Option<Instant>,
    /// A frame is due by then, after a `ping`.
    pub pong: Option<Instant>,
    /// The probe awaiting `pong` was sent because time jumped or the shell woke us. Another jump before an
    /// answer does not renew it: where timers are always late (an intensively throttled tab), renewing on
    /// every jump would never declare a dead connection dead.
    pub pong_after_wake: bool,
    /// Staying `ready` until then resets the attempt counter.
    pub stable: Option<Instant>,
}

impl Deadlines {
    pub fn earliest(&self) -> Option<Instant> {
        [self.connect, self.ping, self.pong, self.stable]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Link {
    /// A socket being opened now, due `ready` by `connect_deadline`.
    pub fn new(socket: SocketId, connect_deadline: Instant, limits: ReassemblyLimits) -> Self {
        Link {
            socket,
            deadlines: Deadlines {
                connect: Some(connect_deadline),
                ..Deadlines::default()
            },
            reassembler: Reassembler::new(limits),
            inbound_requests: Vec::new(),
            sub_acks: Vec::new(),
        }
    }

    /// The earliest deadline of this socket, its reassembly included.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.deadlines.earliest(), self.reassembler.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// A `sub` with this id went out on this socket for `topic`.
    pub fn expect_ack(&mut self, id: u64, topic: &str) {
        // Ids are never reused, so an id is never awaited twice.
        let at = self.sub_acks.partition_point(|(i, _)| *i < id);
        self.sub_acks.insert(at, (id, topic.to_owned()));
    }

    /// The topic a `res`/`err` with this id acknowledges, if it answers a `sub` sent on this socket.
    pub fn take_ack(&mut self, id: u64) -> Option<String> {
        let at = self.sub_acks.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        Some(self.sub_acks.remove(at).1)
    }

    /// The topic was unsubscribed: a late answer to its `sub` must not count for a later subscription.
    pub fn forget_acks_of(&mut self, topic: &str) {
        self.sub_acks.retain(|(_, t)| t != topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The sorted `Vec` against a map, over random operations.
    #[test]
    fn acks_behave_like_a_map_by_id() {
        let mut rng = crate::backoff::Rng::new(7);
        let mut link = Link::new(
            SocketId(1),
            Instant::from_millis(0),
            ReassemblyLimits::default(),
        );
        let mut model = BTreeMap::new();
        let mut next_id = 0;
        for _ in 0..20_000 {
            let topic = format!("t{}", rng.below(10));
            match rng.below(3) {
                0 => {
                    next_id += 1 + rng.below(3);
                    link.expect_ack(next_id, &topic);
                    model.insert(next_id, topic);
                }
                1 => {
                    let id = rng.below(next_id + 2);
                    assert_eq!(link.take_ack(id), model.remove(&id));
                }
                _ => {
                    link.forget_acks_of(&topic);
                    model.retain(|_, t| *t != topic);
                }
            }
        }
    }
}
