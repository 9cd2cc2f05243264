//! Stock reservations: taking and returning units for an order.
//!
//! A reservation lives in its product's ledger, so the stock change and the
//! reservation record are one compare-and-swap write. Reserving is
//! idempotent per order id: a repeat with the same quantity returns the
//! first reservation and takes nothing. Released reservations stay in the
//! ledger, so a late retry of the original reserve cannot take stock again.

use serde::{Deserialize, Serialize};
use service_kit::ids::{ID_RULE, is_valid_id};
use service_kit::json::{JsonObject, MAX_INT};
use service_kit::money::Money;
use service_kit::problem::{FieldErrors, Problem};

use crate::domain::product::Product;

/// A reservation as stored in the product's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// Units taken.
    pub quantity: i64,
    /// The product's price when reserved, in minor units: the order's
    /// price snapshot.
    pub unit_price_minor: i64,
    /// The product's currency when reserved.
    pub currency: String,
    /// When the units were taken.
    pub created_at: String,
    /// When the units were returned; `None` while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
}

/// The JSON returned for a reservation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView<'a> {
    /// The product.
    pub product_id: &'a str,
    /// The order holding the units.
    pub order_id: &'a str,
    /// Units taken.
    pub quantity: i64,
    /// Price per unit when reserved.
    pub unit_price: Money,
    /// Currency of `unitPrice`.
    pub currency: &'a str,
    /// When the units were taken.
    pub created_at: &'a str,
}

impl Reservation {
    /// The public representation.
    pub fn view<'a>(&'a self, product_id: &'a str, order_id: &'a str) -> ReservationView<'a> {
        ReservationView {
            product_id,
            order_id,
            quantity: self.quantity,
            unit_price: Money::from_minor(self.unit_price_minor),
            currency: &self.currency,
            created_at: &self.created_at,
        }
    }
}

/// A validated `POST .../reservations` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    /// The order taking the units.
    pub order_id: String,
    /// Units to take, ≥ 1.
    pub quantity: i64,
}

/// Parses and validates a reservation request body.
pub fn parse_request(body: &[u8]) -> Result<ReservationRequest, Problem> {
    let obj = JsonObject::parse(body)?;
    let mut errors = FieldErrors::new();
    obj.reject_unknown(&["orderId", "quantity"], &mut errors);
    let order_id = if obj.require("orderId", &mut errors) {
        obj.string("orderId", &mut errors)
    } else {
        None
    };
    if let Some(id) = &order_id
        && !is_valid_id(id)
    {
        errors.add("orderId", ID_RULE);
    }
    let quantity = if obj.require("quantity", &mut errors) {
        obj.integer("quantity", 1, MAX_INT, &mut errors)
    } else {
        None
    };
    match (order_id, quantity) {
        (Some(order_id), Some(quantity)) if errors.is_empty() => {
            Ok(ReservationRequest { order_id, quantity })
        }
        _ => Err(Problem::validation(errors)),
    }
}

/// What a reserve decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Units were taken: the product's next state and the new reservation.
    New(Box<Product>, Reservation),
    /// The same order already holds the same quantity: nothing changes.
    Repeat(Reservation),
}

/// Why a reserve was refused (all 409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The order already holds a different quantity.
    OtherQuantity {
        /// What it holds.
        reserved: i64,
    },
    /// The order's reservation was released already.
    Released,
    /// Not enough units.
    InsufficientStock {
        /// Units available.
        available: i64,
    },
}

impl Refusal {
    /// The 409 problem for this refusal.
    pub fn to_problem(&self, product_id: &str, request: &ReservationRequest) -> Problem {
        let order = &request.order_id;
        match self {
            Refusal::OtherQuantity { reserved } => Problem::conflict(
                "reservation-conflict",
                format!(
                    "order '{order}' already reserved {reserved} of product '{product_id}', not {}; release it first to reserve a different quantity",
                    request.quantity
                ),
            ),
            Refusal::Released => Problem::conflict(
                "reservation-released",
                format!(
                    "order '{order}' already reserved and then released product '{product_id}'; use a new order id to reserve again"
                ),
            ),
            Refusal::InsufficientStock { available } => Problem::conflict(
                "insufficient-stock",
                format!(
                    "product '{product_id}' has {available} in stock, {} requested; reserve fewer or restock first",
                    request.quantity
                ),
            ),
        }
    }
}

/// Decides a reservation against the product's current state.
pub fn reserve(
    product: &Product,
    request: &ReservationRequest,
    now: &str,
) -> Result<Reserved, Refusal> {
    if let Some(existing) = product.reservations.get(&request.order_id) {
        return if existing.released_at.is_some() {
            Err(Refusal::Released)
        } else if existing.quantity == request.quantity {
            Ok(Reserved::Repeat(existing.clone()))
        } else {
            Err(Refusal::OtherQuantity {
                reserved: existing.quantity,
            })
        };
    }
    if product.stock < request.quantity {
        return Err(Refusal::InsufficientStock {
            available: product.stock,
        });
    }
    let reservation = Reservation {
        quantity: request.quantity,
        unit_price_minor: product.price_minor,
        currency: product.currency.clone(),
        created_at: now.to_owned(),
        released_at: None,
    };
    let mut next = product.next_version(now);
    next.stock -= request.quantity;
    next.reservations
        .insert(request.order_id.clone(), reservation.clone());
    Ok(Reserved::New(Box::new(next), reservation))
}

/// Returns an order's units to stock: the product's next state, or `None`
/// when the order holds nothing (never reserved, or already released).
pub fn release(product: &Product, order_id: &str, now: &str) -> Option<Product> {
    let existing = product.reservations.get(order_id)?;
    if existing.released_at.is_some() {
        return None;
    }
    let mut next = product.next_version(now);
    next.stock += existing.quantity;
    if let Some(r) = next.reservations.get_mut(order_id) {
        r.released_at = Some(now.to_owned());
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::product::NewProduct;

    fn product(stock: i64) -> Product {
        NewProduct {
            id: None,
            name: "W".into(),
            description: String::new(),
            category: String::new(),
            price: Money::from_minor(199),
            currency: "EUR".into(),
            stock,
        }
        .into_product("p".into(), "t0")
    }

    fn req(order: &str, quantity: i64) -> ReservationRequest {
        ReservationRequest {
            order_id: order.into(),
            quantity,
        }
    }

    #[test]
    fn parses_valid_request() {
        assert_eq!(
            parse_request(br#"{"orderId":"o-1","quantity":2}"#).unwrap(),
            req("o-1", 2)
        );
    }

    #[test]
    fn rejects_each_bad_field() {
        let p = parse_request(br#"{"orderId":"a/b","quantity":0,"x":1}"#).unwrap_err();
        assert_eq!(p.status, 400);
        for f in ["orderId", "quantity", "x"] {
            assert!(p.errors.contains_key(f), "{f}: {p:?}");
        }
        let p = parse_request(br#"{"quantity":2.0}"#).unwrap_err();
        assert_eq!(p.errors["orderId"], vec!["is required"]);
        assert!(p.errors["quantity"][0].contains("whole number"));
        let p = parse_request(br#"{"orderId":"o","quantity":true}"#).unwrap_err();
        assert!(p.errors.contains_key("quantity"));
        assert_eq!(parse_request(b"[]").unwrap_err().status, 400);
    }

    #[test]
    fn reserve_takes_stock_and_snapshots_price() {
        let Reserved::New(next, r) = reserve(&product(5), &req("o1", 2), "t1").unwrap() else {
            panic!("expected a new reservation")
        };
        assert_eq!((next.stock, next.version), (3, 2));
        assert_eq!(
            (r.quantity, r.unit_price_minor, r.currency.as_str()),
            (2, 199, "EUR")
        );
        assert_eq!(next.reservations["o1"], r);
    }

    #[test]
    fn repeat_is_idempotent_and_other_quantity_conflicts() {
        let Reserved::New(next, r) = reserve(&product(5), &req("o1", 2), "t1").unwrap() else {
            panic!()
        };
        assert_eq!(
            reserve(&next, &req("o1", 2), "t2").unwrap(),
            Reserved::Repeat(r)
        );
        assert_eq!(
            reserve(&next, &req("o1", 3), "t2").unwrap_err(),
            Refusal::OtherQuantity { reserved: 2 }
        );
    }

    #[test]
    fn insufficient_stock_is_refused() {
        assert_eq!(
            reserve(&product(1), &req("o1", 2), "t1").unwrap_err(),
            Refusal::InsufficientStock { available: 1 }
        );
        let Reserved::New(p, _) = reserve(&product(2), &req("o1", 2), "t1").unwrap() else {
            panic!()
        };
        assert_eq!(p.stock, 0, "taking the last units is allowed");
        let problem = Refusal::InsufficientStock { available: 1 }.to_problem("p", &req("o1", 2));
        assert_eq!(
            (problem.status, problem.kind.ends_with("insufficient-stock")),
            (409, true)
        );
    }

    #[test]
    fn release_returns_stock_once() {
        let Reserved::New(p, _) = reserve(&product(5), &req("o1", 2), "t1").unwrap() else {
            panic!()
        };
        let released = release(&p, "o1", "t2").unwrap();
        assert_eq!((released.stock, released.version), (5, 3));
        assert_eq!(
            released.reservations["o1"].released_at.as_deref(),
            Some("t2")
        );
        assert_eq!(
            release(&released, "o1", "t3"),
            None,
            "second release changes nothing"
        );
        assert_eq!(release(&released, "never", "t3"), None);
        assert_eq!(
            reserve(&released, &req("o1", 2), "t4").unwrap_err(),
            Refusal::Released
        );
    }
}
