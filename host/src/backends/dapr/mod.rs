//! The Dapr backend: the host as a Dapr app next to its sidecar.
//! Key-value → state API ([`keyvalue`]); messaging → pub/sub
//! ([`messaging`]: publish, and deliveries daprd pushes through the app
//! channel); `http://<component>.spin.internal` of a component not run
//! here → service invocation ([`invoke`]); `APP_API_TOKEN` and the
//! internal endpoints on the app's listener ([`app_channel`]). The Dapr
//! API facts all of them rely on are in `docs/dapr-reference.md`.
//!
//! Dapr is in use when the runtime config names `type = "dapr"` for any
//! store or messaging client; only then does the host wait for the
//! sidecar, answer the app channel and route chained calls to it. The
//! `APP_API_TOKEN` check applies whenever the token is set.

pub mod app_channel;
pub mod client;
pub mod invoke;
pub mod keyvalue;
pub mod messaging;

use super::{BackendUnit, Contribution, OpenContext, StartupCheck};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::KeyValueBackend;
use crate::capabilities::messaging::MessageBroker;
use crate::manifest::AppManifest;
use async_trait::async_trait;
use client::DaprClient;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name errors and logs give this backend.
pub const NAME: &str = "dapr";

/// `[key_value_store.<label>] type = "dapr"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// The Dapr state store component's name (`statestore`).
    pub store: String,
}

/// `[messaging.<client>] type = "dapr"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// The Dapr pub/sub component (default: the client's name).
    #[serde(default)]
    pub pubsub: Option<String>,
    /// Accepted for compatibility with the other backends and not used:
    /// daprd retries deliveries per its resiliency policy.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Accepted and not used, as `max_attempts`.
    #[serde(default)]
    pub initial_backoff_ms: Option<u64>,
}

/// The Dapr backend's flags of `wasmshop up`.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "dapr-flags")]
pub struct Flags {
    /// With a Dapr backend: how long to wait at start-up for the sidecar
    /// (GET /v1.0/healthz/outbound) before giving up, in seconds.
    #[arg(
        long = "dapr-startup-timeout-secs",
        env = "WASMSHOP_DAPR_STARTUP_TIMEOUT_SECS",
        allow_negative_numbers = true,
        default_value_t = 60.0,
        value_parser = parse_startup_timeout_secs
    )]
    pub startup_timeout_secs: f64,

    /// With a Dapr backend and no APP_API_TOKEN: accept traffic that only
    /// the Dapr sidecar may send without proof that it comes from the
    /// sidecar: deliveries on the app channel (POST /dapr/events/...) and
    /// internal endpoints reached by service invocation (from callers the
    /// manifest allows). Without it, and without APP_API_TOKEN, both are
    /// refused. Only for an app port nothing but the sidecar can reach
    /// (local `dapr run`); set APP_API_TOKEN instead wherever you can.
    #[arg(
        long = "dapr-allow-unauthenticated",
        env = "WASMSHOP_DAPR_ALLOW_UNAUTHENTICATED"
    )]
    pub allow_unauthenticated: bool,

    /// Which requests need APP_API_TOKEN (when it is set): `dapr` (those
    /// that come, or claim to come, from the Dapr sidecar) or `all` (every
    /// request but the /healthz and /readyz probes, where only the sidecar
    /// reaches the port). `all` without APP_API_TOKEN refuses to start.
    #[arg(
        long = "app-api-token-scope",
        env = "WASMSHOP_APP_API_TOKEN_SCOPE",
        default_value = "dapr",
        value_parser = parse_token_scope
    )]
    pub token_scope: TokenScope,
}

/// Which requests need `APP_API_TOKEN` (`--app-api-token-scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenScope {
    /// Requests that come, or claim to come, from the sidecar.
    #[default]
    Dapr,
    /// Every request but the probes.
    All,
}

/// Parses `--app-api-token-scope` when the command line is read: an
/// unknown value, or `all` while `APP_API_TOKEN` is unset (a setting that
/// would check nothing), is one line and exit code 2.
fn parse_token_scope(text: &str) -> Result<TokenScope, String> {
    scope_with_token(text, app_channel::app_token().is_some())
}

fn scope_with_token(text: &str, token_set: bool) -> Result<TokenScope, String> {
    match text.trim() {
        "" | "dapr" => Ok(TokenScope::Dapr),
        "all" if token_set => Ok(TokenScope::All),
        "all" => Err(
            "'all' requires APP_API_TOKEN, which is not set: set the token daprd sends (APP_API_TOKEN), or use 'dapr'".into(),
        ),
        other => Err(format!("'{other}' is not a token scope; give 'dapr' or 'all'")),
    }
}

/// Longest `--dapr-startup-timeout-secs` accepted: a day. Longer is a
/// typo, and an unbounded value would not fit a `Duration`.
const MAX_STARTUP_TIMEOUT_SECS: f64 = 86_400.0;

/// Parses `--dapr-startup-timeout-secs` when the command line is read, so
/// a bad value is one clear line and exit code 2 like every other flag.
fn parse_startup_timeout_secs(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds; give e.g. 60"))?;
    if !(0.0..=MAX_STARTUP_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "{text} is out of range; give a number of seconds from 0 to {MAX_STARTUP_TIMEOUT_SECS}"
        ));
    }
    Ok(secs)
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            startup_timeout_secs: 60.0,
            allow_unauthenticated: false,
            token_scope: TokenScope::Dapr,
        }
    }
}

/// The Dapr backend of an app. The sidecar client is made on first use,
/// so a bad `DAPR_HTTP_PORT` only matters when Dapr is configured.
pub struct Dapr {
    manifest: Arc<AppManifest>,
    flags: Flags,
    client: Option<DaprClient>,
    /// Pub/sub component of each messaging client served here.
    pubsubs: BTreeMap<String, String>,
}

impl Dapr {
    fn client(&mut self) -> Result<DaprClient, BackendError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = DaprClient::from_env()?;
        self.client = Some(c.clone());
        Ok(c)
    }
}

impl BackendUnit for Dapr {
    type StoreConfig = StoreSettings;
    type MessagingConfig = MessagingSettings;
    type Args = Flags;

    fn open(context: &OpenContext<'_>, flags: &Flags) -> Result<Self, BackendError> {
        if Duration::try_from_secs_f64(flags.startup_timeout_secs).is_err() {
            return Err(BackendError::rejected(
                NAME,
                "--dapr-startup-timeout-secs must be a non-negative number of seconds",
            ));
        }
        Ok(Dapr {
            manifest: Arc::new(context.manifest.clone()),
            flags: flags.clone(),
            client: None,
            pubsubs: BTreeMap::new(),
        })
    }

    fn store(
        &mut self,
        _label: &str,
        settings: &StoreSettings,
    ) -> Result<Arc<dyn KeyValueBackend>, BackendError> {
        Ok(Arc::new(keyvalue::DaprKeyValue::new(
            self.client()?,
            &settings.store,
        )))
    }

    fn broker(
        &mut self,
        client: &str,
        settings: &MessagingSettings,
    ) -> Result<Arc<dyn MessageBroker>, BackendError> {
        let pubsub = settings
            .pubsub
            .clone()
            .unwrap_or_else(|| client.to_string());
        self.pubsubs.insert(client.to_string(), pubsub.clone());
        Ok(Arc::new(messaging::DaprBroker::new(
            self.client()?,
            &pubsub,
        )))
    }

    fn finish(self) -> Contribution {
        let guard = Arc::new(app_channel::AppChannel::new(
            self.manifest.clone(),
            self.client.is_some(),
            self.flags.allow_unauthenticated,
            self.flags.token_scope == TokenScope::All,
        ));
        if guard.runs_open() {
            tracing::warn!(
                "the Dapr app channel is open: no APP_API_TOKEN is set and --dapr-allow-unauthenticated was given, so anyone who reaches this port can deliver events (POST /dapr/events/...) and call internal endpoints as the sidecar would; set APP_API_TOKEN for daprd and this host unless only the sidecar can reach the port"
            );
        } else if self.client.is_some() && app_channel::app_token().is_none() {
            tracing::warn!(
                "no APP_API_TOKEN is set: Dapr deliveries (POST /dapr/events/...) and internal endpoints will be refused (401 / 404); set the same APP_API_TOKEN for daprd and this host, or pass --dapr-allow-unauthenticated where only the sidecar reaches this port"
            );
        }
        let Some(client) = self.client else {
            // Not in use: only the APP_API_TOKEN check remains.
            return Contribution {
                ingress: vec![guard],
                ..Contribution::default()
            };
        };
        let receiver = Arc::new(messaging::DaprReceiver::new(self.pubsubs));
        let timeout = Duration::from_secs_f64(self.flags.startup_timeout_secs);
        Contribution {
            receiver: Some(receiver.clone()),
            ingress: vec![guard, receiver],
            invocation: Some(Arc::new(invoke::DaprInvocation::new(
                client.clone(),
                &self.manifest,
            ))),
            startup: Some(Arc::new(Sidecar { client, timeout })),
        }
    }
}

/// Waits for the sidecar before the host listens.
struct Sidecar {
    client: DaprClient,
    timeout: Duration,
}

#[async_trait]
impl StartupCheck for Sidecar {
    /// Waits until `GET /v1.0/healthz/outbound` succeeds. Not
    /// `/v1.0/healthz`, which only turns healthy once the app's port
    /// accepts connections, so waiting on it would deadlock (see
    /// `docs/dapr-reference.md`).
    async fn wait_until_ready(&self) -> Result<(), BackendError> {
        let started = Instant::now();
        let timeout = self.timeout;
        tracing::info!(
            sidecar = self.client.base(),
            timeout_secs = timeout.as_secs_f64(),
            "waiting for the Dapr sidecar (GET /v1.0/healthz/outbound)"
        );
        loop {
            let last_error = match self.client.outbound_healthy().await {
                Ok(()) => {
                    tracing::info!(
                        sidecar = self.client.base(),
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the Dapr sidecar is ready"
                    );
                    return Ok(());
                }
                Err(e) => e,
            };
            if started.elapsed() >= timeout {
                return Err(BackendError::unavailable(
                    NAME,
                    format!(
                        "gave up waiting for the Dapr sidecar after {timeout:?}: {}; start daprd (dapr run --dapr-http-port ...), or raise --dapr-startup-timeout-secs",
                        last_error.message()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_timeout_is_range_checked_when_the_flags_are_read() {
        assert_eq!(parse_startup_timeout_secs("0.5"), Ok(0.5));
        assert_eq!(parse_startup_timeout_secs("86400"), Ok(86_400.0));
        for bad in ["-5", "1e30", "NaN", "inf", "abc", ""] {
            let err = parse_startup_timeout_secs(bad).unwrap_err();
            assert!(err.contains("seconds"), "{bad}: {err}");
        }
    }

    #[test]
    fn token_scope_all_needs_a_token_and_unknown_scopes_are_refused() {
        assert_eq!(scope_with_token("dapr", false), Ok(TokenScope::Dapr));
        assert_eq!(scope_with_token("all", true), Ok(TokenScope::All));
        let err = scope_with_token("all", false).unwrap_err();
        assert!(err.contains("APP_API_TOKEN"), "{err}");
        assert!(scope_with_token("everything", true).is_err());
    }
}
