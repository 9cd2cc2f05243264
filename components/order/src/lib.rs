//! The WasmShop order component: orders placed against the product
//! service (price snapshot, stock held then confirmed, compensation),
//! their status machine, order events, and reactions to product events.
//! How it stores them is in `docs/storage-layout.md`.
//!
//! The business rules live in plain modules ([`domain`], [`validation`],
//! [`store`], [`products`], [`service`], [`create`], [`api`],
//! [`reactions`], [`migration`]) that run natively in unit tests; this
//! file is the thin glue to the WIT world.

pub mod api;
pub mod create;
pub mod domain;
mod indexing;
pub mod migration;
pub mod products;
pub mod reactions;
pub mod service;
pub mod store;
pub mod validation;

use service_kit::bindings::exports::wasi::http::incoming_handler;
use service_kit::bindings::exports::wasi::messaging::incoming_handler as messaging_handler;
use service_kit::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};
use service_kit::bindings::wasi::messaging::types::{Error as MessagingError, Message};
use service_kit::events::{MessagingSink, PUBSUB_CLIENT};
use service_kit::kv::{DEFAULT_STORE, WasiStore};
use service_kit::pages::MAX_PAGE_CAPACITY;
use service_kit::problem::Problem;

use crate::products::WasiTransport;
use crate::reactions::Outcome;
use crate::service::{OrderService, Settings};

/// The exported component. Exported only when compiling to WebAssembly:
/// the export symbols' names (`wasi:http/...`) cannot be linked into a
/// native library, and native builds are for unit tests.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

impl incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Under `spin up` product events arrive here, on the private event
        // route, from the messaging adapter: same handler as the host's.
        if service_kit::events::is_event_route(&request) {
            return service_kit::events::serve_event_route(
                request,
                response_out,
                <Component as messaging_handler::Guest>::handle,
            );
        }
        service_kit::wasi_http::serve(request, response_out, |req| {
            let store = match WasiStore::open(DEFAULT_STORE) {
                Ok(store) => store,
                Err(e) => return Problem::from(e).to_response(),
            };
            let events = MessagingSink::new(PUBSUB_CLIENT);
            OrderService::with_settings(&store, &events, &WasiTransport, settings()).handle(&req)
        });
    }
}

/// Deliveries of the `products` subscription. An error makes the host
/// redeliver later; an event that can never be handled is acknowledged.
impl messaging_handler::Guest for Component {
    fn handle(message: Message) -> Result<(), MessagingError> {
        let store =
            WasiStore::open(DEFAULT_STORE).map_err(|e| MessagingError::Other(e.to_string()))?;
        let events = MessagingSink::new(PUBSUB_CLIENT);
        let service = OrderService::with_settings(&store, &events, &WasiTransport, settings());
        match service.on_product_event(&message.data()) {
            Ok(Outcome::Ignored(why)) => {
                eprintln!("order: product event dropped: {why}");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                eprintln!("order: product event will be retried: {e}");
                Err(MessagingError::Other(e))
            }
        }
    }
}

/// The settings, with `index_page_capacity` (entries per index page) from
/// the component's variables when set; a missing or invalid value keeps
/// the default, with a log line for the invalid one.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn settings() -> Settings {
    let mut settings = Settings::default();
    let name = "index_page_capacity";
    match service_kit::bindings::wasi::config::store::get(name) {
        Ok(Some(v)) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_CAPACITY).contains(&n) => settings.page_capacity = n,
            _ => eprintln!(
                "order: variable {name} = '{v}' is not a whole number from 1 to {MAX_PAGE_CAPACITY}; using {}. Fix it in [variables] of spin.toml or the SPIN_VARIABLE_INDEX_PAGE_CAPACITY environment variable",
                settings.page_capacity
            ),
        },
        Ok(None) => {}
        Err(e) => eprintln!("order: variable {name} could not be read ({e:?}); using the default"),
    }
    settings
}

#[cfg(target_arch = "wasm32")]
service_kit::export!(Component with_types_in service_kit::bindings);

#[cfg(test)]
mod tests;
