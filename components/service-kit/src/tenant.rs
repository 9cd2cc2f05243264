//! Tenancy: the `X-Tenant-Id` header that partitions all data.

use std::fmt;

use http::HeaderMap;

use crate::problem::Problem;

/// The header carrying the tenant, on requests, service calls and events.
pub const TENANT_HEADER: &str = "X-Tenant-Id";

/// The tenant of requests without the header.
pub const DEFAULT_TENANT: &str = "default";

/// A validated tenant id: 1–64 of `[A-Za-z0-9_-]`, so it is safe inside
/// key-value keys without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates a tenant id; the error says what is allowed.
    pub fn parse(s: &str) -> Result<TenantId, String> {
        if crate::ids::is_valid_id(s) {
            Ok(TenantId(s.to_owned()))
        } else {
            Err(format!(
                "'{s}' is not a valid tenant id; it {}",
                crate::ids::ID_RULE
            ))
        }
    }

    /// The tenant of a request: the `X-Tenant-Id` header, `default` when
    /// absent, or a 400 problem naming the header when invalid or repeated.
    pub fn from_headers(headers: &HeaderMap) -> Result<TenantId, Problem> {
        let mut values = headers.get_all(TENANT_HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(TenantId::default());
        };
        if values.next().is_some() {
            return Err(Problem::validation_one(
                TENANT_HEADER,
                "was given more than once; send a single X-Tenant-Id header",
            ));
        }
        let text = value.to_str().unwrap_or("");
        TenantId::parse(text).map_err(|m| Problem::validation_one(TENANT_HEADER, m))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        TenantId(DEFAULT_TENANT.to_owned())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-tenant-id", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn absent_header_is_default_tenant() {
        assert_eq!(
            TenantId::from_headers(&headers(&[])).unwrap().as_str(),
            "default"
        );
    }

    #[test]
    fn valid_header_is_used() {
        let t = TenantId::from_headers(&headers(&["acme_01-x"])).unwrap();
        assert_eq!(t.to_string(), "acme_01-x");
    }

    #[test]
    fn invalid_header_is_400_naming_the_header() {
        for bad in ["", "has space", "a/b", &"x".repeat(65)] {
            let p = TenantId::from_headers(&headers(&[bad])).unwrap_err();
            assert_eq!(p.status, 400, "{bad:?}");
            assert!(p.errors.contains_key(TENANT_HEADER), "{bad:?}");
        }
        let p = TenantId::from_headers(&headers(&["a", "b"])).unwrap_err();
        assert!(p.errors[TENANT_HEADER][0].contains("more than once"));
    }
}
