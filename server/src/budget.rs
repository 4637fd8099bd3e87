//! Memory budgets: every byte a peer can make the server hold is charged to one.
//!
//! Each connection's queued output counts against its own budget and the server-wide output budget;
//! partial inbound messages against the server-wide reassembly budget; bytes read from a socket and not yet
//! handed over as a message (tungstenite's buffers), plus the last message while it is held, against the
//! server-wide inbound budget.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A number of bytes that may be held at once.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `bytes` unless that would pass the limit.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back bytes taken before.
    pub fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes taken from a budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// A charge of nothing, to be resized.
    pub fn empty(budget: &Arc<Budget>) -> Charge {
        Charge {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Charges `bytes`, or `None` when the budget cannot take them.
    pub fn take(budget: &Arc<Budget>, bytes: usize) -> Option<Charge> {
        let mut charge = Charge::empty(budget);
        charge.resize(bytes).then_some(charge)
    }

    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes this charge `bytes`; `false` (and unchanged) when the budget cannot take the increase.
    pub fn resize(&mut self, bytes: usize) -> bool {
        if bytes > self.bytes {
            if !self.budget.try_take(bytes - self.bytes) {
                return false;
            }
        } else {
            self.budget.give(self.bytes - bytes);
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// A socket whose reads are charged to the server-wide inbound budget: tungstenite buffers a whole message
/// (up to the largest message size) before handing it over, so without a total, connections sending large
/// messages at once could hold that much each. A read that would pass the budget fails with
/// [`InboundBudgetSpent`] (the connection is closed with 1013).
///
/// The connection says when bytes leave tungstenite's hands ([`Metered::settle`]). Read-ahead of the next
/// message (at most one read, `Limits::read_buffer_size`) is not counted at that moment.
///
/// The first [`FREE_INBOUND`] bytes a connection holds are not charged: ordinary traffic (control words,
/// envelopes and fragments up to the fragment threshold) never fails because other connections hold the
/// budget, say while they do not read the replies to their large messages.
pub(crate) struct Metered<S> {
    inner: S,
    /// Bytes read and not handed over, plus the message held.
    held: usize,
    charge: Charge,
}

/// Bytes of input per connection not charged to the server-wide inbound budget (above the default fragment
/// threshold, so fragmented traffic never touches it).
pub(crate) const FREE_INBOUND: usize = 128 * 1024;

/// The error a [`Metered`] read fails with when the inbound budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("the server's inbound budget of {limit} bytes is spent")]
pub(crate) struct InboundBudgetSpent {
    pub limit: usize,
}

impl<S> Metered<S> {
    pub fn new(inner: S, budget: &Arc<Budget>) -> Metered<S> {
        Metered {
            inner,
            held: 0,
            charge: Charge::empty(budget),
        }
    }

    /// Charges what is held beyond the free allowance; `false` when the budget cannot take it.
    fn recharge(&mut self) -> bool {
        self.charge.resize(self.held.saturating_sub(FREE_INBOUND))
    }

    /// Everything read so far has been handed over; `held` bytes of it are still alive.
    pub fn settle(&mut self, held: usize) {
        self.held = self.held.min(held);
        // Shrinking: never refused.
        self.recharge();
    }

    /// `bytes` held before are gone.
    pub fn release(&mut self, bytes: usize) {
        self.held = self.held.saturating_sub(bytes);
        self.recharge();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.held = this.held.saturating_add(buf.filled().len() - before);
        if !this.recharge() {
            let limit = this.charge.budget.limit();
            return Poll::Ready(Err(io::Error::other(InboundBudgetSpent { limit })));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_would_pass_its_limit_and_charges_give_back_on_drop() {
        let budget = Arc::new(Budget::new(100));
        let mut a = Charge::take(&budget, 60).expect("fits");
        assert!(Charge::take(&budget, 41).is_none());
        assert_eq!(budget.used(), 60);
        assert!(a.resize(100));
        assert!(!a.resize(101), "over the limit");
        assert_eq!(budget.used(), 100);
        assert!(a.resize(10));
        let b = Charge::take(&budget, 90).expect("room again");
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn metered_reads_are_charged_beyond_the_allowance_until_settled() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let budget = Arc::new(Budget::new(1000));
        let (mut peer, socket) = tokio::io::duplex(4096);
        let mut metered = Metered::new(socket, &budget);
        let writer = tokio::spawn(async move {
            let total = FREE_INBOUND + 600 + FREE_INBOUND + 1001;
            peer.write_all(&vec![1; total]).await.expect("write");
            peer
        });
        // Another connection holds the whole budget: the allowance is still read.
        let other = Charge::take(&budget, 1000).expect("fits");
        let mut buf = vec![0; FREE_INBOUND];
        metered
            .read_exact(&mut buf)
            .await
            .expect("within the allowance");
        drop(other);
        let mut buf = [0; 600];
        metered
            .read_exact(&mut buf)
            .await
            .expect("within the budget");
        assert_eq!(budget.used(), 600);
        metered.settle(FREE_INBOUND + 100);
        assert_eq!(budget.used(), 100);
        metered.release(FREE_INBOUND + 100);
        assert_eq!(budget.used(), 0);
        let mut buf = vec![0; FREE_INBOUND + 1001];
        let error = metered
            .read_exact(&mut buf)
            .await
            .expect_err("past the budget");
        assert!(error
            .get_ref()
            .is_some_and(|e| e.is::<InboundBudgetSpent>()));
        drop(metered);
        assert_eq!(budget.used(), 0);
        drop(writer);
    }
}
