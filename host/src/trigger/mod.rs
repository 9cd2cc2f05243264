//! What makes components run: HTTP requests (and chained calls), and
//! message deliveries. Each trigger takes a fresh instance from the
//! [`crate::app::App`] and runs one export of it.

pub mod http;
pub mod messaging;
