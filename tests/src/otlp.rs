//! A small OTLP receiver speaking both OTLP transports on one port:
//! `http/protobuf` (`POST /v1/traces`, `/v1/logs`, `/v1/metrics` over
//! HTTP/1.1) and `grpc` (the `Export` methods of the OTLP collector
//! services over HTTP/2 without TLS, as the OTLP specification's gRPC
//! transport and the gRPC HTTP/2 protocol describe: a request body of
//! length-prefixed messages, a reply of one empty message and a
//! `grpc-status: 0` trailer). It decodes the requests with the real OTLP
//! protobuf types (`opentelemetry-proto`) and keeps what came, flattened
//! for assertions. Point a host at it with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! = [`Receiver::endpoint`] (and `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` for
//! gRPC).

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of its resource.
    pub service: String,
    /// Every resource attribute, as text.
    pub resource: BTreeMap<String, String>,
    /// The span name.
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id, empty for a root.
    pub parent: String,
    /// Attributes as text.
    pub attributes: BTreeMap<String, String>,
    /// Links as (trace id, span id) in hex.
    pub links: Vec<(String, String)>,
    /// Status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

/// One received log record, flattened.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// `service.name` of its resource.
    pub service: String,
    /// The body as text.
    pub body: String,
    /// Hex trace id (empty outside a span).
    pub trace_id: String,
    /// Hex span id (empty outside a span).
    pub span_id: String,
    /// Attributes as text.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    logs: Vec<LogRecord>,
    metrics: Vec<String>,
    requests: Vec<String>,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    port: u16,
    received: Arc<Mutex<Received>>,
    _rt: tokio::runtime::Runtime,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn resource(r: &Option<Resource>) -> BTreeMap<String, String> {
    r.as_ref()
        .map(|r| attributes(&r.attributes))
        .unwrap_or_default()
}

impl Receiver {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the OTLP receiver");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Received::default()));
        let state = received.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let grpc = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|t| t.starts_with("application/grpc"));
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(if grpc {
                                grpc_export(&state, &path, body)
                            } else {
                                let ok = store(&state, &path, &path, body);
                                http::Response::builder()
                                    .status(if ok { 200 } else { 400 })
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                                    .unwrap()
                            })
                        }
                    });
                // HTTP/1.1 for http/protobuf, HTTP/2 with prior knowledge
                // (h2c) for gRPC, told apart by the connection preface.
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Receiver {
            port,
            received,
            _rt: rt,
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Spans received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Log records received so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.received.lock().unwrap().logs.clone()
    }

    /// Names of the metrics received so far.
    pub fn metric_names(&self) -> Vec<String> {
        self.received.lock().unwrap().metrics.clone()
    }

    /// The paths of the requests received so far.
    pub fn requests(&self) -> Vec<String> {
        self.received.lock().unwrap().requests.clone()
    }

    /// Waits (up to `limit`) until `done` holds for the spans received.
    pub fn wait_for_spans(&self, limit: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let until = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > until {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Answers one gRPC `Export` call: the OTLP collector service's method
/// path names the signal; the body is one length-prefixed message (a
/// compressed-flag byte, a 4-byte big-endian length, the message). The
/// reply is one empty `Export*ServiceResponse` and `grpc-status: 0`, or
/// `grpc-status: 3` (INVALID_ARGUMENT) for what cannot be decoded.
fn grpc_export(
    state: &Mutex<Received>,
    path: &str,
    body: Bytes,
) -> http::Response<BoxBody<Bytes, std::convert::Infallible>> {
    let signal = match path {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => Some("/v1/traces"),
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => Some("/v1/logs"),
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => Some("/v1/metrics"),
        _ => None,
    };
    let recorded = format!("grpc:{path}");
    let message = (body.len() >= 5 && body[0] == 0)
        .then(|| u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize)
        .filter(|n| body.len() == 5 + n)
        .map(|_| body.slice(5..));
    let ok = match (signal, message) {
        (Some(signal), Some(message)) => store(state, &recorded, signal, message),
        _ => {
            state.lock().unwrap().requests.push(recorded);
            false
        }
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", if ok { "0" } else { "3" }.parse().unwrap());
    // One empty message: not compressed, length 0.
    let reply = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .map_err(|e| match e {})
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(reply)
        .unwrap()
}

/// Records the request as `recorded` and keeps what `body`, an OTLP
/// export of `signal` (`/v1/traces`, `/v1/logs`, `/v1/metrics`), holds.
fn store(state: &Mutex<Received>, recorded: &str, signal: &str, body: Bytes) -> bool {
    let mut r = state.lock().unwrap();
    r.requests.push(recorded.to_string());
    match signal {
        "/v1/traces" => {
            let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                return false;
            };
            for rs in req.resource_spans {
                let res = resource(&rs.resource);
                let service = res.get("service.name").cloned().unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        r.spans.push(Span {
                            service: service.clone(),
                            resource: res.clone(),
                            name: s.name.clone(),
                            kind: s.kind,
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            attributes: attributes(&s.attributes),
                            links: s
                                .links
                                .iter()
                                .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                                .collect(),
                            status: s.status.as_ref().map(|st| st.code).unwrap_or(0),
                        });
                    }
                }
            }
            true
        }
        "/v1/logs" => {
            let Ok(req) = ExportLogsServiceRequest::decode(body) else {
                return false;
            };
            for rl in req.resource_logs {
                let res = resource(&rl.resource);
                let service = res.get("service.name").cloned().unwrap_or_default();
                for sl in rl.scope_logs {
                    for l in sl.log_records {
                        r.logs.push(LogRecord {
                            service: service.clone(),
                            body: text(&l.body),
                            trace_id: hex(&l.trace_id),
                            span_id: hex(&l.span_id),
                            attributes: attributes(&l.attributes),
                        });
                    }
                }
            }
            true
        }
        "/v1/metrics" => {
            let Ok(req) = ExportMetricsServiceRequest::decode(body) else {
                return false;
            };
            for rm in req.resource_metrics {
                for sm in rm.scope_metrics {
                    for m in sm.metrics {
                        r.metrics.push(m.name);
                    }
                }
            }
            true
        }
        _ => false,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
