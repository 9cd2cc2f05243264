//! `allowed_outbound_hosts`, with Spin's syntax: `scheme://host[:port]`,
//! where scheme, host (or a leading `*.` label) and port may be `*`.
//! A request whose destination no entry allows is refused before any
//! connection is made.
//!
//! An entry may hold `{{ variable }}` templates over the application's
//! `[variables]`, as in Spin: the manifest keeps them unresolved and
//! [`AllowedHosts::resolve`] expands them once the variables' values are
//! known (at start, with `SPIN_VARIABLE_*` overrides). As in Spin, an entry
//! that resolves to nothing (`""`, `"http://"`, `"https://"`) is dropped, so
//! an empty variable can switch an optional endpoint off; one that
//! resolves to something that is not an outbound host is an error naming
//! the template and what it became (`docs/spin-parity.md`).

use super::InvalidValue;
use super::variables::{replace_placeholder, template_references};
use std::collections::BTreeMap;

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
    /// Entries with `{{ variable }}` templates, not yet resolved: they
    /// allow nothing until [`AllowedHosts::resolve`] expands them.
    templates: Vec<String>,
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
    /// is an error naming it. Entries with `{{ variable }}` templates are
    /// only checked for template syntax and kept for [`AllowedHosts::resolve`].
    pub fn parse(entries: &[String]) -> Result<Self, InvalidValue> {
        let mut patterns = Vec::new();
        let mut templates = Vec::new();
        for entry in entries {
            if entry.contains("{{") {
                template_references(entry)?;
                templates.push(entry.clone());
                continue;
            }
            patterns.push(parse_entry(entry)?);
        }
        Ok(AllowedHosts {
            patterns,
            texts: entries.to_vec(),
            templates,
        })
    }

    /// The variable names the templated entries use.
    pub fn template_variables(&self) -> Vec<String> {
        self.templates
            .iter()
            .flat_map(|t| template_references(t).unwrap_or_default())
            .collect()
    }

    /// This allow-list with every templated entry expanded from `values`
    /// (application variable name → value), as Spin does: an entry that
    /// resolves to `""`, `"http://"` or `"https://"` is dropped; a variable
    /// without a value, or a result that is not an outbound host, is an
    /// error naming the entry (never the value, which may be secret).
    pub fn resolve(&self, values: &BTreeMap<String, String>) -> Result<AllowedHosts, InvalidValue> {
        let mut resolved = AllowedHosts {
            patterns: self.patterns.clone(),
            texts: self.texts.clone(),
            templates: Vec::new(),
        };
        for template in &self.templates {
            let mut text = template.clone();
            for name in template_references(template)? {
                let value = values.get(&name).ok_or_else(|| {
                    InvalidValue(format!(
                        "'{template}' needs variable '{name}', which has no value; give it a default in [variables] or set SPIN_VARIABLE_{}",
                        name.to_ascii_uppercase()
                    ))
                })?;
                text = replace_placeholder(&text, &name, value);
            }
            let text = text.trim();
            if text.is_empty() || text == "http://" || text == "https://" {
                continue;
            }
            let pattern = parse_pattern(text).map_err(|why| {
                InvalidValue(format!(
                    "'{template}' does not resolve to a valid outbound host with the variables' values ({why}); {ENTRY_FORM}"
                ))
            })?;
            resolved.patterns.push(pattern);
        }
        Ok(resolved)
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

    /// The entries as written (templates unresolved), for error messages.
    pub fn entries(&self) -> &[String] {
        &self.texts
    }
}

/// How an outbound host entry is written, for error messages.
const ENTRY_FORM: &str = "write it as scheme://host[:port], e.g. \"https://api.example.com\" or \"http://product.spin.internal\"";

/// Parses one entry written as `scheme://host[:port]`.
fn parse_entry(entry: &str) -> Result<Pattern, InvalidValue> {
    parse_pattern(entry).map_err(|why| {
        InvalidValue(format!(
            "'{entry}' is not a valid outbound host ({why}); {ENTRY_FORM}"
        ))
    })
}

/// [`parse_entry`], the error being only why (without the entry).
fn parse_pattern(entry: &str) -> Result<Pattern, &'static str> {
    let bad = |why: &'static str| why;
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
    } else if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(bad("a host name is letters, digits, '-', '.' and '_'"));
    } else {
        HostPattern::Exact(host)
    };
    Ok(Pattern { scheme, host, port })
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

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_are_expanded_from_the_variables_as_spin_does() {
        let entries: Vec<String> = [
            "http://{{ api_host }}:{{ api_port }}",
            "https://{{ optional }}",
            "http://fixed.example",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let hosts = AllowedHosts::parse(&entries).unwrap();
        let target = |u: &str| OutboundTarget::from_uri(&u.parse().unwrap()).unwrap();
        // Unresolved, a template allows nothing (and is never matched literally).
        assert!(!hosts.allows(&target("http://api.example:8080/")));
        assert!(hosts.allows(&target("http://fixed.example/")));
        let resolved = hosts
            .resolve(&values(&[
                ("api_host", "api.example"),
                ("api_port", "8080"),
                ("optional", ""),
            ]))
            .unwrap();
        assert!(resolved.allows(&target("http://api.example:8080/x")));
        assert!(!resolved.allows(&target("http://api.example:8081/x")));
        assert!(resolved.allows(&target("http://fixed.example/")));
        // A variable without a value, or a value that is no host: errors
        // naming the entry, not the value.
        let e = hosts
            .resolve(&values(&[("api_host", "a"), ("optional", "")]))
            .unwrap_err();
        assert!(
            e.0.contains("api_port") && e.0.contains("SPIN_VARIABLE_API_PORT"),
            "{e}"
        );
        let e = hosts
            .resolve(&values(&[
                ("api_host", "zoinks, Scooby!"),
                ("api_port", "1"),
                ("optional", ""),
            ]))
            .unwrap_err();
        assert!(e.0.contains("{{ api_host }}"), "{e}");
        assert!(
            !e.0.contains("Scooby"),
            "the value stays out of the message: {e}"
        );
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
