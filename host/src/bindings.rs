//! Host-side bindings of `wit/`, generated from the same files the guests
//! are built against, so host and guests cannot drift apart. `wasi:http`
//! and the WASI CLI interfaces come from `wasmtime-wasi(-http)`.

#![allow(missing_docs)]

mod platform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmshop:platform/platform-imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::Bucket,
            "wasi:keyvalue/atomics.cas": crate::capabilities::keyvalue::Cas,
            "wasi:messaging/types.client": crate::capabilities::messaging::Client,
            "wasi:messaging/types.message": crate::capabilities::messaging::Message,
        },
    });
}

mod subscriber {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmshop:platform/subscriber",
        exports: { default: async },
        with: {
            "wasi:messaging/types": super::platform::wasi::messaging::types,
        },
    });
}

pub use platform::wasi::{config, keyvalue, messaging};
pub use subscriber::{Subscriber, SubscriberPre};
