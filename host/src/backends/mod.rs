//! Backends behind the capability traits. `embedded` needs no server and is
//! the default; others are chosen per store label / messaging client in the
//! runtime config file.

pub mod dapr;
pub mod embedded;
pub mod redis;
