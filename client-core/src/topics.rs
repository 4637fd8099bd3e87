//! The application's topic subscriptions: kept across reconnects and re-sent on every `ready`, each with where
//! its sequence stands (PROTOCOL §9), so that a re-subscription resumes from there and every loss is reported.
//!
//! Per topic, the core remembers the epoch and the last `seq` it delivered. It sends them as `since` when it
//! re-subscribes, drops an `evt` whose `seq` it already delivered in that epoch, and turns the server's answer
//! and the live sequence into events of their own: [`Event::TopicGap`] (events lost), [`Event::TopicReset`] (a
//! new epoch: the old sequence cannot be compared) and [`Event::TopicResumed`] (nothing lost). A server
//! without §9 (no `d` in its `sub` reply) never names an epoch: its events pass through unchecked, as before.

use alloc::sync::Arc;
use alloc::{borrow::ToOwned, string::String, vec::Vec};

use crate::codec::{Payload, SubAck, TopicPosition};
use crate::connection::Event;

/// The subscribed set, plus the `sub` acknowledgements still outstanding on the current socket.
///
/// Plain `Vec`s rather than a `BTreeSet`/`BTreeMap` (each B-tree instantiation costs the browser package several
/// KB of code): `subscribed` is kept sorted by name and searched by bisection; `awaiting_ack` holds one entry
/// per `sub` in flight on the current socket, sorted by id (ids are allocated in increasing order, so inserts
/// append).
#[derive(Debug, Default)]
pub(crate) struct Topics {
    subscribed: Vec<Topic>,
    awaiting_ack: Vec<(u64, String)>,
}

#[derive(Debug)]
struct Topic {
    name: String,
    /// The epoch and the last `seq` delivered in it. `None` until a §9 server has named the epoch. The epoch is
    /// shared with every event delivered in it (an `Arc`: no allocation per event).
    position: Option<(Arc<str>, u64)>,
    /// After a `recovered: true` reply on the current socket: the replay runs through `seq` `until`, and
    /// `count` replayed events were delivered so far.
    replay: Option<Replay>,
}

#[derive(Debug, Clone, Copy)]
struct Replay {
    until: u64,
    count: u64,
}

impl Topics {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.subscribed
            .binary_search_by(|t| t.name.as_str().cmp(topic))
    }

    /// Returns false if already subscribed.
    pub fn insert(&mut self, topic: &str) -> bool {
        match self.find(topic) {
            Ok(_) => false,
            Err(at) => {
                let topic = Topic {
                    name: topic.to_owned(),
                    position: None,
                    replay: None,
                };
                self.subscribed.insert(at, topic);
                true
            }
        }
    }

    /// Returns false if it was not subscribed. A `sub` of the topic still awaiting its acknowledgement is
    /// forgotten too: its late reply must not count for a later subscription to the same topic. So is the
    /// topic's position: a later subscription starts afresh, without `since`.
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

    #[cfg(test)]
    pub fn contains(&self, topic: &str) -> bool {
        self.find(topic).is_ok()
    }

    /// In sorted order: deterministic re-subscription.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.subscribed.iter().map(|t| t.name.as_str())
    }

    /// The `since` for a `sub` of `topic`: the last event delivered, when a §9 server has named its epoch.
    pub fn since(&self, topic: &str) -> Option<TopicPosition> {
        let (ep, seq) = self
            .subscribed
            .get(self.find(topic).ok()?)?
            .position
            .as_ref()?;
        Some(TopicPosition {
            ep: String::from(&**ep),
            seq: *seq,
        })
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

    /// Acks and replays die with their socket; the next `ready` sends fresh `sub`s. Positions stay: they are
    /// what the next `sub` carries as `since`.
    pub fn forget_acks(&mut self) {
        self.awaiting_ack.clear();
        for topic in &mut self.subscribed {
            topic.replay = None;
        }
    }

    /// The server acknowledged the `sub` of `topic`; `ack` is its §9 `d` (`None` from a server without §9).
    /// Returns what the application must hear about the topic's continuity, if anything:
    ///
    /// - no position before (a first subscription): nothing; the position is the server's;
    /// - another epoch, or a `seq` behind the one delivered (the sequence cannot be compared): a reset;
    /// - `recovered: true` with events to replay: nothing yet — the resume is reported once the replayed
    ///   events (`seq` up to the ack's) have been delivered, with their count;
    /// - otherwise, events after the delivered one that will not be replayed: a gap; none: resumed, 0 replayed.
    pub fn acknowledged(&mut self, topic: &str, ack: Option<SubAck>) -> Option<Event> {
        let at = self.find(topic).ok()?;
        let state = &mut self.subscribed[at];
        state.replay = None;
        let Some(SubAck {
            position: TopicPosition { ep, seq },
            recovered,
        }) = ack
        else {
            // Nothing to compare the next events with: they pass through unchecked.
            state.position = None;
            return None;
        };
        let Some((known_ep, last)) = state.position.take() else {
            state.position = Some((ep.into(), seq));
            return None;
        };
        let topic = topic.to_owned();
        if *known_ep != *ep || seq < last {
            state.position = Some((Arc::from(ep.as_str()), seq));
            return Some(Event::TopicReset { topic, ep });
        }
        if recovered == Some(true) && seq > last {
            state.position = Some((known_ep, last));
            state.replay = Some(Replay {
                until: seq,
                count: 0,
            });
            return None;
        }
        state.position = Some((known_ep, seq));
        Some(if seq > last {
            Event::TopicGap {
                topic,
                from: last + 1,
                to: seq,
            }
        } else {
            Event::TopicResumed { topic, replayed: 0 }
        })
    }

    /// An `evt` arrived: emits it as [`Event::TopicEvent`] unless it is a duplicate or the topic is not
    /// subscribed (a late event), preceded by a gap when it skips numbers and followed by the resume once it
    /// completes a replay.
    pub fn deliver(
        &mut self,
        topic: String,
        seq: u64,
        data: Option<Payload>,
        mut emit: impl FnMut(Event),
    ) {
        let Ok(at) = self.find(&topic) else {
            return;
        };
        let state = &mut self.subscribed[at];
        let Some((ep, last)) = &mut state.position else {
            return emit(Event::TopicEvent {
                topic,
                seq,
                ep: None,
                data,
            });
        };
        if seq <= *last {
            return; // delivered already in this epoch
        }
        if let Some(replay) = state.replay.filter(|r| seq > r.until) {
            // The replay ended short of what the server announced: it is over, and the hole is a gap.
            state.replay = None;
            emit(Event::TopicResumed {
                topic: topic.clone(),
                replayed: replay.count,
            });
        }
        if seq - 1 > *last {
            emit(Event::TopicGap {
                topic: topic.clone(),
                from: *last + 1,
                to: seq - 1,
            });
        }
        *last = seq;
        let ep = Some(Arc::clone(ep));
        let Some(replay) = &mut state.replay else {
            return emit(Event::TopicEvent {
                topic,
                seq,
                ep,
                data,
            });
        };
        replay.count += 1;
        let replayed = replay.count;
        let done = seq == replay.until;
        if done {
            state.replay = None;
        }
        emit(Event::TopicEvent {
            topic: topic.clone(),
            seq,
            ep,
            data,
        });
        if done {
            emit(Event::TopicResumed { topic, replayed });
        }
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

    fn ack(ep: &str, seq: u64, recovered: Option<bool>) -> Option<SubAck> {
        Some(SubAck {
            position: TopicPosition { ep: ep.into(), seq },
            recovered,
        })
    }

    /// What `deliver` emits, in a few words each.
    fn deliver(topics: &mut Topics, seq: u64) -> Vec<String> {
        let mut out = Vec::new();
        topics.deliver("t".into(), seq, None, |e| out.push(describe(&e)));
        out
    }

    fn describe(event: &Event) -> String {
        match event {
            Event::TopicEvent { seq, ep, .. } => {
                format!("evt {seq} {}", ep.as_deref().unwrap_or("-"))
            }
            Event::TopicGap { from, to, .. } => format!("gap {from}..={to}"),
            Event::TopicReset { ep, .. } => format!("reset {ep}"),
            Event::TopicResumed { replayed, .. } => format!("resumed {replayed}"),
            other => format!("{other:?}"),
        }
    }

    fn subscribed_at(ep: &str, seq: u64) -> Topics {
        let mut topics = Topics::default();
        topics.insert("t");
        assert_eq!(topics.acknowledged("t", ack(ep, seq, None)), None);
        topics
    }

    #[test]
    fn a_first_subscription_takes_the_servers_position_and_reports_nothing() {
        let mut topics = subscribed_at("e", 7);
        assert_eq!(
            topics.since("t"),
            Some(TopicPosition {
                ep: "e".into(),
                seq: 7
            })
        );
        assert_eq!(deliver(&mut topics, 8), ["evt 8 e"]);
        assert_eq!(topics.since("t").map(|p| p.seq), Some(8));
    }

    #[test]
    fn duplicates_are_dropped_and_a_skip_is_a_gap() {
        let mut topics = subscribed_at("e", 0);
        assert_eq!(deliver(&mut topics, 1), ["evt 1 e"]);
        assert!(deliver(&mut topics, 1).is_empty());
        assert_eq!(deliver(&mut topics, 4), ["gap 2..=3", "evt 4 e"]);
        assert!(
            deliver(&mut topics, 3).is_empty(),
            "behind the delivered seq"
        );
    }

    #[test]
    fn a_recovered_replay_is_counted_and_reported_when_complete() {
        let mut topics = subscribed_at("e", 2);
        topics.forget_acks();
        assert_eq!(topics.acknowledged("t", ack("e", 5, Some(true))), None);
        assert_eq!(deliver(&mut topics, 3), ["evt 3 e"]);
        assert!(deliver(&mut topics, 3).is_empty());
        assert_eq!(deliver(&mut topics, 4), ["evt 4 e"]);
        assert_eq!(deliver(&mut topics, 5), ["evt 5 e", "resumed 3"]);
        assert_eq!(deliver(&mut topics, 6), ["evt 6 e"]);
    }

    #[test]
    fn a_replay_cut_short_is_resumed_with_what_came_and_the_hole_is_a_gap() {
        let mut topics = subscribed_at("e", 2);
        assert_eq!(topics.acknowledged("t", ack("e", 5, Some(true))), None);
        assert_eq!(deliver(&mut topics, 3), ["evt 3 e"]);
        assert_eq!(
            deliver(&mut topics, 7),
            ["resumed 1", "gap 4..=6", "evt 7 e"]
        );
    }

    #[test]
    fn acknowledgements_report_gap_reset_or_resume() {
        let cases = [
            (ack("e", 9, Some(false)), "gap 5..=9", 9),
            (ack("e", 9, None), "gap 5..=9", 9),
            (ack("e", 4, Some(false)), "resumed 0", 4),
            (ack("e", 4, Some(true)), "resumed 0", 4),
            (ack("f", 2, Some(false)), "reset f", 2),
            (ack("f", 9, Some(true)), "reset f", 9),
            (ack("e", 3, Some(true)), "reset e", 3),
        ];
        for (ack, expected, seq) in cases {
            let mut topics = subscribed_at("e", 4);
            let event = topics.acknowledged("t", ack.clone());
            assert_eq!(
                event.as_ref().map(describe).as_deref(),
                Some(expected),
                "{ack:?}"
            );
            assert_eq!(topics.since("t").map(|p| p.seq), Some(seq));
        }
    }

    #[test]
    fn without_section_9_events_pass_through_unchecked() {
        let mut topics = Topics::default();
        topics.insert("t");
        assert_eq!(topics.acknowledged("t", None), None);
        assert_eq!(topics.since("t"), None);
        for seq in [5, 5, 2, 9] {
            assert_eq!(deliver(&mut topics, seq), [format!("evt {seq} -")]);
        }
    }

    #[test]
    fn unsubscribing_forgets_the_position() {
        let mut topics = subscribed_at("e", 3);
        topics.remove("t");
        assert!(deliver(&mut topics, 4).is_empty(), "not subscribed");
        topics.insert("t");
        assert_eq!(topics.since("t"), None);
    }
}
