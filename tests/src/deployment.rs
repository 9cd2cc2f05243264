//! The app as its clients reach it. On the embedded and Redis backends one
//! host runs every component. On Dapr each component runs in its own host
//! next to its own sidecar double, the doubles sharing state and broker,
//! as each container app does in Azure Container Apps; a request goes to
//! the host that serves its path, as it would through that app's ingress.
//! As in Azure Container Apps, every sidecar and host share an
//! `APP_API_TOKEN` ([`APP_API_TOKEN`]), so the host can tell invocations
//! from its sidecar (which may reach internal endpoints) from public
//! traffic.

use crate::daprd::{DaprCluster, Sidecar, SidecarOptions};
use crate::{Backend, Host, HostBuilder, Response, Value, app_manifest_with_recorder, client};
use crate::{with_absolute_paths, workspace_root};

/// The `APP_API_TOKEN` of every sidecar and host of a Dapr deployment.
pub const APP_API_TOKEN: &str = "deployment-app-token";

/// Which component serves a path; the first host serves anything else
/// (`/healthz`, unknown paths).
const ROUTES: &[(&str, &str)] = &[
    ("/api/products", "product"),
    ("/api/orders", "order"),
    ("/recorder/", "recorder"),
];

/// One or more running hosts serving one app.
pub struct Deployment {
    services: Vec<Service>,
    // Kept after the hosts (fields drop in order): the sidecars and their
    // runtime outlive the processes they serve.
    cluster: Option<DaprCluster>,
}

struct Service {
    components: Vec<String>,
    host: Host,
    sidecar: Option<Sidecar>,
}

impl Deployment {
    /// The repository's app (product and order).
    pub fn app(backend: &Backend) -> Self {
        Self::start(backend, None, &["product", "order"])
    }

    /// The app plus the `recorder` fixture subscribed to `products` and
    /// `orders` (see [`app_manifest_with_recorder`]).
    pub fn app_with_recorder(backend: &Backend) -> Self {
        Self::start(
            backend,
            Some(app_manifest_with_recorder()),
            &["product", "order", "recorder"],
        )
    }

    /// `components` of `manifest` (the repository's spin.toml when `None`).
    pub fn start(backend: &Backend, manifest: Option<String>, components: &[&str]) -> Self {
        Self::start_with(backend, manifest, components, Host::builder())
    }

    /// Like [`Deployment::start`], every host started from `base` (its
    /// environment and arguments, e.g. `SPIN_VARIABLE_*` overrides or
    /// `--request-timeout-secs`).
    pub fn start_with(
        backend: &Backend,
        manifest: Option<String>,
        components: &[&str],
        base: HostBuilder,
    ) -> Self {
        let manifest = manifest.unwrap_or_else(repository_manifest);
        let builder = base.manifest(manifest.clone());
        match backend {
            Backend::Dapr => {
                let cluster = DaprCluster::new();
                let services = components
                    .iter()
                    .map(|c| {
                        let sidecar = cluster.sidecar(
                            &dapr_app_id(&manifest, c),
                            SidecarOptions {
                                app_token: Some(APP_API_TOKEN.into()),
                                ..Default::default()
                            },
                        );
                        let host = start_next_to(
                            &sidecar,
                            builder
                                .clone()
                                .component_ids(&[c])
                                .env("APP_API_TOKEN", APP_API_TOKEN),
                        );
                        Service {
                            components: vec![c.to_string()],
                            host,
                            sidecar: Some(sidecar),
                        }
                    })
                    .collect();
                Deployment {
                    services,
                    cluster: Some(cluster),
                }
            }
            _ => Deployment {
                services: vec![Service {
                    components: components.iter().map(|c| c.to_string()).collect(),
                    host: builder.backend(backend).component_ids(components).start(),
                    sidecar: None,
                }],
                cluster: None,
            },
        }
    }

    fn serving(&self, path: &str) -> &Host {
        let component = ROUTES
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|(_, c)| *c);
        let service = component.and_then(|c| {
            self.services
                .iter()
                .find(|s| s.components.iter().any(|x| x == c))
        });
        &service.unwrap_or(&self.services[0]).host
    }

    /// The host running `component` (on embedded and Redis, the only one).
    pub fn host_of(&self, component: &str) -> &Host {
        let service = self
            .services
            .iter()
            .find(|s| s.components.iter().any(|c| c == component));
        &service
            .unwrap_or_else(|| panic!("no host runs {component}"))
            .host
    }

    /// The sidecar next to the host running `component`, on Dapr.
    pub fn sidecar_of(&self, component: &str) -> Option<&Sidecar> {
        self.services
            .iter()
            .find(|s| s.components.iter().any(|c| c == component))
            .and_then(|s| s.sidecar.as_ref())
    }

    /// An absolute URL for `path` on the host that serves it.
    pub fn url(&self, path: &str) -> String {
        self.serving(path).url(path)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        client().get(self.url(path)).send().expect("GET")
    }

    /// Kills every host with SIGKILL and starts it again on its data (the
    /// sidecar attaches to the new port, as daprd's app channel would).
    pub fn restart(&mut self) {
        for s in &mut self.services {
            s.host.restart();
            if let Some(sidecar) = &s.sidecar {
                sidecar.attach_app(s.host.base());
            }
        }
    }

    /// Calls an endpoint of the product from inside the app, through the
    /// recorder (see [`Host::internal_call`]); needs a deployment with the
    /// recorder ([`Deployment::app_with_recorder`]).
    pub fn internal_call(
        &self,
        method: reqwest::Method,
        tenant: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.serving("/recorder/")
            .internal_call(method, tenant, path, body)
    }

    /// Events the recorder received on `topic` (see [`Host::recorded_events`]).
    pub fn recorded_events(&self, topic: &str) -> Vec<Value> {
        self.serving("/recorder/").recorded_events(topic)
    }

    /// Every host's log, each under a header naming its components.
    pub fn logs(&self) -> String {
        self.services
            .iter()
            .map(|s| format!("--- {}\n{}", s.components.join(","), s.host.logs()))
            .collect()
    }

    /// The shared sidecar state and broker, on Dapr.
    pub fn dapr_cluster(&self) -> Option<&DaprCluster> {
        self.cluster.as_ref()
    }
}

impl From<Host> for Deployment {
    /// A host started by hand, as a one-host deployment.
    fn from(host: Host) -> Self {
        Deployment {
            services: vec![Service {
                components: Vec::new(),
                host,
                sidecar: None,
            }],
            cluster: None,
        }
    }
}

/// Starts `builder`'s host next to `sidecar` with the deployed Dapr runtime
/// config (infra/runtime-config/dapr.toml), and attaches the sidecar's app
/// channel to it. Tokens are the caller's: `.env("APP_API_TOKEN", ..)`.
pub fn start_next_to(sidecar: &Sidecar, builder: HostBuilder) -> Host {
    let host = builder
        .backend(&Backend::Dapr)
        .env("DAPR_HTTP_PORT", &sidecar.port().to_string())
        .start();
    sidecar.attach_app(host.base());
    host
}

/// The Dapr app id of `component`: its `tool.wasmshop.dapr_app_id` in the
/// manifest (how the host names it in service invocation), else its id.
fn dapr_app_id(manifest: &str, component: &str) -> String {
    let doc: toml::Table = manifest.parse().expect("the manifest is TOML");
    doc.get("component")
        .and_then(|c| c.get(component))
        .and_then(|c| c.get("tool"))
        .and_then(|t| t.get("wasmshop"))
        .and_then(|w| w.get("dapr_app_id"))
        .and_then(|a| a.as_str())
        .unwrap_or(component)
        .to_string()
}

fn repository_manifest() -> String {
    let text = std::fs::read_to_string(workspace_root().join("spin.toml")).unwrap();
    with_absolute_paths(&text)
}
