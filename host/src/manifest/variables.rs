//! Spin-style variables: application `[variables]` with defaults, component
//! variables written as templates (`"{{ name }}"`), and overrides from the
//! environment as `SPIN_VARIABLE_<NAME>` (what Spin's env provider reads).

use super::{AllowedHosts, AppManifest, ComponentSpec, InvalidValue, VariableSpec};
use std::collections::BTreeMap;

/// Whether `name` is a valid variable name.
pub fn is_valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Names referenced by `{{ name }}` placeholders in a template.
pub fn template_references(template: &str) -> Result<Vec<String>, InvalidValue> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            InvalidValue(format!("template '{template}' has '{{{{' without '}}}}'"))
        })?;
        let name = after[..end].trim();
        if !is_valid_name(name) {
            return Err(InvalidValue(format!(
                "template '{template}' refers to invalid name '{name}'"
            )));
        }
        names.push(name.to_string());
        rest = &after[end + 2..];
    }
    Ok(names)
}

/// Resolved variable values: the application's, and every component's.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    /// Application variable name → value (environment override, else
    /// default); variables with neither are absent.
    app_values: BTreeMap<String, String>,
    by_component: BTreeMap<String, BTreeMap<String, String>>,
}

impl Variables {
    /// Resolves every component's variables, reading overrides through
    /// `env` (normally `std::env::var`).
    pub fn resolve(
        app: &AppManifest,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, InvalidValue> {
        let mut app_values = BTreeMap::new();
        for (
            name,
            VariableSpec {
                default, required, ..
            },
        ) in &app.variables
        {
            let env_name = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
            match env(&env_name).or_else(|| default.clone()) {
                Some(v) => {
                    app_values.insert(name.clone(), v);
                }
                None if *required => {
                    return Err(InvalidValue(format!(
                        "variable '{name}' is required but has no value; set the environment variable {env_name}"
                    )));
                }
                None => {}
            }
        }
        let mut by_component = BTreeMap::new();
        for c in app.components.values() {
            let mut values = BTreeMap::new();
            for (name, template) in &c.variables {
                let mut value = template.clone();
                for used in template_references(template)? {
                    let v = app_values.get(&used).ok_or_else(|| {
                        InvalidValue(format!(
                            "component '{}' variable '{name}' needs '{used}', which has no value; set SPIN_VARIABLE_{}",
                            c.id,
                            used.to_ascii_uppercase()
                        ))
                    })?;
                    value = replace_placeholder(&value, &used, v);
                }
                values.insert(name.clone(), value);
            }
            by_component.insert(c.id.clone(), values);
        }
        Ok(Variables {
            app_values,
            by_component,
        })
    }

    /// `spec`'s `allowed_outbound_hosts` with every `{{ variable }}`
    /// template expanded from the application variables, as Spin expands
    /// them (see [`AllowedHosts::resolve`]); the error names the component
    /// and the entry.
    pub fn allowed_hosts(&self, spec: &ComponentSpec) -> Result<AllowedHosts, InvalidValue> {
        spec.allowed_outbound_hosts
            .resolve(&self.app_values)
            .map_err(|InvalidValue(why)| {
                InvalidValue(format!(
                    "[component.{}] key 'allowed_outbound_hosts': {why}",
                    spec.id
                ))
            })
    }

    /// The variables one component sees through `wasi:config/store`.
    pub fn for_component(&self, id: &str) -> BTreeMap<String, String> {
        self.by_component.get(id).cloned().unwrap_or_default()
    }
}

/// `text` with every `{{ name }}` placeholder (any spacing) replaced by `value`.
pub(super) fn replace_placeholder(text: &str, name: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&rest[..start]);
        if after[..end].trim() == name {
            out.push_str(value);
        } else {
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn templates_resolve_with_defaults_and_env_overrides() {
        let app = AppManifest::parse(
            r#"
spin_manifest_version = 2
[application]
name = "v"
[variables]
region = { default = "west" }
token = { required = true }
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "c.wasm"
[component.c.variables]
where = "eu-{{ region }}"
secret = "{{token}}"
"#,
            Path::new("spin.toml"),
        )
        .unwrap();
        let missing = Variables::resolve(&app, |_| None).unwrap_err();
        assert!(missing.0.contains("SPIN_VARIABLE_TOKEN"), "{missing}");
        let vars = Variables::resolve(&app, |k| (k == "SPIN_VARIABLE_TOKEN").then(|| "t0k".into()))
            .unwrap()
            .for_component("c");
        assert_eq!(vars["where"], "eu-west");
        assert_eq!(vars["secret"], "t0k");
    }
}
