//! The product catalog's business rules, free of WIT bindings.
//! [`product`] uses [`reservation`] (the ledger's data), never the
//! reverse.

pub mod currency;
pub mod outcomes;
pub mod product;
pub mod reservation;
