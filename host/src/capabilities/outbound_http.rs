//! `wasi:http/outgoing-handler` policy, plugged into wasmtime-wasi-http as
//! its `send_request` hook: destinations outside `allowed_outbound_hosts`
//! are refused before any connection, `http://<id>.spin.internal` goes to
//! [`ServiceChaining`] (in-process, or Dapr service invocation), anything
//! else goes out over the network with bounded timeouts.

use crate::manifest::{AllowedHosts, OutboundTarget};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The host suffix of Spin's local service chaining.
pub const CHAINING_SUFFIX: &str = ".spin.internal";

/// Chained calls deeper than this are refused as a loop.
pub const MAX_CHAIN_DEPTH: u32 = 8;

/// Connect timeout when the guest sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to the first response byte when the guest sets none.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time between response bytes when the guest sets none.
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// A boxed response future, as the hook returns it.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, Error>> + Send>>;

/// Where `http://<component>.spin.internal` requests go: the HTTP trigger
/// runs the component in process when this process runs it, else hands
/// the request to the fallback a backend supplies (Dapr service
/// invocation), which implements this trait too.
pub trait ServiceChaining: Send + Sync {
    /// Sends `request` to `component`; `depth` counts the chain so far.
    /// Errors are `wasi:http` error codes the guest sees
    /// (`destination-not-found` when nothing serves the component).
    fn call(&self, component: &str, request: http::Request<WasiBody>, depth: u32)
    -> ResponseFuture;
}

/// The per-instance outbound HTTP policy.
pub struct OutboundHttp {
    component: Arc<str>,
    allowed: Arc<AllowedHosts>,
    chaining: Arc<dyn ServiceChaining>,
    depth: u32,
    traceparent: Option<String>,
}

impl OutboundHttp {
    /// `depth` is how many chained calls led to this instance; `traceparent`
    /// is the instance's trace context, continued on outgoing requests.
    pub fn new(
        component: Arc<str>,
        allowed: Arc<AllowedHosts>,
        chaining: Arc<dyn ServiceChaining>,
        depth: u32,
        traceparent: Option<String>,
    ) -> Self {
        OutboundHttp {
            component,
            allowed,
            chaining,
            depth,
            traceparent,
        }
    }
}

type HookOutput = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

fn no_io() -> Box<dyn Future<Output = Result<(), Error>> + Send> {
    Box::new(async { Ok(()) })
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> HookOutput {
        drop(fut);
        let mut request = request;
        let call = crate::telemetry::spans::outbound_call(&self.component, &mut request);
        crate::trace::continue_in(request.headers_mut(), self.traceparent.as_deref());
        let Some(target) = OutboundTarget::from_uri(request.uri()) else {
            return Box::new(async { Err(Error::HttpRequestUriInvalid) });
        };
        if !self.allowed.allows(&target) {
            tracing::warn!(
                component = %self.component,
                destination = %format!("{}://{}:{}", target.scheme, target.host, target.port),
                allowed = ?self.allowed.entries(),
                "outbound request refused: add the destination to allowed_outbound_hosts of [component.{}] in spin.toml",
                self.component
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        if let Some(callee) = target.host.strip_suffix(CHAINING_SUFFIX) {
            if self.depth >= MAX_CHAIN_DEPTH {
                return Box::new(async { Err(Error::LoopDetected) });
            }
            let response = self.chaining.call(callee, request, self.depth + 1);
            return Box::new(call.run(async move { Ok((response.await?, no_io())) }));
        }
        let options = RequestOptions {
            connect_timeout: options
                .and_then(|o| o.connect_timeout)
                .or(Some(CONNECT_TIMEOUT)),
            first_byte_timeout: options
                .and_then(|o| o.first_byte_timeout)
                .or(Some(FIRST_BYTE_TIMEOUT)),
            between_bytes_timeout: options
                .and_then(|o| o.between_bytes_timeout)
                .or(Some(BETWEEN_BYTES_TIMEOUT)),
        };
        Box::new(call.run(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        }))
    }
}
