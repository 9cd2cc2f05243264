//! Request plumbing every service repeats: the request context (tenant and
//! trace), the 405 answer with `Allow`, HEAD answered as GET, conditional
//! requests (`If-Match`, `If-None-Match`, RFC 9110 §13) and the
//! compare-and-swap update of a live record (404 once gone, 412 once its
//! preconditions fail).

use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::etag::{etag, if_match_allows, if_none_match_matches};
use crate::kv::{Change, KvStore, Retry, update_json};
use crate::problem::Problem;
use crate::tenant::TenantId;
use crate::trace::traceparent_from;
use crate::web::{Request, Response};

/// What one request is about: whose data, and which trace its events join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    /// The tenant whose data is touched (`X-Tenant-Id`, default `default`).
    pub tenant: TenantId,
    /// W3C trace context carried onto events (the request's, or a new one).
    pub traceparent: String,
}

impl Ctx {
    /// The context of `req`, or a 400 naming `X-Tenant-Id` when invalid.
    pub fn from_request(req: &Request) -> Result<Ctx, Problem> {
        Ok(Ctx {
            tenant: TenantId::from_headers(&req.headers)?,
            traceparent: traceparent_from(&req.headers),
        })
    }
}

/// The 405 answer with its `Allow` header (`allowed` e.g. `"GET, HEAD,
/// POST"`, RFC 9110 §15.5.6), as the `Ok` of a route so routers can
/// return it directly.
pub fn not_allowed(method: &Method, allowed: &str) -> Result<Response, Problem> {
    Ok(Problem::method_not_allowed_response(method, allowed))
}

/// Whether a route serving GET serves `method`: GET and HEAD (RFC 9110
/// §9.3.2: a server supports HEAD wherever it supports GET). A HEAD
/// response is the GET response without its body; [`crate::web::for_method`]
/// drops the body on the way out.
pub fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The conditional headers of a request (RFC 9110 §13.1), each the joined
/// header value (`None` when absent). Evaluated in the order of §13.2.2:
/// `If-Match` first (strong comparison, 412 when false), then
/// `If-None-Match` (weak comparison; when it matches, 304 for GET/HEAD
/// and 412 for any other method). `If-Modified-Since` and
/// `If-Unmodified-Since` are ignored: the services send no
/// `Last-Modified`. Callers evaluate them after deciding the resource
/// exists (a 404 wins, §13.2.1) and before reading the body (400).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// The `If-Match` header, comma-joined.
    pub if_match: Option<String>,
    /// The `If-None-Match` header, comma-joined.
    pub if_none_match: Option<String>,
}

/// What a read (GET/HEAD) answers after its preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Send the representation (200).
    Full,
    /// `If-None-Match` matched: send 304 with the ETag and no body.
    NotModified,
}

impl Conditions {
    /// No preconditions: every check passes.
    pub const NONE: Conditions = Conditions {
        if_match: None,
        if_none_match: None,
    };

    /// The conditional headers of `req`.
    pub fn from_request(req: &Request) -> Conditions {
        Conditions {
            if_match: req.header_joined("if-match"),
            if_none_match: req.header_joined("if-none-match"),
        }
    }

    /// The preconditions of a state-changing request (PUT, DELETE) on
    /// `what` (e.g. `product 'p1'`) at `version`: `Ok` to go ahead, else
    /// the 412 saying which header failed and what to do. Nothing may
    /// change when this fails.
    pub fn check_write(&self, version: u64, what: &str) -> Result<(), Problem> {
        self.check_if_match(version, what)?;
        match &self.if_none_match {
            Some(inm) if if_none_match_matches(inm, version) => {
                Err(Problem::precondition_failed(if inm.trim() == "*" {
                    format!(
                        "If-None-Match: * refuses to change {what}, which exists (ETag {}); nothing was changed. Send If-Match with that ETag to change it",
                        etag(version)
                    )
                } else {
                    format!(
                        "If-None-Match {inm} matches the current ETag {} of {what}; nothing was changed. Send If-Match with that ETag to change it",
                        etag(version)
                    )
                }))
            }
            _ => Ok(()),
        }
    }

    /// The preconditions of a GET or HEAD of `what` at `version`: 412 when
    /// `If-Match` fails, [`Read::NotModified`] when `If-None-Match`
    /// matches (the client's copy is current), else [`Read::Full`].
    pub fn check_read(&self, version: u64, what: &str) -> Result<Read, Problem> {
        self.check_if_match(version, what)?;
        Ok(match &self.if_none_match {
            Some(inm) if if_none_match_matches(inm, version) => Read::NotModified,
            _ => Read::Full,
        })
    }

    /// The answer to a GET/HEAD of `what` at `version` whose full
    /// response `full` builds: the 304 (ETag, no body) when the client's
    /// copy is current, the 412 when `If-Match` fails, else `full()`.
    pub fn respond_read(
        &self,
        version: u64,
        what: &str,
        full: impl FnOnce() -> Response,
    ) -> Result<Response, Problem> {
        Ok(match self.check_read(version, what)? {
            Read::Full => full(),
            Read::NotModified => not_modified(version),
        })
    }

    fn check_if_match(&self, version: u64, what: &str) -> Result<(), Problem> {
        check_if_match(self.if_match.as_deref(), version, what)
    }
}

/// The 304 answer (RFC 9110 §15.4.5): no body, the ETag the 200 would
/// have carried.
pub fn not_modified(version: u64) -> Response {
    Response::empty(StatusCode::NOT_MODIFIED).with_header("etag", &etag(version))
}

/// `Ok` when `if_match` (the joined `If-Match` header, `None` when absent)
/// allows changing `what` (e.g. `product 'p1'`) at `version`; else the
/// 412 telling the client to read the new ETag.
pub fn check_if_match(if_match: Option<&str>, version: u64, what: &str) -> Result<(), Problem> {
    if if_match_allows(if_match, version) {
        Ok(())
    } else {
        Err(Problem::precondition_failed(format!(
            "If-Match {} does not match the current ETag {} of {what}; nothing was changed. GET it again and retry with the new ETag",
            if_match.unwrap_or_default(),
            etag(version)
        )))
    }
}

/// A stored document that may hold a live record (or a tombstone).
pub trait Document: Serialize + DeserializeOwned {
    /// The live record type.
    type Live;
    /// The live record, or `None` for a tombstone.
    fn into_live(self) -> Option<Self::Live>;
    /// The live record's version (its ETag without quotes).
    fn version_of(live: &Self::Live) -> u64;
}

/// Compare-and-swaps the live record at `key`: `gone()` (a 404) when it
/// is absent or a tombstone, the 412 of [`Conditions::check_write`] when
/// the request's preconditions fail against it (`what` names it), else
/// `step` decides. `step` may
/// run several times (once per lost race), so it must be free of side
/// effects. Contention beyond `retry` is a 503.
pub fn update_live<S, D, R>(
    store: &S,
    key: &str,
    retry: &Retry,
    conditions: &Conditions,
    what: &str,
    gone: impl Fn() -> Problem,
    mut step: impl FnMut(D::Live) -> Result<Change<D, R>, Problem>,
) -> Result<R, Problem>
where
    S: KvStore,
    D: Document,
{
    Ok(update_json(store, key, retry, |doc: Option<D>| {
        let live = doc.and_then(D::into_live).ok_or_else(&gone)?;
        conditions.check_write(D::version_of(&live), what)?;
        step(live)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{MemoryStore, get_json, put_json};
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Doc {
        version: u64,
        deleted: bool,
    }

    impl Document for Doc {
        type Live = Doc;
        fn into_live(self) -> Option<Doc> {
            (!self.deleted).then_some(self)
        }
        fn version_of(live: &Doc) -> u64 {
            live.version
        }
    }

    fn bump(store: &MemoryStore, if_match: Option<&str>) -> Result<u64, Problem> {
        let conditions = Conditions {
            if_match: if_match.map(str::to_owned),
            if_none_match: None,
        };
        bump_if(store, &conditions)
    }

    fn bump_if(store: &MemoryStore, conditions: &Conditions) -> Result<u64, Problem> {
        update_live(
            store,
            "k",
            &Retry::default(),
            conditions,
            "thing 'k'",
            || Problem::not_found("no thing 'k'"),
            |d: Doc| {
                let next = Doc {
                    version: d.version + 1,
                    ..d
                };
                Ok(Change::Write(next.clone(), next.version))
            },
        )
    }

    #[test]
    fn update_live_404_412_then_step() {
        let s = MemoryStore::new();
        assert_eq!(bump(&s, None).unwrap_err().status, 404);
        put_json(
            &s,
            "k",
            &Doc {
                version: 1,
                deleted: false,
            },
        )
        .unwrap();
        let p = bump(&s, Some("\"2\"")).unwrap_err();
        assert_eq!(p.status, 412);
        assert!(
            p.detail.contains("thing 'k'") && p.detail.contains("\"1\""),
            "{p:?}"
        );
        assert_eq!(bump(&s, Some("\"1\"")).unwrap(), 2);
        put_json(
            &s,
            "k",
            &Doc {
                version: 3,
                deleted: true,
            },
        )
        .unwrap();
        assert_eq!(bump(&s, Some("*")).unwrap_err().status, 404);
        assert_eq!(get_json::<Doc>(&s, "k").unwrap().unwrap().version, 3);
    }

    #[test]
    fn ctx_and_405() {
        let req = Request::new(Method::GET, "/").with_header("x-tenant-id", "acme");
        assert_eq!(Ctx::from_request(&req).unwrap().tenant.as_str(), "acme");
        let bad = Request::new(Method::GET, "/").with_header("x-tenant-id", "a b");
        assert_eq!(Ctx::from_request(&bad).unwrap_err().status, 400);
        let r = not_allowed(&Method::PATCH, "GET, POST").unwrap();
        assert_eq!(
            (r.status.as_u16(), r.header("allow")),
            (405, Some("GET, POST"))
        );
    }

    fn conditions(if_match: Option<&str>, if_none_match: Option<&str>) -> Conditions {
        Conditions::from_request(&{
            let mut r = Request::new(Method::GET, "/");
            if let Some(v) = if_match {
                r = r.with_header("if-match", v);
            }
            if let Some(v) = if_none_match {
                r = r.with_header("if-none-match", v);
            }
            r
        })
    }

    #[test]
    fn if_none_match_on_reads_is_304_with_the_etag() {
        let full = || Response::empty(StatusCode::OK).with_body(b"x".to_vec());
        for inm in ["\"1\"", "W/\"1\"", "*", "\"7\", \"1\""] {
            let r = conditions(None, Some(inm))
                .respond_read(1, "product 'p'", full)
                .unwrap();
            assert_eq!(r.status, 304, "{inm}");
            assert_eq!(r.header("etag"), Some("\"1\""));
            assert!(r.body.is_empty());
        }
        let r = conditions(None, Some("\"2\""))
            .respond_read(1, "product 'p'", full)
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            conditions(None, None).check_read(1, "p").unwrap(),
            Read::Full
        );
    }

    #[test]
    fn if_match_is_evaluated_before_if_none_match() {
        // RFC 9110 §13.2.2: a failing If-Match is 412 even on a GET whose
        // If-None-Match would have been a 304.
        let p = conditions(Some("\"2\""), Some("\"1\""))
            .check_read(1, "product 'p'")
            .unwrap_err();
        assert_eq!(p.status, 412);
        assert!(p.detail.contains("If-Match"), "{p:?}");
        assert_eq!(
            conditions(Some("\"1\""), Some("\"1\""))
                .check_read(1, "p")
                .unwrap(),
            Read::NotModified
        );
    }

    #[test]
    fn if_none_match_on_writes_is_412_and_changes_nothing() {
        let s = MemoryStore::new();
        put_json(
            &s,
            "k",
            &Doc {
                version: 1,
                deleted: false,
            },
        )
        .unwrap();
        for inm in ["*", "\"1\"", "W/\"1\"", "\"5\", \"1\""] {
            let p = bump_if(&s, &conditions(None, Some(inm))).unwrap_err();
            assert_eq!(p.status, 412, "{inm}");
            assert!(p.detail.contains("If-None-Match"), "{p:?}");
        }
        assert_eq!(get_json::<Doc>(&s, "k").unwrap().unwrap().version, 1);
        assert_eq!(bump_if(&s, &conditions(None, Some("\"9\""))).unwrap(), 2);
        assert_eq!(
            bump_if(&s, &conditions(Some("\"2\""), Some("\"1\""))).unwrap(),
            3
        );
    }

    #[test]
    fn reads_are_get_and_head() {
        assert!(is_read(&Method::GET) && is_read(&Method::HEAD));
        assert!(!is_read(&Method::POST));
    }
}
