//! The WasmShop product catalog component: CRUD over products, paged
//! lists, stock reservations (hold / confirm / release with expiry) and
//! product events, per tenant (docs/storage-layout.md).
//!
//! The business rules live in plain modules ([`domain`], [`validation`],
//! [`index`], [`api`]) that run natively in unit tests; this file is the
//! thin glue to the WIT world, including reading the component variables
//! into [`api::Settings`]:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `reservation_hold_seconds` | how long an unconfirmed hold lasts | 120 |
//! | `reservation_max_holds` | most unconfirmed holds per product (at most 100) | 100 |
//! | `index_page_capacity` | entries per index page (at most 512) | 32 |

#![warn(missing_docs)]

pub mod api;
pub mod domain;
pub mod index;
pub mod validation;

use service_kit::bindings::exports::wasi::http::incoming_handler;
use service_kit::bindings::exports::wasi::messaging::incoming_handler as messaging_handler;
use service_kit::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};
use service_kit::bindings::wasi::messaging::types::{Error as MessagingError, Message};
use service_kit::events::{MessagingSink, PUBSUB_CLIENT};
use service_kit::kv::{DEFAULT_STORE, WasiStore};
use service_kit::problem::Problem;

/// The exported component. Exported only when compiling to WebAssembly:
/// the export symbols' names (`wasi:http/...`) cannot be linked into a
/// native library, and native builds are for unit tests.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

impl incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        service_kit::wasi_http::serve(request, response_out, |req| {
            let store = match WasiStore::open(DEFAULT_STORE) {
                Ok(store) => store,
                Err(e) => return Problem::from(e).to_response(),
            };
            let events = MessagingSink::new(PUBSUB_CLIENT);
            api::Api::new(&store, &events, settings()).handle(&req)
        });
    }
}

/// The settings from the component variables; a variable that is not
/// declared keeps its default, and one that does not parse keeps it too,
/// with a log line saying what to fix.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn settings() -> api::Settings {
    let defaults = api::Settings::default();
    api::Settings {
        hold_seconds: variable(
            "reservation_hold_seconds",
            defaults.hold_seconds,
            1,
            u64::MAX,
        ),
        max_holds: variable("reservation_max_holds", defaults.max_holds, 1, usize::MAX)
            .min(domain::product::MAX_HOLDS_CEILING),
        page_capacity: variable(
            "index_page_capacity",
            defaults.page_capacity,
            1,
            service_kit::pages::MAX_PAGE_CAPACITY,
        ),
        ..defaults
    }
}

/// A whole-number component variable from `min` to `max`, read through
/// `wasi:config/store`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn variable<T>(name: &str, default: T, min: T, max: T) -> T
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    use service_kit::bindings::wasi::config::store;
    match store::get(name) {
        Ok(None) => default,
        Ok(Some(text)) => match text.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                eprintln!(
                    "product: variable '{name}' is '{text}', not a whole number from {min} to {max}; using {default}. Fix it in [variables] of spin.toml or the SPIN_VARIABLE_{} environment variable",
                    name.to_ascii_uppercase()
                );
                default
            }
        },
        Err(e) => {
            eprintln!("product: variable '{name}' could not be read ({e:?}); using {default}");
            default
        }
    }
}

/// The product service subscribes to no topic; a delivery is acknowledged
/// and ignored so a misrouted message is not retried forever.
impl messaging_handler::Guest for Component {
    fn handle(_message: Message) -> Result<(), MessagingError> {
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
service_kit::export!(Component with_types_in service_kit::bindings);
