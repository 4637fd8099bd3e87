//! Calls in flight (requests and acknowledged publishes) between the application's futures and the driver.
//!
//! One slab of slots under one lock, shared by the client's handles and its driver: a call's future puts its
//! request into a slot and sends the driver only the slot's key; the driver takes the request out, and later
//! writes the outcome back and wakes the future. This replaces a `oneshot` channel per call (an allocation and
//! a shared header each), a command carrying the whole request through the command channel (which sized every
//! slot of the channel's blocks), and the driver's two maps (issue 14: about 10 % of the client's profile at
//! 64 B was allocation, and the maps and channel showed besides). Slots are reused, so a steady load allocates
//! nothing here.
//!
//! A key is freed by whoever is last to know about it, so it is never reused while a command naming it can
//! still arrive: the future frees it when it takes the outcome (or is dropped after the call ended); a future
//! dropped before that leaves the slot [`Slot::Abandoned`] and sends `Cancel`, after which the driver frees it.

use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use sockeye_core::codec::{Payload, TopicPosition};

use crate::Error;

/// What a call asks for.
pub(crate) enum Target {
    /// A request calling this method.
    Method(String),
    /// An acknowledged publish to this topic.
    Publish(String),
}

/// A call as its future issues it.
pub(crate) struct CallRequest {
    pub target: Target,
    pub data: Option<Payload>,
    pub timeout: Option<Duration>,
}

/// How a call ended well: a request's reply, or where an acknowledged publish was stored.
pub(crate) enum Outcome {
    Reply(Option<Payload>),
    Position(TopicPosition),
}

enum Slot {
    /// Issued; `request` is `None` once the driver has taken it.
    Waiting {
        request: Option<CallRequest>,
        waker: Waker,
    },
    /// Ended; the future takes the outcome.
    Done(Result<Outcome, Error>),
    /// The future was dropped before the call ended; the driver frees the slot when it handles the `Cancel`
    /// the future sent.
    Abandoned,
}

#[derive(Default)]
struct State {
    slots: Slab<Slot>,
    /// The driver has ended: every call fails with [`Error::Closed`], new ones at once.
    closed: bool,
}

/// Slots kept allocated while none is in use; more are given back (a burst of calls would otherwise keep its
/// peak for the client's life: a slab never shrinks past a vacant slot).
const KEPT_SLOTS: usize = 256;

impl State {
    fn free(&mut self, key: usize) -> Option<Slot> {
        let slot = self.slots.try_remove(key);
        if self.slots.is_empty() && self.slots.capacity() > KEPT_SLOTS {
            self.slots = Slab::new();
        }
        slot
    }
}

/// The slab of calls in flight, see the module docs.
#[derive(Default)]
pub(crate) struct Calls {
    state: Mutex<State>,
}

impl Calls {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock (no user code runs under it); recover the state anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a call; its future then sends the driver `Command::Call` with the returned key.
    ///
    /// # Errors
    /// [`Error::Closed`] once the driver has ended.
    pub fn issue(&self, request: CallRequest, waker: &Waker) -> Result<usize, Error> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Closed);
        }
        Ok(state.slots.insert(Slot::Waiting {
            request: Some(request),
            waker: waker.clone(),
        }))
    }

    /// The future's poll: the outcome once the call has ended (freeing the key), else `Pending` with the
    /// waker recorded.
    pub fn poll(&self, key: usize, cx: &mut Context<'_>) -> Poll<Result<Outcome, Error>> {
        let mut state = self.lock();
        match state.slots.get_mut(key) {
            Some(Slot::Waiting { waker, .. }) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                Poll::Pending
            }
            Some(Slot::Done(_)) => match state.free(key) {
                Some(Slot::Done(result)) => Poll::Ready(result),
                _ => Poll::Ready(Err(Error::Closed)), // just matched as `Done`
            },
            // Only the future itself abandons or frees its key.
            Some(Slot::Abandoned) | None => Poll::Ready(Err(Error::Closed)),
        }
    }

    /// The future is dropped: frees an ended call's key, or marks a pending one abandoned. Returns true when
    /// the driver must be told (`Command::Cancel`), which then frees the key.
    pub fn abandon(&self, key: usize) -> bool {
        let mut state = self.lock();
        match state.slots.get_mut(key) {
            Some(Slot::Waiting { .. }) => {
                state.slots[key] = Slot::Abandoned;
                true
            }
            Some(Slot::Done(_)) => {
                state.free(key);
                false
            }
            Some(Slot::Abandoned) | None => false,
        }
    }

    /// Frees a key whose `Command::Call` never reached the driver (the channel was closed).
    pub fn forget(&self, key: usize) {
        self.lock().free(key);
    }

    /// The driver takes a call's request; `None` when its future is gone already (its `Cancel` follows).
    pub fn take_request(&self, key: usize) -> Option<CallRequest> {
        match self.lock().slots.get_mut(key) {
            Some(Slot::Waiting { request, .. }) => request.take(),
            _ => None,
        }
    }

    /// The driver ends a call; the future is woken (outside the lock).
    pub fn complete(&self, key: usize, result: Result<Outcome, Error>) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(key) else {
            return;
        };
        if !matches!(slot, Slot::Waiting { .. }) {
            return; // abandoned: the slot waits for its `Cancel`
        }
        let Slot::Waiting { waker, .. } = std::mem::replace(slot, Slot::Done(result)) else {
            return; // just matched as `Waiting`
        };
        drop(state);
        waker.wake();
    }

    /// The driver has handled an abandoned call's `Cancel`: nothing names the key any more.
    pub fn release(&self, key: usize) {
        let mut state = self.lock();
        if matches!(state.slots.get(key), Some(Slot::Abandoned)) {
            state.free(key);
        }
    }

    /// The driver has ended: every call still waiting fails with [`Error::Closed`], and new ones at once.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let mut wakers = Vec::new();
        for (_, slot) in state.slots.iter_mut() {
            if matches!(slot, Slot::Waiting { .. }) {
                if let Slot::Waiting { waker, .. } =
                    std::mem::replace(slot, Slot::Done(Err(Error::Closed)))
                {
                    wakers.push(waker);
                }
            }
        }
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Slots in use (ended calls not yet taken by their futures included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker;

    fn request() -> CallRequest {
        CallRequest {
            target: Target::Method("echo".into()),
            data: None,
            timeout: None,
        }
    }

    #[test]
    fn a_call_ends_once_and_frees_its_key_when_taken() {
        let calls = Calls::default();
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let key = calls.issue(request(), &waker).unwrap();
        assert!(calls.poll(key, &mut cx).is_pending());
        assert!(calls.take_request(key).is_some());
        assert!(calls.take_request(key).is_none(), "taken once");
        calls.complete(key, Ok(Outcome::Reply(None)));
        assert!(matches!(
            calls.poll(key, &mut cx),
            Poll::Ready(Ok(Outcome::Reply(None)))
        ));
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn an_abandoned_key_is_not_reused_before_the_driver_handled_its_cancel() {
        let calls = Calls::default();
        let waker = noop_waker();
        let key = calls.issue(request(), &waker).unwrap();
        assert!(calls.abandon(key), "the driver must be told");
        // The reply racing the cancel is dropped; the slot stays taken.
        calls.complete(key, Ok(Outcome::Reply(None)));
        assert!(calls.take_request(key).is_none());
        let other = calls.issue(request(), &waker).unwrap();
        assert_ne!(other, key);
        calls.release(key);
        assert_eq!(calls.len(), 1);
        // Ended before its future was dropped: freed at once, nothing to tell the driver.
        calls.complete(other, Ok(Outcome::Reply(None)));
        assert!(!calls.abandon(other));
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn a_burst_of_calls_gives_its_slots_back_once_all_have_ended() {
        let calls = Calls::default();
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let keys: Vec<usize> = (0..4 * KEPT_SLOTS)
            .map(|_| calls.issue(request(), &waker).unwrap())
            .collect();
        for &key in &keys {
            calls.complete(key, Ok(Outcome::Reply(None)));
            assert!(calls.poll(key, &mut cx).is_ready());
        }
        assert!(calls.lock().slots.capacity() <= KEPT_SLOTS);
    }

    #[test]
    fn closing_fails_waiting_calls_and_refuses_new_ones() {
        let calls = Calls::default();
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let key = calls.issue(request(), &waker).unwrap();
        calls.close();
        assert!(matches!(
            calls.poll(key, &mut cx),
            Poll::Ready(Err(Error::Closed))
        ));
        assert!(matches!(calls.issue(request(), &waker), Err(Error::Closed)));
    }
}
