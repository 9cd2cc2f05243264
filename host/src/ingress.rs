//! What a backend may do on the app's HTTP listener, before and after
//! the public routes: answer requests addressed to it (Dapr's app
//! channel), refuse requests that claim to come from it without proof,
//! and decide about requests no public route covers (internal endpoints
//! reached by service invocation). The HTTP trigger asks every backend's
//! [`Ingress`] in turn; every method has a default that leaves the
//! request alone, so a backend implements only what it needs.

use async_trait::async_trait;
use http::{Request, Response};
use hyper::body::Incoming;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A response the host makes itself.
pub type HostResponse = Response<HyperOutgoingBody>;

/// What the listener knows about the components this process runs, for
/// the decisions an [`Ingress`] makes (implemented by the app).
pub trait LocalComponents: Send + Sync {
    /// Whether this process runs `component` and it handles HTTP.
    fn serves_http(&self, component: &str) -> bool;
    /// Among `candidates` (components run here), the one whose routes
    /// share the longest literal prefix with `path`; `None` on a tie or
    /// when none shares any.
    fn component_below_routes<'a>(&self, candidates: &[&'a str], path: &str) -> Option<&'a str>;
}

/// What becomes of a request that no public route covers.
pub enum Unrouted {
    /// Serve it with this component (as a chained call: its routes do not
    /// restrict it).
    Serve(String),
    /// Answer this (401 bad token, 403 caller not allowed).
    Refuse(HostResponse),
    /// Answer 404 as to any public request; the text, when there is one,
    /// says why the request was not served, for the caller's operator.
    NotFound(Option<String>),
}

/// A backend's hooks on the app's HTTP listener. Probes (`/healthz`,
/// `/readyz`) are answered before any hook runs.
#[async_trait]
pub trait Ingress: Send + Sync {
    /// Answers a request meant for the backend, or hands it back (`Err`)
    /// for the next hook and then the public routes. MUST hand back
    /// every request it does not recognise. A hook that reads the body
    /// MUST read it with the
    /// [`crate::trigger::http::front_door::BodyReader`] in the request's
    /// extensions (size limit, deadline, shared memory budget), before it
    /// takes an instance.
    async fn intercept(
        &self,
        request: Request<Incoming>,
    ) -> Result<HostResponse, Request<Incoming>> {
        Err(request)
    }

    /// Decides about a request whose path no public route covers; `None`
    /// leaves it to the next hook (and finally a 404).
    fn unrouted(
        &self,
        _request: &Request<Incoming>,
        _local: &dyn LocalComponents,
    ) -> Option<Unrouted> {
        None
    }
}
