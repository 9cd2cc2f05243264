//! The spans the host makes, with OpenTelemetry semantic-convention
//! attribute names (`docs/observability.md` lists them), and the bridge
//! between a `tracing` span and a W3C `traceparent`.
//!
//! Every span carries a `component` field naming the component whose work
//! it is; the exporter turns it into that component's resource
//! ([`super::export`]), and [`ComponentLayer`] passes it down to child
//! spans for the log records emitted inside them.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use std::sync::Arc;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The span context a `traceparent` value names, if it is one.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    if !crate::trace::is_valid(traceparent) {
        return None;
    }
    let mut parts = traceparent.split('-');
    let (_version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The `traceparent` of `span`, `None` when spans are not OpenTelemetry
/// spans (no telemetry installed: the host used as a library).
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` of the current `tracing` span (the request or
/// delivery being run, or a span inside it).
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// Makes `span` a child of the remote span `traceparent` names (a request
/// header, a delivered message's metadata). Call before anything enters
/// `span` or asks for its [`traceparent`].
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    if let Some(sc) = traceparent.and_then(parse) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Adds a link from `span` to the span `traceparent` names.
pub fn link(span: &Span, traceparent: Option<&str>) {
    if let Some(sc) = traceparent.and_then(parse) {
        span.add_link(sc);
    }
}

/// Records `trace_id` and `span_id` on `span` (for the log lines written
/// inside it) and returns its `traceparent`, or `fallback()` without
/// OpenTelemetry spans.
pub fn ids(span: &Span, fallback: impl FnOnce() -> String) -> String {
    let tp = traceparent(span).unwrap_or_else(fallback);
    let mut parts = tp.split('-').skip(1);
    if let (Some(trace), Some(id)) = (parts.next(), parts.next()) {
        span.record("trace_id", trace);
        span.record("span_id", id);
    }
    tp
}

/// The server span of one HTTP request to `component` (`http.route` is
/// the route template, never the path with ids).
pub fn server(method: &str, route: Option<&str>, component: &str, tenant: &str) -> Span {
    let name = match route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        wasmshop.tenant = tenant,
        component = component,
        trace_id = Empty,
        span_id = Empty,
    )
}

/// The tenant a request's access line and span name: its `x-tenant-id`,
/// `default` without one, and `(invalid)` for a header that is there but
/// no valid tenant id (bytes outside visible ASCII included), so a forged
/// value never reaches the log and a bad one is never taken for `default`.
fn tenant_label(headers: &http::HeaderMap) -> String {
    let Some(value) = headers.get("x-tenant-id") else {
        return "default".to_string();
    };
    let t = value.as_bytes();
    let valid = !t.is_empty()
        && t.len() <= 64
        && t.iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    match std::str::from_utf8(t) {
        Ok(t) if valid => t.to_string(),
        _ => "(invalid)".to_string(),
    }
}

/// What the access line of a request says besides its status and
/// duration.
#[derive(Debug, Clone)]
pub struct Access {
    method: String,
    route: String,
    component: String,
    tenant: String,
    /// The server span's `traceparent`: `00-<trace id>-<span id>-<flags>`.
    traceparent: String,
}

impl Access {
    fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }
}

/// The server span of `request` to `component`: a child of the request's
/// valid `traceparent` (else a new trace), whose own context replaces the
/// header so the component and its calls continue it. Returns the span
/// and what [`Access::finish`] writes.
pub fn request<B>(
    request: &mut http::Request<B>,
    route: Option<&str>,
    component: &str,
) -> (Span, Access) {
    use crate::trace::TRACEPARENT;
    let method = request.method().as_str().to_string();
    let tenant = tenant_label(request.headers());
    let span = server(&method, route, component, &tenant);
    set_parent(&span, crate::trace::valid_in(request.headers()));
    let tp = ids(&span, || crate::trace::ensure(request.headers_mut()));
    if let Ok(v) = http::HeaderValue::from_str(&tp) {
        request.headers_mut().insert(TRACEPARENT, v);
    }
    let access = Access {
        method,
        route: route.unwrap_or("(unrouted)").to_string(),
        component: component.to_string(),
        tenant,
        traceparent: tp,
    };
    (span, access)
}

impl Access {
    /// Records `status` on the server span and writes the request's
    /// access line (target [`super::ACCESS_TARGET`]; `duration_ms` to the
    /// response head), unless `RUST_LOG` turns it off. In JSON it is one
    /// record handed to the log writer ([`super::json::write_access`]);
    /// the `tracing` event is made only for the text format and for the
    /// OTLP log export.
    pub fn finish(&self, span: &Span, status: u16, took: std::time::Duration) {
        record_status(span, status);
        if !super::access_log_on() {
            return;
        }
        let duration_ms = took.as_secs_f64() * 1000.0;
        let written = super::json::write_access(&super::json::AccessLine {
            method: &self.method,
            route: &self.route,
            status,
            duration_ms,
            component: &self.component,
            tenant: &self.tenant,
            trace_id: self.trace_id(),
            span_id: self.span_id(),
        });
        if written && !super::logs_exported() {
            return;
        }
        span.in_scope(|| {
            tracing::info!(
                target: super::ACCESS_TARGET,
                method = %self.method,
                route = %self.route,
                status,
                duration_ms,
                component = %self.component,
                tenant = %self.tenant,
                trace_id = self.trace_id(),
                span_id = self.span_id(),
                "access"
            );
        });
    }
}

/// `tokio::spawn` of `future` inside `span`, so what it logs and the
/// spans it opens belong to the request or delivery.
pub fn spawn_in<F>(span: &Span, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument as _;
    tokio::spawn(future.instrument(span.clone()))
}

/// Marks a server or client span with its HTTP status (5xx is an error,
/// as the HTTP semantic conventions say for servers).
pub fn record_status(span: &Span, status: u16) {
    // As an int, as the conventions type it: tracing-opentelemetry turns
    // unsigned values into text, signed ones into ints.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// A client span of one key-value operation; `db.system` is the store
/// behind the backend (`sqlite`, `redis`, `dapr`). Keys and values are
/// never attributes.
pub fn kv(backend: &str, operation: &'static str, label: &str, component: &str) -> Span {
    tracing::info_span!(
        "kv",
        otel.name = %format_args!("{operation} {label}"),
        otel.kind = "client",
        otel.status_code = Empty,
        db.system = db_system(backend),
        db.operation.name = operation,
        db.namespace = label,
        component = component,
    )
}

/// `db.system` of a key-value backend.
pub fn db_system(backend: &str) -> &'static str {
    match backend {
        "embedded" => "sqlite",
        "redis" => "redis",
        "dapr" => "dapr",
        _ => "other_sql",
    }
}

/// A producer span of one message sent to `topic` by `component`.
pub fn producer(system: &str, topic: &str, component: &str) -> Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        messaging.message.id = Empty,
        component = component,
    )
}

/// A consumer span of one delivery of `topic` to `component`: call
/// [`set_parent`] with the delivered CloudEvent's `traceparent` and
/// [`link`] with the producer's.
pub fn consumer(system: &str, topic: &str, message_id: &str, component: &str) -> Span {
    let span = tracing::info_span!(
        "deliver",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.destination.name = topic,
        messaging.message.id = Empty,
        component = component,
        trace_id = Empty,
        span_id = Empty,
    );
    // A message that is no CloudEvent has no id: the attribute is left out.
    if !message_id.is_empty() {
        span.record("messaging.message.id", message_id);
    }
    span
}

/// A client span of one outbound HTTP call by `component`: a chained call
/// in process, a Dapr invocation or the internet (`server.address`).
pub fn outbound(method: &str, host: &str, component: &str) -> Span {
    tracing::info_span!(
        "outbound",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        server.address = host,
        server.port = Empty,
        http.response.status_code = Empty,
        component = component,
    )
}

/// One outbound HTTP call in its client span: see [`outbound_call`].
pub struct OutboundCall {
    span: Span,
    component: String,
    destination: String,
}

/// Starts the client span of `request` (child of the current span) and
/// points the request's `traceparent` at it, unless the guest set one of
/// another trace; [`OutboundCall::run`] ends it with the status.
pub fn outbound_call<B>(component: &str, request: &mut http::Request<B>) -> OutboundCall {
    use crate::trace::TRACEPARENT;
    let destination = request.uri().host().unwrap_or("").to_string();
    let span = outbound(request.method().as_str(), &destination, component);
    if let Some(port) = request.uri().port_u16() {
        span.record("server.port", i64::from(port));
    }
    if let Some(tp) = traceparent(&span) {
        let trace_of = |v: &str| v.split('-').nth(1).map(str::to_string);
        let current = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let replace = current.is_none_or(|c| trace_of(&c) == trace_of(&tp));
        if replace && let Ok(v) = http::HeaderValue::from_str(&tp) {
            request.headers_mut().insert(TRACEPARENT, v);
        }
    }
    OutboundCall {
        span,
        component: component.to_string(),
        destination,
    }
}

impl OutboundCall {
    /// Runs the call inside the span; records the response status (or the
    /// failure) on the span and in `wasmshop_outbound_requests_total`.
    pub async fn run<B, I, E>(
        self,
        call: impl Future<Output = Result<(http::Response<B>, I), E>>,
    ) -> Result<(http::Response<B>, I), E> {
        use tracing::Instrument as _;
        let result = call.instrument(self.span.clone()).await;
        let status = match &result {
            Ok((response, _)) => {
                let status = response.status().as_u16();
                record_status(&self.span, status);
                if status >= 400 {
                    record_error(&self.span);
                }
                Some(status)
            }
            Err(_) => {
                record_error(&self.span);
                None
            }
        };
        crate::metrics::record_outbound(&self.component, &self.destination, status);
        result
    }
}

/// Marks `span` failed.
pub fn record_error(span: &Span) {
    span.record("otel.status_code", "ERROR");
}

/// The component a `tracing` span (or an ancestor) works for.
struct SpanComponent(Arc<str>);

/// Keeps each span's `component` (its own field, else its parent's) so
/// the log records emitted inside it can be attributed
/// ([`current_component`]).
pub struct ComponentLayer;

struct ComponentVisitor(Option<Arc<str>>);

impl tracing::field::Visit for ComponentVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "component" {
            self.0 = Some(Arc::from(value));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "component" {
            self.0 = Some(Arc::from(format!("{value:?}").trim_matches('"')));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for ComponentLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = ComponentVisitor(None);
        attrs.record(&mut visitor);
        let component = match visitor.0 {
            Some(c) => Some(c),
            None => span
                .parent()
                .and_then(|p| p.extensions().get::<SpanComponent>().map(|c| c.0.clone())),
        };
        if let Some(c) = component {
            span.extensions_mut().insert(SpanComponent(c));
        }
    }
}

/// The component of the current `tracing` span, if any.
pub fn current_component() -> Option<Arc<str>> {
    let current = Span::current();
    let id = current.id()?;
    current.with_subscriber(|(_, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        use tracing_subscriber::registry::LookupSpan as _;
        let span = registry.span(&id)?;
        span.extensions()
            .get::<SpanComponent>()
            .map(|c| c.0.clone())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_header_that_is_no_tenant_id_is_logged_as_invalid() {
        let tenant_of = |value: Option<&[u8]>| {
            let mut headers = http::HeaderMap::new();
            if let Some(v) = value {
                headers.insert("x-tenant-id", http::HeaderValue::from_bytes(v).unwrap());
            }
            tenant_label(&headers)
        };
        assert_eq!(tenant_of(None), "default");
        assert_eq!(tenant_of(Some(b"acme-1")), "acme-1");
        assert_eq!(tenant_of(Some("é".as_bytes())), "(invalid)");
        assert_eq!(tenant_of(Some(b"\xff")), "(invalid)");
        assert_eq!(tenant_of(Some(b"a\"b")), "(invalid)");
    }

    #[test]
    fn a_traceparent_parses_into_its_span_context() {
        let sc = parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(parse("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none());
        assert!(parse("nonsense").is_none());
    }

    #[test]
    fn key_value_backends_name_their_store() {
        assert_eq!(db_system("embedded"), "sqlite");
        assert_eq!(db_system("redis"), "redis");
        assert_eq!(db_system("dapr"), "dapr");
    }
}
