//! Service invocation: the chaining fallback the Dapr backend supplies.
//! A chained call (`http://<component>.spin.internal/...`) to a component
//! this process does not run goes to `/v1.0/invoke/{app_id}/method/{path}`
//! with method, headers, body and status passed through (the Dapr facts
//! are in `docs/dapr-reference.md`; the callee's side is
//! [`super::app_channel`]).

use super::client::{self, DaprClient, encode_segment};
use crate::capabilities::outbound_http::{ResponseFuture, ServiceChaining};
use crate::manifest::AppManifest;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Time a service invocation may take end to end.
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request or response body relayed through service invocation.
const MAX_INVOKE_BODY: usize = 16 << 20;

/// Sends chained calls through the sidecar.
pub struct DaprInvocation {
    client: DaprClient,
    /// Dapr app id of each component of the manifest.
    app_ids: Arc<BTreeMap<String, String>>,
}

impl DaprInvocation {
    /// Invocations of `manifest`'s components, by their Dapr app ids.
    pub fn new(client: DaprClient, manifest: &AppManifest) -> Self {
        let app_ids = manifest
            .components
            .iter()
            .map(|(id, c)| (id.clone(), c.dapr_app_id().to_string()))
            .collect();
        DaprInvocation {
            client,
            app_ids: Arc::new(app_ids),
        }
    }
}

impl ServiceChaining for DaprInvocation {
    /// Invokes the Dapr app id of a component of the manifest. A chained
    /// call to any other name (`http://other.spin.internal`, which
    /// `http://*.spin.internal` lets through the outbound check) is refused
    /// with `HttpRequestDenied` and a log line saying what to do: Spin
    /// expands that wildcard to the app's components only, and invoking an
    /// arbitrary app id would let a component reach any app in the Dapr
    /// namespace.
    fn call(&self, component: &str, request: Request<WasiBody>, _depth: u32) -> ResponseFuture {
        let Some(app_id) = self.app_ids.get(component).cloned() else {
            tracing::warn!(
                callee = component,
                known = ?self.app_ids.keys().collect::<Vec<_>>(),
                "chained call refused: 'http://{component}.spin.internal' names no component of the manifest, so it is not invoked through Dapr; add [component.{component}] to spin.toml (with tool.wasmshop.dapr_app_id if its Dapr app id differs) or call one of the listed components"
            );
            return Box::pin(async { Err(HttpError::HttpRequestDenied) });
        };
        let client = self.client.clone();
        Box::pin(async move { invoke(&client, &app_id, request).await })
    }
}

/// Sends `request` to `app_id`'s `path` and relays the answer.
async fn invoke(
    client: &DaprClient,
    app_id: &str,
    request: Request<WasiBody>,
) -> Result<Response<WasiBody>, HttpError> {
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(INVOKE_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(HttpError::HttpRequestBodySize(None)),
    };
    if body.len() > MAX_INVOKE_BODY {
        return Err(HttpError::HttpRequestBodySize(Some(body.len() as u64)));
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = format!(
        "/v1.0/invoke/{}/method/{}",
        encode_segment(app_id),
        path_and_query.trim_start_matches('/')
    );
    let mut headers = parts.headers;
    for h in [
        http::header::HOST,
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
    ] {
        headers.remove(h);
    }
    headers.remove(client::TOKEN_HEADER);
    let r = client
        .call(parts.method.clone(), &path, headers, body, INVOKE_TIMEOUT)
        .await
        .map_err(|e| {
            tracing::warn!(app_id, error = %e, "service invocation failed");
            HttpError::DestinationUnavailable
        })?;
    if r.body.len() > MAX_INVOKE_BODY {
        return Err(HttpError::HttpResponseBodySize(Some(r.body.len() as u64)));
    }
    let mut response = Response::new(
        Full::new(r.body)
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = r.status;
    *response.headers_mut() = r.headers;
    for h in [http::header::CONNECTION, http::header::TRANSFER_ENCODING] {
        response.headers_mut().remove(h);
    }
    Ok(response)
}
