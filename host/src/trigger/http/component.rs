//! Running a component's `wasi:http/incoming-handler` on one request, for
//! a public route, an internal endpoint reached through a backend, or a
//! chained call (`http://<component>.spin.internal/...`): Spin's request
//! headers, the instance under its limits, and its failures turned into
//! problem responses. [`Chaining`] decides where a chained call goes: in
//! process when this process runs the callee, else the fallback a
//! backend supplies (Dapr service invocation).

use crate::app::{App, Capacity, InstanceContext, TimeLimitExceeded};
use crate::capabilities::keyvalue::read_fence::ReadFence;
use crate::capabilities::outbound_http::{ResponseFuture, ServiceChaining};
use crate::manifest::RouteMatch;
use crate::problem::problem;
use http::{HeaderValue, Request, Response, StatusCode};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

/// Where an HTTP request enters a component.
#[derive(Debug, Clone, Default)]
pub struct RouteContext {
    /// The matched route as written (`/api/products/...`).
    pub route: Option<String>,
    /// Parameters and wildcard tail.
    pub matched: RouteMatch,
    /// Chained calls that led here (0 for external requests).
    pub depth: u32,
    /// The client address, for `spin-client-addr`.
    pub client_addr: Option<std::net::SocketAddr>,
}

/// Runs `component_id`'s HTTP handler on `request`; every failure is a
/// problem response (404 unknown component, 500 trap or memory limit,
/// 503 time limit), never an error.
pub async fn serve<B>(
    app: &Arc<App>,
    component_id: &str,
    mut request: Request<B>,
    ctx: RouteContext,
) -> Response<HyperOutgoingBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let started = Instant::now();
    let Some(component) = app.component(component_id) else {
        return problem(
            StatusCode::NOT_FOUND,
            "no-such-component",
            format!("component '{component_id}' is not run by this host"),
        );
    };
    let Some(proxy) = component.proxy().cloned() else {
        return problem(
            StatusCode::NOT_FOUND,
            "no-http-handler",
            format!("component '{component_id}' does not handle HTTP"),
        );
    };
    // A request from outside may wait briefly for a slot; a chained call
    // must not (its caller holds a slot: waiting could deadlock the pool).
    let slot = if ctx.depth == 0 {
        app.instance_slot(SLOT_WAIT).await
    } else {
        app.try_instance_slot()
    };
    let slot = match slot {
        Ok(slot) => slot,
        Err(capacity) => {
            tracing::warn!(
                component = component_id,
                depth = ctx.depth,
                trace_id = crate::problem::current_trace_id().unwrap_or_default(),
                "request refused: {capacity}"
            );
            crate::metrics::record_instance_refused(component_id);
            let response = capacity_response(&capacity.to_string());
            app.metrics().record_request(
                component_id,
                response.status().as_u16(),
                started.elapsed(),
            );
            return response;
        }
    };
    let (span, access) =
        crate::telemetry::spans::request(&mut request, ctx.route.as_deref(), component_id);
    let traceparent = crate::trace::ensure(request.headers_mut());
    add_spin_headers(&mut request, &ctx);
    let context = InstanceContext {
        depth: ctx.depth,
        traceparent: Some(traceparent),
        chaining: Chaining::of(app),
    };
    let mut store = app.new_store(component, context);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let prepared = (|| -> wasmtime::Result<_> {
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        Ok((req, out))
    })();
    let (req, out) = match prepared {
        Ok(v) => v,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("the request could not be passed to the component: {e}"),
            );
        }
    };
    let limit = app.request_timeout();
    // The instance may read values whose commit is still in flight; its
    // response leaves only once they are durable (`read_fence.rs`).
    let fence = ReadFence::new();
    let task = crate::telemetry::spans::spawn_in(
        &span,
        fence.clone().scope(async move {
            let _in_use = crate::metrics::instance_in_use();
            let run = async {
                let proxy = proxy.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = match tokio::time::timeout(limit + Duration::from_secs(1), run).await {
                Ok(r) => r,
                Err(_) => Err(wasmtime::Error::new(TimeLimitExceeded(limit))),
            };
            let memory_hit = store.data().limiter.hit;
            drop(store);
            drop(slot);
            (result, memory_hit)
        }),
    );
    let answered = receiver.await;
    // Whatever the instance answered (an error's text included) may come
    // from values it read from a commit still in flight: nothing leaves
    // before that commit is durable, and later reads see committed data.
    fence.close();
    let withheld = tracing::Instrument::instrument(
        settle_or_withhold(&fence, limit, component_id),
        span.clone(),
    )
    .await;
    // What is logged about the outcome is logged in the request's span,
    // so each line carries its trace id.
    let response = match (withheld, answered) {
        (Some(withheld), _) => withheld,
        (None, Ok(Ok(response))) => response,
        (None, Ok(Err(code))) => span.in_scope(|| {
            tracing::warn!(component = component_id, error = ?code, "component answered with an HTTP error code");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "component-error",
                format!("component '{component_id}' reported an error: {code:?}"),
            )
        }),
        (None, Err(_)) => {
            let ended = task.await;
            span.in_scope(|| match ended {
                Ok((Err(e), memory_hit)) => failure_response(app, component_id, &e, memory_hit),
                Ok((Ok(()), _)) => problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no-response",
                    format!("component '{component_id}' returned without sending a response"),
                ),
                Err(join) => {
                    tracing::error!(component = component_id, error = %join, "component task failed");
                    problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "component-failed",
                        format!("component '{component_id}' task failed: {join}"),
                    )
                }
            })
        }
    };
    app.metrics()
        .record_request(component_id, response.status().as_u16(), started.elapsed());
    access.finish(&span, response.status().as_u16(), started.elapsed());
    response
}

/// `None` once every commit the instance read from while it was in flight
/// is durable; else the 503 that replaces the instance's answer: one of
/// those commits failed, or did not end within `limit`.
async fn settle_or_withhold(
    fence: &ReadFence,
    limit: Duration,
    component_id: &str,
) -> Option<Response<HyperOutgoingBody>> {
    let detail = match tokio::time::timeout(limit, fence.settle()).await {
        Ok(Ok(())) => return None,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "a value this request read was being committed, and the commit did not end within {}s (a stalled disk?); retry the request",
            limit.as_secs()
        ),
    };
    tracing::error!(component = component_id, error = %detail, "response withheld");
    Some(retry_later(
        "storage-failed",
        &format!("component '{component_id}' could not answer: {detail}"),
    ))
}

/// How long a request from outside waits for a free instance slot before
/// it is answered 503: long enough to ride out a burst, short enough that
/// a saturated host answers at once rather than queueing unboundedly.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);

/// 503 with `Retry-After`: the host is at capacity; the request was not
/// started and may be sent again.
fn capacity_response(detail: &str) -> Response<HyperOutgoingBody> {
    retry_later("capacity", detail)
}

/// 503 problem of type `kind` with `Retry-After: 1`.
fn retry_later(kind: &str, detail: &str) -> Response<HyperOutgoingBody> {
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, kind, detail);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Runs `component_id` on a request that reached it without a public
/// route: a chained call, or an internal endpoint a backend let through
/// (Dapr service invocation). As in Spin, the component's routes do not
/// restrict such calls; they only fill the `spin-*` headers when one
/// matches.
pub async fn serve_unrouted<B>(
    app: &Arc<App>,
    component_id: &str,
    request: Request<B>,
    depth: u32,
    client_addr: Option<std::net::SocketAddr>,
) -> Response<HyperOutgoingBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let path = request.uri().path().to_string();
    let routed = app
        .component(component_id)
        .and_then(|c| c.router().route(&path));
    let (route, matched) = match routed {
        Some((r, _, m)) => (Some(r.as_str().to_string()), m),
        None => (
            None,
            RouteMatch {
                path_info: path,
                ..Default::default()
            },
        ),
    };
    let ctx = RouteContext {
        route,
        matched,
        depth,
        client_addr,
    };
    serve(app, component_id, request, ctx).await
}

/// Turns a failed instance into a problem response and a log line.
fn failure_response(
    app: &App,
    component: &str,
    error: &wasmtime::Error,
    memory_hit: bool,
) -> Response<HyperOutgoingBody> {
    if Capacity::is_capacity(error) {
        tracing::warn!(component, error = %format!("{error:#}"), "request refused: no instance could be allocated");
        crate::metrics::record_instance_refused(component);
        return capacity_response(&format!(
            "component '{component}' could not be started: every instance the host may run at once is busy; retry after the Retry-After seconds"
        ));
    }
    if let Some(t) = error.downcast_ref::<TimeLimitExceeded>() {
        tracing::warn!(component, "request stopped: {t}");
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "time-limit",
            format!(
                "component '{component}' did not answer within {:?} and was stopped; retry later, and report it if it persists",
                t.0
            ),
        );
        // As every 503 of the API: when to try again (openapi.yaml).
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    if memory_hit {
        tracing::warn!(component, error = %format!("{error:#}"), "component exceeded its memory limit");
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "memory-limit",
            format!(
                "component '{component}' needed more than its memory limit of {} MiB and was stopped; raise --max-memory-mb if the request is legitimate",
                app.max_memory() >> 20
            ),
        );
    }
    tracing::error!(component, error = %format!("{error:#}"), "component failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "component-failed",
        format!(
            "component '{component}' failed while handling the request; the host logged the cause"
        ),
    )
}

/// Where an instance's chained calls go (the app weakly held: the
/// instance lives inside it).
pub struct Chaining(Weak<App>);

impl Chaining {
    /// The chaining of `app`'s instances.
    pub fn of(app: &Arc<App>) -> Arc<dyn ServiceChaining> {
        Arc::new(Chaining(Arc::downgrade(app)))
    }
}

impl ServiceChaining for Chaining {
    fn call(&self, component: &str, request: Request<WasiBody>, depth: u32) -> ResponseFuture {
        let app = self.0.clone();
        let component = component.to_string();
        Box::pin(async move {
            let app = app
                .upgrade()
                .ok_or(wasmtime_wasi_http::Error::DestinationUnavailable)?;
            if app.component(&component).is_some() {
                return Ok(serve_unrouted(&app, &component, request, depth, None).await);
            }
            if let Some(fallback) = app.backends().invocation() {
                return fallback.call(&component, request, depth).await;
            }
            tracing::warn!(
                callee = component,
                "chained call refused: component '{component}' is not run by this process; run it here (--component-id) or configure service invocation"
            );
            Err(wasmtime_wasi_http::Error::DestinationNotFound)
        })
    }
}

/// Spin's request headers (`spin-path-info`, `spin-matched-route`, ...),
/// so components written for Spin find what they expect.
fn add_spin_headers<B>(request: &mut Request<B>, ctx: &RouteContext) {
    let uri = request.uri().clone();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    let headers = request.headers_mut();
    // Room for the headers below at once, rather than the map growing
    // (and rehashing) while they go in.
    headers.reserve(8 + ctx.matched.params.len());
    let mut set = |name: &str, value: String| {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    };
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    set("spin-full-url", format!("http://{host}{path_and_query}"));
    set("spin-path-info", ctx.matched.path_info.clone());
    set("spin-base-path", "/".into());
    if let Some(route) = &ctx.route {
        set("spin-matched-route", route.clone());
        set("spin-raw-component-route", route.clone());
        set(
            "spin-component-route",
            route.trim_end_matches("/...").to_string(),
        );
    }
    for (name, value) in &ctx.matched.params {
        set(&path_match_header(name), value.clone());
    }
    if let Some(addr) = ctx.client_addr {
        set("spin-client-addr", addr.to_string());
    }
    if !headers.contains_key(http::header::HOST)
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        headers.insert(http::header::HOST, v);
    }
}

/// The header carrying route parameter `name`, named as Spin names it:
/// Spin builds `SPIN_PATH_MATCH_<NAME>` and sends it with every `_` turned
/// into `-` and lower-cased (`crates/trigger-http/src/headers.rs` of
/// spinframework/spin), so `:path_segment` arrives as
/// `spin-path-match-path-segment`.
pub fn path_match_header(name: &str) -> String {
    format!(
        "spin-path-match-{}",
        name.replace('_', "-").to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::keyvalue::read_fence::CommitLog;

    /// A response built from a value of a commit in flight leaves only
    /// once that commit is durable; a failed or stalled commit turns it
    /// into 503 with `Retry-After`.
    #[tokio::test]
    async fn an_answer_waits_for_the_commits_it_read_and_is_withheld_if_one_failed() {
        let limit = Duration::from_millis(100);
        let log = CommitLog::new();
        let clean = ReadFence::new();
        assert!(settle_or_withhold(&clean, limit, "c").await.is_none());

        let committed = ReadFence::new();
        assert!(committed.record(&log, 1));
        log.settle(1, true);
        assert!(settle_or_withhold(&committed, limit, "c").await.is_none());

        let failed = ReadFence::new();
        assert!(failed.record(&log, 2));
        log.settle(2, false);
        let withheld = settle_or_withhold(&failed, limit, "c").await.unwrap();
        assert_eq!(withheld.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(withheld.headers()[http::header::RETRY_AFTER], "1");

        let stalled = ReadFence::new();
        assert!(stalled.record(&log, 3));
        let withheld = settle_or_withhold(&stalled, limit, "c").await.unwrap();
        assert_eq!(withheld.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn route_parameters_are_named_as_spin_names_them() {
        assert_eq!(
            super::path_match_header("path_segment"),
            "spin-path-match-path-segment"
        );
        assert_eq!(super::path_match_header("userId"), "spin-path-match-userid");
    }
}
