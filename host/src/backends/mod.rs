//! Backends behind the capability traits. `embedded` needs no server and is
//! the default; others are chosen per store label / messaging client in the
//! runtime config file, and `wiring` opens them for an app.

pub mod dapr;
pub mod embedded;
pub mod redis;
pub mod wiring;
