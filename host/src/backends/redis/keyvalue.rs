//! Key-value on Redis. Each key is a hash `{v: value, ver: version}` under
//! `wasmshop:kv:<component>:<label>:<key>`; versions come from one counter
//! (`wasmshop:kv-version`), so a deleted-and-recreated key never reuses a
//! version an old `cas` handle holds — the same rule as the embedded backend.
//! Every write that changes a value is a Lua script, hence atomic with its
//! version bump.

use super::{NAME, RedisConn, glob_escape};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::{
    CasVersion, KeyValueBackend, KeyValueStore, StoreError, SwapError,
};
use async_trait::async_trait;
use redis::Script;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

/// Keys returned per `list-keys` page (roughly: SCAN's count is a hint).
const PAGE: usize = 1000;
/// The global version counter.
const VERSION_KEY: &str = "wasmshop:kv-version";

/// KEYS = [counter, key1, key2, ...], ARGV = [value1, value2, ...].
static SET_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 2, #KEYS do
  local ver = redis.call('INCR', KEYS[1])
  redis.call('HSET', KEYS[i], 'v', ARGV[i - 1], 'ver', ver)
end
return #KEYS - 1",
    )
});

/// KEYS = [counter, key], ARGV = [expected version or '' for absent, value];
/// 1 when written, 0 when the version no longer matches.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[1] == '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
elseif redis.call('HGET', KEYS[2], 'ver') ~= ARGV[1] then
  return 0
end
local ver = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], 'v', ARGV[2], 'ver', ver)
return 1",
    )
});

/// KEYS = [counter, key], ARGV = [delta]; HINCRBY keeps 64-bit exactness
/// (Lua numbers would not) and refuses non-integers without writing.
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.pcall('HINCRBY', KEYS[2], 'v', ARGV[1])
if type(n) == 'table' and n.err then return n end
redis.call('HSET', KEYS[2], 'ver', redis.call('INCR', KEYS[1]))
return redis.call('HGET', KEYS[2], 'v')",
    )
});

/// The Redis key-value backend of one server.
pub struct RedisKeyValue {
    conn: RedisConn,
}

impl RedisKeyValue {
    /// A backend over a (lazily connecting) connection.
    pub fn new(conn: RedisConn) -> Self {
        RedisKeyValue { conn }
    }
}

#[async_trait]
impl KeyValueBackend for RedisKeyValue {
    fn open(&self, component: &str, label: &str) -> Result<Arc<dyn KeyValueStore>, StoreError> {
        Ok(Arc::new(RedisStore {
            conn: self.conn.clone(),
            prefix: format!("wasmshop:kv:{component}:{label}:"),
        }))
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.conn.ping().await
    }
}

/// The keys of one component's store label: hashes under
/// `wasmshop:kv:<component>:<label>:`.
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
}

impl RedisStore {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl KeyValueStore for RedisStore {
    /// Redis knows nothing of the embedded store's batches.
    fn carries_read_dependencies(&self) -> bool {
        false
    }

    fn backend_name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.key(key);
        self.conn
            .call(
                |mut c| async move { redis::cmd("HGET").arg(k).arg("v").query_async(&mut c).await },
            )
            .await
            .map_err(StoreError)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.set_many(&[(key.to_string(), value.to_vec())]).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.delete_many(&[key.to_string()]).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let k = self.key(key);
        self.conn
            .call(|mut c| async move { redis::cmd("EXISTS").arg(k).query_async(&mut c).await })
            .await
            .map_err(StoreError)
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let mut scan: u64 = match cursor {
            None => 0,
            Some(c) => c.parse().map_err(|_| {
                BackendError::rejected(
                    NAME,
                    format!(
                        "list-keys cursor '{c}' was not returned by this store; start again without a cursor"
                    ),
                )
            })?,
        };
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let (p, s) = (pattern.clone(), scan);
            let (next, batch): (u64, Vec<Vec<u8>>) = self
                .conn
                .call(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(s)
                        .arg("MATCH")
                        .arg(p)
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut c)
                        .await
                })
                .await
                .map_err(StoreError)?;
            for raw in batch {
                let full = String::from_utf8_lossy(&raw);
                if let Some(k) = full.strip_prefix(&self.prefix)
                    && seen.insert(k.to_string())
                {
                    keys.push(k.to_string());
                }
            }
            scan = next;
            if scan == 0 || keys.len() >= PAGE {
                break;
            }
        }
        Ok((keys, (scan != 0).then(|| scan.to_string())))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HGET").arg(self.key(k)).arg("v");
        }
        self.conn
            .call(|mut c| async move { pipe.query_async(&mut c).await })
            .await
            .map_err(StoreError)
    }

    async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut inv = SET_MANY.prepare_invoke();
        inv.key(VERSION_KEY);
        for (k, v) in entries {
            inv.key(self.key(k)).arg(v.as_slice());
        }
        self.conn
            .call(|mut c| async move { inv.invoke_async::<()>(&mut c).await })
            .await
            .map_err(StoreError)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.conn
            .call(
                |mut c| async move { redis::cmd("DEL").arg(full).query_async::<()>(&mut c).await },
            )
            .await
            .map_err(StoreError)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let mut inv = INCREMENT.prepare_invoke();
        inv.key(VERSION_KEY).key(self.key(key)).arg(delta);
        let result = self
            .conn
            .call(|mut c| async move { inv.invoke_async::<String>(&mut c).await })
            .await;
        let rejected = |message: String| StoreError(BackendError::rejected(NAME, message));
        match result {
            Ok(text) => text.parse().map_err(|_| {
                rejected(format!(
                    "Redis returned '{text}' for the counter '{key}', not an integer"
                ))
            }),
            Err(BackendError::Rejected { message, .. }) if message.contains("not an integer") => {
                Err(rejected(format!(
                    "the value at '{key}' is not an integer; increment only works on keys it created or that hold decimal text"
                )))
            }
            Err(BackendError::Rejected { message, .. }) if message.contains("overflow") => {
                Err(rejected(format!(
                    "incrementing '{key}' by {delta} overflows a 64-bit integer"
                )))
            }
            Err(e) => Err(StoreError(e)),
        }
    }

    async fn read_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, CasVersion), StoreError> {
        let k = self.key(key);
        let (value, version): (Option<Vec<u8>>, Option<String>) = self
            .conn
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(k)
                    .arg("v")
                    .arg("ver")
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(StoreError)?;
        Ok(match (value, version) {
            (None, _) => (None, CasVersion::Absent),
            // Written by something other than this host: a version that never matches.
            (Some(v), None) => (Some(v), CasVersion::Version("unversioned".into())),
            (Some(v), Some(ver)) => (Some(v), CasVersion::Version(ver)),
        })
    }

    async fn swap(&self, key: &str, version: &CasVersion, value: &[u8]) -> Result<(), SwapError> {
        let expected = match version {
            CasVersion::Absent => String::new(),
            CasVersion::Version(v) => v.clone(),
        };
        let mut inv = SWAP.prepare_invoke();
        inv.key(VERSION_KEY)
            .key(self.key(key))
            .arg(expected)
            .arg(value);
        let written: i64 = self
            .conn
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
            .map_err(StoreError)?;
        if written == 1 {
            Ok(())
        } else {
            Err(SwapError::CasFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Semantics the end-to-end tests do not reach, on a real redis-server
    //! (scripts/test.sh installs it).
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn server() -> (Server, RedisKeyValue) {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let server = Server(child);
        let conn = RedisConn::open(&format!("redis://127.0.0.1:{port}"), "test").unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while conn.ping().await.is_err() {
            assert!(Instant::now() < end, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (server, RedisKeyValue::new(conn))
    }

    #[tokio::test]
    async fn cas_versions_are_never_reused_and_increment_bumps_them() {
        let (_server, kv) = server().await;
        let s = kv.open("c", "default").unwrap();
        s.set("k", b"1").await.unwrap();
        let (_, old) = s.read_versioned("k").await.unwrap();
        s.delete("k").await.unwrap();
        s.set("k", b"1").await.unwrap();
        assert!(matches!(
            s.swap("k", &old, b"2").await,
            Err(SwapError::CasFailed)
        ));

        let (_, before) = s.read_versioned("k").await.unwrap();
        assert_eq!(s.increment("k", 41).await.unwrap(), 42);
        assert!(matches!(
            s.swap("k", &before, b"x").await,
            Err(SwapError::CasFailed)
        ));
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"42"[..]));
        assert_eq!(s.increment("fresh", -3).await.unwrap(), -3);

        s.set("big", i64::MAX.to_string().as_bytes()).await.unwrap();
        let e = s.increment("big", 1).await.unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
    }

    #[tokio::test]
    async fn namespaces_are_separate_and_pages_carry_a_cursor() {
        let (_server, kv) = server().await;
        let (a, b) = (
            kv.open("a", "default").unwrap(),
            kv.open("a*", "default").unwrap(),
        );
        let entries: Vec<(String, Vec<u8>)> = (0..2100)
            .map(|i| (format!("k{i}"), b"v".to_vec()))
            .collect();
        a.set_many(&entries).await.unwrap();
        b.set("only-b", b"v").await.unwrap();
        let (mut all, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            let (keys, next) = a.list_keys(cursor.as_deref()).await.unwrap();
            all.extend(keys);
            pages += 1;
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            2100,
            "no key of the glob-like namespace 'a*' leaks in"
        );
        assert!(pages >= 2);
        assert_eq!(
            b.list_keys(None).await.unwrap().0,
            vec!["only-b".to_string()]
        );
        let e = a.list_keys(Some("nonsense")).await.unwrap_err().to_string();
        assert!(e.contains("cursor"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_quickly() {
        let port = free_port(); // nothing listens there
        let kv = RedisKeyValue::new(
            RedisConn::open(&format!("redis://127.0.0.1:{port}"), "test").unwrap(),
        );
        let s = kv.open("c", "default").unwrap();
        let started = Instant::now();
        let e = s.get("k").await.unwrap_err();
        assert!(e.0.is_unavailable(), "{e}");
        assert!(
            e.to_string().contains(&port.to_string()),
            "names the server: {e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(kv.ready().await.is_err());
    }
}
