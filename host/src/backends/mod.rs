//! The backends behind the capability traits, and the one place that
//! registers them. Each backend is a folder with the same shape:
//!
//! - `mod.rs`: the backend's unit ([`BackendUnit`]): its runtime-config
//!   types, its `wasmshop up` flags, and opening its stores and brokers;
//! - `keyvalue.rs`: [`KeyValueBackend`] and its stores;
//! - `messaging.rs`: both directions of messaging, the [`MessageBroker`]
//!   that sends and the [`MessageReceiver`] that delivers;
//! - anything private to the backend (the Dapr sidecar client, its app
//!   channel and service invocation).
//!
//! Adding a backend is adding its folder and one line to
//! [`register_backends!`] below; nothing else in the host names a backend.
//! `embedded`, the first line, is the default of every store label and
//! messaging client the runtime config does not mention.

pub mod dapr;
pub mod embedded;
pub mod redis;

use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::{KeyValueBackend, StoreRegistry};
use crate::capabilities::messaging::{
    BrokerRegistry, ComponentSubscription, MessageBroker, MessageReceiver,
};
use crate::capabilities::outbound_http::ServiceChaining;
use crate::ingress::Ingress;
use crate::manifest::AppManifest;
use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// A runtime-config entry that is wrong, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key '{key}': {message}")]
pub struct ConfigError {
    /// The dotted key, e.g. `messaging.bus.url`.
    pub key: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// What every backend is opened with.
pub struct OpenContext<'a> {
    /// The manifest being run.
    pub manifest: &'a AppManifest,
    /// The subscriptions of the components this process runs.
    pub subscriptions: &'a [ComponentSubscription],
    /// The host's data directory (`--data-dir`).
    pub data_dir: &'a Path,
}

/// Waits at start-up, before the host listens, until a backend can serve.
#[async_trait]
pub trait StartupCheck: Send + Sync {
    /// `Ok` once the backend answers; `Err` (after the backend's own
    /// timeout) says what to start or fix.
    async fn wait_until_ready(&self) -> Result<(), BackendError>;
}

/// What an opened backend adds to an app besides its stores and brokers.
#[derive(Default)]
pub struct Contribution {
    /// Delivers its messaging clients' messages to subscribers.
    pub receiver: Option<Arc<dyn MessageReceiver>>,
    /// Its hooks on the app's HTTP listener, asked in this order.
    pub ingress: Vec<Arc<dyn Ingress>>,
    /// Where chained calls to components not run here go.
    pub invocation: Option<Arc<dyn ServiceChaining>>,
    /// What to wait for before listening.
    pub startup: Option<Arc<dyn StartupCheck>>,
}

/// One backend: what the runtime config names with `type = "<name>"`.
/// Opening is cheap and connects lazily, so the host starts (not ready)
/// while a server is down.
pub trait BackendUnit: Sized {
    /// Settings of a `[key_value_store.<label>]` entry besides `type`.
    type StoreConfig: DeserializeOwned + std::fmt::Debug + Clone + PartialEq + Eq;
    /// Settings of a `[messaging.<client>]` entry besides `type`.
    type MessagingConfig: DeserializeOwned + std::fmt::Debug + Clone + PartialEq + Eq;
    /// The backend's own `wasmshop up` flags.
    type Args: clap::Args + std::fmt::Debug + Clone + Default;

    /// Checks a store entry when the runtime config is read (`key` is
    /// `key_value_store.<label>`), before anything is opened.
    fn check_store(_key: &str, _config: &Self::StoreConfig) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Checks a messaging entry when the runtime config is read (`key` is
    /// `messaging.<client>`).
    fn check_messaging(_key: &str, _config: &Self::MessagingConfig) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Prepares the backend for an app.
    fn open(context: &OpenContext<'_>, args: &Self::Args) -> Result<Self, BackendError>;
    /// The key-value backend of store `label`.
    fn store(
        &mut self,
        label: &str,
        config: &Self::StoreConfig,
    ) -> Result<Arc<dyn KeyValueBackend>, BackendError>;
    /// The broker of messaging client `client`.
    fn broker(
        &mut self,
        client: &str,
        config: &Self::MessagingConfig,
    ) -> Result<Arc<dyn MessageBroker>, BackendError>;
    /// Everything else the backend adds, once every store and broker is open.
    fn finish(self) -> Contribution;
}

/// Generates, from one line per backend, the runtime-config enums
/// (tagged by `type`), the flags struct flattened into `wasmshop up`, and
/// the dispatch from a config entry to its backend.
macro_rules! register_backends {
    ($( $(#[$doc:meta])* $variant:ident => $module:ident :: $unit:ident ),+ $(,)?) => {
        /// The backend of one key-value store label: `type = "<backend>"`
        /// and that backend's settings.
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        pub enum StoreConfig {
            $( $(#[$doc])* $variant(<$module::$unit as BackendUnit>::StoreConfig), )+
        }

        /// The backend of one messaging client: `type = "<backend>"` and
        /// that backend's settings (delivery policy included).
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        pub enum MessagingConfig {
            $( $(#[$doc])* $variant(<$module::$unit as BackendUnit>::MessagingConfig), )+
        }

        /// Every backend's own flags of `wasmshop up`.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct BackendArgs {
            $(
                #[allow(missing_docs)]
                #[command(flatten)]
                pub $module: <$module::$unit as BackendUnit>::Args,
            )+
        }

        impl StoreConfig {
            /// Checks the entry of store `label` (see [`BackendUnit::check_store`]).
            pub fn check(&self, label: &str) -> Result<(), ConfigError> {
                let key = format!("key_value_store.{label}");
                match self {
                    $( StoreConfig::$variant(c) => <$module::$unit as BackendUnit>::check_store(&key, c), )+
                }
            }
        }

        impl MessagingConfig {
            /// Checks the entry of client `name` (see [`BackendUnit::check_messaging`]).
            pub fn check(&self, name: &str) -> Result<(), ConfigError> {
                let key = format!("messaging.{name}");
                match self {
                    $( MessagingConfig::$variant(c) => <$module::$unit as BackendUnit>::check_messaging(&key, c), )+
                }
            }
        }

        /// Every backend, opened.
        struct Units {
            $( $module: $module::$unit, )+
        }

        impl Units {
            fn open(context: &OpenContext<'_>, args: &BackendArgs) -> Result<Self, BackendError> {
                Ok(Units { $( $module: <$module::$unit as BackendUnit>::open(context, &args.$module)?, )+ })
            }
            fn store(&mut self, label: &str, config: &StoreConfig) -> Result<Arc<dyn KeyValueBackend>, BackendError> {
                match config {
                    $( StoreConfig::$variant(c) => self.$module.store(label, c), )+
                }
            }
            fn broker(&mut self, client: &str, config: &MessagingConfig) -> Result<Arc<dyn MessageBroker>, BackendError> {
                match config {
                    $( MessagingConfig::$variant(c) => self.$module.broker(client, c)
                        .map(|b| crate::telemetry::messaging::traced(b, client, stringify!($module))), )+
                }
            }
            fn finish(self) -> Vec<Contribution> {
                vec![ $( self.$module.finish(), )+ ]
            }
        }
    };
}

register_backends! {
    /// The SQLite database in the data directory: needs no server.
    Embedded => embedded::Embedded,
    /// A Redis server, shared by every replica of the app.
    Redis => redis::Redis,
    /// The Dapr sidecar's state stores and pub/sub components.
    Dapr => dapr::Dapr,
}

impl Default for StoreConfig {
    /// Labels the runtime config does not mention are embedded.
    fn default() -> Self {
        StoreConfig::Embedded(Default::default())
    }
}

impl Default for MessagingConfig {
    /// Clients the runtime config does not mention are embedded.
    fn default() -> Self {
        MessagingConfig::Embedded(Default::default())
    }
}

/// The opened backends of one process.
pub struct Backends {
    /// Key-value backend per store label.
    pub stores: Arc<StoreRegistry>,
    /// Message broker per messaging client.
    pub brokers: Arc<BrokerRegistry>,
    receivers: Vec<Arc<dyn MessageReceiver>>,
    ingress: Vec<Arc<dyn Ingress>>,
    invocation: Option<Arc<dyn ServiceChaining>>,
    startup: Vec<Arc<dyn StartupCheck>>,
}

impl Backends {
    /// Opens a backend for every store label of `stores` and every
    /// messaging client the manifest declares (with its entry of
    /// `clients`, or the default); labels without an entry use the
    /// default backend.
    pub fn open(
        context: &OpenContext<'_>,
        stores: &BTreeMap<String, StoreConfig>,
        clients: &BTreeMap<String, MessagingConfig>,
        args: &BackendArgs,
    ) -> Result<Self, BackendError> {
        let mut units = Units::open(context, args)?;
        let fallback = units.store("", &StoreConfig::default())?;
        let mut by_label = BTreeMap::new();
        for (label, config) in stores {
            by_label.insert(label.clone(), units.store(label, config)?);
        }
        let declared: BTreeSet<&String> = context
            .manifest
            .components
            .values()
            .flat_map(|c| c.tool.messaging_clients.iter())
            .collect();
        let mut by_client = BTreeMap::new();
        for name in declared {
            let config = clients.get(name).cloned().unwrap_or_default();
            by_client.insert(name.clone(), units.broker(name, &config)?);
        }
        let mut backends = Backends {
            stores: Arc::new(StoreRegistry::new(by_label, fallback)),
            brokers: Arc::new(BrokerRegistry::new(by_client)),
            receivers: Vec::new(),
            ingress: Vec::new(),
            invocation: None,
            startup: Vec::new(),
        };
        for c in units.finish() {
            backends.receivers.extend(c.receiver);
            backends.ingress.extend(c.ingress);
            backends.startup.extend(c.startup);
            if c.invocation.is_some() {
                backends.invocation = c.invocation;
            }
        }
        Ok(backends)
    }

    /// The receive sides, to start with the app's subscriptions.
    pub fn receivers(&self) -> &[Arc<dyn MessageReceiver>] {
        &self.receivers
    }

    /// The hooks on the app's HTTP listener, in registration order.
    pub fn ingress(&self) -> &[Arc<dyn Ingress>] {
        &self.ingress
    }

    /// Where chained calls to components not run here go, if anywhere.
    pub fn invocation(&self) -> Option<&Arc<dyn ServiceChaining>> {
        self.invocation.as_ref()
    }

    /// Waits for every backend that must answer before the host listens.
    pub async fn wait_until_ready(&self) -> Result<(), BackendError> {
        for check in &self.startup {
            check.wait_until_ready().await?;
        }
        Ok(())
    }

    /// Checks every store and broker; `Err` names those not reachable and
    /// their backend kind (`key_value_store.default (redis)`), never an
    /// address: the probe answers on the public port, so the detail goes
    /// to the host log only.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut failures = Vec::new();
        for (name, backend) in self.stores.backends() {
            if let Err(e) = backend.ready().await {
                tracing::warn!(store = %name, error = %e.message(), "readiness: store not reachable");
                failures.push(format!("{name} ({})", e.backend()));
            }
        }
        for (name, broker) in self.brokers.clients() {
            if let Err(e) = broker.ready().await {
                tracing::warn!(messaging = %name, error = %e.message(), "readiness: messaging backend not reachable");
                failures.push(format!("messaging.{name} ({})", e.backend()));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }
}
