//! The log writer: every formatted line (the access log included) goes
//! into a bounded queue that one thread drains to stderr in batches, so a
//! request never waits on a slow or blocked stderr. When the queue is full the line
//! is dropped and counted (`wasmshop_telemetry_dropped_total{signal="log_line"}`).

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting for stderr before new ones are dropped.
pub const QUEUE_LINES: usize = 16_384;

enum Line {
    Text(Vec<u8>),
    /// Answered once every earlier line is written.
    Barrier(SyncSender<()>),
}

/// A [`MakeWriter`] for `tracing_subscriber::fmt` whose writers hand
/// each finished event to the stderr thread without blocking.
#[derive(Clone)]
pub struct NonBlockingStderr {
    tx: SyncSender<Line>,
}

static WRITER: OnceLock<NonBlockingStderr> = OnceLock::new();

impl NonBlockingStderr {
    /// The process's writer; the first call starts its thread.
    pub fn get() -> NonBlockingStderr {
        Self::global().clone()
    }

    fn global() -> &'static NonBlockingStderr {
        WRITER.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE_LINES);
            let rx = Mutex::new(rx);
            let _ = std::thread::Builder::new()
                .name("wasmshop-log".into())
                .spawn(move || drain(rx.into_inner().unwrap_or_else(|p| p.into_inner())));
            NonBlockingStderr { tx }
        })
    }

    /// Waits (at most `limit`) until the lines written so far reached
    /// stderr: called before the process exits. A stderr that takes
    /// nothing (a stalled pipe reader) fills the queue; the wait for room
    /// in it counts against the same `limit`, so the exit never hangs.
    pub fn flush(limit: Duration) {
        if let Some(w) = WRITER.get() {
            flush_through(&w.tx, limit);
        }
    }
}

/// [`NonBlockingStderr::flush`] on the queue `tx`.
fn flush_through(tx: &SyncSender<Line>, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    let (done, wait) = sync_channel(1);
    let mut barrier = Line::Barrier(done);
    loop {
        match tx.try_send(barrier) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                barrier = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = wait.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
}

/// How long the writer thread lets lines gather after writing a batch
/// before it waits on the queue again: on a busy host a sender then
/// rarely has to wake it (one wake per line cost more than the write),
/// and each batch is one `write` to stderr.
const GATHER: Duration = Duration::from_millis(2);

/// Bytes gathered before they are written even if more lines are queued.
const BATCH_BYTES: usize = 64 * 1024;

fn drain(rx: Receiver<Line>) {
    let stderr = std::io::stderr();
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut barriers: Vec<SyncSender<()>> = Vec::new();
    // Blocks only when the queue is empty.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(line) = next.take() {
            match line {
                Line::Text(bytes) => batch.extend_from_slice(&bytes),
                Line::Barrier(done) => barriers.push(done),
            }
            next = match rx.try_recv() {
                Ok(line) if batch.len() < BATCH_BYTES && barriers.is_empty() => Some(line),
                Ok(line) => {
                    write(&stderr, &mut batch, &mut barriers);
                    Some(line)
                }
                Err(TryRecvError::Empty) => {
                    write(&stderr, &mut batch, &mut barriers);
                    std::thread::sleep(GATHER);
                    rx.try_recv().ok()
                }
                Err(TryRecvError::Disconnected) => None,
            };
        }
        write(&stderr, &mut batch, &mut barriers);
    }
}

/// Writes `batch` to stderr in one call, then answers the barriers that
/// waited for it.
fn write(stderr: &std::io::Stderr, batch: &mut Vec<u8>, barriers: &mut Vec<SyncSender<()>>) {
    if !batch.is_empty() {
        let mut out = stderr.lock();
        let _ = out.write_all(batch);
        let _ = out.flush();
        batch.clear();
    }
    for done in barriers.drain(..) {
        let _ = done.send(());
    }
}

/// Hands one finished line (ending in a newline) to the stderr thread
/// without blocking; a full queue drops and counts it.
pub fn send(line: Vec<u8>) {
    #[cfg(test)]
    if let Some(line) = capture::take(line) {
        send_to(&NonBlockingStderr::global().tx, line);
    }
    #[cfg(not(test))]
    send_to(&NonBlockingStderr::global().tx, line);
}

fn send_to(tx: &SyncSender<Line>, line: Vec<u8>) {
    if line.is_empty() {
        return;
    }
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        tx.try_send(Line::Text(line))
    {
        super::count_dropped(super::Signal::LogLine, 1);
    }
}

/// One event's bytes, sent when the formatter drops it.
pub struct LineWriter {
    buf: Vec<u8>,
    tx: SyncSender<Line>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        send_to(&self.tx, std::mem::take(&mut self.buf));
    }
}

impl<'a> MakeWriter<'a> for NonBlockingStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
        }
    }
}

/// Unit tests: the lines [`send`] gets on this thread go to a channel.
#[cfg(test)]
pub(crate) mod capture {
    use std::cell::RefCell;
    use std::sync::mpsc::Sender;

    thread_local! {
        static TO: RefCell<Option<Sender<Vec<u8>>>> = const { RefCell::new(None) };
    }

    /// `line` back when nothing captures this thread's lines.
    pub(super) fn take(line: Vec<u8>) -> Option<Vec<u8>> {
        TO.with(|to| match to.borrow().as_ref() {
            Some(tx) => {
                let _ = tx.send(line);
                None
            }
            None => Some(line),
        })
    }

    /// Runs `f`, its lines sent to `tx` instead of stderr.
    pub(crate) fn run<R>(tx: Sender<Vec<u8>>, f: impl FnOnce() -> R) -> R {
        TO.with(|to| *to.borrow_mut() = Some(tx));
        let out = f();
        TO.with(|to| *to.borrow_mut() = None);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_gives_up_when_stderr_takes_nothing_and_the_queue_is_full() {
        // A queue nobody drains, full: the writer thread is stuck in a
        // write to a pipe whose reader stopped reading.
        let (tx, _stuck) = sync_channel(1);
        tx.try_send(Line::Text(b"waiting\n".to_vec())).unwrap();
        let (returned, wait) = sync_channel(1);
        std::thread::spawn(move || {
            flush_through(&tx, Duration::from_millis(50));
            let _ = returned.send(());
        });
        // Not a timing bound: before, the flush waited for room for ever.
        assert!(
            wait.recv_timeout(Duration::from_secs(30)).is_ok(),
            "the flush never returned"
        );
    }
}
