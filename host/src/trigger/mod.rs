//! What makes components run: HTTP requests and message deliveries.

pub mod http;
pub mod messaging;
