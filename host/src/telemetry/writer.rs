//! The log writer: every formatted line (the access log included) goes
//! into a bounded queue that one thread drains to stderr, so a request
//! never waits on a slow or blocked stderr. When the queue is full the line
//! is dropped and counted (`wasmshop_telemetry_dropped_total{signal="log_line"}`).

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
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
        WRITER
            .get_or_init(|| {
                let (tx, rx) = sync_channel(QUEUE_LINES);
                let rx = Mutex::new(rx);
                let _ = std::thread::Builder::new()
                    .name("wasmshop-log".into())
                    .spawn(move || drain(rx.into_inner().unwrap_or_else(|p| p.into_inner())));
                NonBlockingStderr { tx }
            })
            .clone()
    }

    /// Waits (at most `limit`) until the lines written so far reached
    /// stderr: called before the process exits.
    pub fn flush(limit: Duration) {
        let Some(w) = WRITER.get() else { return };
        let (done, wait) = sync_channel(1);
        if w.tx.send(Line::Barrier(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

fn drain(rx: Receiver<Line>) {
    let stderr = std::io::stderr();
    while let Ok(line) = rx.recv() {
        match line {
            Line::Text(bytes) => {
                let mut out = stderr.lock();
                let _ = out.write_all(&bytes);
                // Whatever else is queued goes out in the same lock.
                while let Ok(Line::Text(more)) = rx.try_recv() {
                    let _ = out.write_all(&more);
                }
                let _ = out.flush();
            }
            Line::Barrier(done) => {
                let _ = done.send(());
            }
        }
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
        if self.buf.is_empty() {
            return;
        }
        let line = Line::Text(std::mem::take(&mut self.buf));
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            super::count_dropped(super::Signal::LogLine, 1);
        }
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
