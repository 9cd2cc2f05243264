//! One module per WIT capability: the host implementation of the interface
//! plus the backend traits it is written against (send side and, for
//! messaging, receive side). Backends live in `crate::backends` and
//! implement these traits; nothing here knows which backend runs.

pub mod config;
pub mod error;
pub mod keyvalue;
pub mod messaging;
pub mod outbound_http;

pub use error::BackendError;
