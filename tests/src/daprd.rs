//! A test double of the Dapr sidecar (daprd), written from the Dapr HTTP
//! API reference (<https://docs.dapr.io/reference/api/>) and daprd's
//! source where the reference is silent; `docs/dapr-reference.md` lists
//! what it follows and where each rule comes from: state with ETags and
//! first-write (state.redis quirks included), pub/sub with CloudEvent
//! wrapping and push delivery to the subscriptions an app returns from
//! `GET /dapr/subscribe` (SUCCESS/RETRY/DROP, retries, dead-lettering),
//! service invocation by app id (with the caller and callee app ids and
//! the app's `APP_API_TOKEN`), API tokens both ways, the health endpoints,
//! and the 4 MiB request body limit (`--max-body-size`).
//!
//! A [`DaprCluster`] holds what sidecars share (state, broker, app
//! registry); each [`Sidecar`] serves one app id on its own port.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The state store component every sidecar has.
pub const STATE_STORE: &str = "statestore";
/// The pub/sub component every sidecar has.
pub const PUBSUB: &str = "product-pubsub";
/// daprd's default `--max-body-size` (4Mi, `DefaultMaxRequestBodySize`):
/// a request body longer than this is refused (docs/dapr-reference.md).
pub const MAX_BODY_BYTES: usize = 4 << 20;

type Resp = Response<Full<Bytes>>;

#[derive(Clone)]
struct Entry {
    value: Vec<u8>,
    etag: u64,
    first_write: bool,
}

#[derive(Clone)]
struct Sub {
    app_id: String,
    pubsub: String,
    topic: String,
    /// The default route; `None` when the subscription gives only rules.
    route: Option<String>,
    /// Routing rules, in order: (the event type a rule matches, its path).
    rules: Vec<(String, String)>,
    dead_letter: Option<String>,
}

impl Sub {
    /// Where daprd sends `event`: the path of the first rule that matches
    /// it, else the default route; `None` (not delivered) when neither.
    /// "If no route matches, then an optional default route is used"
    /// (Dapr, "How-To: Route messages to different event handlers"; see
    /// docs/dapr-reference.md, "Routing rules").
    fn path_for(&self, event: &Value) -> Option<String> {
        let kind = event["type"].as_str().unwrap_or_default();
        self.rules
            .iter()
            .find(|(t, _)| t == kind)
            .map(|(_, p)| p.clone())
            .or_else(|| self.route.clone())
    }
}

/// The event type of a rule's CEL `match`; the double understands only
/// `event.type == "<type>"`, the form the host writes, and panics on any
/// other so a test never passes on a rule it did not evaluate.
fn rule_event_type(expression: &str) -> String {
    let literal = expression
        .trim()
        .strip_prefix("event.type")
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix("=="))
        .map(str::trim)
        .unwrap_or_else(|| {
            panic!("the daprd double evaluates only event.type == \"T\", not {expression:?}")
        });
    serde_json::from_str(literal).unwrap_or_else(|e| {
        panic!("rule {expression:?}: the type is not a JSON string literal ({e})")
    })
}

/// One delivery attempt, as the double saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The receiving app id.
    pub app_id: String,
    /// The topic.
    pub topic: String,
    /// The CloudEvent `id`.
    pub event_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// `SUCCESS`, `RETRY`, `DROP`, `HTTP <code>` or `ERROR <text>`.
    pub outcome: String,
}

struct Shared {
    state: Mutex<HashMap<String, Entry>>,
    apps: Mutex<HashMap<String, (String, Option<String>)>>,
    subs: Mutex<Vec<Sub>>,
    published: Mutex<Vec<(String, String, Value)>>,
    deliveries: Mutex<Vec<Delivery>>,
    /// The `traceparent` of each state API call, in order (`None`: none
    /// sent). daprd continues it in its own state spans.
    state_traceparents: Mutex<Vec<Option<String>>>,
    state_fault: AtomicBool,
    max_attempts: AtomicU32,
    ids: AtomicU64,
    http: reqwest::Client,
}

/// State and broker shared by sidecars.
pub struct DaprCluster {
    shared: Arc<Shared>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Default for DaprCluster {
    fn default() -> Self {
        Self::new()
    }
}

struct SidecarCfg {
    app_id: String,
    dapr_token: Option<String>,
    app_token: Option<String>,
    outbound_ready: AtomicBool,
    outbound_checks: AtomicU32,
    app_attached: AtomicBool,
}

/// One sidecar double, serving an app id.
pub struct Sidecar {
    port: u16,
    cfg: Arc<SidecarCfg>,
    shared: Arc<Shared>,
    rt: Arc<tokio::runtime::Runtime>,
}

/// Settings of a sidecar.
#[derive(Debug, Clone, Default)]
pub struct SidecarOptions {
    /// `DAPR_API_TOKEN`: required from the app.
    pub dapr_token: Option<String>,
    /// `APP_API_TOKEN`: sent to the app.
    pub app_token: Option<String>,
    /// Start with `/v1.0/healthz/outbound` answering 500.
    pub outbound_not_ready: bool,
}

impl DaprCluster {
    /// An empty cluster with its own runtime; deliveries are retried up to
    /// 5 attempts (a resiliency policy on the pub/sub's inbound side).
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        DaprCluster {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                apps: Mutex::default(),
                subs: Mutex::default(),
                published: Mutex::default(),
                deliveries: Mutex::default(),
                state_traceparents: Mutex::default(),
                state_fault: AtomicBool::new(false),
                max_attempts: AtomicU32::new(5),
                ids: AtomicU64::new(1),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap(),
            }),
            rt: Arc::new(rt),
        }
    }

    /// Starts a sidecar for `app_id` on a free port.
    pub fn sidecar(&self, app_id: &str, options: SidecarOptions) -> Sidecar {
        let cfg = Arc::new(SidecarCfg {
            app_id: app_id.into(),
            dapr_token: options.dapr_token,
            app_token: options.app_token,
            outbound_ready: AtomicBool::new(!options.outbound_not_ready),
            outbound_checks: AtomicU32::new(0),
            app_attached: AtomicBool::new(false),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (shared, c) = (self.shared.clone(), cfg.clone());
        self.rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (shared, c) = (shared.clone(), c.clone());
                let service = hyper::service::service_fn(move |req| {
                    let (shared, c) = (shared.clone(), c.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(shared, c, req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Sidecar {
            port,
            cfg,
            shared: self.shared.clone(),
            rt: self.rt.clone(),
        }
    }

    /// Makes every state call answer 500 (a store outage) or heals it.
    pub fn set_state_fault(&self, on: bool) {
        self.shared.state_fault.store(on, Ordering::SeqCst);
    }

    /// Delivery attempts before dead-lettering.
    pub fn set_max_attempts(&self, n: u32) {
        self.shared.max_attempts.store(n.max(1), Ordering::SeqCst);
    }

    /// Events published on `topic` (after CloudEvent wrapping).
    pub fn published(&self, topic: &str) -> Vec<Value> {
        self.shared
            .published
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| t == topic)
            .map(|(_, _, e)| e.clone())
            .collect()
    }

    /// Every delivery attempt so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// The `traceparent` each state API call carried, in order.
    pub fn state_traceparents(&self) -> Vec<Option<String>> {
        self.shared.state_traceparents.lock().unwrap().clone()
    }

    /// The largest value in the state store: its full key
    /// (`<app_id>||<key>`) and its length in bytes as daprd stores it
    /// (the JSON the app saved).
    pub fn largest_value(&self) -> Option<(String, usize)> {
        let state = self.shared.state.lock().unwrap();
        state
            .iter()
            .map(|(k, e)| {
                (
                    k.trim_start_matches(&format!("{STATE_STORE}/")).to_string(),
                    e.value.len(),
                )
            })
            .max_by_key(|(_, n)| *n)
    }

    /// The raw stored JSON of `<app_id>||<key>` in the state store.
    pub fn stored(&self, app_id: &str, key: &str) -> Option<Value> {
        let k = format!("{STATE_STORE}/{app_id}||{key}");
        let state = self.shared.state.lock().unwrap();
        state
            .get(&k)
            .and_then(|e| serde_json::from_slice(&e.value).ok())
    }
}

impl Sidecar {
    /// The HTTP port (`DAPR_HTTP_PORT`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Lets `/v1.0/healthz/outbound` answer 204 (true) or 500.
    pub fn set_outbound_ready(&self, ready: bool) {
        self.cfg.outbound_ready.store(ready, Ordering::SeqCst);
    }

    /// How often `/v1.0/healthz/outbound` was asked.
    pub fn outbound_checks(&self) -> u32 {
        self.cfg.outbound_checks.load(Ordering::SeqCst)
    }

    /// Connects the app channel, as daprd does once the app port is open:
    /// registers the app for invocation and reads `GET /dapr/subscribe`.
    /// Returns the subscription list the app answered.
    pub fn attach_app(&self, app_base: &str) -> Value {
        let (shared, cfg, base) = (self.shared.clone(), self.cfg.clone(), app_base.to_string());
        self.rt.block_on(async move {
            shared
                .apps
                .lock()
                .unwrap()
                .insert(cfg.app_id.clone(), (base.clone(), cfg.app_token.clone()));
            let mut req = shared.http.get(format!("{base}/dapr/subscribe"));
            if let Some(t) = &cfg.app_token {
                req = req.header("dapr-api-token", t);
            }
            let r = req.send().await.expect("GET /dapr/subscribe");
            assert!(
                r.status().is_success(),
                "GET /dapr/subscribe answered {}",
                r.status()
            );
            let list: Value = r.json().await.expect("subscriptions are JSON");
            let mut subs = shared.subs.lock().unwrap();
            // Attaching again (the app restarted) replaces its subscriptions.
            subs.retain(|s| s.app_id != cfg.app_id);
            for s in list.as_array().cloned().unwrap_or_default() {
                subs.push(Sub {
                    app_id: cfg.app_id.clone(),
                    pubsub: s["pubsubname"].as_str().unwrap_or_default().into(),
                    topic: s["topic"].as_str().unwrap_or_default().into(),
                    route: s["routes"]["default"]
                        .as_str()
                        .or(s["route"].as_str())
                        .map(String::from),
                    rules: s["routes"]["rules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            (
                                rule_event_type(r["match"].as_str().unwrap_or_default()),
                                r["path"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect(),
                    dead_letter: s["deadLetterTopic"].as_str().map(String::from),
                });
            }
            cfg.app_attached.store(true, Ordering::SeqCst);
            list
        })
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn error(status: u16, code: &str, message: &str) -> Resp {
    reply(
        status,
        "application/json",
        json!({"errorCode": code, "message": message}).to_string(),
    )
}

fn empty(status: u16) -> Resp {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: Arc<Shared>, cfg: Arc<SidecarCfg>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let method = req.method().clone();
    let segs: Vec<String> = path.split('/').skip(1).map(String::from).collect();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    // Only the two health endpoints are exempt from the token.
    let health = method == http::Method::GET
        && (path == "/v1.0/healthz" || path == "/v1.0/healthz/outbound");
    if let Some(t) = &cfg.dapr_token
        && !health
        && req.headers().get("dapr-api-token").map(|v| v.as_bytes()) != Some(t.as_bytes())
    {
        return reply(401, "text/plain", "invalid api token");
    }
    let (parts, body) = req.into_parts();
    if seg.get(1) == Some(&"state") {
        let tp = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        shared.state_traceparents.lock().unwrap().push(tp);
    }
    let body = match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return too_large(method.as_str(), &seg);
        }
        Err(_) => Bytes::new(),
    };
    match (method.as_str(), seg.as_slice()) {
        ("GET", ["v1.0", "healthz", "outbound"]) => {
            cfg.outbound_checks.fetch_add(1, Ordering::SeqCst);
            if cfg.outbound_ready.load(Ordering::SeqCst) {
                empty(204)
            } else {
                error(500, "ERR_HEALTH_NOT_READY", "dapr is not ready")
            }
        }
        ("GET", ["v1.0", "healthz"]) => {
            if cfg.app_attached.load(Ordering::SeqCst) {
                empty(204)
            } else {
                error(500, "ERR_HEALTH_NOT_READY", "dapr is not ready")
            }
        }
        (_, ["v1.0", "state", store, rest @ ..]) if rest.len() <= 1 => {
            if *store != STATE_STORE {
                return error(
                    400,
                    "ERR_STATE_STORE_NOT_FOUND",
                    &format!("state store {store} is not found"),
                );
            }
            if shared.state_fault.load(Ordering::SeqCst) {
                return error(500, "ERR_STATE_GET", "state store is down (test fault)");
            }
            let prefix = format!("{STATE_STORE}/{}||", cfg.app_id);
            state(
                &shared,
                &prefix,
                method.as_str(),
                rest.first().copied(),
                &parts.headers,
                &body,
            )
        }
        ("POST", ["v1.0", "publish", pubsub, topic]) => {
            if *pubsub != PUBSUB {
                return error(
                    404,
                    "ERR_PUBSUB_NOT_FOUND",
                    &format!("pubsub {pubsub} not found"),
                );
            }
            let ct = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            let tp = parts
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let event = match wrap(&shared, &cfg.app_id, pubsub, topic, &ct, &body, tp) {
                Ok(e) => e,
                Err(m) => return error(400, "ERR_PUBSUB_CLOUD_EVENTS_SER", &m),
            };
            publish(&shared, pubsub, topic, event);
            empty(204)
        }
        (_, ["v1.0", "invoke", app_id, "method", ..]) => {
            let rest = segs[4..].join("/");
            let target = shared.apps.lock().unwrap().get(*app_id).cloned();
            let Some((base, token)) = target else {
                return error(
                    500,
                    "ERR_DIRECT_INVOKE",
                    &format!("failed to invoke, id: {app_id}: app not found"),
                );
            };
            let url = if query.is_empty() {
                format!("{base}/{rest}")
            } else {
                format!("{base}/{rest}?{query}")
            };
            let mut r = shared.http.request(method.clone(), url);
            // daprd overwrites the caller's identity headers with its own
            // (direct_messaging.go, addCallerAndCalleeAppIDHeaderToMetadata)
            // and sends the target app its APP_API_TOKEN, never the caller's.
            for (k, v) in &parts.headers {
                if !matches!(
                    k.as_str(),
                    "host"
                        | "dapr-api-token"
                        | "content-length"
                        | "connection"
                        | "dapr-caller-app-id"
                        | "dapr-callee-app-id"
                        | "dapr-caller-namespace"
                ) {
                    r = r.header(k, v);
                }
            }
            if let Some(t) = token {
                r = r.header("dapr-api-token", t);
            }
            r = r
                .header("dapr-caller-app-id", &cfg.app_id)
                .header("dapr-callee-app-id", *app_id);
            match r.body(body).send().await {
                Ok(resp) => {
                    let mut b = Response::builder().status(resp.status());
                    for (k, v) in resp.headers() {
                        if !matches!(
                            k.as_str(),
                            "content-length" | "transfer-encoding" | "connection"
                        ) {
                            b = b.header(k, v);
                        }
                    }
                    b.body(Full::new(resp.bytes().await.unwrap_or_default()))
                        .unwrap()
                }
                Err(e) => error(500, "ERR_DIRECT_INVOKE", &e.to_string()),
            }
        }
        // Unknown routes fall through to service invocation (dapr#8746).
        _ => error(
            404,
            "ERR_DIRECT_INVOKE",
            "failed getting app id either from the URL path or the header dapr-app-id",
        ),
    }
}

/// daprd's answer to a body over `--max-body-size`: its body reader fails
/// with "stream too large" (dapr/kit `streams.LimitReadCloser`), and each
/// handler reports that read error its own way (docs/dapr-reference.md).
fn too_large(method: &str, seg: &[&str]) -> Resp {
    const WHY: &str = "stream too large";
    match (method, seg) {
        (_, ["v1.0", "state", ..]) => error(400, "ERR_MALFORMED_REQUEST", WHY),
        ("POST", ["v1.0", "publish", pubsub, topic]) => error(
            500,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            &format!("error when publishing to topic {topic} in pubsub {pubsub}: {WHY}"),
        ),
        (_, ["v1.0", "invoke", app_id, ..]) => error(
            500,
            "ERR_DIRECT_INVOKE",
            &format!("failed to invoke, id: {app_id}, err: {WHY}"),
        ),
        _ => error(
            400,
            "ERR_BODY_READ",
            &format!("failed to read request body: {WHY}"),
        ),
    }
}

fn parse_etag(v: &Value) -> Result<Option<u64>, ()> {
    match v.as_str() {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| ()),
    }
}

fn state(
    shared: &Shared,
    prefix: &str,
    method: &str,
    key: Option<&str>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Resp {
    let mut st = shared.state.lock().unwrap();
    match (method, key) {
        ("GET", Some(k)) => match st.get(&format!("{prefix}{}", percent_decode(k))) {
            None => empty(204),
            Some(e) => Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("etag", e.etag.to_string())
                .body(Full::new(Bytes::from(e.value.clone())))
                .unwrap(),
        },
        ("DELETE", Some(k)) => {
            let full = format!("{prefix}{}", percent_decode(k));
            if let Some(want) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
                let Ok(want) = want.parse::<u64>() else {
                    return error(400, "ERR_STATE_DELETE", "invalid etag value");
                };
                if st.get(&full).map(|e| e.etag) != Some(want) {
                    return error(
                        409,
                        "ERR_STATE_DELETE",
                        "possible etag mismatch. error from state store",
                    );
                }
            }
            st.remove(&full);
            empty(204)
        }
        ("POST", None) => {
            let Ok(items) = serde_json::from_slice::<Vec<Value>>(body) else {
                return error(400, "ERR_MALFORMED_REQUEST", "body is not a JSON array");
            };
            for item in items {
                let Some(k) = item["key"].as_str() else {
                    return error(400, "ERR_MALFORMED_REQUEST", "missing key");
                };
                let full = format!("{prefix}{k}");
                let first_write = item["options"]["concurrency"] == "first-write";
                let Ok(etag) = parse_etag(&item["etag"]) else {
                    return error(400, "ERR_STATE_SAVE", "invalid etag value");
                };
                let cur = st.get(&full).cloned();
                match (etag, &cur) {
                    (Some(e), Some(c)) if c.etag == e => {}
                    (Some(_), _) => {
                        return error(
                            409,
                            "ERR_STATE_SAVE",
                            &format!(
                                "failed saving state in state store {STATE_STORE}: possible etag mismatch. error from state store: failed to set key {k}"
                            ),
                        );
                    }
                    (None, Some(c)) if first_write || c.first_write => {
                        // state.redis: a first-write key refuses etag-less saves (500).
                        return error(
                            500,
                            "ERR_STATE_SAVE",
                            &format!(
                                "failed saving state in state store {STATE_STORE}: failed to set key {k}"
                            ),
                        );
                    }
                    _ => {}
                }
                st.insert(
                    full,
                    Entry {
                        value: serde_json::to_vec(&item["value"]).unwrap(),
                        etag: cur.as_ref().map(|c| c.etag + 1).unwrap_or(1),
                        first_write: first_write || cur.is_some_and(|c| c.first_write),
                    },
                );
            }
            empty(204)
        }
        ("POST", Some("bulk")) => {
            let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let out: Vec<Value> = req["keys"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|k| k.as_str())
                .map(|k| match st.get(&format!("{prefix}{k}")) {
                    // responses.go BulkGetResponse: `data`, not `value`.
                    Some(e) => json!({"key": k, "data": serde_json::from_slice::<Value>(&e.value).unwrap(), "etag": e.etag.to_string()}),
                    None => json!({"key": k}),
                })
                .collect();
            reply(200, "application/json", Value::Array(out).to_string())
        }
        ("POST", Some("transaction")) => {
            let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let ops = req["operations"].as_array().cloned().unwrap_or_default();
            let fail = |m: &str| error(500, "ERR_STATE_TRANSACTION", m);
            for op in &ops {
                let k = format!(
                    "{prefix}{}",
                    op["request"]["key"].as_str().unwrap_or_default()
                );
                let Ok(etag) = parse_etag(&op["request"]["etag"]) else {
                    return fail("invalid etag");
                };
                let cur = st.get(&k);
                if let Some(e) = etag
                    && cur.map(|c| c.etag) != Some(e)
                {
                    return fail("possible etag mismatch");
                }
                if etag.is_none()
                    && op["operation"] == "upsert"
                    && cur.is_some_and(|c| c.first_write)
                {
                    return fail("failed to set key");
                }
            }
            for op in ops {
                let k = format!(
                    "{prefix}{}",
                    op["request"]["key"].as_str().unwrap_or_default()
                );
                match op["operation"].as_str() {
                    Some("upsert") => {
                        let cur = st.get(&k).cloned();
                        st.insert(
                            k,
                            Entry {
                                value: serde_json::to_vec(&op["request"]["value"]).unwrap(),
                                etag: cur.as_ref().map(|c| c.etag + 1).unwrap_or(1),
                                first_write: cur.is_some_and(|c| c.first_write),
                            },
                        );
                    }
                    Some("delete") => {
                        st.remove(&k);
                    }
                    _ => return error(400, "ERR_MALFORMED_REQUEST", "unknown operation"),
                }
            }
            empty(204)
        }
        _ => error(405, "ERR_MALFORMED_REQUEST", "method not allowed"),
    }
}

/// The CloudEvent daprd would publish for this request.
fn wrap(
    shared: &Shared,
    app_id: &str,
    pubsub: &str,
    topic: &str,
    ct: &str,
    body: &[u8],
    traceparent: Option<String>,
) -> Result<Value, String> {
    let id = format!("evt-{}", shared.ids.fetch_add(1, Ordering::SeqCst));
    let mut event = if ct.starts_with("application/cloudevents+json") {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("not a JSON CloudEvent: {e}"))?;
        let Value::Object(mut m) = v else {
            return Err("not a JSON object".into());
        };
        m.entry("id").or_insert(json!(id));
        m.entry("source").or_insert(json!("Dapr"));
        m.entry("type").or_insert(json!("com.dapr.event.sent"));
        m.entry("specversion").or_insert(json!("1.0"));
        m.entry("datacontenttype")
            .or_insert(json!("application/json"));
        m
    } else {
        let data = if ct.contains("json") {
            serde_json::from_slice(body).unwrap_or_else(|_| json!(String::from_utf8_lossy(body)))
        } else {
            json!(String::from_utf8_lossy(body))
        };
        let mut m = serde_json::Map::new();
        m.insert("specversion".into(), json!("1.0"));
        m.insert("id".into(), json!(id));
        m.insert("source".into(), json!(app_id));
        m.insert("type".into(), json!("com.dapr.event.sent"));
        m.insert("datacontenttype".into(), json!(ct));
        m.insert("data".into(), data);
        m
    };
    event.insert("topic".into(), json!(topic));
    event.insert("pubsubname".into(), json!(pubsub));
    // daprd publishes in a span of its own, a child of the request's
    // traceparent (else of the event's), and writes that span's context
    // over the CloudEvent's traceparent/traceid (docs/dapr-reference.md).
    let parent = traceparent.or_else(|| event.get("traceparent")?.as_str().map(String::from));
    if let Some(tp) = parent.as_deref().and_then(child_span) {
        event.insert("traceparent".into(), json!(tp.clone()));
        event.insert("traceid".into(), json!(tp));
    }
    Ok(Value::Object(event))
}

/// A new span in the trace of `traceparent`: same trace id and flags, a
/// random span id.
fn child_span(traceparent: &str) -> Option<String> {
    use std::hash::{BuildHasher, Hasher};
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [version, trace, _, flags] = parts.as_slice() else {
        return None;
    };
    if trace.len() != 32 {
        return None;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(traceparent.as_bytes());
    let span = h.finish().max(1);
    Some(format!("{version}-{trace}-{span:016x}-{flags}"))
}

fn publish(shared: &Arc<Shared>, pubsub: &str, topic: &str, event: Value) {
    shared
        .published
        .lock()
        .unwrap()
        .push((pubsub.into(), topic.into(), event.clone()));
    let subs: Vec<Sub> = shared
        .subs
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.pubsub == pubsub && s.topic == topic)
        .cloned()
        .collect();
    for sub in subs {
        let (shared, event) = (shared.clone(), event.clone());
        tokio::spawn(async move { deliver(shared, sub, event).await });
    }
}

async fn deliver(shared: Arc<Shared>, sub: Sub, event: Value) {
    let Some(path) = sub.path_for(&event) else {
        return; // no rule matches and there is no default route
    };
    let max = shared.max_attempts.load(Ordering::SeqCst);
    let event_id = event["id"].as_str().unwrap_or_default().to_string();
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=max {
        // The app channel is looked up per attempt: an app that restarted
        // (new port, attached again) gets the retries.
        let Some((base, token)) = shared.apps.lock().unwrap().get(&sub.app_id).cloned() else {
            return;
        };
        let mut r = shared
            .http
            .post(format!("{base}{path}"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string());
        if let Some(t) = &token {
            r = r.header("dapr-api-token", t);
        }
        if let Some(tp) = event["traceparent"].as_str() {
            r = r.header("traceparent", tp);
        }
        let outcome = match r.send().await {
            Err(e) => format!("ERROR {e}"),
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => "DROP".to_string(),
            Ok(resp) if resp.status().is_success() => {
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                // An empty body or one without `status` is SUCCESS.
                v["status"]
                    .as_str()
                    .unwrap_or("SUCCESS")
                    .to_ascii_uppercase()
            }
            Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
        };
        shared.deliveries.lock().unwrap().push(Delivery {
            app_id: sub.app_id.clone(),
            topic: sub.topic.clone(),
            event_id: event_id.clone(),
            attempt,
            outcome: outcome.clone(),
        });
        match outcome.as_str() {
            "SUCCESS" => return,
            "DROP" => break,
            _ if attempt < max => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            _ => {}
        }
    }
    // DROP, 404 and exhausted retries go to the dead-letter topic.
    if let Some(dlq) = &sub.dead_letter {
        publish(&shared, &sub.pubsub, dlq, event);
    }
}
