//! `wasi:messaging` for `spin up`, which has none.
//!
//! Spin composes this component into every service that imports
//! `wasi:messaging` (`[component.X.dependencies]` in `spin.toml`, with
//! `inherit_configuration = ["allowed_outbound_hosts", "variables"]`). Our
//! own host provides `wasi:messaging` natively and never loads it.
//!
//! # How a message travels
//!
//! `producer::send(client, topic, message)` reads the depending component's
//! `wasi:config` variable [`SUBSCRIBERS_VARIABLE`] (`products=order;orders=`:
//! topic `=` comma-separated component ids, topics separated by `;`), and
//! POSTs the message to [`EVENT_PATH`] of each subscriber through Spin's
//! service chaining (`http://<component>.spin.internal`), one after the
//! other, in the listed order. The body is the message data, unchanged;
//! headers carry the rest:
//!
//! | header | value |
//! |---|---|
//! | `content-type` | the message content type (`application/octet-stream` when unset) |
//! | [`TOPIC_HEADER`] | the topic |
//! | [`CLIENT_HEADER`] | the client name the publisher connected with |
//! | [`METADATA_HEADER`] | the metadata, `application/x-www-form-urlencoded` |
//!
//! The subscriber (`service_kit::events::serve_event_route`) turns that
//! request back into a `wasi:messaging` message and calls its own
//! `wasi:messaging/incoming-handler` implementation: 2xx means handled.
//!
//! # Delivery guarantees under Spin
//!
//! Weaker than our host's, on purpose (local development, no broker):
//! - **Synchronous**: `send` returns only after every subscriber answered,
//!   so the subscribers' work runs inside the publisher's request and
//!   delays its response.
//! - **At most once** per subscriber and `send`: one attempt, no retry, no
//!   queue, no dead-letter topic; nothing survives a restart of `spin up`.
//! - **A failing subscriber** (non-2xx, trap, unreachable, or no answer
//!   within [`DELIVERY_TIMEOUT_SECS`]) loses that message; the other
//!   subscribers still get it, then `send` returns an error naming every
//!   failure. A subscriber that timed out may still finish its work.
//! - **No subscriber** for a topic: `send` succeeds and the message is
//!   dropped, as on a broker.
//! - Order: the messages of one request arrive in the order sent;
//!   concurrent requests interleave.
//! - `message.topic()` is `None` on the subscriber side (the WIT message
//!   constructor cannot set it); the topic is in [`TOPIC_HEADER`].

#![warn(missing_docs)]

use std::cell::RefCell;

/// WIT bindings for `wasmshop:platform/messaging-provider`.
#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasmshop:platform/messaging-provider",
        generate_all,
    });
}

use bindings::exports::wasi::messaging::producer;
use bindings::exports::wasi::messaging::types::{
    self, ClientBorrow, Error, GuestClient, GuestMessage, Metadata, Topic,
};

/// The `wasi:config` variable (of the publishing component, inherited by
/// this dependency) that lists each topic's subscribers.
pub const SUBSCRIBERS_VARIABLE: &str = "messaging_subscribers";
/// Where a subscriber receives messages (reached only through chaining).
pub const EVENT_PATH: &str = "/_wasmshop/events";
/// Header carrying the topic.
pub const TOPIC_HEADER: &str = "x-wasmshop-topic";
/// Header carrying the messaging client name.
pub const CLIENT_HEADER: &str = "x-wasmshop-client";
/// Header carrying the message metadata, form-urlencoded.
pub const METADATA_HEADER: &str = "x-wasmshop-metadata";
/// How long one subscriber may take to answer.
pub const DELIVERY_TIMEOUT_SECS: u64 = 30;

/// Subscribers of each topic, in the order listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions(Vec<(String, Vec<String>)>);

impl Subscriptions {
    /// Parses `topic=a,b;topic2=c` (whitespace around items is ignored; a
    /// topic may have no subscriber). The error says what to fix.
    pub fn parse(text: &str) -> Result<Subscriptions, String> {
        let mut topics: Vec<(String, Vec<String>)> = Vec::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((topic, components)) = entry.split_once('=') else {
                return Err(format!(
                    "'{entry}' has no '='; write topic=component[,component...]"
                ));
            };
            let topic = topic.trim();
            if topic.is_empty() {
                return Err(format!("'{entry}' names no topic before '='"));
            }
            if topics.iter().any(|(t, _)| t == topic) {
                return Err(format!(
                    "topic '{topic}' is listed twice; list all its subscribers once, e.g. {topic}=a,b"
                ));
            }
            let mut ids = Vec::new();
            for id in components
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
            {
                if !is_component_id(id) {
                    return Err(format!(
                        "'{id}' (topic '{topic}') is not a Spin component id: use lower-case letters, digits, '-' and '_', starting with a letter"
                    ));
                }
                ids.push(id.to_owned());
            }
            topics.push((topic.to_owned(), ids));
        }
        Ok(Subscriptions(topics))
    }

    /// The components subscribed to `topic` (none if it is not listed).
    pub fn subscribers(&self, topic: &str) -> &[String] {
        self.0
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, c)| c.as_slice())
            .unwrap_or(&[])
    }
}

/// Spin's component id rule (a kebab/snake id), which keeps the chaining
/// host name valid.
fn is_component_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Metadata as the value of [`METADATA_HEADER`].
pub fn encode_metadata(metadata: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(metadata)
        .finish()
}

/// The adapter (all exports).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Adapter;

/// A client only remembers its name: there is no connection to hold.
pub struct Client {
    name: String,
}

/// A message under construction or in flight.
pub struct Message {
    data: RefCell<Vec<u8>>,
    content_type: RefCell<Option<String>>,
    metadata: RefCell<Vec<(String, String)>>,
}

impl types::Guest for Adapter {
    type Client = Client;
    type Message = Message;
}

impl GuestClient for Client {
    fn connect(name: String) -> Result<types::Client, Error> {
        if name.is_empty() {
            return Err(Error::Other(
                "the messaging client name is empty; pass the client name from spin.toml, e.g. product-pubsub".into(),
            ));
        }
        Ok(types::Client::new(Client { name }))
    }

    fn disconnect(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl GuestMessage for Message {
    fn new(data: Vec<u8>) -> Self {
        Message {
            data: RefCell::new(data),
            content_type: RefCell::new(None),
            metadata: RefCell::new(Vec::new()),
        }
    }

    fn topic(&self) -> Option<Topic> {
        None
    }

    fn content_type(&self) -> Option<String> {
        self.content_type.borrow().clone()
    }

    fn set_content_type(&self, content_type: String) {
        *self.content_type.borrow_mut() = Some(content_type);
    }

    fn data(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }

    fn set_data(&self, data: Vec<u8>) {
        *self.data.borrow_mut() = data;
    }

    fn metadata(&self) -> Option<Metadata> {
        let m = self.metadata.borrow();
        (!m.is_empty()).then(|| m.clone())
    }

    fn add_metadata(&self, key: String, value: String) {
        let mut m = self.metadata.borrow_mut();
        match m.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => m.push((key, value)),
        }
    }

    fn set_metadata(&self, meta: Metadata) {
        *self.metadata.borrow_mut() = meta;
    }

    fn remove_metadata(&self, key: String) {
        self.metadata.borrow_mut().retain(|(k, _)| *k != key);
    }
}

impl producer::Guest for Adapter {
    fn send(c: ClientBorrow<'_>, topic: Topic, message: types::Message) -> Result<(), Error> {
        let client: &Client = c.get();
        let message: Message = message.into_inner();
        let subscriptions = read_subscriptions()?;
        let mut failures = Vec::new();
        for component in subscriptions.subscribers(&topic) {
            if let Err(e) = deliver(component, &client.name, &topic, &message) {
                failures.push(e);
            }
        }
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            _ => Err(Error::Other(
                failures.iter().map(describe).collect::<Vec<_>>().join("; "),
            )),
        }
    }
}

fn describe(e: &Error) -> String {
    match e {
        Error::Timeout => "timed out".into(),
        Error::Connection(m) | Error::PermissionDenied(m) | Error::Other(m) => m.clone(),
    }
}

fn read_subscriptions() -> Result<Subscriptions, Error> {
    use bindings::wasi::config::store;
    let text = match store::get(SUBSCRIBERS_VARIABLE) {
        Ok(Some(text)) => text,
        Ok(None) => {
            return Err(Error::Other(format!(
                "the messaging adapter found no '{SUBSCRIBERS_VARIABLE}' variable; declare it in [component.<publisher>.variables] of spin.toml (e.g. \"products=order\", or \"\" for none) and list \"variables\" in the dependency's inherit_configuration"
            )));
        }
        Err(e) => {
            return Err(Error::Other(format!(
                "the messaging adapter could not read '{SUBSCRIBERS_VARIABLE}': {e:?}; list \"variables\" in the dependency's inherit_configuration"
            )));
        }
    };
    Subscriptions::parse(&text)
        .map_err(|m| Error::Other(format!("variable '{SUBSCRIBERS_VARIABLE}' is invalid: {m}")))
}

/// One POST to a subscriber's event route.
fn deliver(component: &str, client: &str, topic: &str, message: &Message) -> Result<(), Error> {
    use bindings::wasi::clocks::monotonic_clock;
    use bindings::wasi::http::outgoing_handler;
    use bindings::wasi::http::types::{
        ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use bindings::wasi::io::poll;

    let url = format!("http://{component}.spin.internal{EVENT_PATH}");
    let content_type = message
        .content_type
        .borrow()
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let headers: Vec<(String, Vec<u8>)> = vec![
        ("content-type".into(), content_type.into_bytes()),
        (TOPIC_HEADER.into(), topic.as_bytes().to_vec()),
        (CLIENT_HEADER.into(), client.as_bytes().to_vec()),
        (
            METADATA_HEADER.into(),
            encode_metadata(&message.metadata.borrow()).into_bytes(),
        ),
    ];
    let fields = Fields::from_list(&headers).map_err(|e| {
        Error::Other(format!(
            "topic '{topic}' or the client name is not a valid HTTP header value ({e:?}); use printable ASCII"
        ))
    })?;
    let request = OutgoingRequest::new(fields);
    let invalid = |what: &str| Error::Other(format!("{url}: the host refused the {what}"));
    request
        .set_method(&Method::Post)
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(&format!("{component}.spin.internal")))
        .map_err(|()| invalid("authority"))?;
    request
        .set_path_with_query(Some(EVENT_PATH))
        .map_err(|()| invalid("path"))?;
    let body = request.body().expect("a new request's body is available");

    let nanos = DELIVERY_TIMEOUT_SECS * 1_000_000_000;
    let options = RequestOptions::new();
    // Spin may not support every timeout; the deadline below still holds.
    let _ = options.set_first_byte_timeout(Some(nanos));

    let code_error = |code: ErrorCode| match code {
        ErrorCode::HttpRequestDenied => Error::PermissionDenied(format!(
            "{url} is not allowed: add \"http://{component}.spin.internal\" to the publishing component's allowed_outbound_hosts in spin.toml and list \"allowed_outbound_hosts\" in the messaging dependency's inherit_configuration"
        )),
        other => Error::Connection(format!(
            "delivery of topic '{topic}' to '{component}' failed: {other:?}; is '{component}' a component with an HTTP trigger (e.g. route = {{ private = true }})?"
        )),
    };
    let future = outgoing_handler::handle(request, Some(options)).map_err(code_error)?;
    {
        let stream = body
            .write()
            .map_err(|()| Error::Other(format!("{url}: the request body was taken")))?;
        for chunk in message.data.borrow().chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| {
                Error::Connection(format!("{url}: sending the message failed: {e:?}"))
            })?;
        }
    }
    OutgoingBody::finish(body, None)
        .map_err(|e| Error::Connection(format!("{url}: finishing the message failed: {e:?}")))?;

    let ready = future.subscribe();
    let deadline = monotonic_clock::subscribe_duration(nanos);
    while !ready.ready() {
        poll::poll(&[&ready, &deadline]);
        if !ready.ready() && deadline.ready() {
            return Err(Error::Timeout);
        }
    }
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(code))) => return Err(code_error(code)),
        Some(Err(())) | None => {
            return Err(Error::Connection(format!(
                "{url}: the host lost the response"
            )));
        }
    };
    let status = response.status();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let detail = read_excerpt(&response);
    Err(Error::Other(format!(
        "subscriber '{component}' answered {status} to a message of topic '{topic}' (not redelivered under Spin): {detail}"
    )))
}

/// The start of a response body, for error messages.
fn read_excerpt(response: &bindings::wasi::http::types::IncomingResponse) -> String {
    let Ok(body) = response.consume() else {
        return String::new();
    };
    let Ok(stream) = body.stream() else {
        return String::new();
    };
    let mut buf = Vec::new();
    while buf.len() < 1024 {
        match stream.blocking_read(1024) {
            Ok(chunk) => buf.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    buf.truncate(1024);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(target_arch = "wasm32")]
bindings::export!(Adapter with_types_in bindings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topics_and_subscribers() {
        let s = Subscriptions::parse(" products = order, audit ; orders= ").unwrap();
        assert_eq!(s.subscribers("products"), ["order", "audit"]);
        assert!(s.subscribers("orders").is_empty());
        assert!(s.subscribers("unknown").is_empty());
        assert_eq!(Subscriptions::parse("").unwrap(), Subscriptions::default());
    }

    #[test]
    fn rejects_what_cannot_be_delivered() {
        assert!(
            Subscriptions::parse("products")
                .unwrap_err()
                .contains("no '='")
        );
        assert!(
            Subscriptions::parse("=order")
                .unwrap_err()
                .contains("no topic")
        );
        assert!(
            Subscriptions::parse("products=Order")
                .unwrap_err()
                .contains("not a Spin component id")
        );
        assert!(
            Subscriptions::parse("products=a;products=b")
                .unwrap_err()
                .contains("listed twice")
        );
    }

    #[test]
    fn metadata_survives_any_text() {
        let encoded = encode_metadata(&[
            ("ce-type".into(), "ProductDeleted".into()),
            ("odd key&=".into(), "é ; ,".into()),
        ]);
        let back: Vec<(String, String)> = form_urlencoded::parse(encoded.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(back[1], ("odd key&=".into(), "é ; ,".into()));
        assert!(encoded.is_ascii());
    }
}
