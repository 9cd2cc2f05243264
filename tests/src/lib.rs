//! Test harness: starts the real `wasmshop` binary on a free port with a
//! fresh data directory, and speaks HTTP to it. Build first (the README's
//! test command does): `cargo build -p wasmshop-host` and the components
//! with `cargo build --target wasm32-wasip2 --release`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod backend;
pub mod daprd;
mod deployment;
pub mod otlp;
pub use backend::{Backend, RedisServer, TEST_VISIBILITY_TIMEOUT_MS};
pub use deployment::{APP_API_TOKEN, Deployment, start_next_to};
pub use reqwest::blocking::{Client, Response};
pub use serde_json::{Value, json};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The `wasmshop` binary of the same build as the running test.
pub fn wasmshop_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WASMSHOP_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/wasmshop
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("wasmshop"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p wasmshop-host` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A built component, e.g. `wasm("product")`.
pub fn wasm(name: &str) -> PathBuf {
    let path = workspace_root()
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --target wasm32-wasip2 --release` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// How to start a host.
#[derive(Clone, Debug, Default)]
pub struct HostBuilder {
    manifest_text: Option<String>,
    manifest_path: Option<PathBuf>,
    runtime_config: Option<String>,
    component_ids: Vec<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    log_format: Option<String>,
}

impl HostBuilder {
    /// Runs this manifest text (sources may be absolute paths).
    pub fn manifest(mut self, text: impl Into<String>) -> Self {
        self.manifest_text = Some(text.into());
        self
    }

    /// Runs a manifest file as it is.
    pub fn manifest_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.manifest_path = Some(path.into());
        self
    }

    /// Passes a runtime config file with this text.
    pub fn runtime_config(mut self, text: impl Into<String>) -> Self {
        self.runtime_config = Some(text.into());
        self
    }

    /// Runs only these components.
    pub fn component_ids(mut self, ids: &[&str]) -> Self {
        self.component_ids = ids.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets an environment variable of the host process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `--log-format` (`text` unless set: `json`, `text`).
    pub fn log_format(mut self, format: &str) -> Self {
        self.log_format = Some(format.into());
        self
    }

    /// Adds raw command-line arguments to `wasmshop up`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the host and waits until it serves.
    pub fn start(self) -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = match (&self.manifest_text, &self.manifest_path) {
            (Some(text), _) => {
                let p = dir.path().join("spin.toml");
                std::fs::write(&p, text).unwrap();
                p
            }
            (None, Some(p)) => p.clone(),
            (None, None) => workspace_root().join("spin.toml"),
        };
        let runtime_config = self.runtime_config.as_ref().map(|text| {
            let p = dir.path().join("runtime-config.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let mut host = Host {
            child: None,
            base: String::new(),
            data_dir: dir.path().join("data"),
            manifest,
            runtime_config,
            builder: self,
            log: dir.path().join("host.log"),
            _dir: dir,
        };
        host.spawn();
        host
    }
}

/// A running `wasmshop up` process, killed on drop.
pub struct Host {
    child: Option<Child>,
    base: String,
    data_dir: PathBuf,
    manifest: PathBuf,
    runtime_config: Option<PathBuf>,
    builder: HostBuilder,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// How long a host may take to start (the first start compiles components).
const START_TIMEOUT: Duration = Duration::from_secs(180);

impl Host {
    /// A builder for a custom host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The repository's `spin.toml` on the embedded backend.
    pub fn start_app() -> Host {
        Host::builder().start()
    }

    /// The repository's app plus a `recorder` component (the capabilities
    /// fixture) at `/recorder/...`, subscribed to `products` and `orders`.
    pub fn start_app_with_recorder() -> Host {
        Host::builder()
            .manifest(app_manifest_with_recorder())
            .start()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(wasmshop_bin());
        cmd.arg("up")
            .arg("--from")
            .arg(&self.manifest)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--log-format")
            .arg(self.builder.log_format.as_deref().unwrap_or("text"));
        if let Some(rc) = &self.runtime_config {
            cmd.arg("--runtime-config-file").arg(rc);
        }
        for id in &self.builder.component_ids {
            cmd.arg("--component-id").arg(id);
        }
        cmd.args(&self.builder.args);
        for (k, v) in &self.builder.env {
            cmd.env(k, v);
        }
        cmd.env_remove("WASMSHOP_COMPONENT_ID");
        cmd
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting wasmshop");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Serving ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => self.base = url,
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                panic!(
                    "wasmshop did not start (exit: {status:?}); its log:\n{}",
                    self.logs()
                );
            }
        }
        self.child = Some(child);
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A blocking HTTP client with a generous timeout.
    pub fn client(&self) -> Client {
        client()
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        client().get(self.url(path)).send().expect("GET")
    }

    /// What the host wrote to stderr so far. The host writes its log on a
    /// thread of its own, so a line about a request may land a moment
    /// after the response: to look for one, use [`Host::logs_once`].
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once a line of it satisfies `line_matches`, or the log as
    /// it is after 10 s (for the failing assertion to show).
    pub fn logs_once(&self, line_matches: impl Fn(&str) -> bool) -> String {
        wait_for(Duration::from_secs(10), || {
            let logs = self.logs();
            logs.lines().any(&line_matches).then_some(logs)
        })
        .unwrap_or_else(|| self.logs())
    }

    /// The data directory (embedded database, compile cache).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills the host with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("host is running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().expect("waiting for wasmshop")
    }

    /// Starts the host again on the same data directory (new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Calls `path` of the product component from inside the app: through
    /// the recorder's `/recorder/outbound` as `http://product.spin.internal{path}`
    /// (service chaining, or Dapr service invocation when the product runs
    /// in another process), with this method, tenant and JSON body. This is
    /// how a test reaches internal endpoints, which no public route covers.
    /// Returns the product's status and body (JSON, or the text as a string).
    pub fn internal_call(
        &self,
        method: reqwest::Method,
        tenant: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let target = format!("http://product.spin.internal{path}");
        let url = self.url(&format!(
            "/recorder/outbound?url={}",
            target
                .replace('%', "%25")
                .replace('&', "%26")
                .replace('?', "%3F")
        ));
        let mut req = client().request(method, url).header("x-tenant-id", tenant);
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let r = req.send().expect("the recorder answers");
        let status = r.status();
        let text = r.text().unwrap_or_default();
        assert_eq!(
            status, 200,
            "the recorder could not call the product: {text}"
        );
        let outer: Value = serde_json::from_str(&text).expect("the recorder answers JSON");
        let inner = outer["body"].as_str().unwrap_or_default();
        (
            outer["status"].as_u64().unwrap_or(0) as u16,
            serde_json::from_str(inner).unwrap_or_else(|_| Value::String(inner.to_string())),
        )
    }

    /// Events the recorder received on `topic`, each parsed as JSON.
    pub fn recorded_events(&self, topic: &str) -> Vec<Value> {
        let records: Value = self
            .get(&format!("/recorder/received/{topic}"))
            .json()
            .expect("recorder answers JSON");
        records
            .as_array()
            .expect("an array")
            .iter()
            .map(|r| {
                serde_json::from_str(r["data"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
            })
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking HTTP client.
pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The repository's manifest with absolute sources, plus the recorder.
/// The recorder may also chain to the product (`allowed_outbound_hosts`),
/// so tests reach the product's internal endpoints through it as the order
/// service does (see [`Host::internal_call`]).
pub fn app_manifest_with_recorder() -> String {
    let text = std::fs::read_to_string(workspace_root().join("spin.toml")).unwrap();
    format!(
        "{}\n{}",
        with_absolute_paths(&text),
        recorder_component(&["products", "orders"])
    )
}

/// A manifest running only the recorder (the capabilities fixture at
/// `/recorder/...`), subscribed to `topics` of client `product-pubsub`.
pub fn recorder_manifest(topics: &[&str]) -> String {
    format!(
        "spin_manifest_version = 2\n[application]\nname = \"recorder\"\n{}",
        recorder_component(topics)
    )
}

/// The recorder's trigger and component tables.
fn recorder_component(topics: &[&str]) -> String {
    let mut text = format!(
        r#"[[trigger.http]]
route = "/recorder/..."
component = "recorder"

[component.recorder]
source = "{}"
key_value_stores = ["default"]
allowed_outbound_hosts = ["http://product.spin.internal"]
[component.recorder.tool.wasmshop]
messaging_clients = ["product-pubsub"]
"#,
        wasm("capabilities-fixture").display()
    );
    for topic in topics {
        text += &format!(
            "[[component.recorder.tool.wasmshop.subscriptions]]\nclient = \"product-pubsub\"\ntopic = \"{topic}\"\n"
        );
    }
    text
}

/// `text`, a manifest in the repository root, with its `target/...` paths
/// (component sources, dependencies) made absolute, so it can run from
/// anywhere.
pub fn with_absolute_paths(text: &str) -> String {
    text.replace(
        "= \"target/",
        &format!("= \"{}/target/", workspace_root().display()),
    )
}

/// Imports and exports of an encoded component, each as
/// `ns:pkg/iface@version` (or the bare name of an unversioned item);
/// `what` names it in the panic when it is not a component.
pub fn component_interfaces(bytes: &[u8], what: &str) -> (Vec<String>, Vec<String>) {
    let decoded = wit_parser::decoding::decode(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let wit_parser::decoding::DecodedWasm::Component(resolve, world) = decoded else {
        panic!("{what} is a WIT package, not a component");
    };
    let world = &resolve.worlds[world];
    let name = |key: &wit_parser::WorldKey, item: &wit_parser::WorldItem| match item {
        wit_parser::WorldItem::Interface { id, .. } => resolve
            .id_of(*id)
            .unwrap_or_else(|| resolve.name_world_key(key)),
        _ => resolve.name_world_key(key),
    };
    (
        world.imports.iter().map(|(k, i)| name(k, i)).collect(),
        world.exports.iter().map(|(k, i)| name(k, i)).collect(),
    )
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd`, which is expected to exit on its own (a refused start), and
/// returns its output. Panics with its stderr if it is still running after
/// 60 s: the host started when it should have refused to. Output is piped,
/// so it must stay under the pipe buffer (64 KiB), as error lines do.
pub fn run_expecting_exit(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the host started instead of refusing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}
