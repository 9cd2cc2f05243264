//! Running the same end-to-end tests on each backend: [`Backend`] says
//! which one a host uses, [`RedisServer`] is a real `redis-server` on a
//! free port in a temporary directory, [`backend_tests!`] turns a test
//! function taking `&Backend` into one `#[test]` per host backend, and
//! [`app_tests!`] adds the two-process Dapr deployment for the service suites.

use crate::daprd::{PUBSUB, STATE_STORE};
use crate::{HostBuilder, workspace_root};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generates `mod embedded` and `mod redis`, each with one `#[test]` per
/// listed function (`fn name(backend: &Backend)` in the calling file).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(&$crate::Backend::embedded()); } )*
        }
        mod redis {
            $( #[test] fn $name() { super::$name(&$crate::Backend::redis()); } )*
        }
    };
}

/// [`backend_tests!`] plus `mod dapr`: the listed functions start their app
/// with [`crate::Deployment`], which on Dapr runs one host per component, each
/// next to its own sidecar double.
#[macro_export]
macro_rules! app_tests {
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!($($name),*);
        mod dapr {
            $( #[test] fn $name() { super::$name(&$crate::Backend::Dapr); } )*
        }
    };
}

/// Where a host keeps key-value data and messages.
pub enum Backend {
    /// The embedded database in the host's data directory (no runtime config).
    Embedded,
    /// A Redis server started for this test.
    Redis(RedisServer),
    /// A Dapr sidecar double per host ([`crate::daprd`]); the host needs
    /// `DAPR_HTTP_PORT`, which [`crate::Deployment`] and [`crate::start_next_to`] set.
    Dapr,
}

/// Unacknowledged Redis deliveries are taken over after this in tests, so
/// a killed host's work is finished within seconds (above the 3 s backoff
/// the kill tests use).
pub const TEST_VISIBILITY_TIMEOUT_MS: u64 = 4000;

impl Backend {
    /// The embedded backend.
    pub fn embedded() -> Self {
        Backend::Embedded
    }

    /// A fresh Redis server (empty, no persistence), stopped on drop.
    pub fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    /// The Redis server, if this is the Redis backend.
    pub fn redis_server(&self) -> Option<&RedisServer> {
        match self {
            Backend::Redis(r) => Some(r),
            _ => None,
        }
    }

    /// The Redis server, to stop and restart it.
    pub fn redis_server_mut(&mut self) -> Option<&mut RedisServer> {
        match self {
            Backend::Redis(r) => Some(r),
            _ => None,
        }
    }

    /// A runtime config serving the key-value `stores` and the messaging
    /// `clients` (name, extra settings such as `max_attempts = 3`) here.
    pub fn runtime_config(&self, stores: &[&str], clients: &[(&str, &str)]) -> String {
        let mut out = String::new();
        let (store, client) = match self {
            Backend::Embedded => (
                "type = \"embedded\"\n".to_string(),
                "type = \"embedded\"\n".to_string(),
            ),
            Backend::Redis(r) => {
                let b = format!("type = \"redis\"\nurl = \"{}\"\n", r.url());
                (b.clone(), b)
            }
            Backend::Dapr => (
                format!("type = \"dapr\"\nstore = \"{STATE_STORE}\"\n"),
                format!("type = \"dapr\"\npubsub = \"{PUBSUB}\"\n"),
            ),
        };
        for s in stores {
            out += &format!("[key_value_store.{s}]\n{store}\n");
        }
        for (name, extra) in clients {
            out += &format!("[messaging.{name}]\n{client}{}\n", extra.trim_end());
            if let Backend::Redis(_) = self {
                out += &format!("visibility_timeout_ms = {TEST_VISIBILITY_TIMEOUT_MS}\n");
            }
            out += "\n";
        }
        out
    }

    /// The runtime config of the repository's `spin.toml` (store `default`,
    /// client `product-pubsub`); `None` for embedded, the host's default,
    /// and on Dapr the deployed infra/runtime-config/dapr.toml.
    pub fn app_runtime_config(&self) -> Option<String> {
        match self {
            Backend::Embedded => None,
            Backend::Redis(_) => Some(self.runtime_config(&["default"], &[("product-pubsub", "")])),
            Backend::Dapr => Some(
                std::fs::read_to_string(workspace_root().join("infra/runtime-config/dapr.toml"))
                    .expect("infra/runtime-config/dapr.toml"),
            ),
        }
    }
}

impl HostBuilder {
    /// Runs the repository's app (or one like it) on `backend`.
    pub fn backend(self, backend: &Backend) -> Self {
        match backend.app_runtime_config() {
            Some(rc) => self.runtime_config(rc),
            None => self,
        }
    }
}

/// A `redis-server` on a free port, killed on drop. Needs `redis-server` on
/// the PATH (scripts/test.sh installs it).
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts an empty server without persistence.
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut server = RedisServer {
                port,
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "redis-server did not start on any of 5 free ports; is it installed? `apt-get install redis-server` (scripts/test.sh does)"
        );
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the process and waits for PING; false if it did not come up.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running redis-server: is it installed? (apt-get install redis-server)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.ping() {
                return true;
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL); its data is gone (no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let end = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < end,
                "redis-server did not restart on port {}; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
