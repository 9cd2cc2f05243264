//! What makes components run: HTTP requests and message deliveries.

pub mod dapr_app_channel;
pub mod http;
pub mod messaging;
