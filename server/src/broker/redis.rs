//! Scale-out over Redis (`--redis`): several server instances sharing one Redis serve the same topics as one
//! server would (PROTOCOL §9).
//!
//! Redis holds each topic's epoch (`sockeye:{TOPIC}:ep`, created with `SET NX` semantics inside a script),
//! counter (`…:seq`) and history (`…:h`, a stream capped by count and trimmed by age). A publish is one Lua
//! script: take the next `seq`, append to the history, and `PUBLISH` the event on one channel that every
//! instance subscribes to, so every instance sees every topic's events in one order with one dense `seq`.
//! Each instance encodes an event once and fans it out to its own subscribers through the local registry
//! ([`Topics::deliver`]).
//!
//! Publishes leave an instance in the order they were made: one task sends them to Redis as pipelined
//! batches. A subscription is attached locally first, then the script reads the topic's position and the
//! history after `since`; live events that arrive meanwhile wait in the connection, and those the replay
//! already holds are dropped by `seq` (the connection's per-topic `(ep, seq)`).
//!
//! When the channel connection drops, the instance reconnects and then catches every topic with local
//! subscribers up from the history, from where it stopped; what the history no longer holds shows as a jump
//! in `seq` (a gap the clients report). A topic whose epoch changed (Redis was flushed) asks its local
//! subscribers to reconnect (close 1012), so they re-subscribe and learn the new epoch (a reset).

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script};
use bytes::Bytes;
use futures_util::StreamExt;
use sockeye_core::codec::{Envelope, Payload, TopicPosition};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::memory::{new_epoch, HistoryLimits, Subscribed};
use crate::app::RpcError;
use crate::config::Limits;
use crate::outbound::Encoded;
use crate::server::Shared;
use sockeye_core::error::ErrorCode;

/// The channel every instance subscribes to.
const CHANNEL: &str = "sockeye:events";
/// Publishes waiting to be sent to Redis, per instance; beyond it a publish is refused.
const PUBLISH_QUEUE: usize = 4096;
/// Publishes sent to Redis in one pipelined batch.
const PUBLISH_BATCH: usize = 256;
/// How long a topic's state stays in Redis after its last publish or subscribe, at least.
const MIN_KEEP: Duration = Duration::from_secs(24 * 3600);
/// Time allowed for one Redis command (or batch) before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle events channel checks whether its server is still there.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Pause between attempts to reach Redis again.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// The start of both scripts. KEYS: ep, seq, history. ARGV[1]: an epoch for a new sequence, ARGV[2]: how
/// long (ms) the topic's keys stay after this use. A topic whose counter is missing (never used, flushed, or
/// expired) starts a new epoch (`SET NX`) with counter 0 and no history; `ep` and `seq` hold its state after.
macro_rules! prelude {
    () => {
        r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], 0)
  redis.call('DEL', KEYS[3])
end
local ep = redis.call('GET', KEYS[1])
local seq = tonumber(redis.call('GET', KEYS[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// ARGV after the prelude's: history ttl (ms), history size, channel, topic, payload. Takes the next `seq`,
/// keeps the event, publishes it to every instance. Returns `{ep, seq}`.
const PUBLISH_LUA: &str = concat!(
    prelude!(),
    r"
seq = redis.call('INCR', KEYS[2])
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', size, '*', 's', seq, 'd', ARGV[7])
  redis.call('XTRIM', KEYS[3], 'MINID', now - tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
redis.call('PUBLISH', ARGV[5], ep .. '\n' .. seq .. '\n' .. #ARGV[6] .. '\n' .. ARGV[6] .. ARGV[7])
return {ep, seq}
"
);

/// ARGV after the prelude's: history ttl (ms), since (-1: none), most payload bytes to return. Returns `{ep,
/// seq, covered, {seq, payload, …}}`: `covered` is 1 when the history holds every event after `since` (they
/// are returned), else 0 (nothing is returned).
const SUBSCRIBE_LUA: &str = concat!(
    prelude!(),
    r"
local since = tonumber(ARGV[4])
if since < 0 or since > seq then
  return {ep, seq, 0, {}}
end
if since == seq then
  return {ep, seq, 1, {}}
end
redis.call('XTRIM', KEYS[3], 'MINID', now - tonumber(ARGV[3]))
local entries = redis.call('XRANGE', KEYS[3], '-', '+')
local out = {}
local bytes = 0
local first = nil
for _, entry in ipairs(entries) do
  local s = tonumber(entry[2][2])
  if first == nil then first = s end
  if s > since then
    bytes = bytes + #entry[2][4]
    if bytes > tonumber(ARGV[5]) then
      return {ep, seq, 0, {}}
    end
    table.insert(out, tostring(s))
    table.insert(out, entry[2][4])
  end
end
if first == nil or first > since + 1 then
  return {ep, seq, 0, {}}
end
return {ep, seq, 1, out}
"
);

/// One publish waiting to be sent.
pub(crate) struct Job {
    topic: String,
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<TopicPosition, RpcError>>,
}

/// The Redis side of a server instance.
pub(crate) struct RedisBroker {
    client: Client,
    connection: ConnectionManager,
    publishes: mpsc::Sender<Job>,
    /// Whether this instance receives the events channel (subscriptions wait for it: events published
    /// after a subscription's answer must reach it).
    listening: watch::Sender<bool>,
    subscribe_script: Script,
    /// Replays read from Redis at once: each holds up to one connection's output budget until queued, so
    /// together they hold at most about the server-wide output budget. Others wait their turn.
    replays: Semaphore,
    history_size: usize,
    history_ttl: Duration,
    keep: Duration,
}

/// Why `--redis` could not be used.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub(crate) struct RedisConfigError(#[from] RedisError);

impl RedisBroker {
    /// Prepares the connections (made lazily: the server starts while Redis is unreachable, and its
    /// acknowledged publishes fail with `UNAVAILABLE` until Redis is there).
    pub fn new(
        url: &str,
        history: &HistoryLimits,
        limits: &Limits,
    ) -> Result<(RedisBroker, mpsc::Receiver<Job>), RedisConfigError> {
        let (history_size, history_ttl) = (history.size, history.ttl);
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RETRY_DELAY);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let (publishes, jobs) = mpsc::channel(PUBLISH_QUEUE);
        let broker = RedisBroker {
            client,
            connection,
            publishes,
            listening: watch::channel(false).0,
            subscribe_script: Script::new(SUBSCRIBE_LUA),
            replays: Semaphore::new(
                (limits.total_outbound_bytes / limits.outbound_bytes.max(1)).max(1),
            ),
            history_size,
            history_ttl,
            keep: history_ttl.max(MIN_KEEP),
        };
        Ok((broker, jobs))
    }

    /// Starts the tasks that send publishes and receive events, for as long as `shared` lives.
    pub fn spawn(shared: &Arc<Shared>, jobs: mpsc::Receiver<Job>) {
        tokio::spawn(send_publishes(Arc::downgrade(shared), jobs));
        tokio::spawn(receive_events(Arc::downgrade(shared)));
    }

    /// Queues a publish; the receiver resolves once Redis stored and published it, or with the error.
    ///
    /// # Errors
    /// `UNAVAILABLE` at once when too many publishes wait for Redis already.
    pub fn publish(
        &self,
        topic: &str,
        data: Option<&Payload>,
    ) -> Result<oneshot::Receiver<Result<TopicPosition, RpcError>>, RpcError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            topic: topic.to_owned(),
            payload: data.map(|d| d.as_cbor().to_vec()).unwrap_or_default(),
            reply,
        };
        self.publishes.try_send(job).map_err(|_| {
            RpcError::new(
                ErrorCode::Unavailable,
                format!("{PUBLISH_QUEUE} publishes already wait for Redis"),
            )
        })?;
        Ok(answer)
    }

    /// Reads where `topic` stands and, with `since` in the same epoch, the events after it (at most
    /// `max_bytes` of payload, else `recovered: false`).
    ///
    /// # Errors
    /// `UNAVAILABLE` when Redis cannot be reached.
    pub async fn subscribe(
        &self,
        topic: &str,
        since: Option<&TopicPosition>,
        max_bytes: usize,
    ) -> Result<Subscribed, RpcError> {
        let mut listening = self.listening.subscribe();
        if !matches!(
            tokio::time::timeout(RESPONSE_TIMEOUT, listening.wait_for(|on| *on)).await,
            Ok(Ok(_))
        ) {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                "redis: events channel not connected",
            ));
        }
        let _turn = match since {
            Some(_) => Some(
                self.replays
                    .acquire()
                    .await
                    .map_err(|_| RpcError::new(ErrorCode::Unavailable, "server shutting down"))?,
            ),
            None => None,
        };
        self.read(topic, since, max_bytes).await
    }

    /// [`RedisBroker::subscribe`] without waiting for the events channel.
    async fn read(
        &self,
        topic: &str,
        since: Option<&TopicPosition>,
        max_bytes: usize,
    ) -> Result<Subscribed, RpcError> {
        let new_ep = new_epoch();
        let since_seq = since.map_or(-1, |s| i64::try_from(s.seq).unwrap_or(i64::MAX));
        let mut connection = self.connection.clone();
        let (ep, seq, covered, entries): (String, u64, i64, Vec<Vec<u8>>) = self
            .subscribe_script
            .key(key(topic, "ep"))
            .key(key(topic, "seq"))
            .key(key(topic, "h"))
            .arg(&*new_ep)
            .arg(millis(self.keep))
            .arg(millis(self.history_ttl))
            .arg(since_seq)
            .arg(max_bytes)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let recovered = since.map(|since| self.history_size > 0 && since.ep == ep && covered == 1);
        let mut replay = Vec::new();
        if recovered == Some(true) {
            for pair in entries.chunks_exact(2) {
                let event_seq = std::str::from_utf8(&pair[0])
                    .ok()
                    .and_then(|s| s.parse().ok());
                match event_seq.zip(event_seq.and_then(|n| evt_frame(topic, n, &pair[1]))) {
                    Some(event) => replay.push(event),
                    None => {
                        tracing::warn!("malformed event in the redis history: not replayed");
                        return Ok(Subscribed {
                            ep: Arc::from(ep),
                            seq,
                            recovered: Some(false),
                            replay: Vec::new(),
                        });
                    }
                }
            }
        }
        Ok(Subscribed {
            ep: Arc::from(ep),
            seq,
            recovered,
            replay,
        })
    }

    /// Runs one batch of publishes as one pipeline, in order.
    async fn run_batch(&self, batch: Vec<Job>) {
        let mut pipe = ::redis::pipe();
        for job in &batch {
            pipe.cmd("EVAL")
                .arg(PUBLISH_LUA)
                .arg(3)
                .arg(key(&job.topic, "ep"))
                .arg(key(&job.topic, "seq"))
                .arg(key(&job.topic, "h"))
                .arg(&*new_epoch())
                .arg(millis(self.keep))
                .arg(millis(self.history_ttl))
                .arg(self.history_size)
                .arg(CHANNEL)
                .arg(&job.topic)
                .arg(&job.payload);
        }
        let mut connection = self.connection.clone();
        let result: Result<Vec<(String, u64)>, RedisError> =
            pipe.query_async(&mut connection).await;
        match result {
            Ok(positions) if positions.len() == batch.len() => {
                for (job, (ep, seq)) in batch.into_iter().zip(positions) {
                    let _ = job.reply.send(Ok(TopicPosition { ep, seq }));
                }
            }
            Ok(_) => {
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(RpcError::internal("unexpected reply from Redis")));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, publishes = batch.len(), "redis publish failed");
                for job in batch {
                    let _ = job.reply.send(Err(unavailable(e.clone())));
                }
            }
        }
    }
}

/// Sends queued publishes to Redis in order, in batches, until the server is gone.
async fn send_publishes(shared: Weak<Shared>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < PUBLISH_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        if let Some(redis) = &shared.redis {
            redis.run_batch(batch).await;
        }
    }
}

/// Receives every instance's events from Redis and fans them out here; reconnects and catches up when the
/// channel connection drops.
async fn receive_events(shared: Weak<Shared>) {
    let mut connected_before = false;
    loop {
        let Some(client) = shared
            .upgrade()
            .and_then(|s| s.redis.as_ref().map(|r| r.client.clone()))
        else {
            return;
        };
        let pubsub = match tokio::time::timeout(RESPONSE_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(mut pubsub)) => match pubsub.subscribe(CHANNEL).await {
                Ok(()) => Some(pubsub),
                Err(_) => None,
            },
            _ => None,
        };
        let Some(pubsub) = pubsub else {
            tokio::time::sleep(RETRY_DELAY).await;
            continue;
        };
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if connected_before {
            tracing::info!("redis events channel back: catching topics up");
            catch_up(&strong).await;
        }
        connected_before = true;
        set_listening(&strong, true);
        drop(strong);
        let mut messages = pubsub.into_on_message();
        loop {
            // Wakes up now and then to notice that the server is gone (and let the connection go).
            let next = tokio::time::timeout(IDLE_CHECK, messages.next()).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let message = match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(message)) => message,
            };
            match parse_event(message.get_payload_bytes()) {
                Some((ep, seq, topic, payload)) => deliver(&shared, topic, ep, seq, payload),
                None => tracing::warn!("malformed event on the redis channel: ignored"),
            }
        }
        tracing::warn!("redis events channel lost: reconnecting");
        if let Some(shared) = shared.upgrade() {
            set_listening(&shared, false);
        }
    }
}

fn set_listening(shared: &Shared, on: bool) {
    if let Some(redis) = &shared.redis {
        redis.listening.send_replace(on);
    }
}

/// After the channel was lost: every topic with local subscribers continues from the last event delivered
/// here, out of the history; what it no longer holds shows as a jump in `seq`.
async fn catch_up(shared: &Arc<Shared>) {
    let Some(redis) = &shared.redis else {
        return;
    };
    for (topic, ep, seq) in shared.topics.positions() {
        let since = TopicPosition {
            ep: ep.to_string(),
            seq,
        };
        let limit = shared.config.limits.outbound_bytes;
        match redis.read(&topic, Some(&since), limit).await {
            Ok(found) if found.recovered == Some(true) => {
                for (seq, frame) in found.replay {
                    shared.deliver_frame(&topic, &found.ep, seq, frame);
                }
            }
            Ok(found) if *found.ep != *ep => {
                // Flushed: the subscribers re-subscribe and learn the new epoch.
                shared.topics.reset(&topic, &found.ep);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.message, "redis catch-up failed"),
        }
    }
}

fn deliver(shared: &Arc<Shared>, topic: &str, ep: &str, seq: u64, payload: &[u8]) {
    match evt_frame(topic, seq, payload) {
        Some(frame) => shared.deliver_frame(topic, ep, seq, frame),
        None => tracing::warn!("malformed payload on the redis channel: ignored"),
    }
}

/// The COMPLETE `evt` frame of an event whose `d` is `payload` (CBOR; empty for none); `None` when it is
/// not CBOR (Redis is trusted less than that).
fn evt_frame(topic: &str, seq: u64, payload: &[u8]) -> Option<Bytes> {
    let data = if payload.is_empty() {
        None
    } else {
        Some(Payload::from_cbor(payload.to_vec()).ok()?)
    };
    Some(Bytes::from(Encoded::frame_of(&Envelope::Evt {
        topic: topic.to_owned(),
        seq,
        data,
    })))
}

/// `ep \n seq \n topic-length \n topic payload`, as the publish script writes it.
fn parse_event(message: &[u8]) -> Option<(&str, u64, &str, &[u8])> {
    let mut parts = message.splitn(4, |&b| b == b'\n');
    let ep = std::str::from_utf8(parts.next()?).ok()?;
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let topic_len: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let rest = parts.next()?;
    if rest.len() < topic_len {
        return None;
    }
    let (topic, payload) = rest.split_at(topic_len);
    Some((ep, seq, std::str::from_utf8(topic).ok()?, payload))
}

fn key(topic: &str, what: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 16);
    key.extend_from_slice(b"sockeye:{");
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(b"}:");
    key.extend_from_slice(what.as_bytes());
    key
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unavailable(error: RedisError) -> RpcError {
    RpcError::new(ErrorCode::Unavailable, format!("redis: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_on_the_channel_are_parsed_whatever_the_topic_holds() {
        let message = b"ab12\n42\n5\nx\ny:z\xa1\x01\x02";
        assert_eq!(
            parse_event(message),
            Some(("ab12", 42, "x\ny:z", &b"\xa1\x01\x02"[..]))
        );
        assert_eq!(parse_event(b"ab12\n42\n9\nshort"), None);
        assert_eq!(parse_event(b"garbage"), None);
    }
}
