//! JSON log lines, written without `tracing_subscriber::fmt`: the cost of
//! the access log is per request, so it must stay small
//! (`docs/observability.md`, "What telemetry costs").
//!
//! `fmt`'s JSON format keeps every span's fields as a JSON string (made
//! again on each `Span::record`) and parses them back on each event to
//! write `span` and `spans`; on the hottest read that was most of the
//! telemetry time. Here a line is one `serde_json` map written straight
//! into a pre-sized buffer: `timestamp`, `level`, the event's fields
//! (`message` first), `target`, then `trace_id` and `span_id` of the
//! request or delivery the line was written in (the nearest span that
//! recorded them, see [`super::spans::ids`]). The access line skips
//! `tracing` altogether ([`write_access`]).

use serde::Serialize;
use serde::ser::{SerializeMap as _, Serializer as _};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::time::FormatTime as _;
use tracing_subscriber::registry::LookupSpan;

/// Set once [`JsonLayer`] is installed: the access line is then written
/// by [`write_access`] and the layer skips access events.
static ON: AtomicBool = AtomicBool::new(false);

/// The typical line fits without growing the buffer.
const LINE_CAPACITY: usize = 384;

/// Writes every `tracing` event but the access line (target
/// [`super::ACCESS_TARGET`], written by [`write_access`]) as one JSON line
/// to the non-blocking stderr writer ([`super::writer`]).
pub struct JsonLayer;

impl JsonLayer {
    /// The layer; from now on [`write_access`] writes the access lines.
    pub fn install() -> JsonLayer {
        ON.store(true, Ordering::Relaxed);
        JsonLayer
    }
}

/// The W3C ids a request or delivery span recorded (`trace_id`,
/// `span_id`: 32 and 16 lowercase hex digits), kept in the span's
/// extensions for the lines written inside it.
#[derive(Default, Clone, Copy)]
struct Ids {
    trace_id: Option<[u8; 32]>,
    span_id: Option<[u8; 16]>,
}

impl Ids {
    fn trace_id(&self) -> Option<&str> {
        self.trace_id
            .as_ref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    fn span_id(&self) -> Option<&str> {
        self.span_id
            .as_ref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }
}

fn hex_array<const N: usize>(value: &str) -> Option<[u8; N]> {
    (value.len() == N && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| value.as_bytes().try_into().ok())
        .flatten()
}

impl Visit for Ids {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = hex_array(value).or(self.trace_id),
            "span_id" => self.span_id = hex_array(value).or(self.span_id),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "span_id") {
            let text = format!("{value:?}");
            self.record_str(field, text.trim_matches('"'));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut recorded = Ids::default();
        values.record(&mut recorded);
        if recorded.trace_id.is_none() && recorded.span_id.is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let mut ids = extensions.get_mut::<Ids>().map(|i| *i).unwrap_or_default();
        ids.trace_id = recorded.trace_id.or(ids.trace_id);
        ids.span_id = recorded.span_id.or(ids.span_id);
        extensions.replace(ids);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == super::ACCESS_TARGET {
            return;
        }
        let ids = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .into_iter()
                    .find_map(|s| s.extensions().get::<Ids>().copied())
            })
            .unwrap_or_default();
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        if write_event(&mut line, event, &ids).is_ok() {
            line.push(b'\n');
            super::writer::send(line);
        }
    }
}

/// Writes the current time as `fmt` does (RFC 3339, UTC, microseconds).
fn timestamp(out: &mut String) {
    let mut w = tracing_subscriber::fmt::format::Writer::new(out);
    let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut w);
}

fn write_event(out: &mut Vec<u8>, event: &tracing::Event<'_>, ids: &Ids) -> serde_json::Result<()> {
    let meta = event.metadata();
    let mut scratch = String::with_capacity(64);
    timestamp(&mut scratch);
    let mut ser = serde_json::Serializer::new(out);
    let mut map = ser.serialize_map(None)?;
    map.serialize_entry("timestamp", scratch.as_str())?;
    map.serialize_entry("level", meta.level().as_str())?;
    let mut fields = Fields {
        map,
        scratch,
        error: None,
        log_target: None,
        has_trace_id: false,
        has_span_id: false,
    };
    event.record(&mut fields);
    let Fields {
        mut map,
        error,
        log_target,
        has_trace_id,
        has_span_id,
        ..
    } = fields;
    if let Some(e) = error {
        return Err(e);
    }
    // A `log` record's target is in its `log.target` field.
    map.serialize_entry("target", log_target.as_deref().unwrap_or(meta.target()))?;
    if !has_trace_id && let Some(t) = ids.trace_id() {
        map.serialize_entry("trace_id", t)?;
    }
    if !has_span_id && let Some(s) = ids.span_id() {
        map.serialize_entry("span_id", s)?;
    }
    map.end()
}

/// Serializes an event's fields into the line's map, as `fmt`'s JSON does:
/// strings, numbers and booleans as such, anything else by `Debug`;
/// `log.*` fields (a `log` record's metadata) left out.
struct Fields<'a> {
    map: serde_json::ser::Compound<'a, &'a mut Vec<u8>, serde_json::ser::CompactFormatter>,
    scratch: String,
    error: Option<serde_json::Error>,
    log_target: Option<String>,
    has_trace_id: bool,
    has_span_id: bool,
}

impl Fields<'_> {
    fn entry<T: Serialize + ?Sized>(&mut self, field: &Field, value: &T) {
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.has_trace_id |= name == "trace_id";
        self.has_span_id |= name == "span_id";
        if self.error.is_none()
            && let Err(e) = self.map.serialize_entry(name, value)
        {
            self.error = Some(e);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "log.target" {
            self.log_target = Some(format!("{value:?}"));
            return;
        }
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        let _ = write!(text, "{value:?}");
        self.entry(field, text.as_str());
        self.scratch = text;
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_string());
            return;
        }
        self.entry(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, &value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        let _ = write!(text, "{value}");
        self.entry(field, text.as_str());
        self.scratch = text;
    }
}

/// One access line, its fields in the order the `tracing` event had.
#[derive(Serialize)]
pub(crate) struct AccessLine<'a> {
    /// The request method (`GET`).
    pub method: &'a str,
    /// The route template (`/api/products/:id`), `(unrouted)` outside one.
    pub route: &'a str,
    /// The response status.
    pub status: u16,
    /// Milliseconds to the response head.
    pub duration_ms: f64,
    /// The component id that handled the request.
    pub component: &'a str,
    /// The `X-Tenant-Id` (`default`, `(invalid)`).
    pub tenant: &'a str,
    /// The server span's trace id (32 hex digits).
    pub trace_id: &'a str,
    /// The server span's id (16 hex digits).
    pub span_id: &'a str,
}

#[derive(Serialize)]
struct AccessRecord<'a> {
    timestamp: &'a str,
    level: &'static str,
    message: &'static str,
    #[serde(flatten)]
    line: &'a AccessLine<'a>,
    target: &'static str,
}

/// Writes `line` as the access line when [`JsonLayer`] is installed
/// (one `serde_json` record handed to the stderr writer; a full queue
/// drops and counts it); `false` otherwise, and the caller emits it as a
/// `tracing` event for the text format.
pub(crate) fn write_access(line: &AccessLine<'_>) -> bool {
    if !ON.load(Ordering::Relaxed) {
        return false;
    }
    let mut time = String::with_capacity(32);
    timestamp(&mut time);
    let mut out = Vec::with_capacity(LINE_CAPACITY);
    let record = AccessRecord {
        timestamp: &time,
        level: "INFO",
        message: "access",
        line,
        target: super::ACCESS_TARGET,
    };
    if serde_json::to_writer(&mut out, &record).is_ok() {
        out.push(b'\n');
        super::writer::send(out);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// The lines `f` writes through a [`JsonLayer`], parsed.
    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let subscriber = tracing_subscriber::registry().with(JsonLayer);
        let mut events = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        super::super::writer::capture::run(tx, || tracing::subscriber::with_default(subscriber, f));
        while let Ok(line) = rx.try_recv() {
            events.push(serde_json::from_slice(&line).expect("a JSON line"));
        }
        events
    }

    #[test]
    fn a_line_inside_a_request_names_its_trace_and_span() {
        let got = lines(|| {
            tracing::info!(target: "wasmshop::test", "outside");
            let span = tracing::info_span!(
                "request",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            span.record("trace_id", "0af7651916cd43dd8448eb211c80319c");
            span.record("span_id", "b7ad6b7169203331");
            let _in = span.enter();
            let inner = tracing::info_span!("kv");
            let _inner = inner.enter();
            tracing::warn!(target: "wasmshop::test", count = 3, ok = true, who = %"a \"quoted\" name", "inside {}", 1);
        });
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["message"], "outside");
        assert!(got[0].get("trace_id").is_none(), "{}", got[0]);
        let inside = &got[1];
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["message"], "inside 1");
        assert_eq!(inside["count"], 3);
        assert_eq!(inside["ok"], true);
        assert_eq!(inside["who"], "a \"quoted\" name");
        assert_eq!(inside["target"], "wasmshop::test");
        assert_eq!(inside["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(inside["span_id"], "b7ad6b7169203331");
        assert!(inside["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn the_access_line_has_its_fields_in_order() {
        let mut time = String::new();
        timestamp(&mut time);
        let line = AccessLine {
            method: "GET",
            route: "/api/products/:id",
            status: 200,
            duration_ms: 1.5,
            component: "product",
            tenant: "acme",
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            span_id: "b7ad6b7169203331",
        };
        let record = AccessRecord {
            timestamp: &time,
            level: "INFO",
            message: "access",
            line: &line,
            target: super::super::ACCESS_TARGET,
        };
        let text = serde_json::to_string(&record).unwrap();
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        // serde_json's Map is sorted unless preserve_order: check the text.
        let order = [
            "timestamp",
            "level",
            "message",
            "method",
            "route",
            "status",
            "duration_ms",
            "component",
            "tenant",
            "trace_id",
            "span_id",
            "target",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(keys.len(), order.len());
        assert!(
            text.contains("\"status\":200,\"duration_ms\":1.5,"),
            "{text}"
        );
    }
}
