//! The messaging trigger: starts every backend's receiver with the
//! subscriptions of the components this process runs, and runs each
//! delivery — the subscriber's `wasi:messaging/incoming-handler` in a
//! fresh instance — for them (the [`Deliverer`] they deliver through).

use super::http::component::{Chaining, SLOT_WAIT};
use crate::app::{App, Capacity, InstanceContext, InstanceSlot, TimeLimitExceeded};
use crate::capabilities::BackendError;
use crate::capabilities::messaging::delivery::DeadLetterRetention;
use crate::capabilities::messaging::metrics as messaging_metrics;
use crate::capabilities::messaging::{
    Deliverer, DeliveryError, Message, ReceiveOptions, event_type,
};
use async_trait::async_trait;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Deliveries one receiver runs at once.
pub const MAX_DELIVERIES_IN_FLIGHT: usize = 32;

/// How long a pushed delivery (Dapr) waits for a free instance before it
/// is refused, which its broker counts as an attempt: long enough to ride
/// out a burst that fills the pool (runs take milliseconds), well inside
/// the 30 s delivery timeout of `infra/dapr/resiliency.yaml`.
pub const PUSHED_SLOT_WAIT: Duration = Duration::from_secs(5);

/// Starts every backend's receiver; the returned tasks end at most
/// `drain` after `shutdown` turns true.
pub fn start(
    app: &Arc<App>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> Result<Vec<JoinHandle<()>>, BackendError> {
    // A bad dead-letter retention variable stops the start with one line.
    DeadLetterRetention::from_env().map_err(|e| BackendError::rejected("messaging", e))?;
    let deliverer: Arc<dyn Deliverer> = Arc::new(AppDeliverer(Arc::downgrade(app)));
    let mut tasks = Vec::new();
    for receiver in app.backends().receivers() {
        tasks.extend(receiver.start(
            app.subscriptions(),
            deliverer.clone(),
            ReceiveOptions {
                shutdown: shutdown.clone(),
                drain,
                max_in_flight: MAX_DELIVERIES_IN_FLIGHT,
            },
        )?);
    }
    Ok(tasks)
}

/// Runs deliveries on the app (weakly held: receivers live inside it).
struct AppDeliverer(Weak<App>);

#[async_trait]
impl Deliverer for AppDeliverer {
    async fn deliver(&self, component_id: &str, message: Message) -> Result<(), DeliveryError> {
        self.deliver_within(component_id, message, None).await
    }

    async fn deliver_pushed(
        &self,
        component_id: &str,
        message: Message,
    ) -> Result<(), DeliveryError> {
        self.deliver_within(component_id, message, Some(PUSHED_SLOT_WAIT))
            .await
    }
}

impl AppDeliverer {
    /// One delivery; `slot_wait` is how long it may wait for a free
    /// instance (`None`: not at all).
    async fn deliver_within(
        &self,
        component_id: &str,
        message: Message,
        slot_wait: Option<Duration>,
    ) -> Result<(), DeliveryError> {
        let app = self.0.upgrade().ok_or_else(|| {
            DeliveryError::NoHandler(
                "the host is shutting down; the message will be redelivered".into(),
            )
        })?;
        let topic = message.topic.clone().unwrap_or_default();
        let metrics = messaging_metrics::messaging();
        if !wanted(&app, component_id, &topic, &message) {
            // Acknowledged without running the component (docs/messaging.md,
            // "Event-type filter").
            metrics.delivered(&topic, component_id, "filtered");
            return Ok(());
        }
        let started = Instant::now();
        let span =
            crate::telemetry::messaging::consumer(component_id, &message, app.subscriptions());
        let outcome = tracing::Instrument::instrument(
            run(&app, component_id, message, slot_wait),
            span.clone(),
        )
        .await;
        if let Err(error) = &outcome {
            crate::telemetry::spans::record_error(&span);
            // Logged in the delivery's span, so the line carries the trace
            // of the event that failed; the receiver's retry or
            // dead-letter decision follows in a line of its own.
            if !error.is_capacity() {
                span.in_scope(|| {
                    tracing::warn!(component = component_id, topic, %error, "a subscriber's handler failed on a delivery");
                });
            }
        }
        if !matches!(&outcome, Err(e) if e.is_capacity()) {
            app.metrics()
                .record_delivery(component_id, outcome.is_ok(), started.elapsed());
        }
        let label = match &outcome {
            Ok(()) => "success",
            Err(e) if e.is_capacity() => "capacity",
            Err(_) => "failure",
        };
        metrics.delivered(&topic, component_id, label);
        outcome
    }
}

/// Whether `component`'s subscription to `topic` wants the message's event
/// type. A topic the component has no subscription to here is not judged.
fn wanted(app: &App, component: &str, topic: &str, message: &Message) -> bool {
    let mut subscriptions = app
        .subscriptions()
        .iter()
        .filter(|s| s.component == component && s.topic == topic)
        .peekable();
    if subscriptions.peek().is_none() {
        return true;
    }
    let kind = event_type(&message.inner);
    subscriptions.any(|s| s.wants(kind.as_deref()))
}

/// A slot within `wait`: taken when one is free, looking every 20 ms,
/// and for the last [`SLOT_WAIT`] (1 s) from the slot queue itself. HTTP
/// requests wait in that queue for 1 s: a delivery that queued for all of
/// its 5 s would be served before them and a burst of pushes would starve
/// the API; one that only looked would lose every freed slot to them and
/// a busy API would starve the deliveries (each refusal an attempt spent
/// at daprd). Queueing only at the end shares the slots in turn.
async fn free_slot_within(app: &App, wait: Duration) -> Result<InstanceSlot, Capacity> {
    let queue_from = Instant::now() + wait.saturating_sub(SLOT_WAIT);
    while Instant::now() < queue_from {
        if let Ok(slot) = app.try_instance_slot() {
            return Ok(slot);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.instance_slot(wait.min(SLOT_WAIT)).await
}

/// One delivery in a fresh instance, under the app's time and memory
/// limits, after waiting up to `slot_wait` for a free one.
async fn run(
    app: &Arc<App>,
    component_id: &str,
    message: Message,
    slot_wait: Option<Duration>,
) -> Result<(), DeliveryError> {
    let component = app.component(component_id).ok_or_else(|| {
        DeliveryError::NoHandler(format!(
            "component '{component_id}' is not run by this process"
        ))
    })?;
    let subscriber = component.subscriber().cloned().ok_or_else(|| {
        DeliveryError::NoHandler(format!(
            "component '{component_id}' does not export wasi:messaging/incoming-handler"
        ))
    })?;
    let context = InstanceContext {
        depth: 0,
        traceparent: crate::telemetry::spans::current_traceparent()
            .or_else(|| crate::trace::from_metadata(&message.inner.metadata)),
        chaining: Chaining::of(app),
    };
    // A polled delivery never waits for a slot: it is retried later
    // without spending an attempt. A pushed one waits a while, since its
    // broker would count a refusal (docs/messaging.md, "Common rules").
    let slot = match slot_wait {
        None => app.try_instance_slot(),
        Some(wait) => free_slot_within(app, wait).await,
    };
    let _slot = slot.map_err(|capacity| {
        crate::metrics::record_instance_refused(component_id);
        DeliveryError::Capacity(capacity.to_string())
    })?;
    let mut store = app.new_store(component, context);
    let _in_use = crate::metrics::instance_in_use();
    let limit = app.request_timeout();
    let handle = async {
        let msg = store.data_mut().messaging.push_delivery(message)?;
        let instance = subscriber.instantiate_async(&mut store).await?;
        instance
            .wasi_messaging_incoming_handler()
            .call_handle(&mut store, msg)
            .await
    };
    let result = match tokio::time::timeout(limit + Duration::from_secs(1), handle).await {
        Ok(r) => r,
        Err(_) => Err(wasmtime::Error::new(TimeLimitExceeded(limit))),
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DeliveryError::Handler(format!("{e:?}"))),
        Err(e) if Capacity::is_capacity(&e) => {
            crate::metrics::record_instance_refused(component_id);
            Err(DeliveryError::Capacity(format!("{e:#}")))
        }
        Err(e) if store.data().limiter.hit => Err(DeliveryError::Failed(format!(
            "it exceeded its memory limit of {} MiB: {e:#}",
            app.max_memory() >> 20
        ))),
        Err(e) => Err(DeliveryError::Failed(format!("{e:#}"))),
    }
}
