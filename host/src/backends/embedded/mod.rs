//! The embedded backend: one SQLite database (WAL, `synchronous=FULL`) in
//! the data directory holds key-value data and the message queue, so an
//! acknowledged write or an accepted message survives `kill -9` and power
//! loss alike. One writer thread commits concurrent writes in groups and
//! a pool of reader threads reads (`db.rs`, docs/embedded-store.md).

mod cache;
mod db;
mod keyvalue;
mod messaging;

pub use db::{DEFAULT_CACHE_BYTES, DbState, EmbeddedDb};
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

/// The embedded backend's flags (`--data-dir` is the host's).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "embedded-flags")]
pub struct Flags {
    /// MiB of hot key-value entries the embedded backend keeps in memory
    /// (0 to 65536; 0: none). Exact: the host makes every write of its data
    /// directory, so a cached value is never stale (docs/embedded-store.md,
    /// "Read cache").
    #[arg(long = "embedded-cache-mb", value_name = "MIB", env = "WASMSHOP_EMBEDDED_CACHE_MB", allow_negative_numbers = true, default_value_t = DEFAULT_CACHE_BYTES >> 20, value_parser = parse_cache_mb)]
    pub cache_mb: usize,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            cache_mb: DEFAULT_CACHE_BYTES >> 20,
        }
    }
}

/// Largest `--embedded-cache-mb` (64 GiB): past it a typo, not a plan.
const MAX_CACHE_MB: usize = 65_536;

fn parse_cache_mb(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|mb| *mb <= MAX_CACHE_MB)
        .ok_or_else(|| {
            format!("'{text}' is not a size in MiB from 0 to {MAX_CACHE_MB}; give e.g. 16 (0 turns the cache off)")
        })
}

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

    fn open(context: &OpenContext<'_>, flags: &Flags) -> Result<Self, BackendError> {
        let db = EmbeddedDb::open_with_cache(context.data_dir, flags.cache_mb << 20)?;
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
