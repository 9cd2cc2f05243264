//! The list-query rules both services share (DESIGN §4): `limit` 1–1000,
//! default 100; `offset` ≥ 0; a parameter given twice is an error.

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

/// Which slice of a list to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Most items to return.
    pub limit: usize,
    /// Items to skip first.
    pub offset: usize,
}

impl Page {
    /// Reads `limit` and `offset`; bad values are recorded in `errors`
    /// naming the parameter, and the defaults stand in for them.
    pub fn from_request(req: &Request, errors: &mut FieldErrors) -> Page {
        let limit = match query_param(req, "limit", errors) {
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
        };
        let offset = match query_param(req, "offset", errors) {
            None => 0,
            Some(v) => match v.parse::<u32>() {
                Ok(n) => n as usize,
                Err(_) => {
                    errors.add(
                        "offset",
                        format!("must be a whole number of at least 0, not '{v}'"),
                    );
                    0
                }
            },
        };
        Page { limit, offset }
    }
}
