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

use crate::calls::{CallRequest, Outcome, Target};
use crate::client::{Client, Command};
use crate::handlers::decode_optional;
#[cfg(doc)]
use crate::ClientBuilder;
use crate::Error;

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
    /// This call's kind of outcome; the core decides each call's kind from its target, so the other kind
    /// never arrives.
    fn from_outcome(outcome: Outcome) -> Option<Self>;
}

impl Issue for Option<Payload> {
    fn target(method: String) -> Target {
        Target::Method(method)
    }

    fn from_outcome(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Reply(data) => Some(data),
            Outcome::Position(_) => None,
        }
    }
}

impl Issue for TopicPosition {
    fn target(topic: String) -> Target {
        Target::Publish(topic)
    }

    fn from_outcome(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Position(position) => Some(position),
            Outcome::Reply(_) => None,
        }
    }
}

enum CallState {
    Unsent {
        target: String,
        data: Result<Option<Payload>, Error>,
        timeout: Option<Duration>,
    },
    /// Issued: its slot in [`Calls`].
    Sent {
        key: usize,
    },
    Done,
}

/// Something the server answers (a request, an acknowledged publish): issued on its first poll, with its own
/// deadline, cancelled when dropped before it ends.
pub(crate) struct Call<R> {
    client: Client,
    state: CallState,
    _outcome: PhantomData<fn() -> R>,
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
            _outcome: PhantomData,
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
            CallState::Sent { key } => format!("pending #{key}"),
            CallState::Done => "done".to_owned(),
        }
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, Error>> {
        let calls = &self.client.inner.calls;
        let key = match std::mem::replace(&mut self.state, CallState::Done) {
            CallState::Unsent {
                target,
                data,
                timeout,
            } => {
                let request = CallRequest {
                    target: R::target(target),
                    data: data?,
                    timeout,
                };
                let key = calls.issue(request, cx.waker())?;
                if let Err(e) = self.client.submit(Command::Call { key }) {
                    calls.forget(key);
                    return Poll::Ready(Err(e));
                }
                // Just issued: the driver cannot have answered before this poll returns `Pending`, and it
                // wakes the waker the slot holds.
                self.state = CallState::Sent { key };
                return Poll::Pending;
            }
            CallState::Sent { key } => key,
            CallState::Done => {
                return Poll::Ready(Err(Error::Cancelled {
                    message: "polled after completion".into(),
                }))
            }
        };
        match calls.poll(key, cx) {
            Poll::Pending => {
                self.state = CallState::Sent { key };
                Poll::Pending
            }
            Poll::Ready(result) => Poll::Ready(result.and_then(|outcome| {
                R::from_outcome(outcome).ok_or_else(|| Error::Cancelled {
                    message: "the call ended with another kind of outcome".into(),
                })
            })),
        }
    }
}

impl<R> Drop for Call<R> {
    fn drop(&mut self) {
        if let CallState::Sent { key } = self.state {
            // Cancelled by drop; the driver frees the key once it has handled the cancel. A closed client has
            // nothing left to cancel.
            if self.client.inner.calls.abandon(key) {
                let _ = self.client.inner.commands.send(Command::Cancel { key });
            }
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
