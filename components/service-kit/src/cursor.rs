//! Opaque list cursors: a [`Position`] in a paged index, bound to the
//! tenant, index and filter it was made for (docs/storage-layout.md,
//! "Paged indexes").
//!
//! Text form: base64url without padding of
//! `[1] ++ (varint page, varint pos) × SHARDS ++ digest[0..8]`, where the
//! digest is SHA-256 over the tenant, index name, filter and the payload.
//! A cursor is not a secret; the digest only makes a cursor used with
//! another tenant, index or filter (or edited by hand) a clear 400 rather
//! than a silently wrong page. About 30 characters long.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::pages::{Position, SHARDS};
use crate::problem::Problem;
use crate::tenant::TenantId;

/// Query parameter carrying a cursor.
pub const PARAM: &str = "cursor";

const VERSION: u8 = 1;
const DIGEST_LEN: usize = 8;

/// What a cursor is bound to: a tenant, an index name (e.g. `products`)
/// and the filter that chose the index (e.g. `category=tools`, or empty).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The tenant listing.
    pub tenant: &'a TenantId,
    /// Which list (stable name, not a key).
    pub index: &'a str,
    /// The filter values, in a fixed textual form.
    pub filter: &'a str,
}

impl Scope<'_> {
    fn digest(&self, payload: &[u8]) -> [u8; DIGEST_LEN] {
        let mut h = Sha256::new();
        for part in [
            b"wasmshop-cursor".as_slice(),
            self.tenant.as_str().as_bytes(),
            self.index.as_bytes(),
            self.filter.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(payload);
        let full = h.finalize();
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&full[..DIGEST_LEN]);
        out
    }
}

/// The cursor text for continuing at `position` in `scope`.
pub fn encode(position: &Position, scope: Scope<'_>) -> String {
    let mut bytes = vec![VERSION];
    for &(page, pos) in position.shards() {
        put_varint(&mut bytes, page);
        put_varint(&mut bytes, pos);
    }
    let digest = scope.digest(&bytes);
    bytes.extend_from_slice(&digest);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position a cursor stands for, or a 400 problem naming `cursor`
/// when the text is not a cursor or was made for another tenant, index or
/// filter.
pub fn decode(text: &str, scope: Scope<'_>) -> Result<Position, Problem> {
    let invalid = |why: &str| {
        Problem::validation_one(
            PARAM,
            format!(
                "{why}; pass the cursor exactly as the previous page's Link header gave it, with the same filter and X-Tenant-Id, or start again without one"
            ),
        )
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| invalid("is not a cursor this service issued (not base64url)"))?;
    if bytes.len() < 1 + DIGEST_LEN || bytes[0] != VERSION {
        return Err(invalid("is not a cursor this service issued"));
    }
    let (payload, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if scope.digest(payload) != digest {
        return Err(invalid(
            "was issued for another tenant, list or filter, or was altered",
        ));
    }
    let mut rest = &payload[1..];
    let mut next = [(0u32, 0u32); SHARDS as usize];
    for n in next.iter_mut() {
        let page = take_varint(&mut rest).ok_or_else(|| invalid("is truncated"))?;
        let pos = take_varint(&mut rest).ok_or_else(|| invalid("is truncated"))?;
        *n = (page, pos);
    }
    if !rest.is_empty() {
        return Err(invalid("is not a cursor this service issued"));
    }
    Ok(Position::from_shards(next))
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u32> {
    let mut v: u64 = 0;
    for i in 0..5 {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(v).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str) -> TenantId {
        TenantId::parse(t).unwrap()
    }

    #[test]
    fn round_trips_and_stays_short() {
        let acme = tenant("acme");
        let scope = Scope {
            tenant: &acme,
            index: "products",
            filter: "category=tools",
        };
        let pos = Position::from_shards([
            (0, 0),
            (1, 127),
            (300, 5),
            (0, 1),
            (u32::MAX, u32::MAX),
            (7, 0),
            (0, 0),
            (2, 2),
        ]);
        let text = encode(&pos, scope);
        assert!(text.len() < 60, "{text}");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "url-safe without padding: {text}"
        );
        assert_eq!(decode(&text, scope).unwrap(), pos);
        assert_eq!(
            decode(&encode(&Position::start(), scope), scope).unwrap(),
            Position::start()
        );
    }

    #[test]
    fn is_bound_to_tenant_index_and_filter() {
        let acme = tenant("acme");
        let globex = tenant("globex");
        let scope = Scope {
            tenant: &acme,
            index: "products",
            filter: "",
        };
        let text = encode(&Position::start(), scope);
        for other in [
            Scope {
                tenant: &globex,
                ..scope
            },
            Scope {
                index: "orders",
                ..scope
            },
            Scope {
                filter: "category=x",
                ..scope
            },
        ] {
            let p = decode(&text, other).unwrap_err();
            assert_eq!(p.status, 400);
            assert!(p.errors[PARAM][0].contains("another tenant"), "{p:?}");
        }
    }

    #[test]
    fn garbage_is_a_400_naming_cursor() {
        let acme = tenant("acme");
        let scope = Scope {
            tenant: &acme,
            index: "products",
            filter: "",
        };
        let good = encode(&Position::start(), scope);
        let mut flipped = good.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            "",
            "!!!",
            "AAAA",
            "abc def",
            &good[..good.len() - 2],
            &flipped,
        ] {
            let p = decode(bad, scope).unwrap_err();
            assert_eq!(p.status, 400, "{bad:?}");
            assert!(p.errors.contains_key(PARAM), "{bad:?}");
        }
    }
}
