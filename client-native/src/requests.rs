//! The request path: requests and acknowledged publishes as futures issued on first poll (deadline,
//! cancellation on drop), and the acknowledgement of sends and publishes.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use sockeye_core::codec::{Payload, TopicPosition};
use tokio::sync::oneshot;

use crate::client::{Client, Command};
use crate::handlers::decode_optional;
#[cfg(doc)]
use crate::ClientBuilder;
use crate::Error;

/// What a [`Command::Call`] asks for.
pub(crate) enum Target {
    /// A request calling this method.
    Method(String),
    /// An acknowledged publish to this topic.
    Publish(String),
}

/// Where the outcome of a [`Command::Call`] goes: a request's reply, or an acknowledged publish's position.
pub(crate) enum ReplyTo {
    Call(oneshot::Sender<Result<Option<Payload>, Error>>),
    Publish(oneshot::Sender<Result<TopicPosition, Error>>),
}

impl ReplyTo {
    /// The application stopped waiting (its future was dropped).
    pub fn is_closed(&self) -> bool {
        match self {
            ReplyTo::Call(tx) => tx.is_closed(),
            ReplyTo::Publish(tx) => tx.is_closed(),
        }
    }

    /// Ends the call with `error` (a dropped future hears nothing).
    pub fn fail(self, error: Error) {
        match self {
            ReplyTo::Call(tx) => {
                let _ = tx.send(Err(error));
            }
            ReplyTo::Publish(tx) => {
                let _ = tx.send(Err(error));
            }
        }
    }
}

/// The future of [`Client::send`] and [`Client::publish`]: resolves once the connection accepted the message
/// (sent or queued).
#[must_use = "futures do nothing unless awaited; the message is already submitted, but its outcome is lost"]
#[derive(Debug)]
pub struct SendFuture {
    state: Result<oneshot::Receiver<Result<(), Error>>, Option<Error>>,
}

impl SendFuture {
    pub(crate) fn new(submitted: Result<oneshot::Receiver<Result<(), Error>>, Error>) -> Self {
        SendFuture {
            state: submitted.map_err(Some),
        }
    }
}

impl Future for SendFuture {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            Ok(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
            Err(error) => Poll::Ready(Err(error.take().unwrap_or(Error::Closed))),
        }
    }
}

/// What a [`Call`] resolves to, and how it is asked of the driver.
pub(crate) trait Issue: Sized {
    /// What the call's `target` names (a method, or a topic to publish to).
    fn target(target: String) -> Target;
    fn reply_to(reply: oneshot::Sender<Result<Self, Error>>) -> ReplyTo;
}

impl Issue for Option<Payload> {
    fn target(method: String) -> Target {
        Target::Method(method)
    }

    fn reply_to(reply: oneshot::Sender<Result<Self, Error>>) -> ReplyTo {
        ReplyTo::Call(reply)
    }
}

impl Issue for TopicPosition {
    fn target(topic: String) -> Target {
        Target::Publish(topic)
    }

    fn reply_to(reply: oneshot::Sender<Result<Self, Error>>) -> ReplyTo {
        ReplyTo::Publish(reply)
    }
}

enum CallState<R> {
    Unsent {
        target: String,
        data: Result<Option<Payload>, Error>,
        timeout: Option<Duration>,
    },
    Sent {
        key: u64,
        rx: oneshot::Receiver<Result<R, Error>>,
    },
    Done,
}

/// Something the server answers (a request, an acknowledged publish): issued on its first poll, with its own
/// deadline, cancelled when dropped before it ends.
pub(crate) struct Call<R> {
    client: Client,
    state: CallState<R>,
}

impl<R: Issue> Call<R> {
    pub(crate) fn new(client: Client, target: &str, data: Result<Option<Payload>, Error>) -> Self {
        Call {
            client,
            state: CallState::Unsent {
                target: target.to_owned(),
                data,
                timeout: None,
            },
        }
    }

    fn set_timeout(&mut self, timeout: Duration) {
        if let CallState::Unsent { timeout: t, .. } = &mut self.state {
            *t = Some(timeout);
        }
    }

    fn describe(&self) -> String {
        match &self.state {
            CallState::Unsent { target, .. } => format!("unsent {target:?}"),
            CallState::Sent { key, .. } => format!("pending #{key}"),
            CallState::Done => "done".to_owned(),
        }
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, Error>> {
        match std::mem::replace(&mut self.state, CallState::Done) {
            CallState::Unsent {
                target,
                data,
                timeout,
            } => {
                let data = match data {
                    Ok(data) => data,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                let key = self.client.key();
                let (reply, rx) = oneshot::channel();
                let command = Command::Call {
                    key,
                    target: R::target(target),
                    data,
                    timeout,
                    reply: R::reply_to(reply),
                };
                if let Err(e) = self.client.submit(command) {
                    return Poll::Ready(Err(e));
                }
                self.state = CallState::Sent { key, rx };
            }
            other => self.state = other,
        }
        let CallState::Sent { rx, .. } = &mut self.state else {
            return Poll::Ready(Err(Error::Cancelled {
                message: "polled after completion".into(),
            }));
        };
        let result = match Pin::new(rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(result)) => result,
            Poll::Ready(Err(_)) => Err(Error::Closed),
        };
        self.state = CallState::Done;
        Poll::Ready(result)
    }
}

impl<R> Drop for Call<R> {
    fn drop(&mut self) {
        if let CallState::Sent { key, .. } = self.state {
            // Cancelled by drop. A closed client has nothing left to cancel.
            let _ = self.client.inner.commands.send(Command::Cancel { key });
        }
    }
}

/// The future of [`Client::request`]. Dropping it before it completes cancels the request.
#[must_use = "a request is issued when its future is first polled"]
pub struct RequestFuture<Resp> {
    pub(crate) call: Call<Option<Payload>>,
    pub(crate) _resp: PhantomData<fn() -> Resp>,
}

impl<Resp> std::fmt::Debug for RequestFuture<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFuture")
            .field("state", &self.call.describe())
            .finish()
    }
}

impl<Resp> RequestFuture<Resp> {
    /// This request's own deadline instead of the builder's
    /// [`request_timeout`](ClientBuilder::request_timeout), counted from the first poll. No effect once the
    /// future has been polled.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.call.set_timeout(timeout);
        self
    }
}

impl<Resp: DeserializeOwned> Future for RequestFuture<Resp> {
    type Output = Result<Resp, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.call
            .poll_reply(cx)
            .map(|result| result.and_then(|data| decode_optional(data.as_ref())))
    }
}

/// The future of [`Client::publish_acked`]: where the server stored the event. Dropping it before it
/// completes cancels the wait (a publish still queued is never sent; one already sent may be stored).
#[must_use = "an acknowledged publish is issued when its future is first polled"]
pub struct PublishFuture {
    pub(crate) call: Call<TopicPosition>,
}

impl std::fmt::Debug for PublishFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishFuture")
            .field("state", &self.call.describe())
            .finish()
    }
}

impl PublishFuture {
    /// This publish's own deadline instead of the builder's
    /// [`request_timeout`](ClientBuilder::request_timeout), counted from the first poll.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.call.set_timeout(timeout);
        self
    }
}

impl Future for PublishFuture {
    type Output = Result<TopicPosition, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.call.poll_reply(cx)
    }
}
