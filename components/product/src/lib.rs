//! The WasmShop product catalog component (DESIGN §4): CRUD over products,
//! stock reservations and product events, per tenant.
//!
//! The business rules live in plain modules ([`domain`], [`validation`],
//! [`reservation`], [`index`], [`api`]) that run natively in unit tests;
//! this file is the thin glue to the WIT world.

#![warn(missing_docs)]

pub mod api;
pub mod domain;
pub mod index;
pub mod reservation;
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
            api::Api::new(&store, &events).handle(&req)
        });
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
