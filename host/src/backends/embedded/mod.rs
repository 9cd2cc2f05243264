//! The embedded backend: one SQLite database (WAL, `synchronous=FULL`) in
//! the data directory holds key-value data and the message queue, so an
//! acknowledged write or an accepted message survives `kill -9` and power
//! loss alike. One writer thread commits concurrent writes in groups and
//! a pool of reader threads reads (`db.rs`, docs/embedded-store.md).

mod db;
mod keyvalue;
mod messaging;

pub use db::{DbState, EmbeddedDb};
pub use keyvalue::{EmbeddedKeyValue, EmbeddedStore};
pub use messaging::{EmbeddedBroker, EmbeddedReceiver, stored_messages};

use super::{BackendUnit, Contribution, OpenContext};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::KeyValueBackend;
use crate::capabilities::messaging::MessageBroker;
use crate::capabilities::messaging::delivery::{self, DeliveryPolicy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The name errors and logs give this backend.
pub const NAME: &str = "embedded";

/// `[key_value_store.<label>] type = "embedded"`: no settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {}

/// `[messaging.<client>] type = "embedded"`: the delivery policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// Delivery attempts before a message goes to `<topic>.deadletter`.
    #[serde(default = "delivery::default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt in milliseconds; doubled after each
    /// failure (capped at 30 s).
    #[serde(default = "delivery::default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        MessagingSettings {
            max_attempts: delivery::DEFAULT_MAX_ATTEMPTS,
            initial_backoff_ms: delivery::DEFAULT_INITIAL_BACKOFF_MS,
        }
    }
}

/// The embedded backend has no flags of its own (`--data-dir` is the host's).
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "embedded-flags")]
pub struct Flags {}

/// The embedded backend of an app: the database, always open (it is the
/// default of every label and client), one key-value backend and one
/// broker shared by all labels and clients.
pub struct Embedded {
    store: Arc<EmbeddedKeyValue>,
    broker: Arc<EmbeddedBroker>,
    policies: BTreeMap<String, DeliveryPolicy>,
}

impl BackendUnit for Embedded {
    type StoreConfig = StoreSettings;
    type MessagingConfig = MessagingSettings;
    type Args = Flags;

    fn open(context: &OpenContext<'_>, _flags: &Flags) -> Result<Self, BackendError> {
        let db = EmbeddedDb::open(context.data_dir)?;
        Ok(Embedded {
            store: Arc::new(EmbeddedKeyValue::new(db.clone())),
            broker: Arc::new(EmbeddedBroker::new(db, context.subscriptions)),
            policies: BTreeMap::new(),
        })
    }

    fn store(
        &mut self,
        _label: &str,
        _settings: &StoreSettings,
    ) -> Result<Arc<dyn KeyValueBackend>, BackendError> {
        Ok(self.store.clone())
    }

    fn broker(
        &mut self,
        client: &str,
        settings: &MessagingSettings,
    ) -> Result<Arc<dyn MessageBroker>, BackendError> {
        self.policies.insert(
            client.to_string(),
            DeliveryPolicy::new(settings.max_attempts, settings.initial_backoff_ms),
        );
        Ok(self.broker.clone())
    }

    /// The dispatcher always runs: the queue may hold deliveries from an
    /// earlier run even when no client is embedded now.
    fn finish(self) -> Contribution {
        Contribution {
            receiver: Some(Arc::new(self.broker.receiver(self.policies))),
            ..Contribution::default()
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
