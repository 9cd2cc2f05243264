//! The Redis backend: key-value in hashes driven by Lua scripts, messaging
//! on Redis Streams with one consumer group per subscribing component.
//!
//! Every call is bounded (connect 1 s, answer 2 s) so a request that needs
//! an unreachable Redis fails fast with an "unavailable" error (a 503 for
//! the client) instead of hanging; the connection manager reconnects on
//! the next call, so the host recovers by itself when Redis returns.

mod keyvalue;
mod messaging;

pub use keyvalue::{RedisKeyValue, RedisStore};
pub use messaging::{RedisBroker, RedisReceiver};

use super::{BackendUnit, ConfigError, Contribution, OpenContext};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::KeyValueBackend;
use crate::capabilities::messaging::MessageBroker;
use crate::capabilities::messaging::delivery::{self, DeliveryPolicy};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The name errors and logs give this backend.
pub const NAME: &str = "redis";

/// `[key_value_store.<label>] type = "redis"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
}

/// `[messaging.<client>] type = "redis"`: the server, the stream bound
/// and the delivery policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// The server (`redis://host:port`).
    pub url: String,
    /// Delivery attempts before a message goes to `<topic>.deadletter`.
    #[serde(default = "delivery::default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt in milliseconds; doubled after each
    /// failure (capped at 30 s).
    #[serde(default = "delivery::default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Entries of a topic's stream not yet acknowledged by every
    /// subscription's group; at the bound `send` is refused (the guest gets
    /// `error::connection`), and acknowledged entries are trimmed, never
    /// unread ones (docs/messaging.md). Default [`messaging::DEFAULT_MAX_LEN`].
    #[serde(default)]
    pub max_len: Option<u64>,
    /// How long a delivery may stay unacknowledged before another consumer
    /// takes it over (the holder is presumed dead), in milliseconds. Keep it
    /// above the request timeout and the longest retry backoff. Default
    /// [`messaging::DEFAULT_VISIBILITY_TIMEOUT`].
    #[serde(default)]
    pub visibility_timeout_ms: Option<u64>,
}

impl MessagingSettings {
    /// The delivery policy of these settings.
    pub fn policy(&self) -> DeliveryPolicy {
        DeliveryPolicy::new(self.max_attempts, self.initial_backoff_ms)
    }
}

/// The Redis backend has no flags of its own.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "redis-flags")]
pub struct Flags {}

/// The Redis backend of an app: one connection per distinct URL, shared
/// by the labels and clients that name it.
#[derive(Default)]
pub struct Redis {
    conns: BTreeMap<String, RedisConn>,
    /// Messaging clients served here, for the receiver.
    clients: BTreeMap<String, (RedisConn, MessagingSettings)>,
    /// Every subscription of the manifest: their consumer groups are made
    /// and kept whichever components this process runs.
    subscriptions: Vec<crate::capabilities::messaging::ComponentSubscription>,
}

impl Redis {
    /// The connection to `url`, shared with earlier users of the same URL;
    /// `setting` names the runtime-config key for error messages.
    fn conn(&mut self, url: &str, setting: &str) -> Result<RedisConn, BackendError> {
        if let Some(c) = self.conns.get(url) {
            return Ok(c.clone());
        }
        let c = RedisConn::open(url, setting)?;
        self.conns.insert(url.to_string(), c.clone());
        Ok(c)
    }
}

impl BackendUnit for Redis {
    type StoreConfig = StoreSettings;
    type MessagingConfig = MessagingSettings;
    type Args = Flags;

    fn check_store(key: &str, settings: &StoreSettings) -> Result<(), ConfigError> {
        check_url(&settings.url, &format!("{key}.url"))
    }

    fn check_messaging(key: &str, settings: &MessagingSettings) -> Result<(), ConfigError> {
        check_url(&settings.url, &format!("{key}.url"))?;
        if settings.max_len == Some(0) || settings.visibility_timeout_ms == Some(0) {
            return Err(ConfigError {
                key: key.to_string(),
                message: "max_len and visibility_timeout_ms must be positive".into(),
            });
        }
        Ok(())
    }

    fn open(context: &OpenContext<'_>, _flags: &Flags) -> Result<Self, BackendError> {
        Ok(Redis {
            subscriptions: crate::capabilities::messaging::manifest_subscriptions(context.manifest),
            ..Redis::default()
        })
    }

    fn store(
        &mut self,
        label: &str,
        settings: &StoreSettings,
    ) -> Result<Arc<dyn KeyValueBackend>, BackendError> {
        let conn = self.conn(&settings.url, &format!("key_value_store.{label}.url"))?;
        Ok(Arc::new(RedisKeyValue::new(conn)))
    }

    fn broker(
        &mut self,
        client: &str,
        settings: &MessagingSettings,
    ) -> Result<Arc<dyn MessageBroker>, BackendError> {
        let conn = self.conn(&settings.url, &format!("messaging.{client}.url"))?;
        self.clients
            .insert(client.to_string(), (conn.clone(), settings.clone()));
        let groups = messaging::topic_groups(&self.subscriptions, client);
        Ok(Arc::new(RedisBroker::new(conn, settings.max_len, groups)))
    }

    fn finish(self) -> Contribution {
        Contribution {
            receiver: (!self.clients.is_empty())
                .then(|| Arc::new(RedisReceiver::new(self.clients, self.subscriptions)) as _),
            ..Contribution::default()
        }
    }
}

/// A Redis URL the client accepts (parsing only, no connection).
fn check_url(url: &str, key: &str) -> Result<(), ConfigError> {
    use redis::IntoConnectionInfo;
    let problem = if url.is_empty() {
        Some("missing; write url = \"redis://host:port\"".to_string())
    } else {
        url.into_connection_info().err().map(|e| {
            format!(
                "'{}' is not a Redis URL ({e}); use \"redis://host:port\"",
                redact_url(url)
            )
        })
    };
    match problem {
        Some(message) => Err(ConfigError {
            key: key.to_string(),
            message,
        }),
        None => Ok(()),
    }
}

/// `url` with any password (and user name) in its authority replaced by
/// `***`, for messages: `redis://:***@host:6379`. Runtime-config URLs may
/// carry credentials, and nothing the host prints may show them.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = match credentials.split_once(':') {
                Some((user, _password)) => user,
                None => "",
            };
            let user = if user.is_empty() { "" } else { "***" };
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Longest wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one answer (beyond any server-side blocking time).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A reconnecting, multiplexed connection to one Redis server, shared by
/// every store label and messaging client configured with the same URL.
#[derive(Clone)]
pub struct RedisConn {
    client: redis::Client,
    manager: ConnectionManager,
    /// `host:port`, for messages (the URL may hold a password).
    address: String,
}

impl RedisConn {
    /// Prepares a connection without connecting, so the host starts (not
    /// ready) while Redis is down. `setting` names the runtime-config key
    /// for error messages.
    pub fn open(url: &str, setting: &str) -> Result<Self, BackendError> {
        let client = redis::Client::open(url).map_err(|e| {
            BackendError::rejected(
                NAME,
                format!(
                    "{setting}: '{}' is not a valid Redis URL ({e}); use redis://host:port",
                    redact_url(url)
                ),
            )
        })?;
        let address = client.get_connection_info().addr().to_string();
        let manager = ConnectionManager::new_lazy_with_config(
            client.clone(),
            Self::manager_config(RESPONSE_TIMEOUT),
        )
        .map_err(|e| {
            BackendError::unavailable(
                NAME,
                format!("{setting}: cannot set up the Redis connection to {address}: {e}"),
            )
        })?;
        Ok(RedisConn {
            client,
            manager,
            address,
        })
    }

    /// Reconnect once, quickly: callers get an error soon and the next
    /// call tries again, rather than everyone waiting on a long retry loop.
    fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    /// A separate connection for commands that block server-side
    /// (`XREADGROUP BLOCK`), which would stall everything multiplexed behind them.
    fn dedicated(&self, blocking: Duration) -> Result<RedisConn, BackendError> {
        let manager = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            Self::manager_config(RESPONSE_TIMEOUT + blocking),
        )
        .map_err(|e| {
            BackendError::unavailable(
                NAME,
                format!("cannot set up a Redis connection to {}: {e}", self.address),
            )
        })?;
        Ok(RedisConn {
            client: self.client.clone(),
            manager,
            address: self.address.clone(),
        })
    }

    /// Runs one command (or script, or pipeline) with a hard time bound.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(RESPONSE_TIMEOUT + Duration::from_millis(500), f)
            .await
    }

    async fn call_within<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(limit, f(self.manager.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(e)),
            Err(_) => Err(BackendError::unavailable(
                NAME,
                format!(
                    "Redis at {} did not answer within {limit:?}; check that it is running and reachable, then retry",
                    self.address
                ),
            )),
        }
    }

    /// Server-side errors are the command's fault; everything else
    /// (connection refused, reset, timeout, loading) means "not reachable now".
    fn classify(&self, e: RedisError) -> BackendError {
        let answered = match e.kind() {
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown,
            ) => false,
            ErrorKind::Server(_)
            | ErrorKind::Extension
            | ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType => true,
            _ => false,
        };
        if answered {
            BackendError::rejected(
                NAME,
                format!("Redis at {} refused the command: {e}", self.address),
            )
        } else {
            BackendError::unavailable(
                NAME,
                format!(
                    "cannot reach Redis at {} ({e}); check that it is running and reachable, then retry",
                    self.address
                ),
            )
        }
    }

    /// Runs one command with the bound of [`RedisConn::call`].
    async fn query<T: redis::FromRedisValue + Send>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, BackendError> {
        self.call(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// `PING`, for `/readyz`.
    async fn ping(&self) -> Result<(), BackendError> {
        self.call(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }
}

/// Escapes glob characters so a key prefix matches literally in `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn credentials_never_appear_in_a_redacted_url() {
        assert_eq!(
            redact_url("redis://:s3cret@cache:6380/0"),
            "redis://:***@cache:6380/0"
        );
        assert_eq!(
            redact_url("rediss://app:s3cret@cache.example.net:6380"),
            "rediss://***:***@cache.example.net:6380"
        );
        assert_eq!(redact_url("redis://s3cret@cache"), "redis://:***@cache");
        assert_eq!(redact_url("redis://p@ss:w@rd@h:1"), "redis://***:***@h:1");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
