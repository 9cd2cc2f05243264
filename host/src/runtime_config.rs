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
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The whole runtime config.
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

/// Backend of one key-value store label.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// The SQLite database in the data directory.
    Embedded,
}

/// Backend and delivery policy of one messaging client.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MessagingConfig {
    /// Which backend carries the messages (`type = "embedded"`).
    #[serde(rename = "type")]
    pub backend: MessagingBackend,
    /// Delivery attempts before a message goes to `<topic>.deadletter`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each failure (capped at 30 s).
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
}

/// The backend of a messaging client.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MessagingBackend {
    /// A durable queue in the embedded database, delivered by the host's dispatcher.
    Embedded,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff_ms() -> u64 {
    200
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            backend: MessagingBackend::Embedded,
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
        }
    }
}

impl MessagingConfig {
    /// Backoff before attempt `attempt + 1`, after `attempt` failures.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        Duration::from_millis(ms.min(30_000))
    }
}

impl RuntimeConfig {
    /// Reads a runtime config file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "{}: cannot read the runtime config file ({e}); check --runtime-config-file",
                path.display()
            )
        })?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses runtime config text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
        serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
            format!(
                "key '{}': {}; see the runtime config section of the README",
                e.path(),
                first_line(&e.inner().to_string())
            )
        })
    }

    /// The backend of a store label (embedded when not configured).
    pub fn store(&self, label: &str) -> StoreConfig {
        self.key_value_store
            .get(label)
            .cloned()
            .unwrap_or(StoreConfig::Embedded)
    }

    /// The backend of a messaging client (embedded when not configured).
    pub fn messaging_client(&self, name: &str) -> MessagingConfig {
        self.messaging.get(name).cloned().unwrap_or_default()
    }
}

/// toml's messages end with a second line repeating the path; keep one line.
pub(crate) fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_embedded_everything() {
        let rc = RuntimeConfig::parse("").unwrap();
        assert_eq!(rc.store("default"), StoreConfig::Embedded);
        assert_eq!(rc.messaging_client("bus").max_attempts, 5);
    }

    #[test]
    fn delivery_policy_is_read_and_backoff_doubles() {
        let rc = RuntimeConfig::parse(
            "[messaging.bus]\ntype = \"embedded\"\nmax_attempts = 3\ninitial_backoff_ms = 100\n",
        )
        .unwrap();
        let bus = rc.messaging_client("bus");
        assert_eq!(bus.max_attempts, 3);
        assert_eq!(bus.backoff(1), Duration::from_millis(100));
        assert_eq!(bus.backoff(3), Duration::from_millis(400));
        assert_eq!(bus.backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn unknown_backends_are_named() {
        let e =
            RuntimeConfig::parse("[key_value_store.default]\ntype = \"cassandra\"\n").unwrap_err();
        assert!(e.contains("key_value_store.default"), "{e}");
    }
}
