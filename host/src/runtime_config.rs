//! The runtime config file (`--runtime-config-file`): which backend serves
//! each key-value store label and each messaging client, in the spirit of
//! Spin's runtime config. Without a file everything is embedded.
//!
//! ```toml
//! [key_value_store.default]
//! type = "embedded"
//!
//! [messaging.product-pubsub]
//! type = "embedded"
//! max_attempts = 5          # deliveries before dead-lettering
//! initial_backoff_ms = 200  # doubled after each failed attempt
//!
//! [key_value_store.orders]
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//!
//! [messaging.order-pubsub]
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//! max_len = 100000              # unacknowledged entries per topic; then send is refused
//! visibility_timeout_ms = 60000 # unacknowledged deliveries are reclaimed after this
//!
//! [key_value_store.catalog]
//! type = "dapr"
//! store = "statestore"          # Dapr state store component
//!
//! [messaging.product-pubsub]
//! type = "dapr"
//! pubsub = "product-pubsub"     # Dapr pub/sub component (default: the client name)
//! ```

use crate::backends::{ConfigError, MessagingConfig, StoreConfig};
use crate::config_text::first_line;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Why a runtime config file cannot be used; the message names the file
/// or the key and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read the runtime config file ({reason}); check --runtime-config-file")]
    Unreadable {
        /// The file as given.
        file: String,
        /// The I/O error.
        reason: String,
    },
    /// The text is not TOML, or an entry does not fit its backend.
    #[error("{0}; see the runtime config section of the README")]
    Invalid(String),
    /// An entry fits its backend's shape but not its rules.
    #[error(transparent)]
    Entry(#[from] ConfigError),
    /// [`RuntimeConfigError::Invalid`] or [`RuntimeConfigError::Entry`]
    /// of a file.
    #[error("{file}: {error}")]
    InFile {
        /// The file as given.
        file: String,
        /// What is wrong in it.
        error: Box<RuntimeConfigError>,
    },
}

/// The whole runtime config: the backend of each store label and
/// messaging client (the types and settings of each backend are in its
/// folder under `backends/`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Backends of key-value store labels.
    #[serde(default)]
    pub key_value_store: BTreeMap<String, StoreConfig>,
    /// Backends of messaging clients.
    #[serde(default)]
    pub messaging: BTreeMap<String, MessagingConfig>,
}

impl RuntimeConfig {
    /// Reads a runtime config file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self, RuntimeConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeConfigError::Unreadable {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|error| RuntimeConfigError::InFile {
            file,
            error: Box::new(error),
        })
    }

    /// Parses runtime config text, and checks each entry with its backend.
    pub fn parse(text: &str) -> Result<Self, RuntimeConfigError> {
        let value: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            RuntimeConfigError::Invalid(format!("not valid TOML: {}", e.message()))
        })?;
        let config: RuntimeConfig = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| {
                RuntimeConfigError::Invalid(format!(
                    "key '{}': {}",
                    e.path(),
                    first_line(&e.inner().to_string())
                ))
            })?;
        for (label, store) in &config.key_value_store {
            store.check(label)?;
        }
        for (name, client) in &config.messaging {
            client.check(name)?;
        }
        Ok(config)
    }

    /// The backend of a store label (embedded when not configured).
    pub fn store(&self, label: &str) -> StoreConfig {
        self.key_value_store.get(label).cloned().unwrap_or_default()
    }

    /// The backend of a messaging client (embedded when not configured).
    pub fn messaging_client(&self, name: &str) -> MessagingConfig {
        self.messaging.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{dapr, embedded, redis};

    fn error(text: &str) -> String {
        RuntimeConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_file_means_embedded_everything() {
        let rc = RuntimeConfig::parse("").unwrap();
        assert_eq!(rc.store("default"), StoreConfig::default());
        assert_eq!(
            rc.messaging_client("bus"),
            MessagingConfig::Embedded(embedded::MessagingSettings::default())
        );
    }

    #[test]
    fn the_delivery_policy_is_read() {
        let rc = RuntimeConfig::parse(
            "[messaging.bus]\ntype = \"embedded\"\nmax_attempts = 3\ninitial_backoff_ms = 100\n",
        )
        .unwrap();
        assert_eq!(
            rc.messaging_client("bus"),
            MessagingConfig::Embedded(embedded::MessagingSettings {
                max_attempts: 3,
                initial_backoff_ms: 100
            })
        );
    }

    #[test]
    fn redis_backends_are_read_and_their_keys_checked() {
        let rc = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://r:6379\"\n\
             [messaging.bus]\ntype = \"redis\"\nurl = \"redis://r:6379\"\nmax_len = 10\nvisibility_timeout_ms = 500\n",
        )
        .unwrap();
        assert_eq!(
            rc.store("default"),
            StoreConfig::Redis(redis::StoreSettings {
                url: "redis://r:6379".into()
            })
        );
        let MessagingConfig::Redis(bus) = rc.messaging_client("bus") else {
            panic!("bus is on redis");
        };
        assert_eq!(
            (bus.max_len, bus.visibility_timeout_ms),
            (Some(10), Some(500))
        );

        let e = error("[messaging.bus]\ntype = \"redis\"\n");
        assert!(e.contains("messaging.bus") && e.contains("url"), "{e}");
        let e = error("[key_value_store.default]\ntype = \"redis\"\n");
        assert!(e.contains("key_value_store.default"), "{e}");
        let e =
            error("[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://r\"\nport = 1\n");
        assert!(
            e.contains("key_value_store.default") && e.contains("port"),
            "{e}"
        );
        let e = error("[key_value_store.default]\ntype = \"redis\"\nurl = \"http://r:6379\"\n");
        assert!(e.contains("key_value_store.default.url"), "{e}");
        let e = error("[messaging.bus]\ntype = \"embedded\"\nmax_len = 5\n");
        assert!(e.contains("messaging.bus") && e.contains("max_len"), "{e}");
        let e = error("[messaging.bus]\ntype = \"redis\"\nurl = \"redis://r\"\nmax_len = 0\n");
        assert!(e.contains("messaging.bus") && e.contains("positive"), "{e}");
    }

    #[test]
    fn dapr_backends_are_read() {
        let rc = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"dapr\"\nstore = \"statestore\"\n\
             [messaging.product-pubsub]\ntype = \"dapr\"\npubsub = \"product-pubsub\"\n",
        )
        .unwrap();
        assert_eq!(
            rc.store("default"),
            StoreConfig::Dapr(dapr::StoreSettings {
                store: "statestore".into()
            })
        );
        let MessagingConfig::Dapr(bus) = rc.messaging_client("product-pubsub") else {
            panic!("product-pubsub is on dapr");
        };
        assert_eq!(bus.pubsub.as_deref(), Some("product-pubsub"));
        let e = error("[key_value_store.default]\ntype = \"dapr\"\n");
        assert!(e.contains("key_value_store.default"), "{e}");
        let e = error("[messaging.bus]\ntype = \"embedded\"\npubsub = \"x\"\n");
        assert!(e.contains("messaging.bus") && e.contains("pubsub"), "{e}");
    }

    #[test]
    fn unknown_backends_are_named() {
        let e = error("[key_value_store.default]\ntype = \"cassandra\"\n");
        assert!(
            e.contains("key_value_store.default") && e.contains("cassandra"),
            "{e}"
        );
    }
}
