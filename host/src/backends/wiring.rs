//! Opening the backends the runtime config names and putting each behind
//! its capability trait: the key-value store labels and messaging clients
//! the components use map onto embedded, Redis or Dapr here, and nowhere
//! else in the host.

use super::dapr::{self, DaprSidecar};
use super::embedded::{self, EmbeddedBroker, EmbeddedDb};
use super::redis::{RedisBroker, RedisConn, RedisConns, RedisKeyValue};
use crate::capabilities::keyvalue::{KeyValueBackend, StoreRegistry};
use crate::capabilities::messaging::{BrokerRegistry, MessageBroker};
use crate::manifest::AppManifest;
use crate::runtime_config::{MessagingBackend, RuntimeConfig, StoreConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// The opened backends of one process.
pub struct Backends {
    /// Key-value backend per store label.
    pub stores: Arc<StoreRegistry>,
    /// Message broker per messaging client.
    pub brokers: Arc<BrokerRegistry>,
    /// The embedded database; always open, as the default of any label.
    pub embedded: Arc<EmbeddedDb>,
    /// The embedded queue, which knows this process's subscriptions.
    pub embedded_broker: Arc<EmbeddedBroker>,
    /// Connections of the messaging clients served by Redis, for consumers.
    pub redis_clients: BTreeMap<String, RedisConn>,
    /// The Dapr sidecar, when the runtime config uses Dapr.
    pub dapr: Option<Arc<DaprSidecar>>,
}

impl Backends {
    /// Opens what `runtime_config` names for `manifest`; `subscriptions`
    /// (component, client, topic) are those of the components this process
    /// runs. One connection per distinct Redis URL is shared.
    pub fn open(
        manifest: &AppManifest,
        runtime_config: &RuntimeConfig,
        subscriptions: &[(String, String, String)],
        data_dir: &Path,
    ) -> Result<Self, String> {
        let embedded = EmbeddedDb::open(data_dir)?;
        let dapr = DaprSidecar::from_runtime_config(runtime_config)?.map(Arc::new);
        let dapr_client = || {
            dapr.as_ref()
                .expect("a dapr entry in the runtime config opens the sidecar")
                .client()
                .clone()
        };
        let mut redis = RedisConns::default();

        let embedded_kv: Arc<dyn KeyValueBackend> =
            Arc::new(embedded::EmbeddedKeyValue::new(embedded.clone()));
        let mut by_label: BTreeMap<String, Arc<dyn KeyValueBackend>> = BTreeMap::new();
        for (label, cfg) in &runtime_config.key_value_store {
            let backend: Arc<dyn KeyValueBackend> = match cfg {
                StoreConfig::Embedded => embedded_kv.clone(),
                StoreConfig::Redis { url } => Arc::new(RedisKeyValue::new(
                    redis.get(url, &format!("key_value_store.{label}.url"))?,
                )),
                StoreConfig::Dapr { store } => {
                    Arc::new(dapr::state::DaprKeyValue::new(dapr_client(), store))
                }
            };
            by_label.insert(label.clone(), backend);
        }

        let embedded_broker = Arc::new(EmbeddedBroker::new(embedded.clone(), subscriptions));
        let mut redis_clients = BTreeMap::new();
        let mut clients: BTreeMap<String, Arc<dyn MessageBroker>> = BTreeMap::new();
        let declared: BTreeSet<&String> = manifest
            .components
            .values()
            .flat_map(|c| c.tool.messaging_clients.iter())
            .collect();
        for name in declared {
            let cfg = runtime_config.messaging_client(name);
            let broker: Arc<dyn MessageBroker> = match cfg.backend {
                MessagingBackend::Embedded => embedded_broker.clone(),
                MessagingBackend::Redis => {
                    let conn = redis.get(
                        cfg.url.as_deref().unwrap_or_default(),
                        &format!("messaging.{name}.url"),
                    )?;
                    redis_clients.insert(name.clone(), conn.clone());
                    Arc::new(RedisBroker::new(conn, cfg.max_len))
                }
                MessagingBackend::Dapr => Arc::new(dapr::pubsub::DaprPubSub::new(
                    dapr_client(),
                    &dapr::pubsub_name(runtime_config, name).unwrap_or_else(|| name.clone()),
                )),
            };
            clients.insert(name.clone(), broker);
        }

        Ok(Backends {
            stores: Arc::new(StoreRegistry::new(by_label, embedded_kv)),
            brokers: Arc::new(BrokerRegistry::new(clients)),
            embedded,
            embedded_broker,
            redis_clients,
            dapr,
        })
    }
}
