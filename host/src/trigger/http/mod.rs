//! The HTTP trigger: a hyper server that answers the probes itself, lets
//! each backend's [`crate::ingress::Ingress`] hooks see the request, routes
//! it to its component (Spin's route rules; [`component`] runs it), and
//! drains in-flight requests on shutdown. [`front_door`] keeps slow and
//! numerous clients from costing more than a socket each.

pub mod component;
pub mod front_door;

use crate::app::App;
use crate::ingress::Unrouted;
use crate::metrics::Metrics;
use crate::problem::{json, problem};
use component::RouteContext;
pub use front_door::FrontDoorLimits;
use front_door::{Admission, BodyBudget, BodyReader, Connections, Phase, TrackedBody, TrackedIo};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Liveness: the process is up and serving.
pub const HEALTHZ: &str = "/healthz";
/// Readiness: every backend is reachable.
pub const READYZ: &str = "/readyz";

/// Serves `app` on `listener` until `shutdown` turns true, then waits up
/// to `drain` for in-flight requests. Every connection is under the
/// [`front_door`] limits.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: FrontDoorLimits,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Connections::new(limits.max_connections));
    let budget = BodyBudget::new(limits.body_budget_bytes);
    let responses = BodyBudget::new(limits.response_budget_bytes);
    loop {
        let (stream, client) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a client gone before
                    // accept: pause instead of spinning.
                    tracing::warn!(error = %e, open = connections.len(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = match connections.admit() {
            Admission::Serve(conn) => conn,
            Admission::Refuse => {
                tracing::warn!(%client, "connection refused: every connection is running a request or has just begun one (--max-connections)");
                tokio::spawn(refuse(stream));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, tracked) = (app.clone(), conn.clone());
        let reader = BodyReader::new(limits, budget.clone()).on(conn.clone());
        let responses = responses.clone();
        let service = hyper::service::service_fn(move |req| {
            let (app, conn, reader) = (app.clone(), tracked.clone(), reader.clone());
            let responses = responses.clone();
            async move {
                conn.enter(Phase::Body);
                let response =
                    crate::problem::in_request_trace(req, |req| route(&app, req, client, &reader))
                        .await;
                // The instance is released once its body is drained; a
                // slow client then reads from the host's buffer.
                let response = front_door::buffer_response(response, &limits, &responses).await;
                conn.enter(Phase::Busy);
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, conn)))
            }
        });
        let io = TokioIo::new(TrackedIo::new(stream, conn.clone()));
        let served = graceful.watch(
            http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service),
        );
        let connections = connections.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = served => if let Err(e) = result {
                    tracing::debug!(error = %e, %client, "connection ended with an error");
                },
                why = conn.closed(&limits) => {
                    tracing::debug!(%client, why, "connection closed by the host");
                }
            }
            connections.remove(&conn);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running after {drain:?}; closing them");
    }
}

/// Answers a connection refused at the cap with a 503 and closes it,
/// reading what the client already sent first: closing a socket with
/// unread bytes resets it, and the reset can destroy the 503 before the
/// client reads it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let linger = async {
        stream.write_all(&front_door::refused_response()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    client: SocketAddr,
    reader: &BodyReader,
) -> Response<HyperOutgoingBody> {
    let path = req.uri().path().to_string();
    let probe = matches!(*req.method(), Method::GET | Method::HEAD);
    if probe && path == HEALTHZ {
        return json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
    }
    if probe && path == READYZ {
        return match app.backends().readiness().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
            Err(failures) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                format!(
                    "not reachable: {}; the host log names the address and the error",
                    failures.join(", ")
                ),
            ),
        };
    }
    // The backends' hooks: Dapr's app channel and its APP_API_TOKEN check.
    // A hook that reads a body (Dapr's deliveries) reads it with this
    // reader, under the public routes' limits and budget.
    let mut req = req;
    req.extensions_mut().insert(reader.clone());
    for hook in app.backends().ingress() {
        req = match hook.intercept(req).await {
            Ok(response) => return response,
            Err(req) => req,
        };
    }
    let Some((route, component, matched)) = app.router().route(&path) else {
        return unrouted(app, req, client, reader).await;
    };
    let ctx = RouteContext {
        route: Some(route.as_str().to_string()),
        matched,
        depth: 0,
        client_addr: Some(client),
    };
    let component = component.clone();
    // The whole body first: a slow client then holds a socket, never an
    // instance.
    let started = std::time::Instant::now();
    let req = match reader.read(req).await {
        Ok(req) => req,
        Err(refusal) => return refused(app, refusal, started),
    };
    component::serve(app, &component, req, ctx).await
}

/// The component label of requests the front door answered itself, in
/// `wasmshop_http_requests_total`.
pub const FRONT_DOOR: &str = "(front door)";

/// A request the front door refused before any instance (body too large,
/// too slow, unreadable, or past the body budget): one log line with the
/// trace id its problem carries, and a count under [`FRONT_DOOR`].
fn refused(
    app: &App,
    response: Response<HyperOutgoingBody>,
    started: std::time::Instant,
) -> Response<HyperOutgoingBody> {
    let status = response.status();
    let reason = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body larger than --max-request-body-bytes",
        StatusCode::REQUEST_TIMEOUT => "body slower than --body-read-timeout-secs",
        StatusCode::SERVICE_UNAVAILABLE => "body memory budget spent (--body-buffer-mb)",
        _ => "body unreadable",
    };
    tracing::info!(
        trace_id = crate::problem::current_trace_id().unwrap_or_default(),
        status = status.as_u16(),
        reason,
        "request refused by the front door"
    );
    app.metrics()
        .record_request(FRONT_DOOR, status.as_u16(), started.elapsed());
    response
}

/// A request no public route covers: an internal endpoint if a backend
/// lets it through (authenticated sidecar traffic only), else 404.
async fn unrouted(
    app: &Arc<App>,
    req: Request<Incoming>,
    client: SocketAddr,
    reader: &BodyReader,
) -> Response<HyperOutgoingBody> {
    let decision = app
        .backends()
        .ingress()
        .iter()
        .find_map(|hook| hook.unrouted(&req, app.as_ref()));
    let why = match decision {
        Some(Unrouted::Serve(component)) => {
            let started = std::time::Instant::now();
            let req = match reader.read(req).await {
                Ok(req) => req,
                Err(refusal) => return refused(app, refusal, started),
            };
            return component::serve_unrouted(app, &component, req, 0, Some(client)).await;
        }
        Some(Unrouted::Refuse(response)) => return response,
        Some(Unrouted::NotFound(why)) => why,
        None => None,
    };
    let routes: Vec<&str> = app.router().routes().map(|(r, _)| r.as_str()).collect();
    let mut detail = format!(
        "no route matches {}; this host serves {}",
        req.uri().path(),
        routes.join(", ")
    );
    if let Some(why) = why {
        detail = format!("{detail}; {why}");
    }
    problem(StatusCode::NOT_FOUND, "no-route", detail)
}

/// Open connections the metrics listener holds at once: a few scrapers
/// need a handful; the cap keeps a flood of sockets on the metrics port
/// from costing more than that many descriptors.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// Serves Prometheus metrics on their own listener, under the front
/// door's header-read and idle timeouts (`limits`; its body limits do not
/// apply: the listener reads no body) and a cap of
/// [`METRICS_MAX_CONNECTIONS`] connections, shed as on the app's
/// listener, so slow clients on the metrics port cannot stop a scrape.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    limits: FrontDoorLimits,
) {
    let connections = Arc::new(Connections::new(METRICS_MAX_CONNECTIONS));
    loop {
        let (stream, client) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, open = connections.len(), "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = match connections.admit() {
            Admission::Serve(conn) => conn,
            Admission::Refuse => {
                tracing::warn!(%client, "metrics connection refused: {METRICS_MAX_CONNECTIONS} scrapes are running");
                tokio::spawn(refuse(stream));
                continue;
            }
        };
        let (metrics, tracked) = (metrics.clone(), conn.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (metrics, conn) = (metrics.clone(), tracked.clone());
            async move {
                conn.enter(Phase::Busy);
                let response = if req.uri().path() == "/metrics" {
                    Response::builder()
                        .header(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(crate::problem::full_body(metrics.render()))
                        .expect("static response parts are valid")
                } else {
                    problem(
                        StatusCode::NOT_FOUND,
                        "no-route",
                        "metrics are served at /metrics",
                    )
                };
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, conn)))
            }
        });
        let io = TokioIo::new(TrackedIo::new(stream, conn.clone()));
        let served = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service);
        let connections = connections.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = served => if let Err(e) = result {
                    tracing::debug!(error = %e, %client, "metrics connection ended with an error");
                },
                why = conn.closed(&limits) => {
                    tracing::debug!(%client, why, "metrics connection closed by the host");
                }
            }
            connections.remove(&conn);
        });
    }
}
