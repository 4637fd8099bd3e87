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

use sockeye_core::error::CloseCode;
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
/// [`InboundRefused::BudgetSpent`] (the connection is closed with 1013).
///
/// The connection says when bytes leave tungstenite's hands ([`Metered::settle`]). Read-ahead of the next
/// message (at most one read, `Limits::read_buffer_size`) is not counted at that moment.
///
/// The first [`FREE_INBOUND`] bytes a connection holds are not charged: ordinary traffic (control words,
/// envelopes and fragments up to the fragment threshold) never fails because other connections hold the
/// budget, say while they do not read the replies to their large messages.
///
/// It also follows the WebSocket frame headers ([`FrameWatch`]) and refuses a message sent in several
/// WebSocket frames whose frames are larger than [`FREE_INBOUND`] ([`InboundRefused::FragmentTooLarge`]).
pub(crate) struct Metered<S> {
    inner: S,
    /// Bytes read and not handed over, plus the message held.
    held: usize,
    charge: Charge,
    watch: FrameWatch,
    /// A refusal found in the bytes read before the upgrade, reported at the first read.
    refused: Option<InboundRefused>,
}

/// Bytes of input per connection not charged to the server-wide inbound budget (above the default fragment
/// threshold, so fragmented traffic never touches it).
pub(crate) const FREE_INBOUND: usize = 128 * 1024;

/// Why a [`Metered`] read failed; the connection is closed with [`InboundRefused::close_code`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum InboundRefused {
    #[error("the server's inbound budget of {limit} bytes is spent")]
    BudgetSpent { limit: usize },
    #[error(
        "a WebSocket frame of {size} bytes in a message of several frames (at most {FREE_INBOUND} each)"
    )]
    FragmentTooLarge { size: u64 },
}

impl InboundRefused {
    /// 1013 for a spent budget (the server is short of room now), 1009 for a frame too large.
    pub fn close_code(&self) -> CloseCode {
        match self {
            InboundRefused::BudgetSpent { .. } => CloseCode::TRY_AGAIN_LATER,
            InboundRefused::FragmentTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
        }
    }
}

/// Follows WebSocket frame headers (RFC 6455 §5.2) through the bytes read, to refuse large frames of a
/// message sent in several frames: tungstenite reads each frame into one buffer, and after such a message
/// keeps that buffer at the largest frame's size for the connection's life, with no message left whose
/// holding would let it go (see `Conn::held`). Browsers and tungstenite clients send a message as one frame;
/// clients that split messages use small frames. tungstenite itself checks everything else about frames.
#[derive(Debug, Default)]
struct FrameWatch {
    /// The header of the frame being read so far (at most 14 bytes).
    header: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
}

impl FrameWatch {
    /// Follows `bytes`.
    ///
    /// # Errors
    /// [`InboundRefused::FragmentTooLarge`] at the header of a data frame of a fragmented message (a
    /// continuation frame, or a text/binary frame without FIN) larger than [`FREE_INBOUND`].
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InboundRefused> {
        while let Some((&first, rest)) = bytes.split_first() {
            if self.payload_left > 0 {
                let skip = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[usize::from(self.have)] = first;
            self.have += 1;
            bytes = rest;
            if let Some((fragmented, size)) = self.complete_header() {
                self.have = 0;
                self.payload_left = size;
                if fragmented && size > FREE_INBOUND as u64 {
                    return Err(InboundRefused::FragmentTooLarge { size });
                }
            }
        }
        Ok(())
    }

    /// Once the header is complete: whether the frame is a data frame of a fragmented message, and its
    /// payload length.
    fn complete_header(&self) -> Option<(bool, u64)> {
        let header = &self.header[..usize::from(self.have)];
        let (&[first, second], rest) = header.split_first_chunk::<2>()?;
        let (extended, short) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        if rest.len() < extended + mask {
            return None;
        }
        let size = short.unwrap_or_else(|| {
            rest[..extended]
                .iter()
                .fold(0, |size, &byte| size << 8 | u64::from(byte))
        });
        let (fin, opcode) = (first & 0x80 != 0, first & 0x0f);
        // Opcodes 0 (continuation), 1 (text), 2 (binary) and the reserved 3–7 are data frames.
        Some((opcode < 8 && (opcode == 0 || !fin), size))
    }
}

impl<S> Metered<S> {
    /// Meters `inner`; `read_ahead` are the bytes read past the HTTP request, which tungstenite gets directly.
    pub fn new(inner: S, budget: &Arc<Budget>, read_ahead: &[u8]) -> Metered<S> {
        let mut watch = FrameWatch::default();
        let refused = watch.feed(read_ahead).err();
        Metered {
            inner,
            held: 0,
            charge: Charge::empty(budget),
            watch,
            refused,
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
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Err(io::Error::other(refused)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        this.held = this.held.saturating_add(read.len());
        if let Err(refused) = this.watch.feed(read) {
            return Poll::Ready(Err(io::Error::other(refused)));
        }
        if !this.recharge() {
            let limit = this.charge.budget.limit();
            return Poll::Ready(Err(io::Error::other(InboundRefused::BudgetSpent { limit })));
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
        let mut metered = Metered::new(socket, &budget, &[]);
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
        assert!(error.get_ref().is_some_and(|e| e.is::<InboundRefused>()));
        drop(metered);
        assert_eq!(budget.used(), 0);
        drop(writer);
    }

    /// A client frame header (masked) followed by `size` payload bytes.
    fn frame(fin: bool, opcode: u8, size: usize) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match size {
            0..=125 => out.push(0x80 | size as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend((size as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend((size as u64).to_be_bytes());
            }
        }
        out.extend([1, 2, 3, 4]);
        out.resize(out.len() + size, 0xab);
        out
    }

    #[test]
    fn large_frames_pass_alone_but_not_within_a_fragmented_message() {
        let big = FREE_INBOUND + 1;
        let mut watch = FrameWatch::default();
        // Whole messages of any size, control frames, small fragments; fed in awkward pieces.
        let mut stream = frame(true, 2, big);
        stream.extend(frame(true, 9, 4));
        stream.extend(frame(false, 2, 1000));
        stream.extend(frame(true, 10, 0));
        stream.extend(frame(false, 0, FREE_INBOUND));
        stream.extend(frame(true, 0, 70_000));
        stream.extend(frame(true, 1, 5));
        for piece in stream.chunks(7) {
            watch.feed(piece).expect("allowed");
        }
        assert_eq!((watch.have, watch.payload_left), (0, 0));
        for refused in [
            frame(false, 2, big),
            frame(true, 0, big),
            frame(false, 0, big),
        ] {
            let error = FrameWatch::default()
                .feed(&refused[..20])
                .expect_err("a large fragment");
            assert_eq!(error.close_code(), CloseCode::MESSAGE_TOO_BIG);
        }
    }
}
