//! Topics: who is subscribed, each topic's epoch and `seq`, history, and fan-out (PROTOCOL §9).
//!
//! [`execute`] carries out a session's [`BrokerCommand`] against this server's broker, for every shell.

pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;

use sockeye_core::error::ErrorCode;

pub(crate) use memory::{Event, HistoryLimits, Published, Refused, Subscribed, Subscriber, Topics};
pub(crate) use redis::RedisBroker;

use tokio::sync::mpsc;

use crate::app::RpcError;
use crate::server::{ConnControl, Shared};
use crate::session::{BrokerCommand, Done, Task};

/// How a broker command is answered.
pub(crate) enum Answer {
    /// At once (the embedded broker, or a refusal): feed it to the session now.
    Now(Done),
    /// Later (Redis): run the task beside the connection.
    Later(Task),
    /// Never (`unsub`).
    Nothing,
}

/// A connection's queue of events from the broker, made when it first subscribes.
pub(crate) type EventQueue = Option<(mpsc::Sender<Event>, mpsc::Receiver<Event>)>;

/// Carries out `command` of connection `connection` against the server's broker. A subscription hands the
/// broker the connection's end of the fan-out: `events` (made here on the first one, bounded by
/// `outbound_queue`) and `control`.
pub(crate) fn execute(
    shared: &Arc<Shared>,
    connection: u64,
    command: BrokerCommand,
    control: &Arc<ConnControl>,
    events: &mut EventQueue,
) -> Answer {
    let capacity = shared.config.limits.outbound_queue;
    let mut subscriber = || {
        let (sender, _) = events.get_or_insert_with(|| mpsc::channel(capacity));
        Subscriber {
            events: sender.clone(),
            control: Arc::clone(control),
        }
    };
    match command {
        BrokerCommand::Subscribe {
            id,
            topic,
            since,
            max_bytes,
        } => {
            if shared.redis.is_none() {
                let result = shared
                    .topics
                    .subscribe(&topic, connection, subscriber(), since.as_ref())
                    .map_err(full);
                return Answer::Now(Done::Subscribed { id, topic, result });
            }
            // With Redis, the subscriber is attached here first and the answer comes from Redis.
            if let Err(e) = shared.topics.attach(&topic, connection, subscriber()) {
                return Answer::Now(Done::Subscribed {
                    id,
                    topic,
                    result: Err(full(e)),
                });
            }
            let shared = Arc::clone(shared);
            Answer::Later(Box::pin(async move {
                let result = match &shared.redis {
                    Some(redis) => redis.subscribe(&topic, since.as_ref(), max_bytes).await,
                    None => Err(RpcError::internal("no redis")),
                };
                if let Ok(subscribed) = &result {
                    shared
                        .topics
                        .observe(&topic, &subscribed.ep, subscribed.seq);
                }
                Done::Subscribed { id, topic, result }
            }))
        }
        BrokerCommand::Unsubscribe { topic } => {
            shared.topics.unsubscribe(&topic, connection);
            Answer::Nothing
        }
        BrokerCommand::Publish { id, topic, data } => {
            let Some(redis) = &shared.redis else {
                let result = shared
                    .publish(&topic, data)
                    .map(|published| published.position)
                    .map_err(|e| RpcError::new(ErrorCode::ResourceExhausted, e.to_string()));
                return Answer::Now(Done::Published { id, result });
            };
            match redis.publish(&topic, data.as_ref()) {
                Err(e) => Answer::Now(Done::Published { id, result: Err(e) }),
                Ok(answer) => Answer::Later(Box::pin(async move {
                    let result = answer.await.unwrap_or_else(|_| {
                        Err(RpcError::new(
                            ErrorCode::Unavailable,
                            "server shutting down",
                        ))
                    });
                    Done::Published { id, result }
                })),
            }
        }
    }
}

/// Takes connection `connection` off every topic in `topics` (it is gone).
pub(crate) fn detach<'a>(shared: &Shared, connection: u64, topics: impl Iterator<Item = &'a str>) {
    for topic in topics {
        shared.topics.unsubscribe(topic, connection);
    }
}

fn full(full: memory::Full) -> RpcError {
    RpcError::new(
        ErrorCode::ResourceExhausted,
        format!(
            "the server's subscription limit ({}) is reached",
            full.limit
        ),
    )
}
