//! Memory budgets: every byte a peer can make the server hold beyond a small fixed amount per connection is
//! charged to one.
//!
//! Each connection's queued output counts against its own budget and the server-wide output budget;
//! partial inbound messages against the server-wide reassembly budget; bytes read from a socket and not yet
//! handed over as a message (tungstenite's buffers), plus the last message while it is held, against the
//! server-wide inbound budget. When the inbound budget is full, the connection holding the most of it is
//! closed and the reader waits for the room that frees, so small honest traffic keeps flowing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use sockeye_core::error::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::server::{ConnControl, Shared};

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
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back bytes taken before.
    pub fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Those waiting for room in a budget, woken when bytes are given back to it ([`Room::wake`]).
#[derive(Debug, Default)]
pub(crate) struct Room {
    notify: Arc<Notify>,
    waiting: AtomicUsize,
}

impl Room {
    /// A wait for the next [`Room::wake`]. It is registered before it returns, so a wake after this call
    /// ends it even before it is first polled: take, and on failure wait, and nothing is missed.
    pub fn wait(self: &Arc<Self>) -> Box<RoomWait> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut notified = Box::pin(Arc::clone(&self.notify).notified_owned());
        notified.as_mut().enable();
        Box::new(RoomWait {
            notified,
            room: Arc::clone(self),
        })
    }

    /// Bytes were given back: wakes whoever waits.
    pub fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A registered wait for room; resolves at the next [`Room::wake`].
pub(crate) struct RoomWait {
    notified: Pin<Box<OwnedNotified>>,
    room: Arc<Room>,
}

impl Future for RoomWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.notified.as_mut().poll(cx)
    }
}

impl Drop for RoomWait {
    fn drop(&mut self) {
        self.room.waiting.fetch_sub(1, Ordering::SeqCst);
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

    /// The budget charged.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes this charge `bytes`; `false` (and unchanged) when the budget cannot take the increase.
    pub fn resize(&mut self, bytes: usize) -> bool {
        // Most resizes change nothing (the reassembly charge of every whole message stays 0): no atomic then.
        if bytes == self.bytes {
            return true;
        }
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
/// messages at once could hold that much each.
///
/// Each read is charged before it is made (for as much as it may read). When the budget cannot take it, the
/// connection holding the most of the budget is asked to close (1013) and this read waits until room comes
/// back; when this connection holds the most itself, its read fails with [`InboundRefused::BudgetSpent`]
/// (closed with 1013). So a peer holding a large message half-sent cannot keep small traffic out.
///
/// The connection says when bytes leave tungstenite's hands ([`Metered::settle`]). The first
/// [`FREE_INBOUND`] bytes a connection holds are not charged (control words and small envelopes never touch
/// the shared budget); they are part of the fixed cost per connection (`Limits::connection_bytes`).
///
/// It also follows the WebSocket frame headers ([`FrameWatch`]) and refuses a message sent in several
/// WebSocket frames whose frames are larger than [`MAX_CONTINUED_FRAME`] ([`InboundRefused::FragmentTooLarge`]).
pub(crate) struct Metered<S> {
    inner: S,
    /// Bytes read and not handed over, plus the message held.
    held: usize,
    watch: FrameWatch,
    /// A refusal found in the bytes read before the upgrade, reported at the first read.
    refused: Option<InboundRefused>,
    /// This connection as other connections see it: how much of the inbound budget it holds (its charge,
    /// kept there only), and how to ask it to close.
    control: Arc<ConnControl>,
    /// The budget, its waiters, and the other holders.
    shared: Arc<Shared>,
    /// Waiting for room after another connection was asked to close (boxed: one word while idle).
    waiting: Option<Box<RoomWait>>,
}

/// Bytes of input per connection not charged to the server-wide inbound budget: a few small messages.
pub(crate) const FREE_INBOUND: usize = 8 * 1024;

/// The largest WebSocket frame accepted within a message sent in several frames. tungstenite keeps its read
/// buffer at the largest such frame's size for the connection's life, uncharged, so it is part of the fixed
/// cost per connection and kept small.
pub(crate) const MAX_CONTINUED_FRAME: usize = 16 * 1024;

/// Why a [`Metered`] read failed; the connection is closed with [`InboundRefused::close_code`].
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum InboundRefused {
    #[error("the server's inbound budget of {limit} bytes is spent")]
    BudgetSpent { limit: usize },
    #[error(
        "a WebSocket frame of {size} bytes in a message of several frames (at most {MAX_CONTINUED_FRAME} each)"
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
/// holding would let it go (see `Shell::held` in shell.rs). Browsers and tungstenite clients send a message as one frame;
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
    /// continuation frame, or a text/binary frame without FIN) larger than [`MAX_CONTINUED_FRAME`].
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
            // A whole header in `bytes`, the usual case, is read where it lies (byte by byte, the headers of
            // small messages cost 200 instructions a message: bench/NOTES.md).
            let whole = if self.have == 0 {
                frame_header(bytes)
            } else {
                None
            };
            let header = match whole {
                Some(header) => {
                    bytes = &bytes[header.len..];
                    header
                }
                None => {
                    self.header[usize::from(self.have)] = first;
                    self.have += 1;
                    bytes = rest;
                    match frame_header(&self.header[..usize::from(self.have)]) {
                        Some(header) => header,
                        None => continue,
                    }
                }
            };
            self.have = 0;
            self.payload_left = header.size;
            if header.fragmented && header.size > MAX_CONTINUED_FRAME as u64 {
                return Err(InboundRefused::FragmentTooLarge { size: header.size });
            }
        }
        Ok(())
    }
}

/// What [`FrameWatch`] needs of a frame header.
struct FrameHeader {
    /// The header's length in bytes.
    len: usize,
    /// A data frame of a fragmented message.
    fragmented: bool,
    /// The payload length.
    size: u64,
}

/// The frame header at the start of `header`, once it is complete there.
fn frame_header(header: &[u8]) -> Option<FrameHeader> {
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
    Some(FrameHeader {
        len: 2 + extended + mask,
        fragmented: opcode < 8 && (opcode == 0 || !fin),
        size,
    })
}

impl<S> Metered<S> {
    /// Meters `inner` for the connection `control`; `read_ahead` are the bytes read past the HTTP request,
    /// which tungstenite gets directly.
    pub fn new(
        inner: S,
        shared: &Arc<Shared>,
        control: Arc<ConnControl>,
        read_ahead: &[u8],
    ) -> Metered<S> {
        let mut watch = FrameWatch::default();
        let refused = watch.feed(read_ahead).err();
        Metered {
            inner,
            held: 0,
            watch,
            refused,
            control,
            shared: Arc::clone(shared),
            waiting: None,
        }
    }

    /// The connection this socket belongs to.
    pub fn control(&self) -> &Arc<ConnControl> {
        &self.control
    }

    /// Charges `held` bytes beyond the free allowance; `false` (and unchanged) when the budget cannot take it.
    fn charge_for(&mut self, held: usize) -> bool {
        let wanted = held.saturating_sub(FREE_INBOUND);
        let charged = self.control.inbound.load(Ordering::Relaxed);
        if wanted > charged {
            if !self.shared.inbound.try_take(wanted - charged) {
                return false;
            }
        } else if wanted < charged {
            self.shared.inbound.give(charged - wanted);
            self.shared.inbound_room.wake();
        }
        self.control.inbound.store(wanted, Ordering::Relaxed);
        true
    }

    /// Everything read so far has been handed over; `held` bytes of it are still alive.
    pub fn settle(&mut self, held: usize) {
        self.held = self.held.min(held);
        // Shrinking: never refused.
        self.charge_for(self.held);
    }

    /// `bytes` held before are gone.
    pub fn release(&mut self, bytes: usize) {
        self.held = self.held.saturating_sub(bytes);
        self.charge_for(self.held);
    }

    /// Charges for a read of up to `wanted` more bytes, waiting while the connection holding the most of the
    /// budget is closed. `Err` when this connection holds the most itself.
    fn poll_room(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<Result<(), InboundRefused>> {
        loop {
            if let Some(waiting) = &mut self.waiting {
                ready!(Pin::new(&mut **waiting).poll(cx));
                self.waiting = None;
            }
            let held = self.held.saturating_add(wanted);
            if self.charge_for(held) {
                return Poll::Ready(Ok(()));
            }
            // Registered before trying again, so room given back from now on is not missed.
            let wait = self.shared.inbound_room.wait();
            if self.charge_for(held) {
                return Poll::Ready(Ok(()));
            }
            if !self.shared.close_largest_inbound(&self.control) {
                let limit = self.shared.inbound.limit();
                return Poll::Ready(Err(InboundRefused::BudgetSpent { limit }));
            }
            self.waiting = Some(wait);
        }
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        self.charge_for(0);
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
        if let Err(refused) = ready!(this.poll_room(cx, buf.remaining())) {
            return Poll::Ready(Err(io::Error::other(refused)));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        this.held = this.held.saturating_add(read.len());
        // Back to what is held (shrinking: never refused).
        this.charge_for(this.held);
        ready!(polled)?;
        if let Err(refused) = this.watch.feed(&buf.filled()[before..]) {
            return Poll::Ready(Err(io::Error::other(refused)));
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
    use std::time::Duration;

    const PATIENCE: Duration = Duration::from_secs(10);

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

    /// A server (not listening) whose inbound budget is `limit` bytes.
    fn shared_with_inbound(limit: usize) -> Arc<Shared> {
        let mut config = crate::config::Config::default();
        config.limits.total_inbound_bytes = limit;
        let ws_config = config.limits.websocket_config(config.fragment_threshold);
        Arc::new(Shared::new(
            config,
            crate::app::App::default(),
            ws_config,
            None,
            None,
        ))
    }

    /// A metered socket of a new connection registered with `shared`, and its peer's end.
    fn metered(
        shared: &Arc<Shared>,
        id: u64,
    ) -> (Metered<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (peer, socket) = tokio::io::duplex(1 << 20);
        let control = Arc::new(ConnControl::new(1 << 20));
        shared.register(id, Arc::clone(&control));
        (Metered::new(socket, shared, control, &[]), peer)
    }

    #[tokio::test]
    async fn metered_reads_are_charged_beyond_the_allowance_until_settled() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let shared = shared_with_inbound(1000 + 4096);
        let budget = &shared.inbound;
        let (mut metered, mut peer) = metered(&shared, 1);
        peer.write_all(&vec![1; FREE_INBOUND + 600 + 20_000])
            .await
            .expect("write");
        // Another connection (not registered: it cannot be asked to close) holds the whole budget: the
        // allowance is still read.
        let other = Charge::take(budget, budget.limit()).expect("fits");
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
        assert_eq!(metered.control().inbound.load(Ordering::Relaxed), 600);
        metered.settle(FREE_INBOUND + 100);
        assert_eq!(budget.used(), 100);
        metered.release(FREE_INBOUND + 100);
        assert_eq!(budget.used(), 0);
        // Alone past the budget: it holds the most itself, so it is refused.
        let mut buf = vec![0; 20_000];
        let error = metered
            .read_exact(&mut buf)
            .await
            .expect_err("past the budget");
        assert!(error.get_ref().is_some_and(|e| e.is::<InboundRefused>()));
        drop(metered);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_full_inbound_budget_closes_the_largest_holder_and_the_reader_waits_for_its_room() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let shared = shared_with_inbound(64 * 1024);
        let (mut hog, mut hog_peer) = metered(&shared, 1);
        let (mut small, mut small_peer) = metered(&shared, 2);
        // The hog holds most of the budget (its bytes read, not yet handed over).
        hog_peer
            .write_all(&vec![1; 70 * 1024])
            .await
            .expect("write");
        let mut buf = vec![0; 70 * 1024];
        hog.read_exact(&mut buf).await.expect("within the budget");
        assert!(hog.control().take_close().is_none());
        // A small reader whose next read does not fit: the hog is asked to close, the reader waits.
        small_peer
            .write_all(&vec![2; 12 * 1024])
            .await
            .expect("write");
        let mut buf = vec![0; 12 * 1024];
        let read = tokio::spawn(async move { small.read_exact(&mut buf).await.map(|_| small) });
        tokio::time::timeout(PATIENCE, async {
            while hog.control().take_close().is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the hog is asked to close");
        let request = hog.control().take_close().expect("a close request");
        assert_eq!(request.code, CloseCode::TRY_AGAIN_LATER);
        assert!(!read.is_finished(), "the reader waits for the room");
        // The hog's connection ends: its room comes back and the reader goes on.
        drop(hog);
        let small = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the reader is woken")
            .expect("the reader's task")
            .expect("the read completes");
        assert!(
            small.control().take_close().is_none(),
            "the reader stays open"
        );
        assert_eq!(shared.stats().overflow_closes, 1);
    }

    /// A client frame (masked) of `size` payload bytes.
    fn frame(is_final: bool, opcode: u8, size: usize) -> Vec<u8> {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        let header = FrameHeader {
            is_final,
            opcode: opcode.into(),
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header
            .format(size as u64, &mut out)
            .expect("a frame header");
        out.resize(out.len() + size, 0xab);
        out
    }

    #[test]
    fn large_frames_pass_alone_but_not_within_a_fragmented_message() {
        let big = MAX_CONTINUED_FRAME + 1;
        let mut watch = FrameWatch::default();
        // Whole messages of any size, control frames, small fragments; fed in awkward pieces.
        let mut stream = frame(true, 2, big);
        stream.extend(frame(true, 9, 4));
        stream.extend(frame(false, 2, 1000));
        stream.extend(frame(true, 10, 0));
        stream.extend(frame(false, 0, MAX_CONTINUED_FRAME));
        stream.extend(frame(true, 0, 10_000));
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
