//! Validation of order request bodies, list queries and the
//! `Idempotency-Key` header. Every offending field is reported at once, by
//! name, in a 400 problem.

use std::collections::BTreeSet;

use serde::Serialize;
use service_kit::ids::{ID_RULE, is_valid_id};
use service_kit::json::{JsonObject, MAX_INT};
pub use service_kit::paging::{DEFAULT_LIMIT, MAX_LIMIT};
use service_kit::paging::{ListParams, query_param};
use service_kit::problem::{FieldErrors, Problem};
use service_kit::web::Request;
use sha2::{Digest, Sha256};

use crate::domain::Status;

/// Most characters in a customer id.
pub const CUSTOMER_ID_MAX: usize = 100;
/// Most lines in an order.
pub const MAX_ITEMS: usize = 100;
/// Most bytes (UTF-8) in a customer id: 100 characters of up to 4 bytes,
/// stated so the bound of a stored order is plain.
pub const CUSTOMER_ID_MAX_BYTES: usize = 400;
/// Most characters in a cancellation reason.
pub const REASON_MAX: usize = 500;
/// Most bytes (UTF-8) in a cancellation reason: 500 characters of up to
/// 4 bytes, stated so the bound of a stored order is plain
/// (`docs/storage-layout.md`, "Orders"). Never binding before the
/// character count, so the character limit of `openapi.yaml` is exact.
pub const REASON_MAX_BYTES: usize = 2000;

/// The message for text with control characters.
const NO_CONTROL: &str =
    "must not contain control characters (newlines, tabs, ...); send plain one-line text";

/// Whether `s` holds a control character (refused in stored text, as the
/// product service refuses them in names).
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}
/// Most characters in an `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;
/// The idempotency header.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// One requested line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewItem {
    /// Product to order.
    pub product_id: String,
    /// Units, 1 ..= 2^31−1.
    pub quantity: i64,
}

/// A validated `POST /api/orders` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewOrder {
    /// Client-chosen id, if any.
    pub id: Option<String>,
    /// Customer.
    pub customer_id: String,
    /// Lines, in request order.
    pub items: Vec<NewItem>,
}

impl NewOrder {
    /// A digest of the request's meaning: the same key with a different
    /// body is told apart by it.
    pub fn fingerprint(&self) -> String {
        // Plain data always serialises.
        let json = serde_json::to_vec(self).expect("a new order serialises");
        hex::encode(Sha256::digest(json))
    }
}

/// Validates a create body: `customerId` (1–100 characters) and `items`
/// (1–100 of `{productId, quantity}`, no product twice) are required, `id`
/// optional.
pub fn parse_new_order(body: &[u8]) -> Result<NewOrder, Problem> {
    let obj = JsonObject::parse(body)?;
    let mut errors = FieldErrors::new();
    obj.reject_unknown(&["id", "customerId", "items"], &mut errors);
    let id = obj.string("id", &mut errors);
    if id.as_ref().is_some_and(|id| !is_valid_id(id)) {
        errors.add("id", ID_RULE);
    }
    let customer_id = if obj.require("customerId", &mut errors) {
        obj.string("customerId", &mut errors)
    } else {
        None
    };
    if let Some(c) = &customer_id {
        if c.trim().is_empty() {
            errors.add("customerId", "must not be empty or blank");
        } else if c.chars().count() > CUSTOMER_ID_MAX || c.len() > CUSTOMER_ID_MAX_BYTES {
            errors.add(
                "customerId",
                format!("must be at most {CUSTOMER_ID_MAX} characters"),
            );
        } else if has_control(c) {
            errors.add("customerId", NO_CONTROL);
        }
    }
    let mut items = Vec::new();
    if obj.require("items", &mut errors)
        && let Some(raw) = obj.array("items", &mut errors)
    {
        if raw.is_empty() {
            errors.add("items", "must contain at least one item");
        } else if raw.len() > MAX_ITEMS {
            errors.add(
                "items",
                format!(
                    "must contain at most {MAX_ITEMS} items, not {}; split the order",
                    raw.len()
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, raw) in raw.iter().enumerate().take(MAX_ITEMS) {
            let path = format!("items[{i}]");
            let item = match JsonObject::from_raw(raw, &path) {
                Ok(item) => item,
                Err(m) => {
                    errors.add(&path, m);
                    continue;
                }
            };
            item.reject_unknown(&["productId", "quantity"], &mut errors);
            let product_id = if item.require("productId", &mut errors) {
                item.string("productId", &mut errors)
            } else {
                None
            };
            if let Some(p) = &product_id {
                if !is_valid_id(p) {
                    errors.add(&item.path("productId"), ID_RULE);
                } else if !seen.insert(p.clone()) {
                    errors.add(
                        &item.path("productId"),
                        format!(
                            "product '{p}' appears more than once; order it in one item with the total quantity"
                        ),
                    );
                }
            }
            let quantity = if item.require("quantity", &mut errors) {
                item.integer("quantity", 1, MAX_INT, &mut errors)
            } else {
                None
            };
            if let (Some(product_id), Some(quantity)) = (product_id, quantity) {
                items.push(NewItem {
                    product_id,
                    quantity,
                });
            }
        }
    }
    match customer_id {
        Some(customer_id) if errors.is_empty() => Ok(NewOrder {
            id,
            customer_id,
            items,
        }),
        _ => Err(Problem::validation(errors)),
    }
}

/// A validated `PUT /api/orders/{id}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The status to move to.
    pub status: Status,
    /// Why, when cancelling.
    pub cancellation_reason: Option<String>,
}

/// Fields of an order a client may send back but not change.
const FIXED_FIELDS: &[&str] = &["customerId", "items", "total", "currency"];

/// Validates an update: `status` is required; `cancellationReason` (at
/// most 500 characters) only goes with `Cancelled`; an `id` must match the
/// URL; `version`, `createdAt`, `updatedAt` are ignored (use `If-Match`).
pub fn parse_status_change(body: &[u8], path_id: &str) -> Result<StatusChange, Problem> {
    let obj = JsonObject::parse(body)?;
    let mut errors = FieldErrors::new();
    let known = [
        "id",
        "status",
        "cancellationReason",
        "version",
        "createdAt",
        "updatedAt",
    ];
    for field in FIXED_FIELDS {
        if obj.has(field) {
            errors.add(
                field,
                "cannot be changed after the order is placed; only status and cancellationReason can",
            );
        }
    }
    let mut allowed: Vec<&str> = known.to_vec();
    allowed.extend_from_slice(FIXED_FIELDS);
    obj.reject_unknown(&allowed, &mut errors);
    if let Some(id) = obj.string("id", &mut errors)
        && id != path_id
    {
        errors.add(
            "id",
            format!("must match the id in the URL ('{path_id}'); ids cannot be changed"),
        );
    }
    let status = if obj.require("status", &mut errors) {
        obj.string("status", &mut errors)
    } else {
        None
    };
    let status = status.and_then(|s| parse_status(&s, &mut errors));
    let reason = obj.string("cancellationReason", &mut errors);
    if let Some(r) = &reason {
        if r.trim().is_empty() {
            errors.add(
                "cancellationReason",
                "must not be empty or blank; leave it out instead",
            );
        } else if r.chars().count() > REASON_MAX || r.len() > REASON_MAX_BYTES {
            errors.add(
                "cancellationReason",
                format!(
                    "must be at most {REASON_MAX} characters and {REASON_MAX_BYTES} bytes of UTF-8"
                ),
            );
        } else if has_control(r) {
            errors.add("cancellationReason", NO_CONTROL);
        }
        if status.is_some_and(|s| s != Status::Cancelled) {
            errors.add(
                "cancellationReason",
                "is only allowed with status Cancelled",
            );
        }
    }
    match status {
        Some(status) if errors.is_empty() => Ok(StatusChange {
            status,
            cancellation_reason: reason,
        }),
        _ => Err(Problem::validation(errors)),
    }
}

/// A status named in `status` (body field or query parameter); a bad
/// name is recorded against `status`.
fn parse_status(s: &str, errors: &mut FieldErrors) -> Option<Status> {
    Status::parse_input(s)
        .map_err(|m| errors.add("status", m))
        .ok()
}

/// A validated `GET /api/orders` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only orders in this status.
    pub status: Option<Status>,
    /// Only orders of this customer.
    pub customer_id: Option<String>,
    /// Only orders containing this product.
    pub product_id: Option<String>,
    /// Page size, 1–1000.
    pub limit: usize,
    /// Where the page starts: an offset, or a cursor from a `Link` header.
    pub start: service_kit::paging::Start,
}

impl ListQuery {
    /// Reads `status`, `customerId`, `productId`, `limit` and `offset` or
    /// `cursor`; bad values are a 400 naming the parameter. Empty values
    /// mean no filter.
    pub fn from_request(req: &Request) -> Result<ListQuery, Problem> {
        let mut errors = FieldErrors::new();
        let status = query_param(req, "status", &mut errors)
            .filter(|s| !s.is_empty())
            .and_then(|s| parse_status(&s, &mut errors));
        let customer_id = query_param(req, "customerId", &mut errors).filter(|c| !c.is_empty());
        if customer_id
            .as_ref()
            .is_some_and(|c| c.chars().count() > CUSTOMER_ID_MAX || c.len() > CUSTOMER_ID_MAX_BYTES)
        {
            errors.add(
                "customerId",
                format!("must be at most {CUSTOMER_ID_MAX} characters"),
            );
        }
        let product_id = query_param(req, "productId", &mut errors).filter(|p| !p.is_empty());
        if product_id.as_ref().is_some_and(|p| !is_valid_id(p)) {
            errors.add("productId", ID_RULE);
        }
        let ListParams { limit, start } = ListParams::from_request(req, &mut errors);
        errors.into_result(ListQuery {
            status,
            customer_id,
            product_id,
            limit,
            start,
        })
    }

    /// Whether `order` passes every filter of the query.
    pub fn passes(&self, order: &crate::domain::Order) -> bool {
        self.status.is_none_or(|s| s == order.status)
            && self
                .customer_id
                .as_deref()
                .is_none_or(|c| c == order.customer_id)
            && self.product_id.as_deref().is_none_or(|p| order.contains(p))
    }

    /// The filter in a fixed textual form, which a cursor is bound to.
    pub fn filter_text(&self) -> String {
        // JSON keeps the parts apart whatever a customer id contains.
        serde_json::json!([
            self.status.map(Status::as_str),
            self.customer_id,
            self.product_id
        ])
        .to_string()
    }
}

/// The request's `Idempotency-Key`: `None` when absent; a 400 naming the
/// header when repeated, empty, longer than 255 or not visible ASCII.
pub fn idempotency_key(req: &Request) -> Result<Option<String>, Problem> {
    let mut values = req.headers.get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::validation_one(
            IDEMPOTENCY_HEADER,
            "was given more than once; send a single Idempotency-Key header",
        ));
    }
    let text = value.to_str().unwrap_or("");
    let ok = !text.is_empty()
        && text.len() <= IDEMPOTENCY_KEY_MAX
        && text.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(Some(text.to_owned()))
    } else {
        Err(Problem::validation_one(
            IDEMPOTENCY_HEADER,
            format!(
                "must be 1-{IDEMPOTENCY_KEY_MAX} visible ASCII characters without spaces, e.g. a UUID"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::http::Method;

    fn errors_of(body: &str) -> std::collections::BTreeMap<String, Vec<String>> {
        let p = parse_new_order(body.as_bytes()).unwrap_err();
        assert_eq!(p.status, 400, "{body}");
        p.errors
    }

    #[test]
    fn valid_create() {
        let o = parse_new_order(
            br#"{"customerId":"c-1","items":[{"productId":"a","quantity":2},{"productId":"b","quantity":2147483647}]}"#,
        )
        .unwrap();
        assert_eq!(o.id, None);
        assert_eq!(o.customer_id, "c-1");
        assert_eq!(o.items.len(), 2);
        assert_eq!(o.items[1].quantity, 2147483647);
        let with_id = parse_new_order(
            br#"{"id":"my-order","customerId":"c","items":[{"productId":"a","quantity":1}]}"#,
        )
        .unwrap();
        assert_eq!(with_id.id.as_deref(), Some("my-order"));
    }

    #[test]
    fn every_field_rule_names_the_field() {
        let long = "c".repeat(101);
        let too_many: Vec<String> = (0..101)
            .map(|i| format!(r#"{{"productId":"p{i}","quantity":1}}"#))
            .collect();
        let too_many = format!(r#"{{"customerId":"c","items":[{}]}}"#, too_many.join(","));
        let long_body =
            format!(r#"{{"customerId":"{long}","items":[{{"productId":"a","quantity":1}}]}}"#);
        let cases: Vec<(&str, &str)> = vec![
            (
                r#"{"items":[{"productId":"a","quantity":1}]}"#,
                "customerId",
            ),
            (
                r#"{"customerId":"","items":[{"productId":"a","quantity":1}]}"#,
                "customerId",
            ),
            (
                r#"{"customerId":"  ","items":[{"productId":"a","quantity":1}]}"#,
                "customerId",
            ),
            (
                r#"{"customerId":7,"items":[{"productId":"a","quantity":1}]}"#,
                "customerId",
            ),
            (&long_body, "customerId"),
            (r#"{"customerId":"c"}"#, "items"),
            (r#"{"customerId":"c","items":[]}"#, "items"),
            (r#"{"customerId":"c","items":{}}"#, "items"),
            (&too_many, "items"),
            (r#"{"customerId":"c","items":[3]}"#, "items[0]"),
            (
                r#"{"customerId":"c","items":[{"quantity":1}]}"#,
                "items[0].productId",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a b","quantity":1}]}"#,
                "items[0].productId",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a"}]}"#,
                "items[0].quantity",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":0}]}"#,
                "items[0].quantity",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":2.5}]}"#,
                "items[0].quantity",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":true}]}"#,
                "items[0].quantity",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":2147483648}]}"#,
                "items[0].quantity",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":1,"price":1}]}"#,
                "items[0].price",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":1},{"productId":"a","quantity":2}]}"#,
                "items[1].productId",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":1}],"id":"x/y"}"#,
                "id",
            ),
            (
                r#"{"customerId":"c","items":[{"productId":"a","quantity":1}],"total":1}"#,
                "total",
            ),
        ];
        for (body, field) in cases {
            let e = errors_of(body);
            assert!(e.contains_key(field), "{body}: {e:?}");
            assert_eq!(e.len(), 1, "{body}: only {field} is wrong: {e:?}");
        }
        assert_eq!(parse_new_order(b"[]").unwrap_err().status, 400);
        assert_eq!(parse_new_order(b"{").unwrap_err().status, 400);
    }

    #[test]
    fn stored_text_refuses_control_characters_and_is_capped_in_bytes() {
        let e = errors_of(r#"{"customerId":"a\tb","items":[{"productId":"a","quantity":1}]}"#);
        assert!(e["customerId"][0].contains("control characters"), "{e:?}");
        let ok = format!(
            r#"{{"customerId":"{}","items":[{{"productId":"a","quantity":1}}]}}"#,
            "😀".repeat(100)
        );
        assert!(
            parse_new_order(ok.as_bytes()).is_ok(),
            "100 characters of 4 bytes fit"
        );
        for (reason, bad) in [
            ("line\\nbreak".to_owned(), true),
            ("é".repeat(500), false),
            // 4-byte characters: the character cap binds first.
            ("😀".repeat(500), false),
            ("😀".repeat(501), true),
        ] {
            let body = format!(r#"{{"status":"Cancelled","cancellationReason":"{reason}"}}"#);
            let r = parse_status_change(body.as_bytes(), "o1");
            assert_eq!(r.is_err(), bad, "{reason}");
            if let Err(p) = r {
                assert!(p.errors.contains_key("cancellationReason"), "{p:?}");
            }
        }
    }

    #[test]
    fn fingerprint_tells_bodies_apart() {
        let a = parse_new_order(br#"{"customerId":"c","items":[{"productId":"a","quantity":1}]}"#)
            .unwrap();
        let same =
            parse_new_order(br#"{ "items":[{"quantity":1,"productId":"a"}], "customerId":"c" }"#)
                .unwrap();
        let other =
            parse_new_order(br#"{"customerId":"c","items":[{"productId":"a","quantity":2}]}"#)
                .unwrap();
        assert_eq!(
            a.fingerprint(),
            same.fingerprint(),
            "formatting does not matter"
        );
        assert_ne!(a.fingerprint(), other.fingerprint());
    }

    #[test]
    fn status_change_rules() {
        let c =
            parse_status_change(br#"{"status":"Confirmed","version":3,"id":"o1"}"#, "o1").unwrap();
        assert_eq!(
            c,
            StatusChange {
                status: Status::Confirmed,
                cancellation_reason: None
            }
        );
        let c = parse_status_change(
            br#"{"status":"Cancelled","cancellationReason":"late"}"#,
            "o1",
        )
        .unwrap();
        assert_eq!(c.cancellation_reason.as_deref(), Some("late"));
        let long = format!(
            r#"{{"status":"Cancelled","cancellationReason":"{}"}}"#,
            "r".repeat(501)
        );
        for (body, field) in [
            (r#"{}"#, "status"),
            (r#"{"status":"shipped"}"#, "status"),
            (r#"{"status":5}"#, "status"),
            (
                r#"{"status":"Shipped","cancellationReason":"x"}"#,
                "cancellationReason",
            ),
            (long.as_str(), "cancellationReason"),
            (r#"{"status":"Shipped","id":"o2"}"#, "id"),
            (r#"{"status":"Shipped","items":[]}"#, "items"),
            (r#"{"status":"Shipped","customerId":"x"}"#, "customerId"),
            (r#"{"status":"Shipped","colour":"x"}"#, "colour"),
        ] {
            let p = parse_status_change(body.as_bytes(), "o1").unwrap_err();
            assert_eq!(p.status, 400);
            assert!(p.errors.contains_key(field), "{body}: {p:?}");
            assert_eq!(p.errors.len(), 1, "{body}: {p:?}");
        }
    }

    use service_kit::paging::Start;

    fn query(q: &str) -> Result<ListQuery, Problem> {
        ListQuery::from_request(&Request::new(Method::GET, &format!("/api/orders{q}")))
    }

    #[test]
    fn list_query() {
        let q = query("").unwrap();
        assert_eq!((q.status, q.limit, q.start), (None, 100, Start::Offset(0)));
        let q = query("?status=Shipped&customerId=c%201&productId=p&limit=1000&offset=3").unwrap();
        assert_eq!(q.status, Some(Status::Shipped));
        assert_eq!(q.customer_id.as_deref(), Some("c 1"));
        assert_eq!(q.product_id.as_deref(), Some("p"));
        assert_eq!((q.limit, q.start), (1000, Start::Offset(3)));
        assert_eq!(query("?status=&customerId=").unwrap().status, None);
        assert_eq!(
            query("?cursor=abc").unwrap().start,
            Start::Cursor("abc".into())
        );
        assert_ne!(
            query("?customerId=a").unwrap().filter_text(),
            query("?productId=a").unwrap().filter_text()
        );
        for (q, field) in [
            ("?status=open", "status"),
            ("?productId=a%2Fb", "productId"),
            ("?limit=0", "limit"),
            ("?limit=1001", "limit"),
            ("?offset=-1", "offset"),
            ("?status=Pending&status=Shipped", "status"),
            ("?offset=1&cursor=x", "cursor"),
        ] {
            let p = query(q).unwrap_err();
            assert!(p.errors.contains_key(field), "{q}: {p:?}");
        }
    }

    #[test]
    fn idempotency_key_header() {
        let req = |v: &[&str]| {
            let mut r = Request::new(Method::POST, "/api/orders");
            for v in v {
                r = r.with_header("Idempotency-Key", v);
            }
            r
        };
        assert_eq!(idempotency_key(&req(&[])).unwrap(), None);
        assert_eq!(
            idempotency_key(&req(&["k-1"])).unwrap().as_deref(),
            Some("k-1")
        );
        for bad in [vec![""], vec!["a b"], vec!["a", "b"]] {
            let p = idempotency_key(&req(&bad)).unwrap_err();
            assert!(p.errors.contains_key(IDEMPOTENCY_HEADER), "{bad:?}");
        }
        let long = "k".repeat(256);
        assert!(idempotency_key(&req(&[&long])).is_err());
    }
}
