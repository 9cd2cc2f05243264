//! Validation of product request bodies, reservation calls and list
//! queries. Every offending field is reported at once, by name, in a 400
//! problem.
//!
//! Text rules: `name` and `category` refuse every control character;
//! `description` allows line feed and tab (multi-line text) and refuses
//! other control characters. Each is capped in characters and in UTF-8
//! bytes, so a stored product stays under 64 KiB.

use service_kit::ids::{ID_RULE, is_valid_id};
use service_kit::json::{JsonObject, MAX_INT};
use service_kit::money::Money;
pub use service_kit::paging::{DEFAULT_LIMIT, MAX_LIMIT};
use service_kit::paging::{ListParams, Start, query_param};
use service_kit::problem::{FieldErrors, Problem};
use service_kit::web::Request;

use crate::domain::currency::{DEFAULT_CURRENCY, is_iso_4217};
use crate::domain::product::{
    CATEGORY_MAX, CATEGORY_MAX_BYTES, DESCRIPTION_MAX, DESCRIPTION_MAX_BYTES, MAX_PRICE, NAME_MAX,
    NAME_MAX_BYTES, NewProduct, ProductPatch, ReservationRequest,
};

/// Fields a client may send. `version`, `createdAt` and `updatedAt` are
/// accepted and ignored, so a client can send back what it read;
/// concurrency is controlled with `If-Match`, not the body.
const KNOWN_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "category",
    "price",
    "currency",
    "stock",
    "version",
    "createdAt",
    "updatedAt",
];

/// Checks one text field's length (characters and bytes) and control
/// characters (`allowed` lists the ones permitted).
fn check_text(
    field: &str,
    value: &str,
    max_chars: usize,
    max_bytes: usize,
    allowed: &[char],
    errors: &mut FieldErrors,
) {
    if value.chars().count() > max_chars {
        errors.add(field, format!("must be at most {max_chars} characters"));
    } else if value.len() > max_bytes {
        errors.add(
            field,
            format!("must be at most {max_bytes} bytes of UTF-8; shorten it"),
        );
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !allowed.contains(c))
    {
        let also = if allowed.is_empty() {
            String::new()
        } else {
            " other than line feed and tab".to_owned()
        };
        errors.add(
            field,
            format!(
                "must not contain control characters{also} (found U+{:04X}); remove it",
                c as u32
            ),
        );
    }
}

/// Reads the editable fields, recording every problem in `errors`.
fn read_fields(obj: &JsonObject, errors: &mut FieldErrors) -> ProductPatch {
    obj.reject_unknown(KNOWN_FIELDS, errors);
    let name = obj.string("name", errors);
    if let Some(n) = &name {
        if n.trim().is_empty() {
            errors.add("name", "must not be empty or blank");
        } else {
            check_text("name", n, NAME_MAX, NAME_MAX_BYTES, &[], errors);
        }
    }
    let description = obj.string("description", errors);
    if let Some(d) = &description {
        check_text(
            "description",
            d,
            DESCRIPTION_MAX,
            DESCRIPTION_MAX_BYTES,
            &['\n', '\t'],
            errors,
        );
    }
    let category = obj.string("category", errors);
    if let Some(c) = &category {
        check_text("category", c, CATEGORY_MAX, CATEGORY_MAX_BYTES, &[], errors);
    }
    let price = obj.money("price", errors);
    if let Some(p) = price {
        if p < Money::ZERO {
            errors.add("price", "must be at least 0");
        } else if p > MAX_PRICE {
            errors.add("price", "must be at most 999999999.99");
        }
    }
    let currency = obj.string("currency", errors);
    if let Some(c) = &currency
        && !is_iso_4217(c)
    {
        errors.add(
            "currency",
            format!(
                "'{c}' is not an ISO 4217 currency code; use an upper-case code such as USD or EUR"
            ),
        );
    }
    let stock = obj.integer("stock", 0, MAX_INT, errors);
    ProductPatch {
        name,
        description,
        category,
        price,
        currency,
        stock,
    }
}

/// Validates a `POST /api/products` body. `name` and `price` are required;
/// `description` and `category` default to empty, `currency` to USD,
/// `stock` to 0; `id` is optional.
pub fn parse_new_product(body: &[u8]) -> Result<NewProduct, Problem> {
    let obj = JsonObject::parse(body)?;
    let mut errors = FieldErrors::new();
    let id = obj.string("id", &mut errors);
    if id.as_ref().is_some_and(|id| !is_valid_id(id)) {
        errors.add("id", ID_RULE);
    }
    obj.require("name", &mut errors);
    obj.require("price", &mut errors);
    let fields = read_fields(&obj, &mut errors);
    match (fields.name, fields.price) {
        (Some(name), Some(price)) if errors.is_empty() => Ok(NewProduct {
            id,
            name,
            description: fields.description.unwrap_or_default(),
            category: fields.category.unwrap_or_default(),
            price,
            currency: fields
                .currency
                .unwrap_or_else(|| DEFAULT_CURRENCY.to_owned()),
            stock: fields.stock.unwrap_or(0),
        }),
        _ => Err(Problem::validation(errors)),
    }
}

/// Validates a `PUT /api/products/{id}` body: the fields sent replace the
/// current values (each under the create rules); fields left out, or
/// `null`, keep theirs. An `id` in the body must match the URL.
pub fn parse_patch(body: &[u8], path_id: &str) -> Result<ProductPatch, Problem> {
    let obj = JsonObject::parse(body)?;
    let mut errors = FieldErrors::new();
    if let Some(id) = obj.string("id", &mut errors)
        && id != path_id
    {
        errors.add(
            "id",
            format!("must match the id in the URL ('{path_id}'); ids cannot be changed"),
        );
    }
    let patch = read_fields(&obj, &mut errors);
    errors.into_result(patch)
}

/// A validated `GET /api/products` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only products in this category (exact match); `None` for all.
    pub category: Option<String>,
    /// Page size, 1–1000.
    pub limit: usize,
    /// Where the page starts: an offset (0 ..= 2^63-1) or a cursor.
    pub start: Start,
}

impl ListQuery {
    /// Reads `category`, `limit`, `offset` and `cursor`; bad values are a
    /// 400 naming the parameter. An empty `category=` means no filter.
    pub fn from_request(req: &Request) -> Result<ListQuery, Problem> {
        let mut errors = FieldErrors::new();
        let category = query_param(req, "category", &mut errors).filter(|c| !c.is_empty());
        let ListParams { limit, start } = ListParams::from_request(req, &mut errors);
        errors.into_result(ListQuery {
            category,
            limit,
            start,
        })
    }
}

/// Parses and validates a `POST .../reservations` body
/// `{"orderId": id, "quantity": n}`.
pub fn parse_reservation(body: &[u8]) -> Result<ReservationRequest, Problem> {
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

/// Reads the optional `confirmedQuantity` of a release: a whole number
/// from 1 to 2147483647, or a 400 naming it.
pub fn parse_confirmed_quantity(req: &Request) -> Result<Option<i64>, Problem> {
    let mut errors = FieldErrors::new();
    let value = query_param(req, "confirmedQuantity", &mut errors);
    let n = value.and_then(|v| match v.parse::<i64>() {
        Ok(n) if (1..=MAX_INT).contains(&n) => Some(n),
        _ => {
            errors.add(
                "confirmedQuantity",
                format!("must be a whole number from 1 to {MAX_INT}, not '{v}'"),
            );
            None
        }
    });
    errors.into_result(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::http::Method;

    fn errors_of(body: &str) -> std::collections::BTreeMap<String, Vec<String>> {
        let p = parse_new_product(body.as_bytes()).unwrap_err();
        assert_eq!(p.status, 400);
        p.errors
    }

    #[test]
    fn minimal_create_gets_defaults() {
        let p = parse_new_product(br#"{"name":"Pen","price":1.5}"#).unwrap();
        assert_eq!(p.id, None);
        assert_eq!((p.description.as_str(), p.category.as_str()), ("", ""));
        assert_eq!((p.currency.as_str(), p.stock), ("USD", 0));
        assert_eq!(p.price.minor(), 150);
    }

    #[test]
    fn full_create() {
        let p = parse_new_product(
            br#"{"id":"pen-1","name":"Pen","description":"Blue","category":"office","price":0.1,"currency":"EUR","stock":2147483647}"#,
        )
        .unwrap();
        assert_eq!(p.id.as_deref(), Some("pen-1"));
        assert_eq!(
            (p.currency.as_str(), p.stock, p.price.minor()),
            ("EUR", 2147483647, 10)
        );
    }

    #[test]
    fn required_fields() {
        let e = errors_of("{}");
        assert_eq!(e["name"], vec!["is required"]);
        assert_eq!(e["price"], vec!["is required"]);
        let e = errors_of(r#"{"name":null,"price":null}"#);
        assert!(e.contains_key("name") && e.contains_key("price"));
    }

    #[test]
    fn every_field_rule_is_enforced() {
        let cases: &[(&str, &str)] = &[
            (r#"{"name":"","price":1}"#, "name"),
            (r#"{"name":"   ","price":1}"#, "name"),
            (r#"{"name":7,"price":1}"#, "name"),
            (r#"{"name":"x","price":-0.01}"#, "price"),
            (r#"{"name":"x","price":1.234}"#, "price"),
            (r#"{"name":"x","price":1000000000}"#, "price"),
            (r#"{"name":"x","price":"1"}"#, "price"),
            (r#"{"name":"x","price":1,"currency":"usd"}"#, "currency"),
            (r#"{"name":"x","price":1,"currency":"ZZZ"}"#, "currency"),
            (r#"{"name":"x","price":1,"stock":-1}"#, "stock"),
            (r#"{"name":"x","price":1,"stock":1.5}"#, "stock"),
            (r#"{"name":"x","price":1,"stock":2.5}"#, "stock"),
            (r#"{"name":"x","price":1,"stock":2147483648.0}"#, "stock"),
            (r#"{"name":"x","price":1,"stock":true}"#, "stock"),
            (r#"{"name":"x","price":1,"stock":2147483648}"#, "stock"),
            (r#"{"name":"x","price":1,"id":"a b"}"#, "id"),
            (r#"{"name":"x","price":1,"id":""}"#, "id"),
            (r#"{"name":"x","price":1,"prise":2}"#, "prise"),
            (r#"{"name":"x","price":1,"description":5}"#, "description"),
        ];
        for (body, field) in cases {
            let e = errors_of(body);
            assert!(e.contains_key(*field), "{body}: {e:?}");
            assert_eq!(e.len(), 1, "{body}: only {field} is wrong: {e:?}");
        }
    }

    #[test]
    fn length_limits_count_characters() {
        let ok = format!(
            r#"{{"name":"{}","price":1,"category":"{}","description":"{}"}}"#,
            "é".repeat(200),
            "c".repeat(100),
            "d".repeat(2000)
        );
        parse_new_product(ok.as_bytes()).unwrap();
        let bad = format!(
            r#"{{"name":"{}","price":1,"category":"{}","description":"{}"}}"#,
            "n".repeat(201),
            "c".repeat(101),
            "d".repeat(2001)
        );
        let e = errors_of(&bad);
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn patch_keeps_absent_fields_and_checks_id() {
        let p = parse_patch(br#"{"price":2,"version":9,"createdAt":"x"}"#, "p1").unwrap();
        assert_eq!(p.price.map(Money::minor), Some(200));
        assert_eq!(p.name, None);
        assert_eq!(
            parse_patch(br#"{"id":"p1"}"#, "p1").unwrap(),
            ProductPatch::default()
        );
        let e = parse_patch(br#"{"id":"p2","stock":-3}"#, "p1").unwrap_err();
        assert!(e.errors.contains_key("id") && e.errors.contains_key("stock"));
        assert_eq!(parse_patch(b"nope", "p1").unwrap_err().status, 400);
    }

    fn query(q: &str) -> Result<ListQuery, Problem> {
        ListQuery::from_request(&Request::new(Method::GET, &format!("/api/products{q}")))
    }

    #[test]
    fn list_query_defaults_and_bounds() {
        assert_eq!(
            query("").unwrap(),
            ListQuery {
                category: None,
                limit: 100,
                start: Start::Offset(0)
            }
        );
        assert_eq!(
            query("?category=Tools&limit=1000&offset=5").unwrap(),
            ListQuery {
                category: Some("Tools".into()),
                limit: 1000,
                start: Start::Offset(5)
            }
        );
        assert_eq!(
            query("?cursor=abc").unwrap().start,
            Start::Cursor("abc".into())
        );
        assert_eq!(query("?category=").unwrap().category, None);
        for (q, field) in [
            ("?limit=0", "limit"),
            ("?limit=1001", "limit"),
            ("?limit=abc", "limit"),
            ("?limit=1.5", "limit"),
            ("?offset=-1", "offset"),
            ("?offset=x", "offset"),
            ("?limit=5&limit=6", "limit"),
            ("?offset=9223372036854775808", "offset"),
            ("?offset=1&cursor=x", "cursor"),
        ] {
            let p = query(q).unwrap_err();
            assert!(p.errors.contains_key(field), "{q}: {p:?}");
        }
    }

    #[test]
    fn text_is_capped_in_bytes_and_refuses_control_characters() {
        let e = errors_of(&format!(
            r#"{{"name":"{}","price":1}}"#,
            "\u{1D11E}".repeat(201)
        ));
        assert!(e["name"][0].contains("200 characters"), "{e:?}");
        for (body, field) in [
            (r#"{"name":"a\u0007b","price":1}"#, "name"),
            (r#"{"name":"a\nb","price":1}"#, "name"),
            (r#"{"name":"x","price":1,"category":"a\tb"}"#, "category"),
            (
                r#"{"name":"x","price":1,"description":"a\u0000b"}"#,
                "description",
            ),
            (
                r#"{"name":"x","price":1,"description":"a\rb"}"#,
                "description",
            ),
        ] {
            let e = errors_of(body);
            assert!(e[field][0].contains("control"), "{body}: {e:?}");
        }
        let ok = parse_new_product(br#"{"name":"x","price":1,"description":"line 1\n\tline 2"}"#)
            .unwrap();
        assert_eq!(ok.description, "line 1\n\tline 2");
    }

    #[test]
    fn reservation_bodies() {
        assert_eq!(
            parse_reservation(br#"{"orderId":"o-1","quantity":2}"#).unwrap(),
            ReservationRequest {
                order_id: "o-1".into(),
                quantity: 2
            }
        );
        let p = parse_reservation(br#"{"orderId":"a/b","quantity":0,"x":1}"#).unwrap_err();
        for f in ["orderId", "quantity", "x"] {
            assert!(p.errors.contains_key(f), "{f}: {p:?}");
        }
        let p = parse_reservation(br#"{"quantity":2.0}"#).unwrap_err();
        assert_eq!(p.errors["orderId"], vec!["is required"]);
        assert_eq!(parse_reservation(b"[]").unwrap_err().status, 400);
    }

    #[test]
    fn confirmed_quantity_parameter() {
        let q =
            |s: &str| parse_confirmed_quantity(&Request::new(Method::DELETE, &format!("/x{s}")));
        assert_eq!(q("").unwrap(), None);
        assert_eq!(q("?confirmedQuantity=3").unwrap(), Some(3));
        for bad in [
            "?confirmedQuantity=0",
            "?confirmedQuantity=x",
            "?confirmedQuantity=2147483648",
        ] {
            assert!(
                q(bad).unwrap_err().errors.contains_key("confirmedQuantity"),
                "{bad}"
            );
        }
    }
}
