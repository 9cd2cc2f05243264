//! One module per WIT capability: the host implementation of the interface
//! plus the backend trait it is written against. Backends live in
//! `crate::backends`, so each capability can be tested with any of them.

pub mod config;
pub mod keyvalue;
pub mod messaging;
pub mod outbound_http;
