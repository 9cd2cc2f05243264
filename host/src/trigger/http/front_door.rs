//! The listener's defences against slow and numerous clients, so that a
//! client costs the host a socket and a bounded buffer, never an instance
//! (`docs/operations.md` lists every limit, its default and what a client
//! sees when it trips):
//!
//! - every connection is in one [`Phase`]; a watchdog closes one that
//!   spends longer than the header-read timeout between its first byte
//!   (or its accept) and a complete request head, or longer than the idle
//!   timeout between a response and the next request. hyper's own
//!   `header_read_timeout` is not used: it starts as soon as a keep-alive
//!   connection goes idle, so it would also be the idle timeout, far
//!   shorter than the idle times of the callers' connection pools;
//! - [`Connections`] caps open connections; at the cap the oldest
//!   connection still reading a head or a body is shed (then the oldest
//!   idle one); when every connection is running a request the new one is
//!   answered 503 and closed;
//! - [`read_body`] reads a request body, size-limited and under a
//!   deadline, into memory drawn from one [`BodyBudget`] before an
//!   instance is taken.

use crate::problem::problem;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The limits of the HTTP listener, from the `up` flags.
#[derive(Debug, Clone, Copy)]
pub struct FrontDoorLimits {
    /// From a connection's accept or a request's first byte to its
    /// complete head.
    pub header_read_timeout: Duration,
    /// From a response to the next request's first byte on a keep-alive
    /// connection.
    pub idle_timeout: Duration,
    /// From a request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
    /// Largest request body, in bytes; larger is a 413.
    pub max_body_bytes: usize,
    /// Bytes of request bodies buffered at once, across all requests.
    pub body_budget_bytes: usize,
    /// How long a client may accept no bytes of a response before its
    /// connection is closed.
    pub send_timeout: Duration,
    /// Largest response body the host buffers for one response; a larger
    /// one is streamed from its instance.
    pub max_response_buffer_bytes: usize,
    /// Bytes of response bodies buffered at once, across all responses.
    pub response_budget_bytes: usize,
}

/// How long a connection must have been reading a request head or body
/// before the connection cap may shed it: one just accepted, whose head is
/// arriving at a normal pace, is no slow client, and shedding it would
/// reset a request that is about to be served.
pub const SHED_AFTER: Duration = Duration::from_secs(1);

/// Largest piece of a buffered response handed to hyper at once, so each
/// piece the client accepts re-arms the send deadline.
const SEND_PIECE: usize = 64 << 10;

/// What a connection is doing, for its timeouts and for shedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepted, or past its first byte: reading a request head.
    Head = 0,
    /// Reading a request body.
    Body = 1,
    /// A request is being served (an instance runs or a response is sent).
    Busy = 2,
    /// Between a response and the next request (keep-alive).
    Idle = 3,
    /// Response bytes are waiting for the client to accept them (under
    /// the send timeout).
    Send = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Head,
            1 => Phase::Body,
            2 => Phase::Busy,
            3 => Phase::Idle,
            _ => Phase::Send,
        }
    }
}

/// One open connection as the listener tracks it.
pub struct Conn {
    id: u64,
    phase: AtomicU8,
    /// When the current phase began, in ms since [`Connections`] started.
    since_ms: AtomicU64,
    epoch: Instant,
    /// Woken when the connection is shed.
    shed: Notify,
    /// Woken when the phase changes, so the watchdog re-arms its timer.
    changed: Notify,
    /// The response body is done; the connection turns idle once hyper
    /// has flushed its last bytes to the socket.
    flushing: AtomicBool,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Enters `phase` now.
    pub fn enter(&self, phase: Phase) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Release);
        self.changed.notify_one();
    }

    /// Restarts the current phase's clock without waking the watchdog
    /// (it re-reads the clock when its timer fires): the client accepted
    /// response bytes.
    fn touch(&self) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// How long until the current phase's timeout, `None` when the phase
    /// has none (body and busy phases are bounded elsewhere: the body
    /// deadline, the request time limit).
    fn remaining(&self, limits: &FrontDoorLimits) -> Option<Duration> {
        let limit = match self.phase() {
            Phase::Head => limits.header_read_timeout,
            Phase::Idle => limits.idle_timeout,
            Phase::Send => limits.send_timeout,
            Phase::Body | Phase::Busy => return None,
        };
        let spent = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.since_ms.load(Ordering::Relaxed)),
        );
        Some(limit.saturating_sub(spent))
    }

    /// Resolves when the connection must close: its phase timed out, or it
    /// was shed. Returns why, for the log.
    pub async fn closed(&self, limits: &FrontDoorLimits) -> &'static str {
        loop {
            let wait = match self.remaining(limits) {
                Some(left) if left.is_zero() => {
                    return match self.phase() {
                        Phase::Idle => "idle timeout",
                        Phase::Send => "send timeout: the client accepted no response bytes",
                        _ => "header read timeout",
                    };
                }
                Some(left) => left,
                // Re-armed by the next phase change.
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = self.shed.notified() => return "shed at the connection cap",
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The open connections and their cap.
pub struct Connections {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    epoch: Instant,
    max: usize,
}

/// What to do with a connection just accepted.
pub enum Admission {
    /// Serve it; it is tracked as this.
    Serve(Arc<Conn>),
    /// Every connection is running a request: answer 503 and close.
    Refuse,
}

impl Connections {
    /// Tracks connections, at most `max` open at once.
    pub fn new(max: usize) -> Self {
        Connections {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            max: max.max(1),
        }
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a new connection, shedding one at the cap: the oldest that
    /// has been reading a head or a body for longer than [`SHED_AFTER`]
    /// (slow clients), else the oldest idle one; with neither, the new
    /// one is refused.
    pub fn admit(&self) -> Admission {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.max {
            let now = self.epoch.elapsed().as_millis() as u64;
            // None in the listener's first second: no connection is slow yet.
            let slow_since = now.checked_sub(SHED_AFTER.as_millis() as u64);
            let oldest = |wanted: &[Phase], before: u64| {
                open.values()
                    .filter(|c| wanted.contains(&c.phase()))
                    .map(|c| (c.since_ms.load(Ordering::Relaxed), c.id))
                    .filter(|(since, _)| *since <= before)
                    .min()
                    .map(|(_, id)| id)
            };
            let victim = slow_since
                .and_then(|before| oldest(&[Phase::Head, Phase::Body], before))
                .or_else(|| oldest(&[Phase::Idle], now));
            match victim.and_then(|id| open.remove(&id)) {
                Some(victim) => {
                    tracing::debug!(phase = ?victim.phase(), "connection cap reached: shedding the oldest slow or idle connection");
                    victim.shed.notify_one();
                }
                None => return Admission::Refuse,
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            phase: AtomicU8::new(Phase::Head as u8),
            since_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            epoch: self.epoch,
            shed: Notify::new(),
            changed: Notify::new(),
            flushing: AtomicBool::new(false),
        });
        open.insert(id, conn.clone());
        Admission::Serve(conn)
    }

    /// Forgets a closed connection.
    pub fn remove(&self, conn: &Conn) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn.id);
    }
}

/// The bytes answering a connection refused at the cap: a 503 problem
/// with `Retry-After`, and the connection closed.
pub fn refused_response() -> Vec<u8> {
    let body = serde_json::json!({
        "type": "urn:wasmshop:problem:capacity",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "every connection this host may hold is running a request (--max-connections); retry after the Retry-After seconds",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A socket that moves its connection from idle to [`Phase::Head`] when
/// the next request's first byte arrives.
pub struct TrackedIo<T> {
    inner: T,
    conn: Arc<Conn>,
}

impl<T> TrackedIo<T> {
    /// Wraps `inner`, tracked as `conn`.
    pub fn new(inner: T, conn: Arc<Conn>) -> Self {
        TrackedIo { inner, conn }
    }
}

impl<T> TrackedIo<T> {
    /// The client accepted response bytes: its send deadline restarts.
    fn sent(&self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) && self.conn.phase() == Phase::Send {
            self.conn.touch();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // The next request's head is timed from its first byte.
            if self.conn.phase() == Phase::Idle {
                self.conn.enter(Phase::Head);
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.sent(&result);
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        // hyper flushes after the end of each response: once that flush
        // is through, the client has every byte and the connection idles.
        if matches!(result, Poll::Ready(Ok(()))) && self.conn.flushing.swap(false, Ordering::AcqRel)
        {
            self.conn.enter(Phase::Idle);
        }
        result
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.sent(&result);
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that times its client: while hyper holds a piece of
/// it that the client has not accepted, the connection is in
/// [`Phase::Send`] (under the send timeout); when hyper asks for the next
/// piece it is [`Phase::Busy`] (the instance may still be producing it).
/// Once hyper is done with the body the connection stays in
/// [`Phase::Send`] until the last bytes are flushed, then idles.
pub struct TrackedBody {
    inner: HyperOutgoingBody,
    conn: Arc<Conn>,
}

impl TrackedBody {
    /// Wraps `inner`, the response on `conn`.
    pub fn new(inner: HyperOutgoingBody, conn: Arc<Conn>) -> Self {
        TrackedBody { inner, conn }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.conn.flushing.store(true, Ordering::Release);
        self.conn.enter(Phase::Send);
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = <HyperOutgoingBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.conn.phase() == Phase::Send {
            // hyper asks for more: the client took what it had.
            self.conn.enter(Phase::Busy);
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(Some(Ok(_)))) {
            self.conn.enter(Phase::Send);
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Bytes of request bodies buffered at once, shared by all requests.
///
/// When a body finds the budget spent, bodies that have **stalled**
/// (under [`PROGRESS_BYTES`] in the last [`SHED_AFTER`]) are shed if
/// together they free enough (see [`BodyBudget::shed_stalled`]): each is
/// answered 503 and closed, and the body that needed the room takes it.
/// Otherwise a few clients that send most of a large body and then stop,
/// or trickle, would hold the whole budget until their body deadline, and
/// every other request with a body would be refused meanwhile. A body
/// arriving faster is never shed, nor one while it waits for room.
pub struct BodyBudget {
    used: AtomicUsize,
    max: usize,
    /// Bodies being read now.
    readers: Mutex<Vec<Reader>>,
    next_reader: AtomicU64,
    /// Origin of the readers' progress clocks.
    epoch: Instant,
}

/// A body being read: how far it got, and how to stop it.
struct Reader {
    id: u64,
    progress: Arc<Progress>,
    shed: Arc<Notify>,
}

/// What a body reader last did, shared with the registry.
struct Progress {
    /// Milliseconds after the budget's epoch when it last made progress:
    /// its start, each [`PROGRESS_BYTES`] received, or its last wait for
    /// room.
    last_ms: AtomicU64,
    /// Bytes it holds from the budget.
    held: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            used: AtomicUsize::new(0),
            max,
            readers: Mutex::new(Vec::new()),
            next_reader: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a body being read; it leaves the registry when the
    /// returned ticket drops.
    fn reading(self: &Arc<Self>) -> ReaderTicket {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let shed = Arc::new(Notify::new());
        let progress = Arc::new(Progress {
            last_ms: AtomicU64::new(self.now_ms()),
            held: AtomicUsize::new(0),
        });
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Reader {
                id,
                progress: progress.clone(),
                shed: shed.clone(),
            });
        ReaderTicket {
            budget: self.clone(),
            id,
            progress,
            since_progress: 0,
            shed,
        }
    }

    /// Sheds stalled body readers other than `me` that hold at least
    /// `needed` bytes: the smallest one that holds enough alone, else the
    /// largest ones until they do; sheds none and returns `false` when all
    /// stalled readers together hold less.
    fn shed_stalled(&self, me: u64, needed: usize) -> bool {
        // In the budget's first second nothing has stalled yet.
        let Some(stalled_since) = self.now_ms().checked_sub(SHED_AFTER.as_millis() as u64) else {
            return false;
        };
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let mut stalled: Vec<(usize, usize)> = readers
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.id != me && r.progress.last_ms.load(Ordering::Relaxed) <= stalled_since
            })
            .map(|(i, r)| (i, r.progress.held.load(Ordering::Relaxed)))
            .filter(|(_, held)| *held > 0)
            .collect();
        stalled.sort_by_key(|&(_, held)| std::cmp::Reverse(held));
        // One body that frees enough, the smallest such; else the largest
        // ones until they do.
        let take = match stalled.iter().rposition(|(_, held)| *held >= needed) {
            Some(one) => {
                stalled.swap(0, one);
                1
            }
            None => {
                let mut freed = 0;
                let take = stalled
                    .iter()
                    .take_while(|(_, held)| {
                        let more = freed < needed;
                        freed += held;
                        more
                    })
                    .count();
                if freed < needed {
                    return false;
                }
                take
            }
        };
        let mut victims: Vec<usize> = stalled[..take].iter().map(|(i, _)| *i).collect();
        victims.sort_unstable_by(|a, b| b.cmp(a));
        for i in victims {
            readers.swap_remove(i).shed.notify_one();
        }
        true
    }

    /// Takes `n` more bytes into `held`, or `false` when that would pass
    /// the budget.
    fn take(self: &Arc<Self>, n: usize, held: &mut Reservation) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(n).filter(|next| *next <= self.max) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    held.bytes += n;
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A body reader's place in [`BodyBudget`]'s registry.
struct ReaderTicket {
    budget: Arc<BodyBudget>,
    id: u64,
    progress: Arc<Progress>,
    /// Bytes received since progress was last recorded.
    since_progress: usize,
    /// Notified when the reader is shed.
    shed: Arc<Notify>,
}

impl ReaderTicket {
    /// Records `n` more bytes received, `held` from the budget in all;
    /// progress once they add up to [`PROGRESS_BYTES`].
    fn received(&mut self, n: usize, held: usize) {
        self.since_progress += n;
        if self.since_progress >= PROGRESS_BYTES {
            self.since_progress = 0;
            self.advanced(held);
        } else {
            self.progress.held.store(held, Ordering::Relaxed);
        }
    }

    /// Records progress: `held` bytes taken so far, now.
    fn advanced(&self, held: usize) {
        self.progress.held.store(held, Ordering::Relaxed);
        self.progress
            .last_ms
            .store(self.budget.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for ReaderTicket {
    fn drop(&mut self) {
        let mut readers = self
            .budget
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(i) = readers.iter().position(|r| r.id == self.id) {
            readers.swap_remove(i);
        }
    }
}

/// Bytes a body must receive for that to count as progress: a body
/// that gets fewer than this in a second has stalled ([`SHED_AFTER`]),
/// i.e. below 64 KiB/s (half of the ~1 Mbit/s link the 30 s body
/// deadline is sized for, docs/operations.md). A body trickling a byte
/// at a time to keep its memory is thereby stalled, and keeping 4 MiB
/// costs an attacker 64 KiB/s per connection.
const PROGRESS_BYTES: usize = 64 << 10;

/// How long a body that found the budget spent waits for the bytes of
/// the bodies it shed to be given back; shorter than [`SHED_AFTER`], so
/// a reader waiting for room never counts as stalled itself.
const SHED_WAIT: Duration = Duration::from_millis(500);

/// Bytes taken from a [`BodyBudget`], given back when dropped.
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A request body read into memory; its bytes count against the
/// [`BodyBudget`] until it is dropped.
pub struct BufferedBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    _reservation: Reservation,
}

impl Body for BufferedBody {
    type Data = Bytes;
    /// Never produced: the body is already read. `hyper::Error` because
    /// the HTTP trigger passes bodies of this error type to components.
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Reads `request`'s body (at most `limits.max_body_bytes`, within
/// `limits.body_read_timeout`) into memory from `budget`, so the instance
/// that serves it never waits for the client. A refusal is the response
/// to send: 413 too large, 408 too slow, 503 with `Retry-After` when the
/// budget is spent, 400 when the client broke the body off.
pub async fn read_body(
    request: Request<Incoming>,
    limits: &FrontDoorLimits,
    budget: &Arc<BodyBudget>,
) -> Result<Request<BufferedBody>, http::Response<HyperOutgoingBody>> {
    let (parts, mut body) = request.into_parts();
    let mut reservation = Reservation {
        budget: budget.clone(),
        bytes: 0,
    };
    let too_large = || {
        let mut r = problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!(
                "the request body is larger than this host accepts ({} bytes, --max-request-body-bytes); send a smaller body",
                limits.max_body_bytes
            ),
        );
        close(&mut r);
        r
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let mut data = BytesMut::with_capacity(0);
    let mut trailers = None;
    let deadline = tokio::time::Instant::now() + limits.body_read_timeout;
    let mut ticket = (!body.is_end_stream()).then(|| budget.reading());
    loop {
        let next = async {
            match &ticket {
                Some(t) => tokio::select! {
                    frame = tokio::time::timeout_at(deadline, body.frame()) => Some(frame),
                    () = t.shed.notified() => None,
                },
                None => Some(tokio::time::timeout_at(deadline, body.frame()).await),
            }
        };
        let Some(frame) = next.await else {
            tracing::warn!(
                used = budget.used(),
                trace_id = crate::problem::current_trace_id().unwrap_or_default(),
                "request shed: its body had stalled for over a second when another body needed the memory for buffered bodies (--body-buffer-mb)"
            );
            return Err(budget_spent());
        };
        let frame = match frame {
            Err(_) => {
                let mut r = problem(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    format!(
                        "the request body did not arrive within {:?} (--body-read-timeout-secs); send it faster or in a smaller piece",
                        limits.body_read_timeout
                    ),
                );
                close(&mut r);
                return Err(r);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let mut r = problem(
                    StatusCode::BAD_REQUEST,
                    "body-unreadable",
                    format!("the request body could not be read: {e}; send it again"),
                );
                close(&mut r);
                return Err(r);
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > limits.max_body_bytes {
                    return Err(too_large());
                }
                if !budget.take(chunk.len(), &mut reservation)
                    && !make_room(budget, ticket.as_ref(), chunk.len(), &mut reservation).await
                {
                    tracing::warn!(
                        used = budget.used(),
                        trace_id = crate::problem::current_trace_id().unwrap_or_default(),
                        "request refused: the memory for buffered request bodies is spent (--body-buffer-mb)"
                    );
                    return Err(budget_spent());
                }
                if let Some(t) = &mut ticket {
                    t.received(chunk.len(), reservation.bytes);
                }
                data.extend_from_slice(&chunk);
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    let data = data.freeze();
    let body = BufferedBody {
        data: (!data.is_empty()).then_some(data),
        trailers,
        _reservation: reservation,
    };
    Ok(Request::from_parts(parts, body))
}

/// 503 with `Retry-After`, closing the connection: the memory for
/// buffered request bodies is spent.
fn budget_spent() -> http::Response<HyperOutgoingBody> {
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "capacity",
        "the host is buffering as many request bodies as its memory budget allows; retry after the Retry-After seconds",
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    close(&mut r);
    r
}

/// Sheds stalled body readers that free at least `n` bytes, then takes
/// `n` bytes into `held` once they are given back (within
/// [`SHED_WAIT`]); `false` when the stalled readers hold too little or
/// the bytes did not come back.
async fn make_room(
    budget: &Arc<BodyBudget>,
    me: Option<&ReaderTicket>,
    n: usize,
    held: &mut Reservation,
) -> bool {
    // Waiting for room is not stalling.
    if let Some(me) = me {
        me.advanced(held.bytes);
    }
    let free = budget.max.saturating_sub(budget.used());
    if !budget.shed_stalled(me.map_or(u64::MAX, |t| t.id), n.saturating_sub(free)) {
        return false;
    }
    let until = Instant::now() + SHED_WAIT;
    while Instant::now() < until {
        // The shed readers give their bytes back when their tasks next run.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if budget.take(n, held) {
            return true;
        }
    }
    false
}

/// The front door's body reader, for request handlers that run before
/// the public routes (a backend's [`crate::ingress::Ingress`] hook, such
/// as Dapr's deliveries on `/dapr/events/...`): the HTTP trigger puts one
/// in every request's extensions, so such a hook reads a body under the
/// same size limit, deadline and memory budget as a public route, and
/// before it takes an instance.
#[derive(Clone)]
pub struct BodyReader {
    limits: FrontDoorLimits,
    budget: Arc<BodyBudget>,
    conn: Option<Arc<Conn>>,
}

impl BodyReader {
    /// A reader under `limits`, drawing from `budget`.
    pub fn new(limits: FrontDoorLimits, budget: Arc<BodyBudget>) -> Self {
        BodyReader {
            limits,
            budget,
            conn: None,
        }
    }

    /// The same reader for a request on `conn`: once the body is read the
    /// connection is running a request ([`Phase::Busy`]), which the
    /// connection cap never sheds.
    pub fn on(mut self, conn: Arc<Conn>) -> Self {
        self.conn = Some(conn);
        self
    }

    /// [`read_body`] under this reader's limits and budget.
    pub async fn read(
        &self,
        request: Request<Incoming>,
    ) -> Result<Request<BufferedBody>, http::Response<HyperOutgoingBody>> {
        let read = read_body(request, &self.limits, &self.budget).await;
        if let (Ok(_), Some(conn)) = (&read, &self.conn) {
            conn.enter(Phase::Busy);
        }
        read
    }
}

impl BufferedBody {
    /// The body's bytes (empty when the request had none); its memory
    /// stays drawn from the budget until the body is dropped.
    pub fn bytes(&self) -> Bytes {
        self.data.clone().unwrap_or_default()
    }
}

/// The error type of a response body handed to hyper.
type SendError = <HyperOutgoingBody as Body>::Error;

/// A response body drained from its instance into host memory (drawn from
/// the response [`BodyBudget`] until dropped), sent in pieces of at most
/// [`SEND_PIECE`] bytes; when the buffer could not hold all of it, the
/// rest is streamed from the instance after the buffered part.
struct ReplayBody {
    chunks: VecDeque<Bytes>,
    /// The instance's body failed after the buffered bytes: passed on so
    /// hyper breaks the response off, as it would have when streaming.
    error: Option<SendError>,
    trailers: Option<HeaderMap>,
    rest: Option<HyperOutgoingBody>,
    _reservation: Reservation,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = SendError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(chunk) = self.chunks.front_mut() {
            let piece = chunk.split_to(chunk.len().min(SEND_PIECE));
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
            && self.error.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + buffered);
                }
                sum
            }
        }
    }
}

/// Drains `response`'s body from the instance producing it into host
/// memory, so the instance is released as soon as it has written its
/// body, whatever the pace of the client; the client is then fed from
/// the buffer under the send timeout. At most
/// `limits.max_response_buffer_bytes` are buffered for one response, and
/// all responses together take at most `limits.response_budget_bytes`
/// from `budget`: past either, the buffered part is sent and the rest is
/// streamed from the instance, which stays held while the client reads
/// (still under the send timeout). Streaming rather than refusing keeps a
/// busy host answering large responses; the send timeout bounds how long
/// a stalled client holds that instance.
pub async fn buffer_response(
    response: http::Response<HyperOutgoingBody>,
    limits: &FrontDoorLimits,
    budget: &Arc<BodyBudget>,
) -> http::Response<HyperOutgoingBody> {
    let (parts, mut body) = response.into_parts();
    let max = limits.max_response_buffer_bytes;
    if body.is_end_stream() || body.size_hint().lower() > max as u64 {
        return http::Response::from_parts(parts, body);
    }
    let mut replay = ReplayBody {
        chunks: VecDeque::new(),
        error: None,
        trailers: None,
        rest: None,
        _reservation: Reservation {
            budget: budget.clone(),
            bytes: 0,
        },
    };
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                replay.error = Some(e);
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    if len + chunk.len() > max
                        || !budget.take(chunk.len(), &mut replay._reservation)
                    {
                        tracing::debug!(
                            buffered = len,
                            budget_used = budget.used(),
                            "response streamed from its instance: past the per-response buffer or the response budget"
                        );
                        replay.chunks.push_back(chunk);
                        replay.rest = Some(body);
                        break;
                    }
                    len += chunk.len();
                    replay.chunks.push_back(chunk);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        replay.trailers = Some(t);
                    }
                }
            },
        }
    }
    http::Response::from_parts(parts, replay.boxed_unsync())
}

/// Asks the client to close the connection after this response (its
/// request body may be unread).
fn close(response: &mut http::Response<HyperOutgoingBody>) {
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
}

/// Raises the soft limit of open files to the hard limit and returns the
/// new soft limit, so the connection cap can be derived from it. Each
/// connection is one file descriptor; the usual soft default (1024) would
/// otherwise fail `accept` long before memory or CPU run out.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // An unlimited hard limit cannot be the soft one on every system;
    // 2^20 is Linux's default `nr_open`.
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_max
    };
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(target);
        }
        return Ok(limit.rlim_cur);
    }
    Ok(limit.rlim_cur)
}

/// The connection cap for an open-files limit: what is left after a
/// reserve for everything else the process opens (database, compile
/// cache, outbound connections to backends and services): a quarter of
/// the limit, at least 64 and at most 1024 descriptors.
pub fn connection_cap(open_files: u64) -> usize {
    let reserve = (open_files / 4).clamp(64, 1024);
    open_files.saturating_sub(reserve).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_everything_else() {
        assert_eq!(connection_cap(1024), 768);
        assert_eq!(connection_cap(20_000), 18_976);
        assert_eq!(connection_cap(100), 36);
        assert_eq!(connection_cap(10), 1);
    }

    #[test]
    fn at_the_cap_the_oldest_slow_connection_is_shed_and_busy_ones_never() {
        let conns = Connections::new(2);
        let Admission::Serve(a) = conns.admit() else {
            panic!()
        };
        let Admission::Serve(b) = conns.admit() else {
            panic!()
        };
        a.enter(Phase::Busy);
        b.enter(Phase::Body);
        // Only a body slow for longer than SHED_AFTER may be shed.
        assert!(matches!(conns.admit(), Admission::Refuse));
        std::thread::sleep(SHED_AFTER + Duration::from_millis(100));
        assert!(matches!(conns.admit(), Admission::Serve(_)));
        assert_eq!(conns.len(), 2, "b was shed for the new one");
        let conns = Connections::new(1);
        let Admission::Serve(c) = conns.admit() else {
            panic!()
        };
        c.enter(Phase::Busy);
        assert!(matches!(conns.admit(), Admission::Refuse));
    }

    #[tokio::test]
    async fn only_stalled_bodies_are_shed_and_only_as_many_as_free_enough() {
        let budget = Arc::new(BodyBudget {
            used: AtomicUsize::new(0),
            max: 100,
            readers: Mutex::new(Vec::new()),
            next_reader: AtomicU64::new(0),
            epoch: Instant::now() - Duration::from_secs(10),
        });
        let stalled = |held: usize| {
            let t = budget.reading();
            t.progress.held.store(held, Ordering::Relaxed);
            t.progress.last_ms.store(0, Ordering::Relaxed);
            t
        };
        let moving = budget.reading();
        moving.advanced(50);
        let big = stalled(30);
        let small = stalled(10);
        let count = || budget.readers.lock().unwrap().len();
        // The stalled ones hold 40 together: shedding them cannot free 50,
        // and the body still arriving is never a victim.
        assert!(!budget.shed_stalled(u64::MAX, 50));
        assert_eq!(count(), 3);
        // 25 bytes: the largest stalled body alone frees them.
        assert!(budget.shed_stalled(u64::MAX, 25));
        assert_eq!(count(), 2);
        let told = |t: &ReaderTicket| {
            let shed = t.shed.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), shed.notified())
                    .await
                    .is_ok()
            }
        };
        assert!(told(&big).await, "the one stalled body that frees enough");
        assert!(!told(&small).await);
        assert!(!told(&moving).await);
        // A reader never sheds itself.
        assert!(!budget.shed_stalled(small.id, 5));
        // Of the bodies that alone free enough, the smallest is shed.
        let medium = stalled(8);
        assert!(budget.shed_stalled(u64::MAX, 6));
        assert!(told(&medium).await);
        assert!(!told(&small).await);
        // None frees 13 alone: the largest first until enough (10 + 4).
        let tiny = stalled(4);
        let other = stalled(3);
        assert!(budget.shed_stalled(u64::MAX, 13));
        assert!(told(&small).await && told(&tiny).await);
        assert!(!told(&other).await);
    }

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(10);
        let mut r1 = Reservation {
            budget: budget.clone(),
            bytes: 0,
        };
        assert!(budget.take(6, &mut r1));
        let mut r2 = Reservation {
            budget: budget.clone(),
            bytes: 0,
        };
        assert!(!budget.take(6, &mut r2));
        drop(r1);
        assert!(budget.take(6, &mut r2));
        assert_eq!(budget.used(), 6);
    }
}
