//! The topic registry: who is subscribed to what, per-topic `seq`, and fan-out with bounded queues.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use sockeye_core::codec::{Envelope, Payload};
use sockeye_core::error::CloseCode;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Bytes;

use crate::server::ConnControl;

/// One queued event: the encoded `evt` envelope (shared by every subscriber) and its topic, so a connection
/// can drop events of a topic it has unsubscribed from meanwhile.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub topic: Arc<str>,
    pub envelope: Bytes,
}

/// One subscriber's end of the fan-out: its bounded event queue and the means to close it when the queue
/// overflows.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub events: mpsc::Sender<Event>,
    pub control: Arc<ConnControl>,
}

struct Topic {
    name: Arc<str>,
    /// The `seq` of the last event published; the first event is 1.
    seq: u64,
    /// By connection id: iteration order (and so delivery order across subscribers) is deterministic.
    subscribers: BTreeMap<u64, Subscriber>,
}

/// Every topic subscribed to or published to, with its `seq`. A topic's `seq` counts every publish for the
/// server's lifetime, subscribers or not, so a client that re-subscribes after a reconnect can tell from the
/// numbers whether it missed events. Topics without subscribers are forgotten only when more than
/// [`MAX_IDLE_TOPICS`] of them pile up (a bound on what peers can make the server remember).
#[derive(Default)]
pub(crate) struct Topics {
    inner: Mutex<HashMap<String, Topic>>,
}

/// Topics without subscribers kept for their `seq`; beyond this, idle topics are dropped (their `seq` restarts).
pub(crate) const MAX_IDLE_TOPICS: usize = 65_536;

/// What a publish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fanout {
    pub delivered: usize,
    pub overflowed: usize,
}

impl Topics {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        // A panic while holding this lock cannot leave the map half-updated in a way that matters (each
        // operation is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn subscribe(&self, topic: &str, connection: u64, subscriber: Subscriber) {
        let mut topics = self.lock();
        entry(&mut topics, topic)
            .subscribers
            .insert(connection, subscriber);
    }

    pub fn unsubscribe(&self, topic: &str, connection: u64) {
        if let Some(entry) = self.lock().get_mut(topic) {
            entry.subscribers.remove(&connection);
        }
    }

    /// Encodes one `evt` with the topic's next `seq` and queues it for every subscriber without waiting. A
    /// subscriber whose queue is full is removed and asked to close with 1013; one whose connection is gone is
    /// removed. `seq` is assigned and queued under one lock, so every subscriber sees a topic's events in
    /// `seq` order.
    ///
    /// # Errors
    /// The encoded `evt`'s size when it exceeds `max_bytes` (subscribers would refuse it); nothing is sent and
    /// `seq` does not move.
    pub fn publish(
        &self,
        topic: &str,
        data: Option<Payload>,
        max_bytes: usize,
    ) -> Result<Fanout, usize> {
        let mut topics = self.lock();
        let entry = entry(&mut topics, topic);
        let evt = Envelope::Evt {
            topic: topic.to_owned(),
            seq: entry.seq + 1,
            data,
        };
        let bytes = evt.encode();
        if bytes.len() > max_bytes {
            return Err(bytes.len());
        }
        entry.seq += 1;
        let event = Event {
            topic: Arc::clone(&entry.name),
            envelope: Bytes::from(bytes),
        };
        let mut fanout = Fanout::default();
        entry.subscribers.retain(
            |_, subscriber| match subscriber.events.try_send(event.clone()) {
                Ok(()) => {
                    fanout.delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    fanout.overflowed += 1;
                    subscriber.control.request_close(
                        CloseCode::TRY_AGAIN_LATER,
                        "outbound queue overflow: subscriber too slow".to_owned(),
                        false,
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
        Ok(fanout)
    }

    /// How many topics have subscribers.
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|t| !t.subscribers.is_empty())
            .count()
    }
}

/// The topic's entry, created with `seq` 0 if new. Creating one past the bound first forgets idle topics.
fn entry<'a>(topics: &'a mut HashMap<String, Topic>, topic: &str) -> &'a mut Topic {
    if !topics.contains_key(topic) {
        if topics.len() >= MAX_IDLE_TOPICS {
            topics.retain(|_, t| !t.subscribers.is_empty());
        }
        topics.insert(
            topic.to_owned(),
            Topic {
                name: Arc::from(topic),
                seq: 0,
                subscribers: BTreeMap::new(),
            },
        );
    }
    topics
        .get_mut(topic)
        .expect("inserted above when it was missing")
}
