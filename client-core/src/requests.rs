//! Request correlation: ids, the pending table, and per-request deadlines counted from issue time.

use alloc::{string::String, vec::Vec};
use core::fmt;

use crate::codec::Payload;
use crate::error::ErrorCode;
use crate::time::Instant;

/// The id of a request on the wire; unique among the client's requests (ids are never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How a request failed: a server `err` reply, or a local failure in the same vocabulary
/// (`DEADLINE_EXCEEDED`, `UNAVAILABLE`, `CANCELLED`).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
    /// The `d` of a server `err`, if any.
    pub data: Option<Payload>,
    /// True when the peer sent this `err`; false for failures raised locally. A server may answer with any
    /// code, `UNAVAILABLE` included, so the code alone cannot tell a timeout from a server's refusal.
    pub from_server: bool,
}

impl RequestError {
    /// A failure raised on this side (timeout, lost connection, cancellation, or a local handler's error).
    pub fn local(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
            data: None,
            from_server: false,
        }
    }

    /// An `err` the peer sent.
    pub fn from_peer(code: ErrorCode, message: String, data: Option<Payload>) -> Self {
        RequestError {
            code,
            message,
            data,
            from_server: true,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl core::error::Error for RequestError {}

/// Where a pending request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// In the offline queue, not yet sent.
    Queued,
    /// Sent on the current socket; fails with `UNAVAILABLE` if that socket drops.
    InFlight,
}

/// What a pending id is, so its end is reported as the right event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `req`: ends with a [`crate::Event::Reply`].
    Call,
    /// A `pub` with an `id` (PROTOCOL §9): ends with a [`crate::Event::Published`].
    Publish,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    deadline: Instant,
    stage: Stage,
    kind: Kind,
}

/// The table of requests that have neither a reply nor a failure yet.
///
/// Two sorted `Vec`s rather than B-trees (each `BTreeMap`/`BTreeSet` instantiation costs the browser package
/// several KB of code): `pending` sorted by id (ids are allocated in increasing order, so inserts append), and
/// `deadlines` sorted by `(deadline, id)`, so the next deadline is its first element and expiry drains a prefix.
/// Lookups are binary searches; inserting and removing shift the tail, which is cheap for the few thousand
/// requests a client keeps in flight.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    next_id: u64,
    pending: Vec<Pending>,
    deadlines: Vec<(Instant, u64)>,
}

impl Requests {
    /// A fresh wire id; shared with `sub`/`unsub`, so ids never collide on the connection.
    pub fn allocate_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Where `id` is in `pending`: `Ok(index)` when pending, else `Err(insertion point)`.
    fn find(&self, id: u64) -> Result<usize, usize> {
        // Replies mostly arrive in issue order: the oldest request is the likeliest.
        if self.pending.first().is_some_and(|p| p.id == id) {
            return Ok(0);
        }
        self.pending.binary_search_by_key(&id, |p| p.id)
    }

    /// Inserts a request; an id already pending is replaced.
    pub fn insert(&mut self, id: u64, deadline: Instant, stage: Stage, kind: Kind) {
        self.remove(id);
        let Err(at) = self.find(id) else { return };
        self.pending.insert(
            at,
            Pending {
                id,
                deadline,
                stage,
                kind,
            },
        );
        let key = (deadline, id);
        let at = self.deadlines.partition_point(|d| *d < key);
        self.deadlines.insert(at, key);
    }

    pub fn set_stage(&mut self, id: u64, stage: Stage) {
        if let Ok(i) = self.find(id) {
            self.pending[i].stage = stage;
        }
    }

    /// Removes a request; returns its stage and kind if it was pending.
    pub fn remove(&mut self, id: u64) -> Option<(Stage, Kind)> {
        let p = self.pending.remove(self.find(id).ok()?);
        if let Ok(i) = self.deadlines.binary_search(&(p.deadline, id)) {
            self.deadlines.remove(i);
        }
        Some((p.stage, p.kind))
    }

    pub fn contains(&self, id: u64) -> bool {
        self.find(id).is_ok()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes and returns every request whose deadline is at or before `now`, earliest first.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(u64, Stage, Kind)> {
        let due = self.deadlines.partition_point(|(at, _)| *at <= now);
        if due == 0 {
            return Vec::new();
        }
        let mut expired = Vec::with_capacity(due);
        for &(_, id) in &self.deadlines[..due] {
            if let Ok(i) = self.find(id) {
                expired.push((id, self.pending[i].stage, self.pending[i].kind));
            }
        }
        self.deadlines.drain(..due);
        // `deadlines` mirrors `pending`: what was due there is exactly what is due here. One pass, not one
        // shift per expired request.
        self.pending.retain(|p| p.deadline > now);
        expired
    }

    /// Ids of requests in the given stage, in id (issue) order.
    pub fn ids_in(&self, stage: Stage) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|p| p.stage == stage)
            .map(|p| p.id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused() {
        let mut r = Requests::default();
        let a = r.allocate_id();
        r.insert(a, Instant::from_millis(5), Stage::InFlight, Kind::Call);
        r.remove(a);
        assert_ne!(r.allocate_id(), a);
    }

    /// The sorted-`Vec` table against a model of its contract (B-trees, as it once was), over random operations.
    #[test]
    fn behaves_like_the_btree_model() {
        use std::collections::{BTreeMap, BTreeSet};

        let mut rng = crate::backoff::Rng::new(11);
        let mut table = Requests::default();
        let mut pending: BTreeMap<u64, (Instant, Stage, Kind)> = BTreeMap::new();
        let mut deadlines: BTreeSet<(Instant, u64)> = BTreeSet::new();
        let mut now = 0;
        for _ in 0..20_000 {
            match rng.below(6) {
                0 | 1 => {
                    let id = table.allocate_id();
                    let at = Instant::from_millis(now + rng.below(500));
                    let stage = if rng.below(2) == 0 {
                        Stage::Queued
                    } else {
                        Stage::InFlight
                    };
                    let kind = if rng.below(2) == 0 {
                        Kind::Call
                    } else {
                        Kind::Publish
                    };
                    table.insert(id, at, stage, kind);
                    pending.insert(id, (at, stage, kind));
                    deadlines.insert((at, id));
                }
                2 => {
                    let id = rng.below(table.next_id + 2);
                    let expected = pending.remove(&id).map(|(at, stage, kind)| {
                        deadlines.remove(&(at, id));
                        (stage, kind)
                    });
                    assert_eq!(table.remove(id), expected);
                }
                3 => {
                    let id = rng.below(table.next_id + 2);
                    table.set_stage(id, Stage::InFlight);
                    if let Some(p) = pending.get_mut(&id) {
                        p.1 = Stage::InFlight;
                    }
                }
                4 => {
                    now += rng.below(100);
                    let at = Instant::from_millis(now);
                    let mut expected = Vec::new();
                    while let Some(&(deadline, id)) = deadlines.first() {
                        if deadline > at {
                            break;
                        }
                        deadlines.pop_first();
                        let (_, stage, kind) = pending.remove(&id).unwrap();
                        expected.push((id, stage, kind));
                    }
                    assert_eq!(table.take_expired(at), expected);
                }
                _ => {
                    let id = rng.below(table.next_id + 2);
                    assert_eq!(table.contains(id), pending.contains_key(&id));
                }
            }
            assert_eq!(table.len(), pending.len());
            assert_eq!(table.next_deadline(), deadlines.first().map(|(at, _)| *at));
            for stage in [Stage::Queued, Stage::InFlight] {
                let ids: Vec<u64> = pending
                    .iter()
                    .filter(|(_, (_, s, _))| *s == stage)
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(table.ids_in(stage), ids);
            }
        }
    }

    #[test]
    fn expiry_takes_only_what_is_due_in_deadline_order() {
        let mut r = Requests::default();
        for (id, at) in [(1, 30), (2, 10), (3, 20)] {
            r.insert(id, Instant::from_millis(at), Stage::Queued, Kind::Call);
        }
        assert_eq!(r.next_deadline(), Some(Instant::from_millis(10)));
        let due: Vec<u64> = r
            .take_expired(Instant::from_millis(20))
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(due, [2, 3]);
        assert_eq!(r.next_deadline(), Some(Instant::from_millis(30)));
    }
}
