//! Topic commands (PROTOCOL §9): `sub` (with `since`: replay or report the loss), `unsub`, `pub`, and the
//! events the broker hands over, each reaching the peer once and within the connection's output budget.

use std::sync::Arc;

use bytes::Bytes;
use sockeye_core::codec::{validate_topic, Payload, SubAck, TopicPosition};
use sockeye_core::error::ErrorCode;
use sockeye_core::time::Instant;

use super::{quoted, Action, BrokerCommand, Session};
use crate::app::{RpcError, TopicAccess};
use crate::broker::{Event, Subscribed};
use crate::outbound::Encoded;
use crate::server::check_event_size;

/// Where a subscription stands: its topic's epoch and the last `seq` queued for the peer.
pub(super) struct Delivered {
    /// Empty until the first answer (with Redis).
    ep: Arc<str>,
    seq: u64,
    /// While a `sub` waits for the broker's answer: the events that arrived meanwhile (their bytes are
    /// charged to this connection's budget, as if queued), handled once the answer is queued.
    pending: Option<Vec<Event>>,
}

fn sub_ack(ep: &str, seq: u64, recovered: Option<bool>) -> SubAck {
    SubAck {
        position: TopicPosition {
            ep: ep.to_owned(),
            seq,
        },
        recovered,
    }
}

impl Session {
    /// An event of a topic this connection subscribed to, from the broker. Queued unless this connection has
    /// unsubscribed since it was published (after the `res` to `unsub`, no `evt` of that topic follows) or
    /// already queued it (from a replay). Its bytes were taken from this connection's budget when it was
    /// published, and are given back when it is dropped.
    pub fn handle_event(&mut self, _now: Instant, event: Event) {
        if self.is_ending() {
            self.control.outbound.give(event.encoded.len());
            return;
        }
        match self.subscriptions.get_mut(&*event.topic) {
            Some(Delivered {
                pending: Some(waiting),
                ..
            }) => waiting.push(event),
            Some(delivered) if delivered.ep == event.ep && event.seq > delivered.seq => {
                delivered.seq = event.seq;
                self.queue(event.encoded);
            }
            _ => self.control.outbound.give(event.encoded.len()),
        }
    }

    /// Subscribes; the broker's answer ([`super::Done::Subscribed`]) is answered with where the topic stands,
    /// then the replay. Events that arrive before the answer (with Redis) wait ([`Delivered::pending`]).
    pub(super) fn on_subscribe(&mut self, id: u64, topic: String, since: Option<TopicPosition>) {
        if let Err(e) = self.may_subscribe(&topic) {
            return self.answer(Some(id), Err(e));
        }
        // Pending from now until the broker answers, whenever that is: an `unsub` handled meanwhile finds it
        // (and follows it to the broker), and events that arrive meanwhile wait.
        let delivered = self
            .subscriptions
            .entry(topic.clone())
            .or_insert_with(|| Delivered {
                ep: Arc::from(""),
                seq: 0,
                pending: None,
            });
        delivered.pending.get_or_insert_with(Vec::new);
        if self.broker_is_async() {
            self.inflight += 1;
        }
        // At most what this connection's budget has free; few such reads run at once (`RedisBroker`).
        let budget = &self.control.outbound;
        let max_bytes = budget.limit().saturating_sub(budget.used());
        self.actions
            .push_back(Action::Broker(BrokerCommand::Subscribe {
                id,
                topic,
                since,
                max_bytes,
            }));
    }

    fn may_subscribe(&mut self, topic: &str) -> Result<(), RpcError> {
        self.check_topic(topic, TopicAccess::Subscribe)?;
        let limit = self.shared.config.limits.max_subscriptions;
        if !self.subscriptions.contains_key(topic) && self.subscriptions.len() >= limit {
            let message = format!("too many subscriptions (limit {limit})");
            return Err(RpcError::new(ErrorCode::ResourceExhausted, message));
        }
        if self.broker_is_async() {
            self.may_start_inflight()?;
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, topic: &str) -> Result<(), RpcError> {
        if let Err(e) = validate_topic(topic) {
            self.protocol_error();
            return Err(RpcError::invalid_argument(format!("invalid topic: {e}")));
        }
        if let Some(delivered) = self.subscriptions.remove(topic) {
            self.actions
                .push_back(Action::Broker(BrokerCommand::Unsubscribe {
                    topic: topic.to_owned(),
                }));
            for event in delivered.pending.unwrap_or_default() {
                self.control.outbound.give(event.encoded.len());
            }
        }
        Ok(())
    }

    /// Publishes; with an `id`, the broker's answer says where the event went (PROTOCOL §9).
    pub(super) fn on_publish(&mut self, id: Option<u64>, topic: String, data: Option<Payload>) {
        if let Err(e) = self.check_topic(&topic, TopicAccess::Publish) {
            return self.answer_publish(id, Err(e));
        }
        if self.broker_is_async() {
            let limit = self.shared.config.limits.reassembly.max_message_bytes;
            let admitted = self
                .may_start_inflight()
                .and_then(|()| check_event_size(&topic, data.as_ref(), limit));
            if let Err(e) = admitted {
                return self.answer_publish(id, Err(e));
            }
            self.inflight += 1;
        }
        self.actions
            .push_back(Action::Broker(BrokerCommand::Publish { id, topic, data }));
    }

    /// The answer to a `pub`: `res {ep, seq}` or `err` with its `id`; without one, only an error is told (as
    /// a notice).
    pub(super) fn answer_publish(
        &mut self,
        id: Option<u64>,
        result: Result<TopicPosition, RpcError>,
    ) {
        self.answer(id, result.map(|p| Some(p.to_payload())));
    }

    fn check_topic(&self, topic: &str, access: TopicAccess) -> Result<(), RpcError> {
        if let Err(e) = validate_topic(topic) {
            self.protocol_error();
            return Err(RpcError::invalid_argument(format!("invalid topic: {e}")));
        }
        if !self.shared.app.may(&self.identity, topic, access) {
            let verb = match access {
                TopicAccess::Subscribe => "subscribe to",
                TopicAccess::Publish => "publish to",
            };
            return Err(RpcError::new(
                ErrorCode::PermissionDenied,
                format!("may not {verb} {:?}", quoted(topic)),
            ));
        }
        Ok(())
    }

    /// The broker answered a `sub`: the answer, the replay, then the events that waited, once each.
    pub(super) fn on_subscribed(
        &mut self,
        id: u64,
        topic: &str,
        result: Result<Subscribed, RpcError>,
    ) {
        let Some(delivered) = self.subscriptions.get_mut(topic) else {
            // Unsubscribed meanwhile: the answer is still owed.
            let reply = result.map(|s| Some(sub_ack(&s.ep, s.seq, s.recovered).to_payload()));
            return self.answer(Some(id), reply);
        };
        let waiting = delivered.pending.take().unwrap_or_default();
        let established = !delivered.ep.is_empty();
        match result {
            Ok(subscribed) => self.start_subscription(id, topic, subscribed),
            Err(e) => {
                if !established && self.subscriptions.remove(topic).is_some() {
                    self.actions
                        .push_back(Action::Broker(BrokerCommand::Unsubscribe {
                            topic: topic.to_owned(),
                        }));
                }
                self.answer(Some(id), Err(e));
            }
        }
        for event in waiting {
            self.handle_event(self.last_inbound, event);
        }
    }

    /// Answers a `sub` with `subscribed` and queues its replay. A replay the output budgets cannot hold is
    /// not sent; the answer says `recovered: false` instead. Live events up to the answer's `seq` are not
    /// sent after it (they were replayed, or the answer told the peer they are lost), except after a repeated
    /// `sub` without `since`, which carries on where the subscription was.
    fn start_subscription(&mut self, id: u64, topic: &str, subscribed: Subscribed) {
        let Subscribed {
            ep,
            seq,
            mut recovered,
            replay,
        } = subscribed;
        let floor = match (self.subscriptions.get(topic), recovered) {
            (Some(delivered), None) if delivered.ep == ep => delivered.seq,
            _ => seq,
        };
        let replay = match self.charge_replay(replay.into_iter().map(|(_, frame)| frame).collect())
        {
            Some(replay) => replay,
            None => {
                recovered = Some(false);
                Vec::new()
            }
        };
        let ack = sub_ack(&ep, seq, recovered);
        self.subscriptions.insert(
            topic.to_owned(),
            Delivered {
                ep,
                seq: floor,
                pending: None,
            },
        );
        self.answer(Some(id), Ok(Some(ack.to_payload())));
        for encoded in replay {
            self.queue(encoded);
        }
    }

    /// Charges replayed frames to this connection's output budget and the server's; `None` (nothing
    /// charged) when either cannot hold them all.
    fn charge_replay(&self, frames: Vec<Bytes>) -> Option<Vec<Arc<Encoded>>> {
        let total = frames.iter().map(Bytes::len).sum();
        if !self.control.outbound.try_take(total) {
            return None;
        }
        let charged: Option<Vec<Arc<Encoded>>> = frames
            .into_iter()
            .map(|frame| Encoded::charge(frame, &self.shared.outbound))
            .collect();
        if charged.is_none() {
            self.control.outbound.give(total);
        }
        charged
    }
}
