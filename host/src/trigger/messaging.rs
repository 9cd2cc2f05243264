//! The delivery side of messaging, shared by all brokers: a broker's
//! consumer hands each message to a [`Deliverer`] (the app), which runs the
//! subscriber's `wasi:messaging/incoming-handler` in a fresh instance.

use crate::capabilities::messaging::Message;
use async_trait::async_trait;

/// Runs a subscribed component's handler on one message.
#[async_trait]
pub trait Deliverer: Send + Sync {
    /// `Ok` when the handler accepted the message; `Err` (handler error,
    /// trap or timeout) means the broker should retry.
    async fn deliver(&self, component: &str, message: Message) -> Result<(), String>;
}
