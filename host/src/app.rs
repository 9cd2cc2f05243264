//! A loaded application: the manifest's components compiled and
//! pre-instantiated, the backends wired to their capabilities, and the two
//! ways a component runs — an HTTP request or a message delivery — each in
//! a fresh instance with memory and time limits.

use crate::backends::dapr::DaprSidecar;
use crate::backends::embedded::{self, EmbeddedDb};
use crate::backends::redis::RedisConsumer;
use crate::backends::wiring::Backends;
use crate::bindings::SubscriberPre;
use crate::capabilities::messaging::{Message, MessagingCtx};
use crate::capabilities::outbound_http::{OutboundHttp, ResponseFuture, ServiceChaining};
use crate::capabilities::{config::ConfigCtx, keyvalue, keyvalue::KeyValueCtx};
use crate::engine::{self, CacheOutcome, EngineLimits, EpochTicker};
use crate::manifest::{AllowedHosts, AppManifest, ComponentSpec, RouteMatch, Router, Variables};
use crate::metrics::Metrics;
use crate::problem::problem;
use crate::runtime_config::RuntimeConfig;
use crate::state::{InstanceState, MemoryLimiter};
use crate::trigger::messaging::Deliverer;
use async_trait::async_trait;
use http::{HeaderValue, Request, Response, StatusCode};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpView};

/// How the app is run.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// The manifest.
    pub manifest: AppManifest,
    /// Backends per store label / messaging client.
    pub runtime_config: RuntimeConfig,
    /// Components this process runs; empty means all.
    pub component_ids: Vec<String>,
    /// Where the embedded database and the compile cache live.
    pub data_dir: PathBuf,
    /// Memory and concurrency limits.
    pub limits: EngineLimits,
    /// Wall-clock limit of one request or delivery.
    pub request_timeout: Duration,
    /// Accept sidecar-only traffic without `APP_API_TOKEN` (see
    /// [`App::dapr_allow_unauthenticated`]).
    pub dapr_allow_unauthenticated: bool,
}

/// The time limit trap, recognisable in a guest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("the component exceeded its time limit of {0:?}")]
pub struct TimeLimitExceeded(pub Duration);

/// A component ready to instantiate.
struct LoadedComponent {
    spec: ComponentSpec,
    proxy: Option<ProxyPre<InstanceState>>,
    subscriber: Option<SubscriberPre<InstanceState>>,
    variables: Arc<BTreeMap<String, String>>,
    stores: Arc<BTreeSet<String>>,
    clients: Arc<BTreeSet<String>>,
    hosts: Arc<AllowedHosts>,
    /// Its routes, to fill Spin's `spin-*` headers on chained calls.
    router: Router<()>,
}

/// A running application.
pub struct App {
    manifest: AppManifest,
    engine: Engine,
    _ticker: EpochTicker,
    components: BTreeMap<String, LoadedComponent>,
    router: Router<String>,
    backends: Backends,
    request_timeout: Duration,
    max_memory: usize,
    metrics: Arc<Metrics>,
    myself: Weak<App>,
    runtime_config: RuntimeConfig,
    cache_report: Vec<(String, CacheOutcome, Duration)>,
    dapr_allow_unauthenticated: bool,
}

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

impl App {
    /// Compiles (or loads from cache) and links the selected components and
    /// opens their backends.
    pub async fn load(options: AppOptions, metrics: Arc<Metrics>) -> anyhow::Result<Arc<App>> {
        let AppOptions {
            manifest,
            runtime_config,
            component_ids,
            data_dir,
            limits,
            request_timeout,
            dapr_allow_unauthenticated,
        } = options;
        for id in &component_ids {
            if !manifest.components.contains_key(id) {
                anyhow::bail!(
                    "--component-id {id}: the manifest has no component '{id}'; it defines {}",
                    manifest
                        .components
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let selected: BTreeSet<String> = if component_ids.is_empty() {
            manifest.components.keys().cloned().collect()
        } else {
            component_ids.into_iter().collect()
        };
        let variables = Variables::resolve(&manifest, |k| std::env::var(k).ok())
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.file.display()))?;

        let subscriptions: Vec<(String, String, String)> = manifest
            .subscriptions()
            .filter(|(c, _)| selected.contains(*c))
            .map(|(c, s)| (c.to_string(), s.client.clone(), s.topic.clone()))
            .collect();
        let backends = Backends::open(&manifest, &runtime_config, &subscriptions, &data_dir)
            .map_err(anyhow::Error::msg)?;

        let engine = engine::build_engine(limits)?;
        let mut linker = Linker::<InstanceState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        keyvalue::add_to_linker(&mut linker, |s| &mut s.kv)?;
        crate::capabilities::messaging::add_to_linker(&mut linker, |s| &mut s.messaging)?;
        crate::bindings::config::store::add_to_linker::<_, wasmtime::component::HasSelf<ConfigCtx>>(
            &mut linker,
            |s| &mut s.config,
        )?;

        let cache_dir = data_dir.join("compiled");
        let mut components = BTreeMap::new();
        let mut cache_report = Vec::new();
        for id in &selected {
            let spec = manifest.components[id].clone();
            let (component, outcome, took) =
                engine::load_component(&engine, &spec.source, &cache_dir)
                    .map_err(|e| anyhow::anyhow!("component '{id}': {e}"))?;
            cache_report.push((id.clone(), outcome, took));
            let pre: InstancePre<InstanceState> = linker.instantiate_pre(&component).map_err(|e| {
                anyhow::anyhow!(
                    "component '{id}' ({}) imports something this host does not provide: {e}; components may import only the interfaces of wit/world.wit",
                    spec.source.display()
                )
            })?;
            let has_routes = manifest.http_triggers.iter().any(|t| t.component == *id);
            let proxy = match ProxyPre::new(pre.clone()) {
                Ok(p) => Some(p),
                Err(e) if has_routes => anyhow::bail!(
                    "component '{id}' has HTTP routes but does not export wasi:http/incoming-handler: {e}"
                ),
                Err(_) => None,
            };
            let subscriber = match SubscriberPre::new(pre.clone()) {
                Ok(s) => Some(s),
                Err(e) if !spec.tool.subscriptions.is_empty() => anyhow::bail!(
                    "component '{id}' subscribes to topics but does not export wasi:messaging/incoming-handler@0.2.0-draft: {e}"
                ),
                Err(_) => None,
            };
            let router = Router::new(
                manifest
                    .http_triggers
                    .iter()
                    .filter(|t| t.component == *id)
                    .filter_map(|t| t.route.clone().map(|r| (r, ()))),
            );
            components.insert(
                id.clone(),
                LoadedComponent {
                    variables: Arc::new(variables.for_component(id)),
                    stores: Arc::new(spec.key_value_stores.clone()),
                    clients: Arc::new(spec.tool.messaging_clients.clone()),
                    hosts: Arc::new(spec.allowed_outbound_hosts.clone()),
                    spec,
                    proxy,
                    subscriber,
                    router,
                },
            );
        }
        let router = Router::new(
            manifest
                .http_triggers
                .iter()
                .filter(|t| selected.contains(&t.component))
                .filter_map(|t| t.route.clone().map(|r| (r, t.component.clone()))),
        );
        let ticker = EpochTicker::start(&engine);
        Ok(Arc::new_cyclic(|myself| App {
            manifest,
            engine,
            _ticker: ticker,
            components,
            router,
            backends,
            request_timeout,
            max_memory: limits.max_memory_bytes,
            metrics,
            myself: myself.clone(),
            runtime_config,
            cache_report,
            dapr_allow_unauthenticated,
        }))
    }

    /// The manifest being run.
    pub fn manifest(&self) -> &AppManifest {
        &self.manifest
    }

    /// The public routes this process serves.
    pub fn router(&self) -> &Router<String> {
        &self.router
    }

    /// How each component was loaded (cache hit or compiled) and how long it took.
    pub fn cache_report(&self) -> &[(String, CacheOutcome, Duration)] {
        &self.cache_report
    }

    /// The Dapr sidecar, when the runtime config uses Dapr.
    pub fn dapr(&self) -> Option<&Arc<DaprSidecar>> {
        self.backends.dapr.as_ref()
    }

    /// The runtime config being run.
    pub fn runtime_config(&self) -> &RuntimeConfig {
        &self.runtime_config
    }

    /// Whether this process runs `component`.
    pub fn runs(&self, component: &str) -> bool {
        self.components.contains_key(component)
    }

    /// Whether this process runs `component` and it handles HTTP.
    pub fn serves_http(&self, component: &str) -> bool {
        self.components
            .get(component)
            .is_some_and(|c| c.proxy.is_some())
    }

    /// Among `candidates` (components run here), the one whose routes
    /// share the longest literal prefix with `path` (see
    /// [`crate::manifest::Route::literal_prefix_match`]); `None` on a tie
    /// or when none shares any.
    pub fn component_below_routes<'a>(
        &self,
        candidates: &[&'a str],
        path: &str,
    ) -> Option<&'a str> {
        let mut scored: Vec<(usize, &'a str)> = candidates
            .iter()
            .filter_map(|id| {
                let c = self.components.get(*id)?;
                let best = c
                    .router
                    .routes()
                    .filter_map(|(r, _)| r.literal_prefix_match(path))
                    .max()?;
                (best > 0).then_some((best, *id))
            })
            .collect();
        scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
        match scored.as_slice() {
            [(a, id), (b, _), ..] if a > b => Some(id),
            [(_, id)] => Some(id),
            _ => None,
        }
    }

    /// Whether traffic that only the Dapr sidecar should send (internal
    /// endpoints reached by service invocation) is accepted without
    /// `APP_API_TOKEN` (`--dapr-allow-unauthenticated`). Off by default:
    /// without the token nothing proves a request came from the sidecar,
    /// since public ingress reaches the same port. Meant for a port only
    /// the sidecar can reach. With `APP_API_TOKEN` set it changes nothing.
    pub fn dapr_allow_unauthenticated(&self) -> bool {
        self.dapr_allow_unauthenticated
    }

    /// The embedded database (for inspection tools and tests).
    pub fn embedded_db(&self) -> &Arc<EmbeddedDb> {
        &self.backends.embedded
    }

    /// The dispatcher delivering embedded messages to this process's subscribers.
    pub fn embedded_dispatcher(self: &Arc<Self>, concurrency: usize) -> embedded::Dispatcher {
        let policies = self
            .manifest
            .components
            .values()
            .flat_map(|c| c.tool.messaging_clients.iter())
            .map(|name| (name.clone(), self.runtime_config.messaging_client(name)))
            .collect();
        self.backends.embedded_broker.dispatcher(
            self.clone() as Arc<dyn Deliverer>,
            policies,
            concurrency,
        )
    }

    /// One Redis Streams consumer per subscription (of a component this
    /// process runs) whose client is served by Redis; `concurrency` bounds
    /// their deliveries in flight together.
    pub fn redis_consumers(
        self: &Arc<Self>,
        concurrency: usize,
    ) -> anyhow::Result<Vec<RedisConsumer>> {
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut consumers = Vec::new();
        for (component, sub) in self.manifest.subscriptions() {
            let Some(conn) = self.backends.redis_clients.get(&sub.client) else {
                continue;
            };
            if !self.components.contains_key(component) {
                continue;
            }
            consumers.push(
                RedisConsumer::new(
                    conn.clone(),
                    &sub.client,
                    &sub.topic,
                    component,
                    self.runtime_config.messaging_client(&sub.client),
                    self.clone() as Arc<dyn Deliverer>,
                    permits.clone(),
                )
                .map_err(anyhow::Error::msg)?,
            );
        }
        Ok(consumers)
    }

    /// Checks every backend; `Err` lists those that are not reachable.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut failures = Vec::new();
        for (name, backend) in self.backends.stores.backends() {
            if let Err(e) = backend.ready().await {
                failures.push(format!("{name}: {e}"));
            }
        }
        for (name, broker) in self.backends.brokers.clients() {
            if let Err(e) = broker.ready().await {
                failures.push(format!("messaging.{name}: {e}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    fn new_store(
        &self,
        component: &LoadedComponent,
        depth: u32,
        traceparent: Option<String>,
    ) -> Store<InstanceState> {
        let id: Arc<str> = Arc::from(component.spec.id.as_str());
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().inherit_stderr();
        for (k, v) in &component.spec.environment {
            wasi.env(k, v);
        }
        let chaining: Arc<dyn ServiceChaining> = Arc::new(Chaining(self.myself.clone()));
        let state = InstanceState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound: OutboundHttp::new(
                id.clone(),
                component.hosts.clone(),
                chaining,
                depth,
                traceparent.clone(),
            ),
            kv: KeyValueCtx::new(
                id.clone(),
                component.stores.clone(),
                self.backends.stores.clone(),
            ),
            messaging: MessagingCtx::new(
                id,
                component.clients.clone(),
                self.backends.brokers.clone(),
                traceparent,
            ),
            config: ConfigCtx::new(component.variables.clone()),
            limiter: MemoryLimiter::new(self.max_memory),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let limit = self.request_timeout;
        let deadline = Instant::now() + limit;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(TimeLimitExceeded(limit)))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Turns a failed instance into a problem response and a log line.
    fn failure_response(
        &self,
        component: &str,
        error: &wasmtime::Error,
        memory_hit: bool,
    ) -> Response<HyperOutgoingBody> {
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
                    self.max_memory >> 20
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

    /// Runs a component's `wasi:http/incoming-handler` on one request.
    pub async fn serve_http<B>(
        &self,
        component_id: &str,
        mut request: Request<B>,
        ctx: RouteContext,
    ) -> Response<HyperOutgoingBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let Some(component) = self.components.get(component_id) else {
            return problem(
                StatusCode::NOT_FOUND,
                "no-such-component",
                format!("component '{component_id}' is not run by this host"),
            );
        };
        let Some(proxy) = component.proxy.clone() else {
            return problem(
                StatusCode::NOT_FOUND,
                "no-http-handler",
                format!("component '{component_id}' does not handle HTTP"),
            );
        };
        let traceparent = ensure_traceparent(request.headers_mut());
        add_spin_headers(&mut request, &ctx);
        let mut store = self.new_store(component, ctx.depth, Some(traceparent));
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
        let limit = self.request_timeout;
        let task = tokio::spawn(async move {
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
            (result, store.data().limiter.hit)
        });
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                tracing::warn!(component = component_id, error = ?code, "component answered with an HTTP error code");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component-error",
                    format!("component '{component_id}' reported an error: {code:?}"),
                )
            }
            Err(_) => match task.await {
                Ok((Err(e), memory_hit)) => self.failure_response(component_id, &e, memory_hit),
                Ok((Ok(()), _)) => problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no-response",
                    format!("component '{component_id}' returned without sending a response"),
                ),
                Err(join) => problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component-failed",
                    format!("component '{component_id}' task failed: {join}"),
                ),
            },
        };
        self.metrics
            .record_request(component_id, response.status().as_u16(), started.elapsed());
        response
    }

    /// Handles `http://<component>.spin.internal/...` in process.
    async fn call_chained(
        &self,
        component_id: &str,
        request: Request<WasiBody>,
        depth: u32,
    ) -> Result<Response<WasiBody>, wasmtime_wasi_http::Error> {
        if !self.components.contains_key(component_id) {
            if let Some(sidecar) = &self.backends.dapr {
                let app_id = self
                    .manifest
                    .components
                    .get(component_id)
                    .map(|c| c.dapr_app_id().to_string())
                    .unwrap_or_else(|| component_id.to_string());
                return sidecar.invoke(&app_id, request).await;
            }
            tracing::warn!(
                callee = component_id,
                "chained call refused: component '{component_id}' is not run by this process; run it here (--component-id) or configure service invocation"
            );
            return Err(wasmtime_wasi_http::Error::DestinationNotFound);
        }
        Ok(self
            .serve_unrouted(component_id, request, depth, None)
            .await)
    }

    /// Runs `component_id` on a request that reached it without a public
    /// route: a chained call (`http://<id>.spin.internal/...`), or one
    /// that arrived through Dapr service invocation (the app channel). As
    /// in Spin, the component's routes do not restrict such calls; they
    /// only fill the `spin-*` headers when one matches.
    pub async fn serve_unrouted<B>(
        &self,
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
        let routed = self
            .components
            .get(component_id)
            .and_then(|c| c.router.route(&path));
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
        self.serve_http(component_id, request, ctx).await
    }
}

struct Chaining(Weak<App>);

impl ServiceChaining for Chaining {
    fn call(&self, component: &str, request: Request<WasiBody>, depth: u32) -> ResponseFuture {
        let app = self.0.clone();
        let component = component.to_string();
        Box::pin(async move {
            let app = app
                .upgrade()
                .ok_or(wasmtime_wasi_http::Error::DestinationUnavailable)?;
            app.call_chained(&component, request, depth).await
        })
    }
}

#[async_trait]
impl Deliverer for App {
    async fn deliver(&self, component_id: &str, message: Message) -> Result<(), String> {
        let started = Instant::now();
        let component = self
            .components
            .get(component_id)
            .ok_or_else(|| format!("component '{component_id}' is not run by this process"))?;
        let subscriber = component.subscriber.clone().ok_or_else(|| {
            format!("component '{component_id}' does not export wasi:messaging/incoming-handler")
        })?;
        let traceparent = message
            .inner
            .metadata
            .iter()
            .find(|(k, _)| k == "traceparent")
            .map(|(_, v)| v.clone());
        let mut store = self.new_store(component, 0, traceparent);
        let limit = self.request_timeout;
        let run = async {
            let msg = store.data_mut().messaging.push_delivery(message)?;
            let instance = subscriber.instantiate_async(&mut store).await?;
            instance
                .wasi_messaging_incoming_handler()
                .call_handle(&mut store, msg)
                .await
        };
        let result = match tokio::time::timeout(limit + Duration::from_secs(1), run).await {
            Ok(r) => r,
            Err(_) => Err(wasmtime::Error::new(TimeLimitExceeded(limit))),
        };
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the handler returned an error: {e:?}")),
            Err(e) if store.data().limiter.hit => Err(format!(
                "the handler exceeded its memory limit of {} MiB: {e:#}",
                self.max_memory >> 20
            )),
            Err(e) => Err(format!("the handler failed: {e:#}")),
        };
        self.metrics
            .record_delivery(component_id, outcome.is_ok(), started.elapsed());
        outcome
    }
}

/// Ensures a W3C `traceparent` header, starting a trace when the caller
/// sent none; returns its value.
fn ensure_traceparent(headers: &mut http::HeaderMap) -> String {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok())
        && is_valid_traceparent(tp)
    {
        return tp.to_string();
    }
    let mut ids = [0u8; 24];
    let _ = getrandom::fill(&mut ids);
    let tp = format!(
        "00-{}-{}-01",
        hex::encode(&ids[..16]),
        hex::encode(&ids[16..])
    );
    headers.insert(
        "traceparent",
        HeaderValue::from_str(&tp).expect("hex is a valid header value"),
    );
    tp
}

fn is_valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    parts.len() == 4
        && parts[0].len() == 2
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
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
        set(&format!("spin-path-match-{name}"), value.clone());
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
