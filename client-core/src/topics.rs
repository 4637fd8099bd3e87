//! The application's topic subscriptions: kept across reconnects and re-sent on every `ready`.

/// The subscribed set, plus the `sub` acknowledgements still outstanding on the current socket.
///
/// Plain `Vec`s rather than a `BTreeSet`/`BTreeMap` (each B-tree instantiation costs the browser package several
/// KB of code): `subscribed` is kept sorted and searched by bisection; `awaiting_ack` holds one entry per `sub`
/// in flight on the current socket, sorted by id (ids are allocated in increasing order, so inserts append).
#[derive(Debug, Default)]
pub(crate) struct Topics {
    subscribed: Vec<String>,
    awaiting_ack: Vec<(u64, String)>,
}

impl Topics {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.subscribed.binary_search_by(|t| t.as_str().cmp(topic))
    }

    /// Returns false if already subscribed.
    pub fn insert(&mut self, topic: &str) -> bool {
        match self.find(topic) {
            Ok(_) => false,
            Err(at) => {
                self.subscribed.insert(at, topic.to_owned());
                true
            }
        }
    }

    /// Returns false if it was not subscribed. A `sub` of the topic still awaiting its acknowledgement is
    /// forgotten too: its late reply must not count for a later subscription to the same topic.
    pub fn remove(&mut self, topic: &str) -> bool {
        match self.find(topic) {
            Ok(at) => {
                self.subscribed.remove(at);
                self.awaiting_ack.retain(|(_, t)| t != topic);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.find(topic).is_ok()
    }

    /// In sorted order: deterministic re-subscription.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.subscribed.iter().map(String::as_str)
    }

    pub fn expect_ack(&mut self, id: u64, topic: &str) {
        // Ids are never reused, so an id is never awaited twice.
        let at = self.awaiting_ack.partition_point(|(i, _)| *i < id);
        self.awaiting_ack.insert(at, (id, topic.to_owned()));
    }

    /// The topic a `res`/`err` with this id acknowledges, if it was a `sub`.
    pub fn take_ack(&mut self, id: u64) -> Option<String> {
        let at = self
            .awaiting_ack
            .binary_search_by_key(&id, |(i, _)| *i)
            .ok()?;
        Some(self.awaiting_ack.remove(at).1)
    }

    /// Acks die with their socket; the next `ready` sends fresh `sub`s.
    pub fn forget_acks(&mut self) {
        self.awaiting_ack.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// The `Vec`s against a model of their contract (B-trees, as they once were), over random operations.
    #[test]
    fn behaves_like_the_btree_model() {
        let mut rng = crate::backoff::Rng::new(5);
        let mut topics = Topics::default();
        let mut subscribed = BTreeSet::new();
        let mut acks = BTreeMap::new();
        let mut next_id = 0;
        for _ in 0..20_000 {
            let topic = format!("t{}", rng.below(40));
            match rng.below(6) {
                0 | 1 => assert_eq!(topics.insert(&topic), subscribed.insert(topic.clone())),
                2 => {
                    let removed = subscribed.remove(&topic);
                    assert_eq!(topics.remove(&topic), removed);
                    if removed {
                        acks.retain(|_, t| *t != topic);
                    }
                }
                3 => {
                    next_id += 1 + rng.below(3);
                    topics.expect_ack(next_id, &topic);
                    acks.insert(next_id, topic);
                }
                4 => {
                    let id = rng.below(next_id + 2);
                    assert_eq!(topics.take_ack(id), acks.remove(&id));
                }
                _ if rng.below(20) == 0 => {
                    topics.forget_acks();
                    acks.clear();
                }
                _ => assert_eq!(topics.contains(&topic), subscribed.contains(&topic)),
            }
            assert!(topics.iter().eq(subscribed.iter().map(String::as_str)));
        }
    }
}
