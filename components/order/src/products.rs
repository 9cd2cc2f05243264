//! Calls to the product service at `http://product.spin.internal` (the host
//! dispatches them in-process or through Dapr service invocation).
//!
//! Every call carries the tenant in `X-Tenant-Id`. Transport failures and
//! 5xx answers (but a 503 with `Retry-After`) are retried a few times with
//! a short pause; reserve, confirm and release are idempotent per
//! reservation id at the product service (the contract is in
//! `docs/storage-layout.md`, "Reservations"), so a retry never takes stock
//! twice.

use std::time::Duration;

use serde::Deserialize;
use service_kit::client::{Call, ClientError};
use service_kit::money::Money;
use service_kit::problem::Problem;
use service_kit::tenant::TenantId;
use service_kit::web::Response;

/// Base URL of the product service.
pub const PRODUCT_BASE: &str = "http://product.spin.internal";

/// Sends one HTTP call; the seam that native tests replace.
pub trait Transport {
    /// Sends `call` and returns the whole response, whatever its status.
    fn send(&self, call: &Call) -> Result<Response, ClientError>;
}

/// The real transport: `wasi:http/outgoing-handler`.
pub struct WasiTransport;

impl Transport for WasiTransport {
    fn send(&self, call: &Call) -> Result<Response, ClientError> {
        call.clone().send()
    }
}

/// What the order needs of a product (the rest of its JSON is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductInfo {
    /// Id.
    pub id: String,
    /// Current name.
    pub name: String,
    /// Current price.
    pub price: Money,
    /// Currency of the price.
    pub currency: String,
    /// Version, to order renames.
    pub version: u64,
    /// Creation time: the product's *incarnation*. A product deleted and
    /// re-created under the same id has a new one, so a late
    /// `ProductDeleted` of the old product never touches orders of the
    /// new one. Empty when the product service does not send it.
    #[serde(default)]
    pub created_at: String,
}

/// A hold (or confirmed sale) as the product service reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reserved {
    /// Units taken.
    pub quantity: i64,
    /// The price per unit when the units were taken: the order's snapshot.
    pub unit_price: Money,
    /// Its currency.
    pub currency: String,
    /// The product as the reservation found it; `None` from a product
    /// service that does not send it (the order then reads the product).
    #[serde(default)]
    pub product: Option<ReservedProduct>,
}

/// The product fields of a reserve answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservedProduct {
    /// Its name.
    pub name: String,
    /// Its version when the product service answered (after the hold,
    /// for a new one), to order renames.
    pub version: u64,
    /// Its creation time: the incarnation ([`ProductInfo::created_at`]).
    #[serde(default)]
    pub created_at: String,
}

/// Why a reservation (or its confirmation) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The product does not exist (any more); its holds went with it.
    NotFound,
    /// A 409 from the product service (`insufficient-stock`,
    /// `reservation-released`, `reservation-expired`,
    /// `reservation-conflict`, `reservation-unknown`); its problem is kept.
    Conflict(Problem),
    /// A 503 carrying `Retry-After`: the product holds too many unconfirmed
    /// holds right now. Not retried here; the client is told when to retry.
    Busy {
        /// The product service's `Retry-After` value (seconds or a date).
        retry_after: String,
        /// The product service's problem.
        problem: Problem,
    },
}

impl Refused {
    /// The problem slug of a [`Refused::Conflict`] (`reservation-expired`,
    /// …), or `""`.
    pub fn slug(&self) -> &str {
        match self {
            Refused::Conflict(p) => p
                .kind
                .strip_prefix(service_kit::problem::TYPE_PREFIX)
                .unwrap_or(""),
            _ => "",
        }
    }
}

/// The product service could not answer usefully; a 503 for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl From<Unavailable> for Problem {
    fn from(u: Unavailable) -> Problem {
        Problem::unavailable(format!(
            "the product service is unavailable ({}); retry shortly",
            u.0
        ))
    }
}

/// How calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// Attempts per call, first included.
    pub attempts: u32,
    /// Pause before the second attempt; doubles after.
    pub pause: Duration,
    /// Deadline of one attempt.
    pub timeout: Duration,
}

impl Default for CallPolicy {
    /// Three attempts within a few seconds: long enough to ride out a
    /// restart blip, short enough that a client is not kept waiting.
    fn default() -> Self {
        CallPolicy {
            attempts: 3,
            pause: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The product service, as the order uses it.
pub struct Products<'a, T> {
    transport: &'a T,
    policy: CallPolicy,
}

impl<'a, T: Transport> Products<'a, T> {
    /// A client over `transport`.
    pub fn new(transport: &'a T, policy: CallPolicy) -> Self {
        Products { transport, policy }
    }

    /// `GET /api/products/{id}`: `Ok(None)` when it does not exist.
    pub fn product(&self, tenant: &TenantId, id: &str) -> Result<Option<ProductInfo>, Unavailable> {
        let url = format!("{PRODUCT_BASE}/api/products/{id}");
        let r = self.send(tenant, Call::get(url))?;
        match r.status.as_u16() {
            200 => r
                .json_body()
                .map(Some)
                .map_err(|e| Unavailable(format!("product '{id}' came back unreadable: {e}"))),
            404 => Ok(None),
            _ => Err(unexpected("reading product", id, &r)),
        }
    }

    /// `POST /api/products/{id}/reservations` `{orderId, quantity}`: takes
    /// an unconfirmed hold under `reservation_id` (201), or finds it again
    /// (200; idempotent, also once confirmed).
    pub fn reserve(
        &self,
        tenant: &TenantId,
        product_id: &str,
        reservation_id: &str,
        quantity: i64,
    ) -> Result<Result<Reserved, Refused>, Unavailable> {
        let url = format!("{PRODUCT_BASE}/api/products/{product_id}/reservations");
        let call = Call::post(url).json(&serde_json::json!({
            "orderId": reservation_id,
            "quantity": quantity,
        }));
        let r = self.send(tenant, call)?;
        match r.status.as_u16() {
            200 | 201 => r.json_body().map(Ok).map_err(|e| {
                Unavailable(format!(
                    "reservation of '{product_id}' came back unreadable: {e}"
                ))
            }),
            _ => refusal("reserving", product_id, &r).map(Err),
        }
    }

    /// `POST /api/products/{id}/reservations/{rid}/confirm`: turns the hold
    /// into a sale (idempotent). `Refused::NotFound` when the product is
    /// gone; `Refused::Conflict` with `reservation-expired`,
    /// `reservation-released` or `reservation-unknown` when no hold is left
    /// to confirm.
    pub fn confirm(
        &self,
        tenant: &TenantId,
        product_id: &str,
        reservation_id: &str,
    ) -> Result<Result<(), Refused>, Unavailable> {
        let url = format!(
            "{PRODUCT_BASE}/api/products/{product_id}/reservations/{reservation_id}/confirm"
        );
        let r = self.send(tenant, Call::post(url))?;
        match r.status.as_u16() {
            200..=299 => Ok(Ok(())),
            _ => refusal("confirming", product_id, &r).map(Err),
        }
    }

    /// `DELETE /api/products/{id}/reservations/{rid}[?confirmedQuantity=n]`;
    /// idempotent at the product service (204 also when nothing is held).
    /// `confirmed` is the quantity of a *confirmed* sale, so the product
    /// returns it even after it forgot the reservation; pass `None` for a
    /// hold that may be unconfirmed (an unknown one then leaves a tombstone,
    /// so a late reserve under the id is refused).
    pub fn release(
        &self,
        tenant: &TenantId,
        product_id: &str,
        reservation_id: &str,
        confirmed: Option<i64>,
    ) -> Result<(), Unavailable> {
        let mut url =
            format!("{PRODUCT_BASE}/api/products/{product_id}/reservations/{reservation_id}");
        if let Some(n) = confirmed {
            url.push_str(&format!("?confirmedQuantity={n}"));
        }
        let r = self.send(tenant, Call::delete(url))?;
        match r.status.as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(unexpected("releasing", product_id, &r)),
        }
    }

    /// Sends with the tenant header, retrying transport failures and 5xx.
    fn send(&self, tenant: &TenantId, call: Call) -> Result<Response, Unavailable> {
        let call = call.tenant(tenant).timeout(self.policy.timeout);
        let mut pause = self.policy.pause;
        let mut last = String::new();
        for attempt in 0..self.policy.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(pause);
                pause = pause.saturating_mul(2);
            }
            match self.transport.send(&call) {
                // "Come back later" is the client's to honour, not ours.
                Ok(r) if r.status.as_u16() == 503 && r.header("retry-after").is_some() => {
                    return Ok(r);
                }
                Ok(r) if r.status.is_server_error() => {
                    last = format!("{} {} answered {}", call.method, call.url, r.status);
                }
                Ok(r) => return Ok(r),
                Err(e) if e.is_transient() => last = e.to_string(),
                Err(e) => return Err(Unavailable(e.to_string())),
            }
        }
        Err(Unavailable(format!(
            "{last}, after {} attempts",
            self.policy.attempts.max(1)
        )))
    }
}

/// The refusal a reserve or confirm answer stands for; anything else is
/// [`Unavailable`].
fn refusal(what: &str, product_id: &str, r: &Response) -> Result<Refused, Unavailable> {
    let problem = || {
        r.json_body::<Problem>().unwrap_or_else(|_| {
            Problem::conflict(
                "insufficient-stock",
                format!("product '{product_id}' refused the reservation"),
            )
        })
    };
    match r.status.as_u16() {
        404 => Ok(Refused::NotFound),
        409 => Ok(Refused::Conflict(problem())),
        503 => match r.header("retry-after") {
            Some(after) => Ok(Refused::Busy {
                retry_after: after.to_owned(),
                problem: r.json_body::<Problem>().unwrap_or_else(|_| {
                    Problem::unavailable(format!(
                        "product '{product_id}' holds too many unconfirmed reservations; retry after {after}"
                    ))
                }),
            }),
            None => Err(unexpected(what, product_id, r)),
        },
        _ => Err(unexpected(what, product_id, r)),
    }
}

fn unexpected(what: &str, id: &str, r: &Response) -> Unavailable {
    let status = r.status;
    let detail = r
        .json_body::<Problem>()
        .map(|p| p.detail)
        .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).chars().take(200).collect());
    Unavailable(format!(
        "{what} '{id}' got an unexpected {status}: {detail}"
    ))
}
