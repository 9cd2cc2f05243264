//! The wasmtime engine: pooling allocator tuned as measured (keep-resident
//! and pagemap scan: ~3× the default throughput), epoch interruption for
//! per-request time limits, and an on-disk cache of compiled components
//! keyed by the wasm's hash and the engine's configuration.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy,
};

/// How often the epoch advances; the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits every instance runs under, and the profiling agent.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Linear memory one instance may use.
    pub max_memory_bytes: usize,
    /// Instances alive at once (requests + deliveries in flight).
    pub max_instances: u32,
    /// Which profiler can name the components' compiled functions.
    pub profiler: Profiler,
}

/// Makes `perf` able to name the functions of the components' compiled
/// code (wasmtime's profiling agents; without one, `perf report` shows
/// guest time as anonymous `[JIT]` addresses). Profiling only: see
/// docs/operations.md, "Profiling".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profiler {
    /// No agent: nothing is written, nothing costs.
    #[default]
    None,
    /// `/tmp/perf-<pid>.map`, read by `perf report` directly. (wasmtime's
    /// jitdump and VTune agents need its `profiling` feature, which this
    /// build leaves out.)
    Perfmap,
}

/// Builds the engine all components share.
pub fn build_engine(limits: EngineLimits) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let n = limits.max_instances;
    pool.total_component_instances(n)
        .total_core_instances(n * 4)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_core_instances_per_component(16)
        .max_memory_size(limits.max_memory_bytes)
        // Reuse the pages an instance touched instead of madvise + refault.
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(4 << 20)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .profiler(match limits.profiler {
            Profiler::None => ProfilingStrategy::None,
            Profiler::Perfmap => ProfilingStrategy::PerfMap,
        });
    Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot configure wasmtime: {e}"))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    /// Starts the ticker thread.
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wasmshop-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether a component came from the compile cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled code: no compilation.
    Hit,
    /// Compiled now, and stored for the next start.
    Compiled,
}

/// Feeds `Hash` output into SHA-256.
struct ShaHasher<'a>(&'a mut Sha256);
impl Hasher for ShaHasher<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache file of `wasm` for this engine.
fn cache_path(engine: &Engine, cache_dir: &Path, wasm: &[u8]) -> PathBuf {
    let mut sha = Sha256::new();
    sha.update(wasm);
    engine
        .precompile_compatibility_hash()
        .hash(&mut ShaHasher(&mut sha));
    cache_dir.join(format!("{}.cwasm", hex::encode(sha.finalize())))
}

/// Loads a component, from the cache when this exact wasm was compiled
/// by an identically configured engine before.
pub fn load_component(
    engine: &Engine,
    wasm_path: &Path,
    cache_dir: &Path,
) -> anyhow::Result<(Component, CacheOutcome, Duration)> {
    let started = Instant::now();
    let wasm = std::fs::read(wasm_path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read component {} ({e}); build it first (see the README) or fix `source` in the manifest",
            wasm_path.display()
        )
    })?;
    let cached = cache_path(engine, cache_dir, &wasm);
    if cached.exists() && owned_by_us(&cached) {
        // SAFETY: the file was written by `Engine::precompile_component` of
        // an engine with the same compatibility hash (part of its name), in
        // a directory only this host writes.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(c) => return Ok((c, CacheOutcome::Hit, started.elapsed())),
            Err(e) => {
                tracing::warn!(file = %cached.display(), error = %e, "ignoring unusable compile cache entry")
            }
        }
    }
    let bytes = engine.precompile_component(&wasm).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid WebAssembly component ({e}); build it for wasm32-wasip2",
            wasm_path.display()
        )
    })?;
    // SAFETY: `bytes` was just produced by this engine.
    let component = unsafe { Component::deserialize(engine, &bytes) }
        .map_err(|e| anyhow::anyhow!("cannot load compiled {}: {e}", wasm_path.display()))?;
    if let Err(e) = create_private_dir(cache_dir).and_then(|_| {
        let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &cached)
    }) {
        tracing::warn!(dir = %cache_dir.display(), error = %e, "could not write the compile cache; the next start compiles again");
    }
    Ok((component, CacheOutcome::Compiled, started.elapsed()))
}

/// Creates `dir` (and its parents) readable and writable by this user
/// only (0700): a cache entry is native code this process will run, so
/// no one else may place or change one.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // An existing directory keeps its mode otherwise.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Whether `file` belongs to the user this process runs as; a cache entry
/// owned by anyone else is ignored (and compiled afresh), since loading it
/// would run native code that user wrote.
fn owned_by_us(file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match std::fs::symlink_metadata(file) {
        Ok(m) if m.uid() == me && m.file_type().is_file() => true,
        Ok(m) => {
            tracing::warn!(file = %file.display(), owner = m.uid(), "ignoring a compile cache entry this user does not own (or not a plain file)");
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_directory_is_private_and_foreign_entries_are_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("data/compiled");
        create_private_dir(&cache).unwrap();
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let entry = cache.join("x.cwasm");
        std::fs::write(&entry, b"x").unwrap();
        assert!(owned_by_us(&entry));
        let link = cache.join("link.cwasm");
        std::os::unix::fs::symlink(&entry, &link).unwrap();
        assert!(!owned_by_us(&link), "a symlink is not a plain file");
    }
}
