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

use crate::capabilities::keyvalue::read_fence::{ReadFence, UncommittedRead};
use bytes::Bytes;
use http_body::Frame;
use std::task::{Context, Poll};

/// An outgoing body whose every frame waits until what the calling
/// request read from commits in flight is durable: the guest may write the
/// body after the request was sent, from values it read meanwhile.
struct FencedBody {
    inner: WasiBody,
    fence: Arc<ReadFence>,
    /// A frame held back until the fence settles.
    waiting: Option<(Settling, Frame<Bytes>)>,
}

/// Whether a fence settled with every commit it read from kept.
type Settling = Pin<Box<dyn Future<Output = bool> + Send>>;

impl FencedBody {
    fn wrap(inner: WasiBody, fence: Arc<ReadFence>) -> WasiBody {
        use http_body_util::BodyExt;
        FencedBody {
            inner,
            fence,
            waiting: None,
        }
        .boxed_unsync()
    }
}

impl http_body::Body for FencedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            if let Some((settled, _)) = &mut this.waiting {
                let ok = std::task::ready!(settled.as_mut().poll(cx));
                let (_, frame) = this.waiting.take().expect("a frame is waiting");
                return Poll::Ready(Some(if ok {
                    Ok(frame)
                } else {
                    Err(Error::InternalError(Some(UncommittedRead.to_string())))
                }));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                // Whatever the frame was made from was read before it was
                // written, so a fence with no reads now had none then.
                Poll::Ready(Some(Ok(frame))) if !this.fence.has_reads() => {
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let fence = this.fence.clone();
                    let settled = Box::pin(async move { fence.settle().await.is_ok() });
                    this.waiting = Some((settled, frame));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Waits until what the calling request read from commits in flight is
/// durable; an internal error for the guest if one of those commits
/// failed.
async fn settle(fence: Option<Arc<ReadFence>>) -> Result<(), Error> {
    match fence {
        Some(fence) => fence.settle().await.map_err(|e| {
            tracing::warn!(error = %e, "outbound request not sent");
            Error::InternalError(Some(e.to_string()))
        }),
        None => Ok(()),
    }
}

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
        // A request may carry what the caller read from a commit still in
        // flight: it leaves only once that commit is durable.
        let fence = ReadFence::current();
        let mut request = match &fence {
            Some(f) => request.map(|body| FencedBody::wrap(body, f.clone())),
            None => request,
        };
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
            let chaining = self.chaining.clone();
            let depth = self.depth + 1;
            let callee = callee.to_string();
            return Box::new(call.run(async move {
                settle(fence).await?;
                let response = chaining.call(&callee, request, depth);
                Ok((response.await?, no_io()))
            }));
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
            settle(fence).await?;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::keyvalue::read_fence::CommitLog;
    use http_body_util::BodyExt;

    fn body(text: &'static str) -> WasiBody {
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// The guest may write a request's body after sending it: each frame
    /// waits for the commits the request read from, and a failed one
    /// fails the body instead of sending what came from it.
    #[tokio::test]
    async fn an_outgoing_body_waits_for_the_commits_read_and_fails_with_them() {
        let log = CommitLog::new();
        let fence = ReadFence::new();
        assert!(fence.record(&log, 1));
        let mut held = FencedBody::wrap(body("from batch 1"), fence.clone());
        let first = tokio::time::timeout(std::time::Duration::from_millis(50), held.frame()).await;
        assert!(first.is_err(), "sent before batch 1 was durable");
        log.settle(1, true);
        let frame = held.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "from batch 1");

        let failing = ReadFence::new();
        assert!(failing.record(&log, 2));
        log.settle(2, false);
        let mut refused = FencedBody::wrap(body("from batch 2"), failing);
        assert!(refused.frame().await.unwrap().is_err());
    }
}
