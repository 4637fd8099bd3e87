//! Request correlation: ids, the pending table, and per-request deadlines counted from issue time.

use std::collections::{BTreeMap, BTreeSet};

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
}

impl RequestError {
    pub fn local(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
            data: None,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RequestError {}

/// Where a pending request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// In the offline queue, not yet sent.
    Queued,
    /// Sent on the current socket; fails with `UNAVAILABLE` if that socket drops.
    InFlight,
}

#[derive(Debug)]
struct Pending {
    deadline: Instant,
    stage: Stage,
}

/// The table of requests that have neither a reply nor a failure yet.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl Requests {
    /// A fresh wire id; shared with `sub`/`unsub`, so ids never collide on the connection.
    pub fn allocate_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn insert(&mut self, id: u64, deadline: Instant, stage: Stage) {
        self.pending.insert(id, Pending { deadline, stage });
        self.deadlines.insert((deadline, id));
    }

    pub fn set_stage(&mut self, id: u64, stage: Stage) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.stage = stage;
        }
    }

    /// Removes a request; returns its stage if it was pending.
    pub fn remove(&mut self, id: u64) -> Option<Stage> {
        let p = self.pending.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        Some(p.stage)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes and returns every request whose deadline is at or before `now`, earliest first.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(u64, Stage)> {
        let mut expired = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            if let Some(stage) = self.remove(id) {
                expired.push((id, stage));
            }
        }
        expired
    }

    /// Ids of requests in the given stage, in id (issue) order.
    pub fn ids_in(&self, stage: Stage) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| p.stage == stage)
            .map(|(id, _)| *id)
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
        r.insert(a, Instant::from_millis(5), Stage::InFlight);
        r.remove(a);
        assert_ne!(r.allocate_id(), a);
    }

    #[test]
    fn expiry_takes_only_what_is_due_in_deadline_order() {
        let mut r = Requests::default();
        for (id, at) in [(1, 30), (2, 10), (3, 20)] {
            r.insert(id, Instant::from_millis(at), Stage::Queued);
        }
        assert_eq!(r.next_deadline(), Some(Instant::from_millis(10)));
        let due: Vec<u64> = r
            .take_expired(Instant::from_millis(20))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(due, [2, 3]);
        assert_eq!(r.next_deadline(), Some(Instant::from_millis(30)));
    }
}
