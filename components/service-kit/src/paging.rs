//! The list-query rules both services share: `limit` 1–1000, default
//! 100; either `offset` (0 ..= 2^63-1) or `cursor` (never both); a
//! parameter given twice is an error. A page that may be followed by more
//! items carries an RFC 8288 `Link: <...>; rel="next"` header whose target
//! is the same request with a cursor ([`next_link`]).

use crate::problem::FieldErrors;
use crate::web::Request;

/// Default page size of a list.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of a list.
pub const MAX_LIMIT: usize = 1000;

/// A query parameter given at most once; a repeat is recorded in `errors`
/// (and `None` returned) so one 400 can name every bad parameter.
pub fn query_param(req: &Request, name: &str, errors: &mut FieldErrors) -> Option<String> {
    match req.query_param(name) {
        Ok(v) => v.map(str::to_owned),
        Err(p) => {
            for (field, messages) in p.errors {
                for m in messages {
                    errors.add(&field, m);
                }
            }
            None
        }
    }
}

/// Largest `offset`: 2^63 - 1, so it fits a signed 64-bit integer in
/// every client.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// Where a list page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Skip this many items from the beginning (0 without parameters).
    Offset(u64),
    /// Continue where the page that issued this cursor ended (still to be
    /// decoded with [`crate::cursor::decode`] against the list's scope).
    Cursor(String),
}

/// Validated `limit` plus `offset` or `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    /// Most items to return, 1..=[`MAX_LIMIT`].
    pub limit: usize,
    /// Where to start.
    pub start: Start,
}

impl ListParams {
    /// Reads `limit`, `offset` and `cursor`; bad values are recorded in
    /// `errors` naming the parameter (both `offset` and `cursor` when both
    /// are given), and the defaults stand in for them.
    pub fn from_request(req: &Request, errors: &mut FieldErrors) -> ListParams {
        let limit = read_limit(req, errors);
        let offset = match query_param(req, "offset", errors) {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= MAX_OFFSET => Some(n),
                _ => {
                    errors.add(
                        "offset",
                        format!("must be a whole number from 0 to {MAX_OFFSET}, not '{v}'"),
                    );
                    None
                }
            },
        };
        let cursor = query_param(req, crate::cursor::PARAM, errors);
        let start = match (offset, cursor) {
            (Some(_), Some(_)) => {
                for field in ["offset", crate::cursor::PARAM] {
                    errors.add(
                        field,
                        "offset and cursor cannot be combined; send the cursor alone to continue a list, or offset alone to jump",
                    );
                }
                Start::Offset(0)
            }
            (_, Some(c)) => Start::Cursor(c),
            (Some(n), None) => Start::Offset(n),
            (None, None) => Start::Offset(0),
        };
        ListParams { limit, start }
    }
}

/// The `Link` header value pointing at the next page: the request's own
/// path and query with `cursor` set to `cursor` and `offset` dropped, as a
/// relative reference (RFC 8288), e.g.
/// `</api/products?limit=10&cursor=AbC>; rel="next"`.
pub fn next_link(req: &Request, cursor: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &req.query {
        if k != "offset" && k != crate::cursor::PARAM {
            query.append_pair(k, v);
        }
    }
    query.append_pair(crate::cursor::PARAM, cursor);
    format!("<{}?{}>; rel=\"next\"", req.path, query.finish())
}

fn read_limit(req: &Request, errors: &mut FieldErrors) -> usize {
    match query_param(req, "limit", errors) {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.add(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}, not '{v}'"),
                );
                DEFAULT_LIMIT
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn params(q: &str) -> Result<ListParams, FieldErrors> {
        let req = Request::new(Method::GET, &format!("/api/products{q}"));
        let mut errors = FieldErrors::new();
        let p = ListParams::from_request(&req, &mut errors);
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn defaults_offsets_and_cursors() {
        assert_eq!(
            params("").unwrap(),
            ListParams {
                limit: 100,
                start: Start::Offset(0)
            }
        );
        assert_eq!(
            params("?limit=7&offset=9223372036854775807").unwrap(),
            ListParams {
                limit: 7,
                start: Start::Offset(MAX_OFFSET)
            }
        );
        // Past 2^32: offsets were once read as 32-bit numbers.
        assert_eq!(
            params("?offset=4294967296").unwrap().start,
            Start::Offset(4_294_967_296)
        );
        assert_eq!(
            params("?cursor=abc").unwrap().start,
            Start::Cursor("abc".into())
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (q, fields) in [
            ("?offset=9223372036854775808", &["offset"][..]),
            ("?offset=-1", &["offset"]),
            ("?limit=0", &["limit"]),
            ("?limit=1001", &["limit"]),
            ("?cursor=a&cursor=b", &["cursor"]),
            ("?cursor=a&offset=1", &["cursor", "offset"]),
        ] {
            let e = params(q).unwrap_err();
            for f in fields {
                assert!(e.contains(f), "{q}: {e:?}");
            }
        }
    }

    #[test]
    fn next_link_is_relative_replaces_cursor_and_drops_offset() {
        let req = Request::new(
            Method::GET,
            "/api/products?limit=10&category=Home%20%26%20Garden&offset=20&cursor=old",
        );
        assert_eq!(
            next_link(&req, "N3xt_-"),
            "</api/products?limit=10&category=Home+%26+Garden&cursor=N3xt_->; rel=\"next\""
        );
    }
}
