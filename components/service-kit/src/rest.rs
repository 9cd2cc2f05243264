//! Request plumbing every service repeats: the request context (tenant and
//! trace), the 405 answer, the `If-Match` check and the compare-and-swap
//! update of a live record (404 once gone, 412 once changed).

use http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::etag::{etag, if_match_allows};
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

/// The 405 answer with its `Allow` header (`allowed` e.g. `"GET, POST"`),
/// as the `Ok` of a route so routers can return it directly.
pub fn not_allowed(method: &Method, allowed: &str) -> Result<Response, Problem> {
    Ok(Problem::method_not_allowed_response(method, allowed))
}

/// `Ok` when `if_match` (the joined `If-Match` header, `None` when absent)
/// allows changing `what` (e.g. `product 'p1'`) at `version`; else the
/// 412 telling the client to read the new ETag.
pub fn check_if_match(if_match: Option<&str>, version: u64, what: &str) -> Result<(), Problem> {
    if if_match_allows(if_match, version) {
        Ok(())
    } else {
        Err(Problem::precondition_failed(format!(
            "If-Match {} does not match the current ETag {} of {what}; GET it again and retry with the new ETag",
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
/// is absent or a tombstone, the 412 of [`check_if_match`] when `if_match`
/// no longer matches it (`what` names it), else `step` decides. `step` may
/// run several times (once per lost race), so it must be free of side
/// effects. Contention beyond `retry` is a 503.
pub fn update_live<S, D, R>(
    store: &S,
    key: &str,
    retry: &Retry,
    if_match: Option<&str>,
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
        check_if_match(if_match, D::version_of(&live), what)?;
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
        update_live(
            store,
            "k",
            &Retry::default(),
            if_match,
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
}
