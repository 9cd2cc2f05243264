//! The Spin v2 application manifest (`spin.toml`), as far as the host needs
//! it: components, HTTP triggers, capabilities and `tool.wasmshop` settings.
//!
//! Parsing is strict (unknown keys are errors) so that a typo is reported at
//! start-up with the file, table and key, instead of silently doing nothing.

mod outbound;
mod routes;
mod variables;

pub use outbound::{AllowedHosts, OutboundTarget};
pub use routes::{Route, RouteMatch, Router};
pub use variables::Variables;

use crate::config_text::first_line;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A manifest problem, reported as one line naming the file, table and key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {location}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub file: String,
    /// The table and key, e.g. `[component.order] key 'source'`.
    pub location: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// One value of the manifest that is wrong (a route, an outbound host, a
/// variable template); [`ManifestError`] adds where it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// A loaded, validated application.
#[derive(Debug, Clone)]
pub struct AppManifest {
    /// Directory of the manifest; component sources are relative to it.
    pub dir: PathBuf,
    /// The manifest file, for error messages.
    pub file: PathBuf,
    /// `[application] name`.
    pub name: String,
    /// Application variables (`[variables]`).
    pub variables: BTreeMap<String, VariableSpec>,
    /// Components by id, in id order.
    pub components: BTreeMap<String, ComponentSpec>,
    /// HTTP routes, in manifest order.
    pub http_triggers: Vec<HttpTrigger>,
}

/// One `[component.<id>]` table.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component id (`product`, `order`).
    pub id: String,
    /// Absolute path of the `.wasm` file.
    pub source: PathBuf,
    /// Key-value store labels the component may open.
    pub key_value_stores: BTreeSet<String>,
    /// Where the component may send HTTP requests.
    pub allowed_outbound_hosts: AllowedHosts,
    /// Component variables (templates over application variables).
    pub variables: BTreeMap<String, String>,
    /// Environment variables visible to the guest.
    pub environment: BTreeMap<String, String>,
    /// Host-only settings from `[component.<id>.tool.wasmshop]`.
    pub tool: ComponentTool,
}

/// Host-only component settings, ignored by Spin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentTool {
    /// Dapr app id used when another process calls this component through
    /// Dapr service invocation; defaults to the component id.
    #[serde(default)]
    pub dapr_app_id: Option<String>,
    /// Messaging client names the component may `connect` to.
    #[serde(default)]
    pub messaging_clients: BTreeSet<String>,
    /// Topics whose messages are delivered to the component's
    /// `wasi:messaging/incoming-handler`.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// A subscription of a component to a topic of a messaging client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The messaging client (`product-pubsub`).
    pub client: String,
    /// The topic (`products`).
    pub topic: String,
    /// The event types (CloudEvent `type`) the component wants; empty: all.
    /// Messages of other types are acknowledged without running the
    /// component (see docs/messaging.md, "Event-type filter").
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// An application variable declaration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    /// Value used when neither the environment nor a provider sets one.
    #[serde(default)]
    pub default: Option<String>,
    /// Start-up fails when no value is found.
    #[serde(default)]
    pub required: bool,
    /// Kept out of logs.
    #[serde(default)]
    pub secret: bool,
}

/// One `[[trigger.http]]` entry.
#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// The route, or `None` for a private component (chaining only).
    pub route: Option<Route>,
    /// The component serving the route.
    pub component: String,
}

// ---- raw serde model (strict) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: u32,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, VariableSpec>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    authors: Vec<String>,
    #[serde(default)]
    tool: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    route: RawRoute,
    component: String,
    #[serde(default)]
    #[allow(dead_code)]
    executor: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: RawSource,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    build: Option<RawBuild>,
    /// Spin's component dependencies (the Spin messaging adapter). The host
    /// provides those interfaces natively, so it only checks the shape.
    #[serde(default)]
    #[allow(dead_code)]
    dependencies: BTreeMap<String, toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    dependencies_inherit_configuration: Option<bool>,
    #[serde(default)]
    tool: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSource {
    Path(String),
    Remote(#[allow(dead_code)] toml::Table),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawBuild {
    command: String,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    watch: Vec<String>,
}

/// Ids follow Spin's rule: lower-case words separated by `-` or `_`.
fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl AppManifest {
    /// Reads, parses and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let file = path.display().to_string();
        let err = |location: &str, message: String| ManifestError {
            file: file.clone(),
            location: location.to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "file",
                format!("cannot read the manifest ({e}); pass the right path with --from"),
            )
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates manifest text; `path` locates sources and names
    /// the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let file = path.display().to_string();
        let err = |location: String, message: String| ManifestError {
            file: file.clone(),
            location,
            message,
        };
        let value: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_else(|| "TOML".into());
            err(line, format!("not valid TOML: {}", e.message()))
        })?;
        let raw: RawManifest = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| {
                let location = describe_path(&e.path().to_string());
                err(location, first_line(&e.inner().to_string()).to_string())
            })?;
        if raw.spin_manifest_version != 2 {
            return Err(err(
                "top level key 'spin_manifest_version'".into(),
                format!(
                    "version {} is not supported; this host reads Spin manifest version 2",
                    raw.spin_manifest_version
                ),
            ));
        }
        for key in raw.application.tool.keys() {
            if key == "wasmshop" {
                // Reserved for app-wide host settings; none are defined yet.
                let table = raw.application.tool[key].as_table();
                if let Some((k, _)) = table.and_then(|t| t.iter().next()) {
                    return Err(err(
                        "[application.tool.wasmshop]".into(),
                        format!("unknown key '{k}'; this table takes no keys yet"),
                    ));
                }
            }
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };

        let mut variables = BTreeMap::new();
        for (name, spec) in raw.variables {
            if !variables::is_valid_name(&name) {
                return Err(err(
                    format!("[variables] key '{name}'"),
                    "variable names are lower-case letters, digits and '_', starting with a letter"
                        .into(),
                ));
            }
            if spec.required && spec.default.is_some() {
                return Err(err(
                    format!("[variables.{name}]"),
                    "a variable is either `required = true` or has a `default`, not both".into(),
                ));
            }
            variables.insert(name, spec);
        }

        let mut components = BTreeMap::new();
        for (id, rc) in raw.component {
            let table = format!("[component.{id}]");
            if !is_valid_id(&id) {
                return Err(err(
                    table,
                    "component ids are lower-case letters, digits, '-' and '_', starting with a letter".into(),
                ));
            }
            let source = match rc.source {
                RawSource::Path(p) => dir.join(p),
                RawSource::Remote(_) => {
                    return Err(err(
                        format!("{table} key 'source'"),
                        "remote (url/digest) sources are not supported; build the component and point `source` at the .wasm file".into(),
                    ));
                }
            };
            let mut key_value_stores = BTreeSet::new();
            for label in rc.key_value_stores {
                if !is_valid_id(&label) {
                    return Err(err(
                        format!("{table} key 'key_value_stores'"),
                        format!(
                            "'{label}' is not a valid store label (lower-case letters, digits, '-', '_')"
                        ),
                    ));
                }
                key_value_stores.insert(label);
            }
            let allowed_outbound_hosts = AllowedHosts::parse(&rc.allowed_outbound_hosts)
                .map_err(|m| err(format!("{table} key 'allowed_outbound_hosts'"), m.0))?;
            for (name, template) in &rc.variables {
                if !variables::is_valid_name(name) {
                    return Err(err(
                        format!("[component.{id}.variables] key '{name}'"),
                        "variable names are lower-case letters, digits and '_', starting with a letter".into(),
                    ));
                }
                for used in variables::template_references(template)
                    .map_err(|m| err(format!("[component.{id}.variables] key '{name}'"), m.0))?
                {
                    if !variables.contains_key(&used) {
                        return Err(err(
                            format!("[component.{id}.variables] key '{name}'"),
                            format!(
                                "refers to '{{{{ {used} }}}}' but [variables] declares no '{used}'"
                            ),
                        ));
                    }
                }
            }
            let mut tool = ComponentTool::default();
            for (name, value) in rc.tool {
                if name != "wasmshop" {
                    continue; // other tools' settings are theirs
                }
                tool = serde_path_to_error::deserialize(value).map_err(|e| {
                    err(
                        format!(
                            "[component.{id}.tool.wasmshop] {}",
                            describe_key(&e.path().to_string())
                        ),
                        first_line(&e.inner().to_string()).to_string(),
                    )
                })?;
            }
            for s in &tool.subscriptions {
                if s.event_types.iter().any(|t| t.trim().is_empty()) {
                    return Err(err(
                        format!("[component.{id}.tool.wasmshop] key 'subscriptions.event_types'"),
                        format!(
                            "subscription to topic '{}' lists an empty event type; write CloudEvent types such as \"ProductDeleted\", or leave event_types out to receive every type",
                            s.topic
                        ),
                    ));
                }
                if !tool.messaging_clients.contains(&s.client) {
                    return Err(err(
                        format!("[component.{id}.tool.wasmshop] key 'subscriptions'"),
                        format!(
                            "subscription to topic '{}' uses client '{}', which is not in this component's messaging_clients; add it there",
                            s.topic, s.client
                        ),
                    ));
                }
            }
            components.insert(
                id.clone(),
                ComponentSpec {
                    id,
                    source,
                    key_value_stores,
                    allowed_outbound_hosts,
                    variables: rc.variables,
                    environment: rc.environment,
                    tool,
                },
            );
        }

        let mut http_triggers = Vec::new();
        let mut seen_routes = BTreeSet::new();
        for (i, t) in raw.trigger.http.into_iter().enumerate() {
            let table = format!("[[trigger.http]] #{}", i + 1);
            if !components.contains_key(&t.component) {
                return Err(err(
                    format!("{table} key 'component'"),
                    format!(
                        "no component '{}' is defined; add a [component.{}] table or fix the id",
                        t.component, t.component
                    ),
                ));
            }
            let route = match t.route {
                RawRoute::Path(p) => {
                    let route =
                        Route::parse(&p).map_err(|m| err(format!("{table} key 'route'"), m.0))?;
                    if !seen_routes.insert(route.canonical()) {
                        return Err(err(
                            format!("{table} key 'route'"),
                            format!("route '{p}' is declared twice"),
                        ));
                    }
                    Some(route)
                }
                RawRoute::Private { private: true } => None,
                RawRoute::Private { private: false } => {
                    return Err(err(
                        format!("{table} key 'route'"),
                        "`{ private = false }` is not a route; give a path like \"/api/...\""
                            .into(),
                    ));
                }
            };
            http_triggers.push(HttpTrigger {
                route,
                component: t.component,
            });
        }
        if http_triggers.is_empty() {
            return Err(err(
                "[[trigger.http]]".into(),
                "the application has no HTTP trigger; add at least one [[trigger.http]] with a route and a component".into(),
            ));
        }

        Ok(AppManifest {
            dir,
            file: path.to_path_buf(),
            name: raw.application.name,
            variables,
            components,
            http_triggers,
        })
    }

    /// All subscriptions, as (component id, subscription).
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, &Subscription)> {
        self.components
            .values()
            .flat_map(|c| c.tool.subscriptions.iter().map(move |s| (c.id.as_str(), s)))
    }

    /// The components whose Dapr app id is `app_id` (see
    /// [`ComponentSpec::dapr_app_id`]), in id order.
    pub fn components_with_dapr_app_id<'a>(
        &'a self,
        app_id: &'a str,
    ) -> impl Iterator<Item = &'a ComponentSpec> + 'a {
        self.components
            .values()
            .filter(move |c| c.dapr_app_id() == app_id)
    }
}

impl ComponentSpec {
    /// The Dapr app id other processes invoke this component by:
    /// `tool.wasmshop.dapr_app_id`, else the component id.
    pub fn dapr_app_id(&self) -> &str {
        self.tool.dapr_app_id.as_deref().unwrap_or(&self.id)
    }

    /// Whether this component may chain to `target` through
    /// `http://<target>.spin.internal`, per its `allowed_outbound_hosts`
    /// (the same check a chained call passes on its way out).
    pub fn may_chain_to(&self, target: &str) -> bool {
        self.allowed_outbound_hosts.allows(&OutboundTarget {
            scheme: "http".into(),
            host: format!("{}.spin.internal", target.to_ascii_lowercase()),
            port: 80,
        })
    }
}

/// Turns a serde path like `component.order.sorce` into `[component.order] key 'sorce'`.
fn describe_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        return "top level".into();
    }
    match path.rsplit_once('.') {
        Some((table, key)) => format!("[{table}] key '{key}'"),
        None => format!("top level key '{path}'"),
    }
}

fn describe_key(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("key '{path}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AppManifest, ManifestError> {
        AppManifest::parse(text, Path::new("/app/spin.toml"))
    }

    const MINIMAL: &str = r#"
spin_manifest_version = 2
[application]
name = "demo"
[[trigger.http]]
route = "/api/..."
component = "api"
[component.api]
source = "api.wasm"
key_value_stores = ["default"]
"#;

    #[test]
    fn loads_a_minimal_app_with_sources_relative_to_the_manifest() {
        let app = parse(MINIMAL).unwrap();
        assert_eq!(app.name, "demo");
        assert_eq!(app.components["api"].source, PathBuf::from("/app/api.wasm"));
        assert!(app.components["api"].key_value_stores.contains("default"));
    }

    #[test]
    fn dapr_app_ids_and_chaining_permissions_come_from_the_manifest() {
        let text = format!(
            "{MINIMAL}allowed_outbound_hosts = [\"http://store.spin.internal\"]\n\
             [component.api.tool.wasmshop]\ndapr_app_id = \"apiservice\"\n\
             [component.store]\nsource = \"store.wasm\"\n"
        );
        let app = parse(&text).unwrap();
        let (api, store) = (&app.components["api"], &app.components["store"]);
        assert_eq!(
            (api.dapr_app_id(), store.dapr_app_id()),
            ("apiservice", "store")
        );
        assert!(api.may_chain_to("store"));
        assert!(!api.may_chain_to("api"));
        assert!(!store.may_chain_to("api"));
        let ids: Vec<&str> = app
            .components_with_dapr_app_id("apiservice")
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["api"]);
        assert_eq!(app.components_with_dapr_app_id("api").count(), 0);
    }

    #[test]
    fn an_unknown_key_names_table_and_key() {
        let text = MINIMAL.replace("source =", "sorce =");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("/app/spin.toml: [component.api]"), "{e}");
        assert!(e.contains("sorce"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn a_trigger_for_a_missing_component_is_refused() {
        let text = MINIMAL.replace("component = \"api\"", "component = \"nope\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("[[trigger.http]] #1 key 'component'"), "{e}");
        assert!(e.contains("no component 'nope'"), "{e}");
    }

    #[test]
    fn subscriptions_need_a_declared_client() {
        let text = format!(
            "{MINIMAL}\n[component.api.tool.wasmshop]\n[[component.api.tool.wasmshop.subscriptions]]\nclient = \"bus\"\ntopic = \"t\"\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("messaging_clients"), "{e}");
    }

    #[test]
    fn unknown_tool_wasmshop_keys_are_refused_but_other_tools_are_ignored() {
        let bad = format!("{MINIMAL}\n[component.api.tool.wasmshop]\nsubscriptons = []\n");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("[component.api.tool.wasmshop]"), "{e}");
        let other = format!("{MINIMAL}\n[component.api.tool.other]\nanything = 1\n");
        parse(&other).unwrap();
    }

    #[test]
    fn private_routes_are_accepted() {
        let text = format!(
            "{MINIMAL}\n[[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"api\"\n"
        );
        let app = parse(&text).unwrap();
        assert!(app.http_triggers[1].route.is_none());
    }

    #[test]
    fn invalid_toml_reports_the_line() {
        let e = parse("spin_manifest_version = 2\n[application\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_repository_manifest_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spin.toml");
        let app = AppManifest::load(&path).unwrap();
        assert!(app.components.contains_key("product"));
        assert!(app.components.contains_key("order"));
    }
}
