//! The Dapr app channel's guard: what the host accepts on its listener
//! from, or in the name of, the sidecar. (Deliveries on the app channel
//! are answered by [`super::messaging::DaprReceiver`].)
//!
//! - `APP_API_TOKEN` (`docs/dapr-reference.md`):
//!   when set, Dapr sends it as `dapr-api-token` on every call to the app,
//!   and the host answers 401 (constant-time compare) to every request that
//!   comes, or claims to come, from the sidecar without it: anything under
//!   `/dapr/`, any request carrying `dapr-api-token`, and any request
//!   carrying `dapr-caller-app-id` (which daprd adds to service
//!   invocations). Plain requests are served: Azure Container Apps injects
//!   `APP_API_TOKEN` into Dapr-enabled apps while its ingress calls the
//!   same port directly (`docs/deployment.md`). Where the port is
//!   reachable only through Dapr, `WASMSHOP_APP_API_TOKEN_SCOPE=all`
//!   (`--app-api-token-scope all`) requires the token on every request
//!   except `GET`/`HEAD` of `/healthz` and `/readyz` (answered before this
//!   module runs); without a token that setting refuses to start. This
//!   check applies whenever `APP_API_TOKEN` is set, whether or not a store
//!   or client is on Dapr.
//! - Deny by default: in Dapr mode with no `APP_API_TOKEN`, nothing proves
//!   that a request under `/dapr/` comes from the sidecar, so deliveries
//!   (`POST /dapr/events/...`) are refused with 401 and change nothing,
//!   unless `--dapr-allow-unauthenticated` says the port is reachable from
//!   the sidecar alone. `GET /dapr/subscribe` stays answered: it changes
//!   nothing and lists only what `spin.toml` declares (the rules are in
//!   `docs/internal-endpoints.md`).
//! - Internal endpoints ([`AppChannel::unrouted`]): a path no public route covers
//!   (the product's reservations) reaches a component only through service
//!   chaining. Across processes that chaining is Dapr service invocation,
//!   so the host serves such a path only to invocations it can trust: the
//!   `APP_API_TOKEN` matches (or `--dapr-allow-unauthenticated` was given
//!   and no token is configured), and the `dapr-caller-app-id` daprd
//!   stamps is the app id of a component whose `allowed_outbound_hosts`
//!   admits `http://<target>.spin.internal`. The rules and answers are in
//!   `docs/internal-endpoints.md`.

use super::client::TOKEN_HEADER;
use crate::ingress::{HostResponse, Ingress, LocalComponents, Unrouted};
use crate::manifest::{AppManifest, ComponentSpec};
use crate::problem::problem;
use async_trait::async_trait;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use std::sync::{Arc, OnceLock};

/// Header daprd adds to service invocations: the calling app's id
/// (dapr/dapr `pkg/messaging/v1/util.go`, `CallerIDHeader`). daprd
/// overwrites whatever the caller sent in it, so it can be trusted on
/// requests that carry the `APP_API_TOKEN`.
const CALLER_HEADER: &str = "dapr-caller-app-id";
/// Header daprd adds to service invocations: the invoked app id
/// (`CalleeIDHeader`, same file).
const CALLEE_HEADER: &str = "dapr-callee-app-id";
/// Where daprd reads the app's subscriptions (`docs/dapr-reference.md`).
const SUBSCRIBE_PATH: &str = "/dapr/subscribe";

/// The `APP_API_TOKEN` this host expects from its sidecar, if one is set
/// (an empty value counts as unset).
pub fn app_token() -> Option<&'static str> {
    static TOKEN: OnceLock<Option<String>> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            std::env::var("APP_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        })
        .as_deref()
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The guard on the app's listener (one of the Dapr backend's [`Ingress`]
/// hooks, asked first).
pub struct AppChannel {
    manifest: Arc<AppManifest>,
    /// Whether any store or client is on Dapr: internal endpoints are
    /// served through Dapr only then.
    in_use: bool,
    /// `--dapr-allow-unauthenticated`.
    allow_unauthenticated: bool,
    /// `--app-api-token-scope all`: the token is required on every request.
    token_everywhere: bool,
}

impl AppChannel {
    /// The guard for `manifest`'s components. `in_use`: a store or client
    /// is on Dapr; `allow_unauthenticated`: `--dapr-allow-unauthenticated`;
    /// `token_everywhere`: `--app-api-token-scope all`.
    pub fn new(
        manifest: Arc<AppManifest>,
        in_use: bool,
        allow_unauthenticated: bool,
        token_everywhere: bool,
    ) -> Self {
        AppChannel {
            manifest,
            in_use,
            allow_unauthenticated,
            token_everywhere,
        }
    }

    /// Whether this host serves the Dapr app channel to anyone who reaches
    /// its port: Dapr is in use, no `APP_API_TOKEN` is set and
    /// `--dapr-allow-unauthenticated` was given.
    pub fn runs_open(&self) -> bool {
        self.in_use && app_token().is_none() && self.allow_unauthenticated
    }
}

/// Whether `req` carries the `APP_API_TOKEN` (constant-time compare).
fn has_token<B>(req: &Request<B>, expected: &str) -> bool {
    let mut given = req.headers().get_all(TOKEN_HEADER).iter();
    // Exactly one header: with two, a proxy and the app could each read
    // a different one, so a request carrying more is refused.
    match (given.next(), given.next()) {
        (Some(token), None) => constant_time_eq(token.as_bytes(), expected.as_bytes()),
        _ => false,
    }
}

#[async_trait]
impl Ingress for AppChannel {
    /// Refuses (401) a request that comes, or claims to come, from the
    /// sidecar without the `APP_API_TOKEN`, and, in Dapr mode without a
    /// token or `--dapr-allow-unauthenticated`, every request under
    /// `/dapr/` but `GET /dapr/subscribe`; hands back everything else.
    async fn intercept(&self, req: Request<Incoming>) -> Result<HostResponse, Request<Incoming>> {
        let path = req.uri().path();
        let on_app_channel = path.starts_with("/dapr/");
        let claims_dapr = on_app_channel
            || req.headers().contains_key(TOKEN_HEADER)
            || req.headers().contains_key(CALLER_HEADER);
        let subscribe = req.method() == http::Method::GET && path == SUBSCRIBE_PATH;
        match app_token() {
            Some(expected)
                if (claims_dapr || self.token_everywhere) && !has_token(&req, expected) =>
            {
                return Ok(bad_token());
            }
            Some(_) => {}
            None if self.in_use && on_app_channel && !self.allow_unauthenticated && !subscribe => {
                tracing::warn!(
                    method = %req.method(),
                    path,
                    "refused an unauthenticated request on the Dapr app channel: set APP_API_TOKEN for daprd and this host, or pass --dapr-allow-unauthenticated where only the sidecar reaches this port"
                );
                return Ok(problem(
                    StatusCode::UNAUTHORIZED,
                    "app-api-token-required",
                    "this host has no APP_API_TOKEN, so nothing proves that a request under /dapr/ comes from the Dapr sidecar and it is refused; set the same APP_API_TOKEN for daprd and this host, or start the host with --dapr-allow-unauthenticated where only the sidecar can reach its port",
                ));
            }
            None => {}
        }
        Err(req)
    }

    /// Decides about a request whose path no public route of this process
    /// covers (see the module docs and `docs/internal-endpoints.md`). Only
    /// in Dapr mode, and only for service invocations
    /// (`dapr-caller-app-id`), can the answer be anything but 404.
    fn unrouted(&self, req: &Request<Incoming>, local: &dyn LocalComponents) -> Option<Unrouted> {
        let path = req.uri().path();
        if !self.in_use || path.starts_with("/dapr/") {
            return None;
        }
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let caller = header(CALLER_HEADER)?;
        match app_token() {
            // `intercept` already refused a wrong token; checked again so
            // this rule does not depend on the order of the two.
            Some(expected) if !has_token(req, expected) => {
                return Some(Unrouted::Refuse(bad_token()));
            }
            Some(_) => {}
            None if self.allow_unauthenticated => {}
            None => {
                tracing::warn!(
                    caller,
                    path,
                    "refused an internal endpoint to an unauthenticated Dapr invocation: set APP_API_TOKEN for daprd and this host, or pass --dapr-allow-unauthenticated where only the sidecar reaches this port"
                );
                return Some(Unrouted::NotFound(Some(
                    "internal endpoints are served only to Dapr service invocations that prove they come from the sidecar; set APP_API_TOKEN for daprd and this host (or --dapr-allow-unauthenticated where only the sidecar reaches this port)".into(),
                )));
            }
        }
        let callee = header(CALLEE_HEADER);
        let targets: Vec<&str> = self
            .manifest
            .components
            .values()
            .filter(|c| local.serves_http(&c.id))
            .filter(|c| callee.is_none_or(|id| c.dapr_app_id() == id))
            .map(|c| c.id.as_str())
            .collect();
        if targets.is_empty() {
            return Some(Unrouted::NotFound(Some(format!(
                "no component with an HTTP handler and Dapr app id '{}' runs in this process",
                callee.unwrap_or("(any)")
            ))));
        }
        let callers: Vec<&ComponentSpec> =
            self.manifest.components_with_dapr_app_id(caller).collect();
        let allowed: Vec<&str> = targets
            .iter()
            .copied()
            .filter(|t| callers.iter().any(|c| c.may_chain_to(t)))
            .collect();
        let chosen = match allowed.as_slice() {
            [] => return Some(refuse_caller(caller, path, &callers, &targets)),
            [one] => *one,
            several => match local.component_below_routes(several, path) {
                Some(c) => c,
                None => {
                    return Some(Unrouted::NotFound(Some(format!(
                        "{path} could belong to any of {}, which all run in this process; give each its own tool.wasmshop.dapr_app_id",
                        several.join(", ")
                    ))));
                }
            },
        };
        Some(Unrouted::Serve(chosen.to_string()))
    }
}

/// The 403 for a caller no component of which may chain to `targets`.
fn refuse_caller(
    caller: &str,
    path: &str,
    callers: &[&ComponentSpec],
    targets: &[&str],
) -> Unrouted {
    let why = if callers.is_empty() {
        format!("no component of the manifest has Dapr app id '{caller}'")
    } else {
        format!(
            "none of its components ({}) lists {} in allowed_outbound_hosts",
            callers
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            targets
                .iter()
                .map(|t| format!("http://{t}.spin.internal"))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    };
    tracing::warn!(caller, path, "refused an internal endpoint: {why}");
    Unrouted::Refuse(problem(
        StatusCode::FORBIDDEN,
        "caller-not-allowed",
        format!(
            "Dapr app '{caller}' may not call {path} here: {why}; add the target to the caller's allowed_outbound_hosts in spin.toml if this call is intended"
        ),
    ))
}

fn bad_token() -> HostResponse {
    problem(
        StatusCode::UNAUTHORIZED,
        "invalid-app-api-token",
        "this request comes from, or claims to come from, the Dapr sidecar but lacks the APP_API_TOKEN in its dapr-api-token header (or carries more than one such header); check that daprd and the host share APP_API_TOKEN",
    )
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
    }
}
