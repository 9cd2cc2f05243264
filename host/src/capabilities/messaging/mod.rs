//! `wasi:messaging@0.2.0-draft`: `producer.send` on a pluggable broker,
//! and the `message` resource shared with deliveries to a component's
//! `incoming-handler`. Which clients a component may connect to comes from
//! its `messaging_clients` list in the manifest.

pub mod delivery;
mod host;
pub mod metrics;

use super::error::BackendError;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmtime::component::ResourceTable;

/// A message as it travels through a broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerMessage {
    /// The payload (for the services: a CloudEvent in JSON).
    pub data: Vec<u8>,
    /// Media type of `data`.
    pub content_type: Option<String>,
    /// Headers/attributes, e.g. `traceparent`.
    pub metadata: Vec<(String, String)>,
}

/// Why a send failed: a backend's error, seen by the messaging capability.
/// An unavailable backend becomes `error::connection` for the guest (the
/// message was not accepted; retry later), anything else `error::other`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct BrokerError(#[from] pub BackendError);

/// The send side of a messaging backend, behind one or more messaging
/// clients.
///
/// Contract: `send` MUST return `Ok` only once the message is durable
/// (it survives a crash of this process) and MUST NOT deliver it to
/// anyone before it is; it SHOULD answer
/// [`BackendError::Unavailable`] when the broker cannot be reached, so
/// the guest may retry.
#[async_trait]
pub trait MessageBroker: Send + Sync {
    /// Accepts a message for `topic` of messaging client `client`.
    async fn send(
        &self,
        client: &str,
        topic: &str,
        message: BrokerMessage,
    ) -> Result<(), BrokerError>;
    /// Whether the broker is reachable (for `/readyz`).
    async fn ready(&self) -> Result<(), BackendError>;
}

/// One subscription of a component run by this process: it gets the
/// messages of `topic` sent through messaging client `client`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ComponentSubscription {
    /// The subscribing component.
    pub component: String,
    /// The messaging client (runtime config `[messaging.<client>]`).
    pub client: String,
    /// The topic.
    pub topic: String,
    /// The CloudEvent types the component wants (manifest
    /// `subscriptions.event_types`); empty: every type.
    pub event_types: Vec<String>,
}

/// Every subscription of `manifest`, whichever components a process runs.
pub fn manifest_subscriptions(
    manifest: &crate::manifest::AppManifest,
) -> Vec<ComponentSubscription> {
    manifest
        .subscriptions()
        .map(|(c, s)| ComponentSubscription {
            component: c.to_string(),
            client: s.client.clone(),
            topic: s.topic.clone(),
            event_types: s.event_types.clone(),
        })
        .collect()
}

impl ComponentSubscription {
    /// Whether a message whose CloudEvent `type` is `event_type` (`None`:
    /// not a CloudEvent, or no type) goes to this subscriber. A filtered
    /// subscription still gets messages whose type cannot be read, so a
    /// filter never hides what it cannot judge.
    pub fn wants(&self, event_type: Option<&str>) -> bool {
        match event_type {
            Some(t) if !self.event_types.is_empty() => self.event_types.iter().any(|w| w == t),
            _ => true,
        }
    }
}

/// Why a delivery failed; the receiver retries it (see [`delivery`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The component is not run by this process or exports no
    /// `wasi:messaging/incoming-handler`.
    #[error("{0}")]
    NoHandler(String),
    /// The handler returned an error.
    #[error("the handler returned an error: {0}")]
    Handler(String),
    /// The handler trapped, ran out of memory or out of time.
    #[error("the handler failed: {0}")]
    Failed(String),
    /// No instance could be made because the instance pool is full
    /// (`--max-instances`): the handler did not run, so the receiver
    /// retries after [`delivery::CAPACITY_RETRY`] without counting an
    /// attempt.
    #[error(
        "no instance is free to run the handler ({0}); the delivery waits for one and is not counted as an attempt"
    )]
    Capacity(String),
}

impl DeliveryError {
    /// Whether the handler never ran for want of an instance (not an attempt).
    pub fn is_capacity(&self) -> bool {
        matches!(self, DeliveryError::Capacity(_))
    }
}

/// The CloudEvent `type` of a message: its `ce-type` metadata (as the
/// services publish it), else the `type` member of a structured
/// `application/cloudevents+json` body; `None` when neither says.
pub fn event_type(message: &BrokerMessage) -> Option<String> {
    // `ce-type`: as the services publish; `cloudevent-type`: as the Dapr
    // receiver hands a pushed CloudEvent over.
    if let Some((_, t)) = message
        .metadata
        .iter()
        .find(|(k, _)| k == "ce-type" || k == "cloudevent-type")
    {
        return Some(t.clone());
    }
    let structured = message
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("application/cloudevents+json"));
    if !structured {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Typed>(&message.data)
        .ok()
        .map(|t| t.kind)
}

/// The handle a receiver delivers through: runs a subscribed component's
/// `wasi:messaging/incoming-handler` on one message in a fresh instance
/// (the messaging trigger implements it).
#[async_trait]
pub trait Deliverer: Send + Sync {
    /// `Ok` when the handler accepted the message; `Err` means the
    /// receiver should retry it. Finding every instance busy is
    /// [`DeliveryError::Capacity`] at once: a receiver that polls retries
    /// it later without spending an attempt.
    async fn deliver(&self, component: &str, message: Message) -> Result<(), DeliveryError>;

    /// As [`deliver`](Self::deliver), for a broker that pushes and counts
    /// every failed answer as an attempt (Dapr): waits a while for a free
    /// instance (the trigger's `PUSHED_SLOT_WAIT`, 5 s) before answering
    /// [`DeliveryError::Capacity`]. A burst of busy
    /// instances then slows the pusher down, holding only its connection,
    /// instead of spending its retries. The default does not wait.
    async fn deliver_pushed(&self, component: &str, message: Message) -> Result<(), DeliveryError> {
        self.deliver(component, message).await
    }
}

/// When receivers stop and how they share the work.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Turns true on shutdown: receivers stop taking new messages.
    pub shutdown: watch::Receiver<bool>,
    /// How long deliveries in progress may still run after shutdown.
    pub drain: Duration,
    /// Deliveries one receiver runs at once.
    pub max_in_flight: usize,
}

/// The receive side of a messaging backend.
///
/// Contract: `start` MUST deliver only the subscriptions whose client this
/// backend serves (it is given all of them) and MUST NOT block: it
/// spawns what consumes and returns the tasks, which MUST end at most
/// `drain` after `shutdown` turns true. Delivery is at least once: a
/// message is acknowledged only after [`Deliverer::deliver`] returned
/// `Ok`, and failures follow [`delivery::DeliveryPolicy`] (or the broker's
/// own policy where it retries by itself, as Dapr does).
pub trait MessageReceiver: Send + Sync {
    /// Starts delivering `subscriptions` through `deliverer`.
    fn start(
        &self,
        subscriptions: &[ComponentSubscription],
        deliverer: Arc<dyn Deliverer>,
        options: ReceiveOptions,
    ) -> Result<Vec<JoinHandle<()>>, BackendError>;
}

/// Which broker serves each messaging client name.
#[derive(Clone)]
pub struct BrokerRegistry {
    by_client: BTreeMap<String, Arc<dyn MessageBroker>>,
}

impl BrokerRegistry {
    /// A registry from client name to broker.
    pub fn new(by_client: BTreeMap<String, Arc<dyn MessageBroker>>) -> Self {
        BrokerRegistry { by_client }
    }

    /// The broker of a client, if configured.
    pub fn get(&self, client: &str) -> Option<Arc<dyn MessageBroker>> {
        self.by_client.get(client).cloned()
    }

    /// Every client with its broker, for readiness checks.
    pub fn clients(&self) -> impl Iterator<Item = (&String, &Arc<dyn MessageBroker>)> {
        self.by_client.iter()
    }
}

/// A `client` resource.
pub struct Client {
    name: String,
    broker: Arc<dyn MessageBroker>,
}

/// A `message` resource: created by the guest to send, or by the host to deliver.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The topic it was received on (deliveries only).
    pub topic: Option<String>,
    /// The broker-level message.
    pub inner: BrokerMessage,
}

/// Per-instance state of the messaging capability.
pub struct MessagingCtx {
    table: ResourceTable,
    component: Arc<str>,
    allowed_clients: Arc<BTreeSet<String>>,
    brokers: Arc<BrokerRegistry>,
    traceparent: Option<String>,
}

impl MessagingCtx {
    /// `allowed_clients` is the component's `messaging_clients` list;
    /// `traceparent` is added to sent messages that carry none.
    pub fn new(
        component: Arc<str>,
        allowed_clients: Arc<BTreeSet<String>>,
        brokers: Arc<BrokerRegistry>,
        traceparent: Option<String>,
    ) -> Self {
        MessagingCtx {
            table: ResourceTable::new(),
            component,
            allowed_clients,
            brokers,
            traceparent,
        }
    }

    /// Puts a delivered message into this instance's table, to hand it to
    /// the component's `incoming-handler`.
    pub fn push_delivery(
        &mut self,
        message: Message,
    ) -> wasmtime::Result<wasmtime::component::Resource<Message>> {
        Ok(self.table.push(message)?)
    }
}

/// Adds `wasi:messaging/types` and `producer` to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut MessagingCtx,
) -> wasmtime::Result<()> {
    use crate::bindings::messaging::{producer, types};
    use wasmtime::component::HasSelf;
    types::add_to_linker::<T, HasSelf<MessagingCtx>>(linker, get)?;
    producer::add_to_linker::<T, HasSelf<MessagingCtx>>(linker, get)?;
    Ok(())
}
