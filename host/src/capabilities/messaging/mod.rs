//! `wasi:messaging@0.2.0-draft`: `producer.send` on a pluggable broker,
//! and the `message` resource shared with deliveries to a component's
//! `incoming-handler`. Which clients a component may connect to comes from
//! its `messaging_clients` list in the manifest.

mod host;

use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
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

/// Why a send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached; the message was not accepted.
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

/// A broker behind one or more messaging clients.
#[async_trait]
pub trait MessageBroker: Send + Sync {
    /// Accepts a message for `topic`; returns only once it is durable.
    async fn send(
        &self,
        client: &str,
        topic: &str,
        message: BrokerMessage,
    ) -> Result<(), BrokerError>;
    /// Whether the broker is reachable (for `/readyz`).
    async fn ready(&self) -> Result<(), String>;
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
    allowed: Arc<BTreeSet<String>>,
    brokers: Arc<BrokerRegistry>,
    traceparent: Option<String>,
}

impl MessagingCtx {
    /// `allowed` is the component's `messaging_clients` list; `traceparent`
    /// is added to sent messages that carry none.
    pub fn new(
        component: Arc<str>,
        allowed: Arc<BTreeSet<String>>,
        brokers: Arc<BrokerRegistry>,
        traceparent: Option<String>,
    ) -> Self {
        MessagingCtx {
            table: ResourceTable::new(),
            component,
            allowed,
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
