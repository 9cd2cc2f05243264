//! The REST contract check shared by the end-to-end test files: every
//! response a test receives is checked against `openapi.yaml` (status
//! documented for the operation, media type, required headers, body
//! schema).

#![allow(dead_code)]

use std::sync::OnceLock;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use wasmshop_tests::{Deployment, client, workspace_root};

// ---------------------------------------------------------------------------
// The contract: openapi.yaml, and a checker for real responses.
// ---------------------------------------------------------------------------

/// `openapi.yaml` parsed as JSON.
pub fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = workspace_root().join("openapi.yaml");
        let text = std::fs::read_to_string(&path).expect("openapi.yaml at the repo root");
        serde_norway::from_str(&text).expect("openapi.yaml is valid YAML")
    })
}

/// Follows a local `$ref` (`#/components/...`) if `v` is one.
pub fn deref(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            deref(
                openapi()
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

/// Validates `instance` against a schema from the document, resolving its
/// `$ref`s against the whole document.
pub fn schema_errors(schema: &Value, instance: &Value) -> Vec<String> {
    let mut root = schema.clone();
    let obj = root.as_object_mut().expect("schema is an object");
    obj.insert("components".into(), openapi()["components"].clone());
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"));
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The path template of openapi.yaml matching a concrete path.
pub fn path_template(path: &str) -> Option<&'static str> {
    let concrete: Vec<&str> = path.split('?').next().unwrap().split('/').collect();
    openapi()["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|t| {
            let t: Vec<&str> = t.split('/').collect();
            t.len() == concrete.len()
                && t.iter()
                    .zip(&concrete)
                    .all(|(t, c)| (t.starts_with('{') && !c.is_empty()) || t == c)
        })
        .map(String::as_str)
}

/// Checks one real exchange against the contract; the error lists every
/// mismatch.
pub fn check_contract(method: &Method, path: &str, r: &Resp) -> Result<(), String> {
    let Some(template) = path_template(path) else {
        // openapi.yaml lists every public path; any other is not found
        // (internal endpoints included: no public route reaches them).
        let problem_json = r
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/problem+json");
        return if r.status == 404 && problem_json {
            Ok(())
        } else {
            Err(format!(
                "{method} {path} is not in openapi.yaml, so it must be a 404 problem, but answered {} {}",
                r.status, r.text
            ))
        };
    };
    let item = &openapi()["paths"][template];
    let mut problems = Vec::new();
    let response = match item.get(method.as_str().to_lowercase()) {
        None => {
            // Unsupported method: the documented 405 problem with `Allow`.
            if r.status != 405 || !r.headers.contains_key("allow") {
                problems.push(format!(
                    "{method} {template} is undocumented but answered {}",
                    r.status
                ));
            }
            deref(&openapi()["components"]["responses"]["Error"])
        }
        Some(op) => match op["responses"].get(r.status.to_string()) {
            Some(resp) => deref(resp),
            None => {
                return Err(format!(
                    "{method} {template}: status {} is not documented (body: {})",
                    r.status, r.text
                ));
            }
        },
    };
    let media = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap().trim().to_owned());
    match response.get("content").and_then(Value::as_object) {
        Some(content) => {
            let media = media.clone().unwrap_or_default();
            match content.get(&media) {
                None => problems.push(format!(
                    "content-type '{media}' not documented for {}; documented: {:?}",
                    r.status,
                    content.keys().collect::<Vec<_>>()
                )),
                Some(m) => match serde_json::from_str::<Value>(&r.text) {
                    Err(e) => problems.push(format!("body is not JSON: {e}")),
                    Ok(body) => problems.extend(schema_errors(&m["schema"], &body)),
                },
            }
        }
        None => {
            if !r.text.is_empty() {
                problems.push(format!("{} must have no body, got {}", r.status, r.text));
            }
        }
    }
    if let Some(headers) = response.get("headers").and_then(Value::as_object) {
        for (name, h) in headers {
            let h = deref(h);
            match r.headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
                None if h["required"] == true => problems.push(format!("missing header {name}")),
                None => {}
                Some(v) => {
                    for e in schema_errors(&h["schema"], &json!(v)) {
                        problems.push(format!("header {name}: {e}"));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {path} → {}: {}",
            r.status,
            problems.join("; ")
        ))
    }
}

// ---------------------------------------------------------------------------
// A small client: every call is checked against the contract.
// ---------------------------------------------------------------------------

/// A received response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The validation messages for `field` of a 400 problem.
    pub fn field_errors(&self, field: &str) -> Vec<String> {
        assert_eq!(self.status, 400, "expected a 400 problem: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        serde_json::from_value(self.json()["errors"][field].clone()).unwrap_or_default()
    }
}

/// One request: method, path, optional tenant, headers and body.
pub struct Call<'a> {
    host: &'a Deployment,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

impl<'a> Call<'a> {
    pub fn tenant(self, tenant: &str) -> Self {
        self.header("X-Tenant-Id", tenant)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn json(self, body: Value) -> Self {
        self.raw(&body.to_string())
    }

    pub fn raw(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self.header("content-type", "application/json")
    }

    pub fn send(self) -> Resp {
        let mut req = client().request(self.method.clone(), self.host.url(&self.path));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(b) = self.body {
            req = req.body(b);
        }
        let resp = req.send().expect("the host answers");
        let r = Resp {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().expect("a body"),
        };
        if let Err(e) = check_contract(&self.method, &self.path, &r) {
            panic!("response breaks openapi.yaml: {e}");
        }
        r
    }
}

pub fn call<'a>(host: &'a Deployment, method: Method, path: &str) -> Call<'a> {
    Call {
        host,
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: None,
    }
}
