//! `allowed_outbound_hosts`, with Spin's syntax: `scheme://host[:port]`,
//! where scheme, host (or a leading `*.` label) and port may be `*`.
//! A request whose destination no entry allows is refused before any
//! connection is made.

use super::InvalidValue;

/// A destination a component wants to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundTarget {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name, lower-case.
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    Suffix(String),
}

/// The parsed allow-list of one component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<Pattern>,
    texts: Vec<String>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHosts {
    /// Parses manifest entries; an entry that is not `scheme://host[:port]`
    /// is an error naming it.
    pub fn parse(entries: &[String]) -> Result<Self, InvalidValue> {
        let mut patterns = Vec::new();
        for entry in entries {
            let bad = |why: &str| {
                InvalidValue(format!(
                    "'{entry}' is not a valid outbound host ({why}); write it as scheme://host[:port], e.g. \"https://api.example.com\" or \"http://product.spin.internal\""
                ))
            };
            let (scheme, rest) = entry.split_once("://").ok_or_else(|| bad("no scheme"))?;
            let rest = rest.trim_end_matches('/');
            if rest.contains('/') {
                return Err(bad("paths are not allowed"));
            }
            let scheme = match scheme {
                "*" => None,
                "http" | "https" => Some(scheme.to_string()),
                _ => return Err(bad("scheme must be http, https or *")),
            };
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, "*")) => (h, None),
                Some((h, p)) => (
                    h,
                    Some(
                        p.parse::<u16>()
                            .map_err(|_| bad("port must be a number or *"))?,
                    ),
                ),
                None => (
                    rest,
                    match &scheme {
                        Some(s) => default_port(s),
                        None => None,
                    },
                ),
            };
            let host = host.to_ascii_lowercase();
            let host = if host == "*" {
                HostPattern::Any
            } else if let Some(suffix) = host.strip_prefix("*.") {
                HostPattern::Suffix(format!(".{suffix}"))
            } else if host.is_empty() || host.contains('*') {
                return Err(bad("'*' may only be the whole host or its first label"));
            } else {
                HostPattern::Exact(host)
            };
            patterns.push(Pattern { scheme, host, port });
        }
        Ok(AllowedHosts {
            patterns,
            texts: entries.to_vec(),
        })
    }

    /// Whether the allow-list admits `target`.
    pub fn allows(&self, target: &OutboundTarget) -> bool {
        self.patterns.iter().any(|p| {
            p.scheme.as_deref().is_none_or(|s| s == target.scheme)
                && p.port.is_none_or(|port| port == target.port)
                && match &p.host {
                    HostPattern::Any => true,
                    HostPattern::Exact(h) => *h == target.host,
                    HostPattern::Suffix(s) => target.host.ends_with(s.as_str()),
                }
        })
    }

    /// The entries as written, for error messages.
    pub fn entries(&self) -> &[String] {
        &self.texts
    }
}

impl OutboundTarget {
    /// Extracts the destination of a request URI.
    pub fn from_uri(uri: &http::Uri) -> Option<Self> {
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri.port_u16().or_else(|| default_port(&scheme))?;
        Some(OutboundTarget { scheme, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entries: &[&str], uri: &str) -> bool {
        let hosts = AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        hosts.allows(&OutboundTarget::from_uri(&uri.parse().unwrap()).unwrap())
    }

    #[test]
    fn exact_hosts_default_their_port_from_the_scheme() {
        assert!(allows(
            &["https://api.example.com"],
            "https://api.example.com/x"
        ));
        assert!(!allows(
            &["https://api.example.com"],
            "http://api.example.com/x"
        ));
        assert!(!allows(
            &["https://api.example.com"],
            "https://api.example.com:8443/"
        ));
        assert!(allows(
            &["http://product.spin.internal"],
            "http://product.spin.internal/api"
        ));
        assert!(!allows(
            &["http://product.spin.internal"],
            "http://order.spin.internal/api"
        ));
    }

    #[test]
    fn wildcards_cover_scheme_subdomains_and_ports() {
        assert!(allows(
            &["http://*.spin.internal"],
            "http://order.spin.internal/"
        ));
        assert!(allows(&["*://*:*"], "https://anything:1234/"));
        assert!(allows(&["http://localhost:*"], "http://localhost:9999/"));
        assert!(!allows(&[], "http://localhost/"));
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry_named() {
        let e = AllowedHosts::parse(&["example.com".into()]).unwrap_err();
        assert!(e.0.contains("'example.com'"), "{e}");
        assert!(AllowedHosts::parse(&["ftp://x".into()]).is_err());
        assert!(AllowedHosts::parse(&["https://x/path".into()]).is_err());
        assert!(AllowedHosts::parse(&["https://a*b".into()]).is_err());
    }
}
