//! The product catalog's business rules, free of WIT bindings.

pub mod currency;
pub mod product;
