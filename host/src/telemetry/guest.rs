//! A component's stdout and stderr as log lines: each line it writes
//! becomes one `tracing` event (target [`GUEST_TARGET`], fields
//! `component` and `stream`), so it goes through the same non-blocking
//! writer, JSON format and OTLP log export as the host's own lines.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::IsTerminal;
use wasmtime_wasi::cli::StdoutStream;

/// The `tracing` target of guest output lines.
pub const GUEST_TARGET: &str = "wasmshop::guest";

/// A line longer than this is written in pieces of this many bytes.
const MAX_LINE: usize = 16 * 1024;

/// `component`'s `stream` (`stdout` or `stderr`), for
/// `WasiCtxBuilder::stdout` / `stderr`, of an instance that continues
/// `traceparent` (the request's or delivery's span). Its lines carry that
/// span's `trace_id` and `span_id` as fields: wasmtime writes guest
/// output outside the request's `tracing` span, so the ids cannot come
/// from there.
pub fn output(
    component: &Arc<str>,
    stream: &'static str,
    traceparent: Option<&str>,
) -> GuestOutput {
    let ids = traceparent.and_then(|tp| {
        let mut parts = tp.split('-').skip(1);
        match (parts.next(), parts.next()) {
            (Some(t), Some(s)) if t.len() == 32 && s.len() == 16 => {
                Some((Arc::from(t), Arc::from(s)))
            }
            _ => None,
        }
    });
    GuestOutput {
        component: component.clone(),
        stream,
        ids,
    }
}

/// See [`output`].
pub struct GuestOutput {
    component: Arc<str>,
    stream: &'static str,
    /// The trace id and span id of the instance's span.
    ids: Option<(Arc<str>, Arc<str>)>,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            component: self.component.clone(),
            stream: self.stream,
            ids: self.ids.clone(),
            pending: Vec::new(),
        })
    }
}

struct LineWriter {
    component: Arc<str>,
    stream: &'static str,
    ids: Option<(Arc<str>, Arc<str>)>,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\r', '\n']);
        let trace_id = self.ids.as_ref().map(|(t, _)| &**t);
        let span_id = self.ids.as_ref().map(|(_, s)| &**s);
        if self.stream == "stderr" {
            tracing::warn!(target: GUEST_TARGET, component = %self.component, stream = self.stream, trace_id, span_id, "{line}");
        } else {
            tracing::info!(target: GUEST_TARGET, component = %self.component, stream = self.stream, trace_id, span_id, "{line}");
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line);
        }
        if self.pending.len() >= MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_line_a_guest_prints_is_a_log_line_naming_the_component() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || sink.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let component: Arc<str> = Arc::from("order");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut out = Pin::from(output(&component, "stderr", Some(tp)).async_stream());
        out.write_all(b"first line\nsecond ").await.unwrap();
        out.write_all(b"line\nunfinished").await.unwrap();
        drop(out);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let messages: Vec<&str> = lines
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages, ["first line", "second line", "unfinished"]);
        for l in &lines {
            assert_eq!(l["component"], "order");
            assert_eq!(l["stream"], "stderr");
            assert_eq!(l["target"], GUEST_TARGET);
            assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(l["span_id"], "00f067aa0ba902b7");
        }
    }
}
