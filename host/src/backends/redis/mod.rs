//! The Redis backend: key-value in hashes driven by Lua scripts, messaging
//! on Redis Streams with one consumer group per subscribing component.
//!
//! Every call is bounded (connect 1 s, answer 2 s) so a request that needs
//! an unreachable Redis fails fast with an "unavailable" error (a 503 for
//! the client) instead of hanging; the connection manager reconnects on
//! the next call, so the host recovers by itself when Redis returns.

mod keyvalue;
mod messaging;

pub use keyvalue::RedisKeyValue;
pub use messaging::{RedisBroker, RedisConsumer};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use std::future::Future;
use std::time::Duration;

/// Longest wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one answer (beyond any server-side blocking time).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a Redis call failed, before it becomes a capability's error type.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Redis is unreachable or did not answer in time; retrying later may work.
    Unavailable(String),
    /// Redis answered with an error.
    Other(String),
}

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
    pub fn open(url: &str, setting: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| {
            format!("{setting}: '{url}' is not a valid Redis URL ({e}); use redis://host:port")
        })?;
        let address = client.get_connection_info().addr().to_string();
        let manager = ConnectionManager::new_lazy_with_config(
            client.clone(),
            Self::manager_config(RESPONSE_TIMEOUT),
        )
        .map_err(|e| format!("{setting}: cannot set up the Redis connection to {address}: {e}"))?;
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
    fn dedicated(&self, blocking: Duration) -> Result<RedisConn, String> {
        let manager = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            Self::manager_config(RESPONSE_TIMEOUT + blocking),
        )
        .map_err(|e| format!("cannot set up a Redis connection to {}: {e}", self.address))?;
        Ok(RedisConn {
            client: self.client.clone(),
            manager,
            address: self.address.clone(),
        })
    }

    /// Runs one command (or script, or pipeline) with a hard time bound.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Failure>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(RESPONSE_TIMEOUT + Duration::from_millis(500), f)
            .await
    }

    async fn call_within<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, Failure>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(limit, f(self.manager.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(e)),
            Err(_) => Err(Failure::Unavailable(format!(
                "Redis at {} did not answer within {limit:?}; check that it is running and reachable, then retry",
                self.address
            ))),
        }
    }

    /// Server-side errors are the command's fault; everything else
    /// (connection refused, reset, timeout, loading) means "not reachable now".
    fn classify(&self, e: RedisError) -> Failure {
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
            Failure::Other(format!(
                "Redis at {} refused the command: {e}",
                self.address
            ))
        } else {
            Failure::Unavailable(format!(
                "cannot reach Redis at {} ({e}); check that it is running and reachable, then retry",
                self.address
            ))
        }
    }

    /// `PING`, for `/readyz`.
    async fn ping(&self) -> Result<(), String> {
        self.call(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
            .map_err(|f| match f {
                Failure::Unavailable(m) | Failure::Other(m) => m,
            })
    }
}

/// The text of a failure, whatever its kind.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(m) | Failure::Other(m) => f.write_str(m),
        }
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

/// One connection per distinct Redis URL of the runtime config.
#[derive(Default)]
pub struct RedisConns(std::collections::BTreeMap<String, RedisConn>);

impl RedisConns {
    /// The connection to `url`, shared with earlier users of the same URL;
    /// `setting` names the runtime-config key for error messages.
    pub fn get(&mut self, url: &str, setting: &str) -> Result<RedisConn, String> {
        if let Some(c) = self.0.get(url) {
            return Ok(c.clone());
        }
        let c = RedisConn::open(url, setting)?;
        self.0.insert(url.to_string(), c.clone());
        Ok(c)
    }
}
