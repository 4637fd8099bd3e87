//! Topics: who is subscribed, each topic's epoch and `seq`, history, and fan-out (PROTOCOL §9).

pub(crate) mod memory;
pub(crate) mod redis;

pub(crate) use memory::{Event, HistoryLimits, Published, Refused, Subscribed, Subscriber, Topics};
pub(crate) use redis::RedisBroker;
