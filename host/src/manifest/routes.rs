//! Spin's HTTP route syntax and matching: exact paths, `:param` segments and
//! a trailing `/...` wildcard. When several routes match, the most specific
//! wins: an exact route beats a wildcard, and more literal segments beat
//! fewer, so `/api/products/:id` beats `/api/...`.

use super::InvalidValue;
use std::collections::BTreeMap;

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    segments: Vec<Segment>,
    wildcard: bool,
    text: String,
}

/// The result of matching a path against a route.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// `:name` parameters.
    pub params: BTreeMap<String, String>,
    /// What the `/...` wildcard matched (Spin's `spin-path-info`), with a
    /// leading `/`, or empty.
    pub path_info: String,
}

impl Route {
    /// Parses a route such as `/api/products/...` or `/users/:id`.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        if !text.starts_with('/') {
            return Err(InvalidValue(format!("route '{text}' must start with '/'")));
        }
        let mut parts: Vec<&str> = text[1..].split('/').collect();
        let mut wildcard = false;
        if parts.last() == Some(&"...") {
            parts.pop();
            wildcard = true;
        }
        if parts.last() == Some(&"") {
            parts.pop(); // `/` and `/foo/`
        }
        let mut segments = Vec::new();
        for p in parts {
            if p.is_empty() {
                return Err(InvalidValue(format!(
                    "route '{text}' has an empty segment ('//')"
                )));
            }
            if p == "..." {
                return Err(InvalidValue(format!(
                    "route '{text}': '...' is only allowed at the end"
                )));
            }
            if let Some(name) = p.strip_prefix(':') {
                if name.is_empty() {
                    return Err(InvalidValue(format!(
                        "route '{text}': a ':' parameter needs a name"
                    )));
                }
                segments.push(Segment::Param(name.to_string()));
            } else {
                segments.push(Segment::Literal(p.to_string()));
            }
        }
        Ok(Route {
            segments,
            wildcard,
            text: text.to_string(),
        })
    }

    /// The route as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A form in which equivalent routes compare equal (`:a` ≡ `:b`).
    pub fn canonical(&self) -> String {
        let mut s: String = self
            .segments
            .iter()
            .map(|seg| match seg {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Param(_) => "/:".to_string(),
            })
            .collect();
        if self.wildcard {
            s.push_str("/...");
        }
        s
    }

    /// How many path segments the route's leading literals (those before
    /// its first parameter or wildcard) cover, when they all match the
    /// start of `path`; `None` when one differs. Weaker than
    /// [`Route::matches`]: it tells which component a path *below* its
    /// routes belongs to (`/api/products/7/reservations` under
    /// `/api/products/:id` gives 2).
    pub fn literal_prefix_match(&self, path: &str) -> Option<usize> {
        let mut parts = path.trim_start_matches('/').split('/');
        let mut n = 0;
        for seg in &self.segments {
            let Segment::Literal(l) = seg else { break };
            if parts.next() != Some(l.as_str()) {
                return None;
            }
            n += 1;
        }
        Some(n)
    }

    /// Orders routes by specificity; greater is more specific.
    fn specificity(&self) -> (bool, usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (!self.wildcard, literals, self.segments.len())
    }

    /// Matches a request path (without query).
    pub fn matches(&self, path: &str) -> Option<RouteMatch> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let parts: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        // A trailing slash on an exact route is tolerated, as in Spin.
        let parts: Vec<&str> = if !self.wildcard && parts.last() == Some(&"") {
            parts[..parts.len() - 1].to_vec()
        } else {
            parts
        };
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        let mut m = RouteMatch::default();
        for (seg, part) in self.segments.iter().zip(&parts) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => {
                    m.params.insert(name.clone(), (*part).to_string());
                }
            }
        }
        if self.wildcard {
            let rest = &parts[self.segments.len()..];
            if !rest.is_empty() {
                m.path_info = format!("/{}", rest.join("/"));
            }
        }
        Some(m)
    }
}

/// Routes of an application, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Router<T> {
    routes: Vec<(Route, T)>,
}

impl<T: Clone> Router<T> {
    /// Builds a router; on equal specificity, manifest order wins.
    pub fn new(routes: impl IntoIterator<Item = (Route, T)>) -> Self {
        let mut routes: Vec<(Route, T)> = routes.into_iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.specificity()));
        Router { routes }
    }

    /// The most specific route matching `path`.
    pub fn route(&self, path: &str) -> Option<(&Route, &T, RouteMatch)> {
        self.routes
            .iter()
            .find_map(|(r, t)| r.matches(path).map(|m| (r, t, m)))
    }

    /// All routes, most specific first.
    pub fn routes(&self) -> impl Iterator<Item = &(Route, T)> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Route {
        Route::parse(s).unwrap()
    }

    #[test]
    fn exact_routes_match_only_their_path() {
        assert!(r("/api/products").matches("/api/products").is_some());
        assert!(r("/api/products").matches("/api/products/").is_some());
        assert!(r("/api/products").matches("/api/products/1").is_none());
        assert!(r("/").matches("/").is_some());
        assert!(r("/").matches("/x").is_none());
    }

    #[test]
    fn wildcards_match_the_prefix_and_everything_below() {
        let w = r("/api/products/...");
        assert_eq!(w.matches("/api/products").unwrap().path_info, "");
        assert_eq!(
            w.matches("/api/products/7/reservations").unwrap().path_info,
            "/7/reservations"
        );
        assert!(w.matches("/api/productsx").is_none());
        assert!(r("/...").matches("/anything/at/all").is_some());
    }

    #[test]
    fn params_capture_segments() {
        let m = r("/users/:id/orders/:order")
            .matches("/users/42/orders/a-1")
            .unwrap();
        assert_eq!(m.params["id"], "42");
        assert_eq!(m.params["order"], "a-1");
        assert!(r("/users/:id").matches("/users/").is_none());
    }

    #[test]
    fn the_most_specific_route_wins() {
        let router = Router::new(vec![
            (r("/..."), "fallback"),
            (r("/api/..."), "api"),
            (r("/api/products/:id"), "product"),
            (r("/api/products/special"), "special"),
        ]);
        assert_eq!(*router.route("/api/products/special").unwrap().1, "special");
        assert_eq!(*router.route("/api/products/9").unwrap().1, "product");
        assert_eq!(*router.route("/api/orders").unwrap().1, "api");
        assert_eq!(*router.route("/index.html").unwrap().1, "fallback");
    }

    #[test]
    fn literal_prefixes_tell_which_routes_a_path_lies_below() {
        let id = r("/api/products/:id");
        assert_eq!(
            id.literal_prefix_match("/api/products/7/reservations"),
            Some(2)
        );
        assert_eq!(id.literal_prefix_match("/api/orders/7"), None);
        assert_eq!(r("/...").literal_prefix_match("/x"), Some(0));
    }

    #[test]
    fn malformed_routes_are_refused() {
        assert!(Route::parse("api").is_err());
        assert!(Route::parse("/a//b").is_err());
        assert!(Route::parse("/a/.../b").is_err());
        assert!(Route::parse("/a/:").is_err());
        assert_eq!(r("/a/:x/...").canonical(), r("/a/:y/...").canonical());
    }
}
