//! A loaded application: the manifest's components compiled, linked and
//! pre-instantiated, the backends opened behind their capabilities, and
//! the making of one instance's store (per-capability contexts, memory
//! and time limits). How an instance is then run is the triggers' part:
//! `trigger::http` for requests and chained calls, `trigger::messaging`
//! for deliveries. This module names no backend.

use crate::backends::{BackendArgs, Backends, OpenContext};
use crate::bindings::SubscriberPre;
use crate::capabilities::messaging::{ComponentSubscription, MessagingCtx};
use crate::capabilities::outbound_http::{OutboundHttp, ServiceChaining};
use crate::capabilities::{config::ConfigCtx, keyvalue, keyvalue::KeyValueCtx};
use crate::engine::{self, CacheOutcome, EngineLimits, EpochTicker};
use crate::ingress::LocalComponents;
use crate::manifest::{AllowedHosts, AppManifest, ComponentSpec, Router, Variables};
use crate::metrics::Metrics;
use crate::runtime_config::RuntimeConfig;
use crate::state::{InstanceState, MemoryLimiter};
use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// How the app is run.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// The manifest.
    pub manifest: AppManifest,
    /// Backends per store label / messaging client.
    pub runtime_config: RuntimeConfig,
    /// The backends' own flags.
    pub backend_args: BackendArgs,
    /// Components this process runs; empty means all.
    pub component_ids: Vec<String>,
    /// The data directory (`--data-dir`): backends' files, compile cache.
    pub data_dir: PathBuf,
    /// Memory and concurrency limits.
    pub limits: EngineLimits,
    /// Wall-clock limit of one request or delivery.
    pub request_timeout: Duration,
}

/// The time limit trap, recognisable in a guest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("the component exceeded its time limit of {0:?}")]
pub struct TimeLimitExceeded(pub Duration);

/// Every instance slot is taken (`--max-instances`): a capacity failure,
/// not a fault of the request or message. HTTP answers it with 503 and
/// `Retry-After`; a delivery is retried later without spending an attempt.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "all {max_instances} instances are busy (--max-instances); retry shortly, or raise --max-instances if this persists"
)]
pub struct Capacity {
    /// The configured `--max-instances`.
    pub max_instances: u32,
}

impl Capacity {
    /// Whether `error` (an instantiation or call failure) is a capacity
    /// failure: a [`Capacity`], or wasmtime's pooling allocator out of
    /// instances, memories or tables (work that took no slot, or a
    /// component that needs more than one instance).
    pub fn is_capacity(error: &wasmtime::Error) -> bool {
        error.chain().any(|e| {
            e.downcast_ref::<Capacity>().is_some()
                || e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
        })
    }
}

/// One of the `--max-instances` slots, held while an instance lives and
/// given back when dropped.
pub struct InstanceSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A component ready to instantiate.
pub struct LoadedComponent {
    spec: ComponentSpec,
    proxy: Option<ProxyPre<InstanceState>>,
    subscriber: Option<SubscriberPre<InstanceState>>,
    variables: Arc<BTreeMap<String, String>>,
    allowed_stores: Arc<BTreeSet<String>>,
    allowed_clients: Arc<BTreeSet<String>>,
    allowed_hosts: Arc<AllowedHosts>,
    /// Its routes, to fill Spin's `spin-*` headers on chained calls.
    router: Router<()>,
}

impl LoadedComponent {
    /// Its manifest entry.
    pub fn spec(&self) -> &ComponentSpec {
        &self.spec
    }

    /// Its `wasi:http/incoming-handler`, if it exports one.
    pub fn proxy(&self) -> Option<&ProxyPre<InstanceState>> {
        self.proxy.as_ref()
    }

    /// Its `wasi:messaging/incoming-handler`, if it exports one.
    pub fn subscriber(&self) -> Option<&SubscriberPre<InstanceState>> {
        self.subscriber.as_ref()
    }

    /// Its own routes (values unused).
    pub fn router(&self) -> &Router<()> {
        &self.router
    }
}

/// What an instance is made for.
pub struct InstanceContext {
    /// Chained calls that led here (0 for external requests and deliveries).
    pub depth: u32,
    /// The trace context the instance continues.
    pub traceparent: Option<String>,
    /// Where its `http://<component>.spin.internal` calls go.
    pub chaining: Arc<dyn ServiceChaining>,
}

/// A running application.
pub struct App {
    manifest: AppManifest,
    engine: Engine,
    _ticker: EpochTicker,
    components: BTreeMap<String, LoadedComponent>,
    router: Router<String>,
    backends: Backends,
    subscriptions: Vec<ComponentSubscription>,
    request_timeout: Duration,
    max_memory: usize,
    metrics: Arc<Metrics>,
    cache_report: Vec<(String, CacheOutcome, Duration)>,
    /// One permit per instance the pooling allocator can hold.
    instance_slots: Arc<tokio::sync::Semaphore>,
    max_instances: u32,
}

impl App {
    /// Compiles (or loads from cache) and links the selected components and
    /// opens their backends.
    pub async fn load(options: AppOptions, metrics: Arc<Metrics>) -> anyhow::Result<Arc<App>> {
        let AppOptions {
            manifest,
            runtime_config,
            backend_args,
            component_ids,
            data_dir,
            limits,
            request_timeout,
        } = options;
        let selected = select(&manifest, component_ids)?;
        let variables = Variables::resolve(&manifest, |k| std::env::var(k).ok())
            .with_context(|| manifest.file.display().to_string())?;
        let subscriptions: Vec<ComponentSubscription> = manifest
            .subscriptions()
            .filter(|(c, _)| selected.contains(*c))
            .map(|(c, s)| ComponentSubscription {
                component: c.to_string(),
                client: s.client.clone(),
                topic: s.topic.clone(),
                event_types: s.event_types.clone(),
            })
            .collect();
        let context = OpenContext {
            manifest: &manifest,
            subscriptions: &subscriptions,
            data_dir: &data_dir,
        };
        let backends = Backends::open(
            &context,
            &runtime_config.key_value_store,
            &runtime_config.messaging,
            &backend_args,
        )?;

        let engine = engine::build_engine(limits)?;
        let linker = linker(&engine)?;
        let cache_dir = data_dir.join("compiled");
        let mut components = BTreeMap::new();
        let mut cache_report = Vec::new();
        for id in &selected {
            let spec = manifest.components[id].clone();
            let (component, outcome, took) =
                engine::load_component(&engine, &spec.source, &cache_dir)
                    .with_context(|| format!("component '{id}'"))?;
            cache_report.push((id.clone(), outcome, took));
            let pre: InstancePre<InstanceState> = linker.instantiate_pre(&component).map_err(|e| {
                anyhow::anyhow!(
                    "component '{id}' ({}) imports something this host does not provide: {e}; components may import only the interfaces of wit/world.wit",
                    spec.source.display()
                )
            })?;
            let loaded = prepare(&manifest, &variables, spec, pre)?;
            components.insert(id.clone(), loaded);
        }
        let router = Router::new(
            manifest
                .http_triggers
                .iter()
                .filter(|t| selected.contains(&t.component))
                .filter_map(|t| t.route.clone().map(|r| (r, t.component.clone()))),
        );
        let ticker = EpochTicker::start(&engine);
        Ok(Arc::new(App {
            manifest,
            engine,
            _ticker: ticker,
            components,
            router,
            backends,
            subscriptions,
            request_timeout,
            max_memory: limits.max_memory_bytes,
            metrics,
            cache_report,
            instance_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_instances as usize)),
            max_instances: limits.max_instances,
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

    /// The opened backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The subscriptions of the components this process runs.
    pub fn subscriptions(&self) -> &[ComponentSubscription] {
        &self.subscriptions
    }

    /// A component this process runs.
    pub fn component(&self, id: &str) -> Option<&LoadedComponent> {
        self.components.get(id)
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wall-clock limit of one request or delivery.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Linear memory one instance may use, in bytes.
    pub fn max_memory(&self) -> usize {
        self.max_memory
    }

    /// A slot for one instance, or [`Capacity`] at once when all
    /// `--max-instances` are taken. For work that must not wait while it
    /// may hold a slot itself (a chained call: an order holding a slot
    /// while it waits for a product slot would deadlock the pool) and for
    /// message deliveries (a delivery that finds no slot is retried later
    /// without spending one of its attempts).
    pub fn try_instance_slot(&self) -> Result<InstanceSlot, Capacity> {
        self.instance_slots
            .clone()
            .try_acquire_owned()
            .map(|permit| InstanceSlot { _permit: permit })
            .map_err(|_| Capacity {
                max_instances: self.max_instances,
            })
    }

    /// A slot for one instance, waiting up to `wait` for one to free up;
    /// [`Capacity`] when none does.
    pub async fn instance_slot(&self, wait: Duration) -> Result<InstanceSlot, Capacity> {
        match tokio::time::timeout(wait, self.instance_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(InstanceSlot { _permit: permit }),
            _ => Err(Capacity {
                max_instances: self.max_instances,
            }),
        }
    }

    /// A fresh store for one instance of `component`: its capabilities
    /// limited to what the manifest grants it, its memory capped, and a
    /// deadline of [`App::request_timeout`] from now that traps with
    /// [`TimeLimitExceeded`].
    pub fn new_store(
        &self,
        component: &LoadedComponent,
        context: InstanceContext,
    ) -> Store<InstanceState> {
        let id: Arc<str> = Arc::from(component.spec.id.as_str());
        let mut wasi = WasiCtxBuilder::new();
        // Each line the guest prints is a log line naming it (docs/observability.md).
        let tp = context.traceparent.as_deref();
        wasi.stdout(crate::telemetry::guest::output(&id, "stdout", tp))
            .stderr(crate::telemetry::guest::output(&id, "stderr", tp));
        for (k, v) in &component.spec.environment {
            wasi.env(k, v);
        }
        let state = InstanceState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound: OutboundHttp::new(
                id.clone(),
                component.allowed_hosts.clone(),
                context.chaining,
                context.depth,
                context.traceparent.clone(),
            ),
            kv: KeyValueCtx::new(
                id.clone(),
                component.allowed_stores.clone(),
                self.backends.stores.clone(),
            )
            .with_traceparent(context.traceparent.clone())
            .with_memory_limit(self.max_memory()),
            messaging: MessagingCtx::new(
                id,
                component.allowed_clients.clone(),
                self.backends.brokers.clone(),
                context.traceparent,
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
}

impl LocalComponents for App {
    fn serves_http(&self, component: &str) -> bool {
        self.components
            .get(component)
            .is_some_and(|c| c.proxy.is_some())
    }

    /// Scores by [`crate::manifest::Route::literal_prefix_match`].
    fn component_below_routes<'a>(&self, candidates: &[&'a str], path: &str) -> Option<&'a str> {
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
}

/// The components to run: `component_ids`, or all when empty.
pub(crate) fn select(
    manifest: &AppManifest,
    component_ids: Vec<String>,
) -> anyhow::Result<BTreeSet<String>> {
    let defined = || manifest.components.keys().cloned().collect::<Vec<_>>();
    if let Some(id) = component_ids
        .iter()
        .find(|id| !manifest.components.contains_key(*id))
    {
        anyhow::bail!(
            "--component-id {id}: the manifest has no component '{id}'; it defines {}",
            defined().join(", ")
        );
    }
    Ok(if component_ids.is_empty() {
        manifest.components.keys().cloned().collect()
    } else {
        component_ids.into_iter().collect()
    })
}

/// The linker every component is linked with: WASI, `wasi:http` and the
/// capabilities of `wit/world.wit`.
fn linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::<InstanceState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    keyvalue::add_to_linker(&mut linker, |s| &mut s.kv)?;
    crate::capabilities::messaging::add_to_linker(&mut linker, |s| &mut s.messaging)?;
    crate::bindings::config::store::add_to_linker::<_, wasmtime::component::HasSelf<ConfigCtx>>(
        &mut linker,
        |s| &mut s.config,
    )?;
    Ok(linker)
}

/// Checks a linked component exports what its manifest entry needs and
/// gathers what its instances are granted.
fn prepare(
    manifest: &AppManifest,
    variables: &Variables,
    spec: ComponentSpec,
    pre: InstancePre<InstanceState>,
) -> anyhow::Result<LoadedComponent> {
    let id = spec.id.clone();
    let has_routes = manifest.http_triggers.iter().any(|t| t.component == id);
    let proxy = match ProxyPre::new(pre.clone()) {
        Ok(p) => Some(p),
        Err(e) if has_routes => anyhow::bail!(
            "component '{id}' has HTTP routes but does not export wasi:http/incoming-handler: {e}"
        ),
        Err(_) => None,
    };
    let subscriber = match SubscriberPre::new(pre) {
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
            .filter(|t| t.component == id)
            .filter_map(|t| t.route.clone().map(|r| (r, ()))),
    );
    Ok(LoadedComponent {
        variables: Arc::new(variables.for_component(&id)),
        allowed_stores: Arc::new(spec.key_value_stores.clone()),
        allowed_clients: Arc::new(spec.tool.messaging_clients.clone()),
        allowed_hosts: Arc::new(variables.allowed_hosts(&spec)?),
        spec,
        proxy,
        subscriber,
        router,
    })
}
