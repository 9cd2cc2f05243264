//! The generated `wasi:messaging` host traits over [`MessageBroker`].

use super::{BrokerError, Client, Message, MessagingCtx};
use crate::bindings::messaging::{producer, types};
use crate::capabilities::keyvalue::read_fence::ReadFence;
use types::Error;
use wasmtime::component::Resource;

impl types::Host for MessagingCtx {}

impl types::HostClient for MessagingCtx {
    async fn connect(&mut self, name: String) -> wasmtime::Result<Result<Resource<Client>, Error>> {
        if !self.allowed_clients.contains(&name) {
            return Ok(Err(Error::PermissionDenied(format!(
                "component '{}' may not use messaging client '{name}'; add it to messaging_clients in [component.{}.tool.wasmshop]",
                self.component, self.component
            ))));
        }
        let Some(broker) = self.brokers.get(&name) else {
            return Ok(Err(Error::Connection(format!(
                "messaging client '{name}' has no backend; configure [messaging.{name}] in the runtime config file"
            ))));
        };
        Ok(Ok(self.table.push(Client { name, broker })?))
    }

    async fn disconnect(
        &mut self,
        _client: Resource<Client>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(Ok(()))
    }

    async fn drop(&mut self, client: Resource<Client>) -> wasmtime::Result<()> {
        self.table.delete(client)?;
        Ok(())
    }
}

impl types::HostMessage for MessagingCtx {
    async fn new(&mut self, data: Vec<u8>) -> wasmtime::Result<Resource<Message>> {
        let mut m = Message::default();
        m.inner.data = data;
        Ok(self.table.push(m)?)
    }

    async fn topic(&mut self, m: Resource<Message>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.topic.clone())
    }

    async fn content_type(&mut self, m: Resource<Message>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&m)?.inner.content_type.clone())
    }

    async fn set_content_type(&mut self, m: Resource<Message>, ct: String) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.inner.content_type = Some(ct);
        Ok(())
    }

    async fn data(&mut self, m: Resource<Message>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&m)?.inner.data.clone())
    }

    async fn set_data(&mut self, m: Resource<Message>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.inner.data = data;
        Ok(())
    }

    async fn metadata(
        &mut self,
        m: Resource<Message>,
    ) -> wasmtime::Result<Option<Vec<(String, String)>>> {
        let md = &self.table.get(&m)?.inner.metadata;
        Ok((!md.is_empty()).then(|| md.clone()))
    }

    async fn add_metadata(
        &mut self,
        m: Resource<Message>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        let md = &mut self.table.get_mut(&m)?.inner.metadata;
        md.retain(|(k, _)| *k != key);
        md.push((key, value));
        Ok(())
    }

    async fn set_metadata(
        &mut self,
        m: Resource<Message>,
        meta: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&m)?.inner.metadata = meta;
        Ok(())
    }

    async fn remove_metadata(&mut self, m: Resource<Message>, key: String) -> wasmtime::Result<()> {
        self.table
            .get_mut(&m)?
            .inner
            .metadata
            .retain(|(k, _)| *k != key);
        Ok(())
    }

    async fn drop(&mut self, m: Resource<Message>) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}

impl producer::Host for MessagingCtx {
    async fn send(
        &mut self,
        client: Resource<Client>,
        topic: String,
        message: Resource<Message>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let mut message = self.table.delete(message)?.inner;
        let client = self.table.get(&client)?;
        let (name, broker) = (client.name.clone(), client.broker.clone());
        if topic.is_empty() {
            return Ok(Err(Error::Other(
                "the topic is empty; name the topic to publish to".into(),
            )));
        }
        crate::trace::add_to_metadata(&mut message.metadata, self.traceparent.as_deref());
        // A message may carry what the request read from a commit still in
        // flight: it is sent only once that commit is durable.
        if let Err(e) = ReadFence::settle_current().await {
            tracing::warn!(component = %self.component, %topic, error = %e, "message not sent");
            return Ok(Err(Error::Other(e.to_string())));
        }
        let sent = broker.send(&name, &topic, message).await;
        if sent.is_ok() {
            super::metrics::messaging().published(&topic);
        }
        // The guest gets a fixed text per kind, never the broker's message
        // (addresses, sidecar responses): see `capabilities/error.rs`.
        Ok(sent.map_err(|BrokerError(e)| {
            e.log_for_guest(&self.component, "send", self.traceparent.as_deref());
            const LOGGED: &str = "the host log has the detail under this request's trace id";
            if e.is_unavailable() {
                Error::Connection(format!(
                    "the message was not accepted: the message broker is unavailable, or the topic holds max_len messages not yet acknowledged by a subscriber; retry in a few seconds; {LOGGED}"
                ))
            } else {
                Error::Other(format!(
                    "the message broker refused the message; retrying will not help; {LOGGED}"
                ))
            }
        }))
    }
}
