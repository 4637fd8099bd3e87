//! The application's topic subscriptions: kept across reconnects and re-sent on every `ready`.

use std::collections::{BTreeMap, BTreeSet};

/// The subscribed set, plus the `sub` acknowledgements still outstanding on the current socket.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    subscribed: BTreeSet<String>,
    awaiting_ack: BTreeMap<u64, String>,
}

impl Topics {
    /// Returns false if already subscribed.
    pub fn insert(&mut self, topic: &str) -> bool {
        self.subscribed.insert(topic.to_owned())
    }

    /// Returns false if it was not subscribed.
    pub fn remove(&mut self, topic: &str) -> bool {
        self.subscribed.remove(topic)
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.subscribed.contains(topic)
    }

    /// In sorted order: deterministic re-subscription.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.subscribed.iter().map(String::as_str)
    }

    pub fn expect_ack(&mut self, id: u64, topic: &str) {
        self.awaiting_ack.insert(id, topic.to_owned());
    }

    /// The topic a `res`/`err` with this id acknowledges, if it was a `sub`.
    pub fn take_ack(&mut self, id: u64) -> Option<String> {
        self.awaiting_ack.remove(&id)
    }

    /// Acks die with their socket; the next `ready` sends fresh `sub`s.
    pub fn forget_acks(&mut self) {
        self.awaiting_ack.clear();
    }
}
