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
//! max_len = 100000              # stream length bound (MAXLEN ~)
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
    /// A Redis server, shared by every replica of the app.
    Redis {
        /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
        url: String,
    },
    /// A Dapr state store component, through the sidecar (see `backends::dapr`).
    Dapr {
        /// The state store component's name (`statestore`).
        store: String,
    },
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
    /// Redis only: the server (`redis://host:port`).
    #[serde(default)]
    pub url: Option<String>,
    /// Redis only: approximate bound of each topic's stream (`XADD MAXLEN ~`);
    /// the oldest entries are trimmed even if a slow subscriber has not read them.
    #[serde(default)]
    pub max_len: Option<u64>,
    /// Redis only: how long a delivery may stay unacknowledged before another
    /// consumer takes it over (the holder is presumed dead). Keep it above
    /// the request timeout and the longest retry backoff.
    #[serde(default)]
    pub visibility_timeout_ms: Option<u64>,
    /// Dapr only: the pub/sub component (default: the client's name).
    #[serde(default)]
    pub pubsub: Option<String>,
}

/// The backend of a messaging client.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MessagingBackend {
    /// A durable queue in the embedded database, delivered by the host's dispatcher.
    Embedded,
    /// Redis Streams with one consumer group per subscribing component.
    Redis,
    /// Dapr pub/sub through the sidecar; Dapr delivers through the app channel.
    Dapr,
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
            url: None,
            max_len: None,
            visibility_timeout_ms: None,
            pubsub: None,
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
        let config: RuntimeConfig = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| {
                format!(
                    "key '{}': {}; see the runtime config section of the README",
                    e.path(),
                    first_line(&e.inner().to_string())
                )
            })?;
        config.check_redis_settings()?;
        Ok(config)
    }

    /// Redis-only messaging keys: required with `type = "redis"`, refused
    /// elsewhere (a typo'd backend must not silently ignore them).
    fn check_redis_settings(&self) -> Result<(), String> {
        for (name, m) in &self.messaging {
            let redis = m.backend == MessagingBackend::Redis;
            if redis && m.url.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "key 'messaging.{name}.url': missing; a redis messaging client needs url = \"redis://host:port\""
                ));
            }
            if let (true, Some(url)) = (redis, &m.url) {
                check_redis_url(url, &format!("messaging.{name}.url"))?;
            }
            if !redis {
                for (key, set) in [
                    ("url", m.url.is_some()),
                    ("max_len", m.max_len.is_some()),
                    ("visibility_timeout_ms", m.visibility_timeout_ms.is_some()),
                ] {
                    if set {
                        return Err(format!(
                            "key 'messaging.{name}.{key}': only applies to type = \"redis\"; remove it or change the type"
                        ));
                    }
                }
            }
            if m.pubsub.is_some() && m.backend != MessagingBackend::Dapr {
                return Err(format!(
                    "key 'messaging.{name}.pubsub': only applies to type = \"dapr\"; remove it or change the type"
                ));
            }
            if m.max_len == Some(0) || m.visibility_timeout_ms == Some(0) {
                return Err(format!(
                    "key 'messaging.{name}': max_len and visibility_timeout_ms must be positive"
                ));
            }
        }
        for (label, s) in &self.key_value_store {
            if let StoreConfig::Redis { url } = s {
                check_redis_url(url, &format!("key_value_store.{label}.url"))?;
            }
        }
        Ok(())
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

/// A Redis URL the client accepts (parsing only, no connection).
fn check_redis_url(url: &str, key: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    url.into_connection_info().map(|_| ()).map_err(|e| {
        format!("key '{key}': '{url}' is not a Redis URL ({e}); use \"redis://host:port\"")
    })
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
    fn redis_backends_are_read_and_their_keys_checked() {
        let rc = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://r:6379\"\n\
             [messaging.bus]\ntype = \"redis\"\nurl = \"redis://r:6379\"\nmax_len = 10\nvisibility_timeout_ms = 500\n",
        )
        .unwrap();
        assert_eq!(
            rc.store("default"),
            StoreConfig::Redis {
                url: "redis://r:6379".into()
            }
        );
        let bus = rc.messaging_client("bus");
        assert_eq!(bus.backend, MessagingBackend::Redis);
        assert_eq!(
            (bus.max_len, bus.visibility_timeout_ms),
            (Some(10), Some(500))
        );

        let e = RuntimeConfig::parse("[messaging.bus]\ntype = \"redis\"\n").unwrap_err();
        assert!(e.contains("messaging.bus.url"), "{e}");
        let e = RuntimeConfig::parse("[key_value_store.default]\ntype = \"redis\"\n").unwrap_err();
        assert!(e.contains("key_value_store.default"), "{e}");
        let e = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://r\"\nport = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("key_value_store.default"), "{e}");
        let e = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"http://r:6379\"\n",
        )
        .unwrap_err();
        assert!(e.contains("key_value_store.default.url"), "{e}");
        let e = RuntimeConfig::parse("[messaging.bus]\ntype = \"embedded\"\nmax_len = 5\n")
            .unwrap_err();
        assert!(e.contains("messaging.bus.max_len"), "{e}");
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
            StoreConfig::Dapr {
                store: "statestore".into()
            }
        );
        let bus = rc.messaging_client("product-pubsub");
        assert_eq!(bus.backend, MessagingBackend::Dapr);
        assert_eq!(bus.pubsub.as_deref(), Some("product-pubsub"));
        let e = RuntimeConfig::parse("[key_value_store.default]\ntype = \"dapr\"\n").unwrap_err();
        assert!(e.contains("key_value_store.default"), "{e}");
        let e = RuntimeConfig::parse("[messaging.bus]\ntype = \"embedded\"\npubsub = \"x\"\n")
            .unwrap_err();
        assert!(e.contains("messaging.bus.pubsub"), "{e}");
    }

    #[test]
    fn unknown_backends_are_named() {
        let e =
            RuntimeConfig::parse("[key_value_store.default]\ntype = \"cassandra\"\n").unwrap_err();
        assert!(e.contains("key_value_store.default"), "{e}");
    }
}
