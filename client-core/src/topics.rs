//! The application's topic subscriptions: reference-counted, kept across reconnects and re-sent on every
//! `ready`, each with where its sequence stands (PROTOCOL §9), so that a re-subscription resumes from there and
//! every loss is reported.
//!
//! Per topic, the core counts the application's subscribers (the first sends `sub`, the last unsubscribe sends
//! `unsub`), reports its state as [`Event::SubscriptionChanged`] (pending → live on each socket that
//! acknowledges it, back to pending when that socket ends, failed when refused), remembers the epoch and the
//! last `seq` it delivered, sends them as `since` when it re-subscribes, drops an `evt` whose `seq` it already
//! delivered in that epoch, and turns the server's answer and the live sequence into events of their own:
//! [`Event::TopicGap`] (events lost), [`Event::TopicReset`] (a new epoch: the old sequence cannot be compared)
//! and [`Event::TopicResumed`] (nothing lost). A server without §9 (no `d` in its `sub` reply) never names an
//! epoch: its events pass through unchecked, as before.

use alloc::sync::Arc;
use alloc::{borrow::ToOwned, string::String, vec::Vec};

use crate::codec::{Payload, SubAck, TopicPosition};
use crate::connection::{Event, SocketId};
use crate::requests::RequestError;

/// Where one topic's subscription stands, as [`Event::SubscriptionChanged`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum SubscriptionState {
    /// Not acknowledged on the current connection (yet, or again after a reconnect): events published now
    /// may be missed (a server with history replays them once it acknowledges).
    Pending,
    /// Acknowledged on the current connection: every event published from now on is delivered.
    Live,
    /// Refused by the server: the subscription has ended for every subscriber.
    Failed(RequestError),
}

impl SubscriptionState {
    /// `"pending"`, `"live"` or `"failed"`, as the JS API spells them.
    pub fn name(&self) -> &'static str {
        match self {
            SubscriptionState::Pending => "pending",
            SubscriptionState::Live => "live",
            SubscriptionState::Failed(_) => "failed",
        }
    }
}

/// The subscribed set, sorted by name.
///
/// A plain `Vec` rather than a `BTreeMap` (each B-tree instantiation costs the browser package several KB of
/// code), searched by bisection.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    subscribed: Vec<Topic>,
}

#[derive(Debug)]
struct Topic {
    name: String,
    /// How many times the application subscribed without unsubscribing; at least 1.
    subscribers: u32,
    /// The socket that acknowledged the `sub`: the topic is live while that socket is the current one.
    live_on: Option<SocketId>,
    /// The epoch and the last `seq` delivered in it. `None` until a §9 server has named the epoch. The epoch is
    /// shared with every event delivered in it (an `Arc`: no allocation per event).
    position: Option<(Arc<str>, u64)>,
    /// After a `recovered: true` reply: the replay runs through `seq` `until`, and `count` replayed events were
    /// delivered so far. Counts only on the socket it was announced on: it dies with that socket, with no
    /// reset to forget.
    replay: Option<Replay>,
}

#[derive(Debug, Clone, Copy)]
struct Replay {
    socket: SocketId,
    until: u64,
    count: u64,
}

impl Topics {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.subscribed
            .binary_search_by(|t| t.name.as_str().cmp(topic))
    }

    /// One more subscriber; true when it is the topic's first (a `sub` is due).
    pub fn insert(&mut self, topic: &str) -> bool {
        match self.find(topic) {
            Ok(at) => {
                let t = &mut self.subscribed[at];
                t.subscribers = t.subscribers.saturating_add(1);
                false
            }
            Err(at) => {
                let topic = Topic {
                    name: topic.to_owned(),
                    subscribers: 1,
                    live_on: None,
                    position: None,
                    replay: None,
                };
                self.subscribed.insert(at, topic);
                true
            }
        }
    }

    /// One subscriber fewer: `None` when the topic was not subscribed, `Some(true)` when that was the last
    /// one and the topic is gone (an `unsub` is due), with its position: a later subscription starts afresh,
    /// without `since`.
    pub fn release(&mut self, topic: &str) -> Option<bool> {
        let at = self.find(topic).ok()?;
        let t = &mut self.subscribed[at];
        t.subscribers -= 1;
        if t.subscribers > 0 {
            return Some(false);
        }
        self.subscribed.remove(at);
        Some(true)
    }

    /// The server refused the topic: it ends for every subscriber. Returns false if it was not subscribed.
    pub fn remove(&mut self, topic: &str) -> bool {
        match self.find(topic) {
            Ok(at) => {
                self.subscribed.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// The topic's state while `current` is the socket (`None`: no socket); `None` when not subscribed.
    pub fn state(&self, topic: &str, current: Option<SocketId>) -> Option<SubscriptionState> {
        let t = &self.subscribed[self.find(topic).ok()?];
        Some(if t.live_on.is_some() && t.live_on == current {
            SubscriptionState::Live
        } else {
            SubscriptionState::Pending
        })
    }

    /// The topics live on `socket`, which has just ended: each is pending again.
    pub fn live_on(&self, socket: SocketId) -> impl Iterator<Item = &str> {
        self.subscribed
            .iter()
            .filter(move |t| t.live_on == Some(socket))
            .map(|t| t.name.as_str())
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

    /// The server acknowledged the `sub` of `topic`; `ack` is its §9 `d` (`None` from a server without §9).
    /// Returns what the application must hear about the topic's continuity, if anything:
    ///
    /// - no position before (a first subscription): nothing; the position is the server's;
    /// - another epoch, or a `seq` behind the one delivered (the sequence cannot be compared): a reset;
    /// - `recovered: true` with events to replay: nothing yet — the resume is reported once the replayed
    ///   events (`seq` up to the ack's) have been delivered, with their count;
    /// - otherwise, events after the delivered one that will not be replayed: a gap; none: resumed, 0 replayed.
    pub fn acknowledged(
        &mut self,
        topic: &str,
        socket: SocketId,
        ack: Option<SubAck>,
    ) -> Option<Event> {
        let at = self.find(topic).ok()?;
        let state = &mut self.subscribed[at];
        state.live_on = Some(socket);
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
                socket,
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

    /// An `evt` arrived on `socket`: emits it as [`Event::TopicEvent`] unless it is a duplicate or the topic is not
    /// subscribed (a late event), preceded by a gap when it skips numbers and followed by the resume once it
    /// completes a replay.
    pub fn deliver(
        &mut self,
        socket: SocketId,
        topic: String,
        seq: u64,
        data: Option<Payload>,
        mut emit: impl FnMut(Event),
    ) {
        let Ok(at) = self.find(&topic) else {
            return;
        };
        let state = &mut self.subscribed[at];
        // A replay announced on an earlier socket ended with it.
        state.replay = state.replay.filter(|r| r.socket == socket);
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
    use std::collections::BTreeMap;

    const S: SocketId = SocketId(1);

    /// The sorted `Vec` with counts against a map of counts, over random operations.
    #[test]
    fn behaves_like_a_counted_btree_model() {
        let mut rng = crate::backoff::Rng::new(5);
        let mut topics = Topics::default();
        let mut model: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..20_000 {
            let topic = format!("t{}", rng.below(40));
            match rng.below(5) {
                0 | 1 => {
                    let count = model.entry(topic.clone()).or_default();
                    *count += 1;
                    assert_eq!(topics.insert(&topic), *count == 1);
                }
                2 => {
                    let expected = model.get_mut(&topic).map(|count| {
                        *count -= 1;
                        *count == 0
                    });
                    if expected == Some(true) {
                        model.remove(&topic);
                    }
                    assert_eq!(topics.release(&topic), expected);
                }
                3 if rng.below(10) == 0 => {
                    assert_eq!(topics.remove(&topic), model.remove(&topic).is_some())
                }
                _ => assert_eq!(topics.contains(&topic), model.contains_key(&topic)),
            }
            assert!(topics.iter().eq(model.keys().map(String::as_str)));
        }
    }

    #[test]
    fn a_topic_is_live_only_on_the_socket_that_acknowledged_it() {
        let mut topics = Topics::default();
        topics.insert("t");
        assert_eq!(topics.state("t", Some(S)), Some(SubscriptionState::Pending));
        topics.acknowledged("t", S, None);
        assert_eq!(topics.state("t", Some(S)), Some(SubscriptionState::Live));
        assert!(topics.live_on(S).eq(["t"]));
        assert_eq!(topics.state("t", None), Some(SubscriptionState::Pending));
        assert_eq!(
            topics.state("t", Some(SocketId(2))),
            Some(SubscriptionState::Pending)
        );
        assert_eq!(topics.state("u", Some(S)), None);
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
        topics.deliver(S, "t".into(), seq, None, |e| out.push(describe(&e)));
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
        assert_eq!(topics.acknowledged("t", S, ack(ep, seq, None)), None);
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
        assert_eq!(topics.acknowledged("t", S, ack("e", 5, Some(true))), None);
        assert_eq!(deliver(&mut topics, 3), ["evt 3 e"]);
        assert!(deliver(&mut topics, 3).is_empty());
        assert_eq!(deliver(&mut topics, 4), ["evt 4 e"]);
        assert_eq!(deliver(&mut topics, 5), ["evt 5 e", "resumed 3"]);
        assert_eq!(deliver(&mut topics, 6), ["evt 6 e"]);
    }

    #[test]
    fn a_replay_cut_short_is_resumed_with_what_came_and_the_hole_is_a_gap() {
        let mut topics = subscribed_at("e", 2);
        assert_eq!(topics.acknowledged("t", S, ack("e", 5, Some(true))), None);
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
            let event = topics.acknowledged("t", S, ack.clone());
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
        assert_eq!(topics.acknowledged("t", S, None), None);
        assert_eq!(topics.since("t"), None);
        for seq in [5, 5, 2, 9] {
            assert_eq!(deliver(&mut topics, seq), [format!("evt {seq} -")]);
        }
    }

    #[test]
    fn unsubscribing_forgets_the_position() {
        let mut topics = subscribed_at("e", 3);
        topics.insert("t");
        assert_eq!(topics.release("t"), Some(false), "one subscriber left");
        assert_eq!(topics.since("t").map(|p| p.seq), Some(3));
        assert_eq!(topics.release("t"), Some(true));
        assert!(deliver(&mut topics, 4).is_empty(), "not subscribed");
        topics.insert("t");
        assert_eq!(topics.since("t"), None);
    }

    #[test]
    fn a_replay_announced_on_an_earlier_socket_ends_with_it() {
        let mut topics = subscribed_at("e", 2);
        assert_eq!(topics.acknowledged("t", S, ack("e", 5, Some(true))), None);
        assert_eq!(deliver(&mut topics, 3), ["evt 3 e"]);
        // The socket ended before the replay completed; on the next one, events count as live again.
        let mut out = Vec::new();
        topics.deliver(SocketId(2), "t".into(), 4, None, |e| out.push(describe(&e)));
        topics.deliver(SocketId(2), "t".into(), 5, None, |e| out.push(describe(&e)));
        assert_eq!(out, ["evt 4 e", "evt 5 e"]);
    }
}
