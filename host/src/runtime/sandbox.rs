//! The sandbox a plugin runs in: a virtual WASI, resource limits, and the store state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use rand::SeedableRng;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::records::RecordLimits;
use super::session::Session;

/// Limits applied to one plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Instruction budget (wasmtime fuel). Deterministic: the same run stops at the same place.
    pub fuel: u64,
    /// Most linear memory the plugin may hold, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock limit for one export call, host calls included.
    pub deadline: Duration,
    /// What the plugin may record: nodes, log lines, errors, all of them together.
    pub records: RecordLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 50_000_000_000,
            memory_bytes: 1 << 30,
            deadline: Duration::from_secs(24 * 3600),
            records: RecordLimits::default(),
        }
    }
}

/// Bytes of plugin stdout/stderr kept; the rest is dropped (a plugin cannot fill the host's
/// memory by printing).
const CAPTURE_BYTES: usize = 4 << 20;

/// The virtual time every plugin starts at: 2024-01-01T00:00:00Z.
const VIRTUAL_EPOCH: Duration = Duration::from_secs(1_704_067_200);

/// Everything a plugin's store holds.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) session: Session,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl StoreState {
    /// A fresh sandbox whose randomness derives from `seed`.
    pub fn new(seed: u64, memory_bytes: usize, session: Session) -> StoreState {
        let stdout = MemoryOutputPipe::new(CAPTURE_BYTES);
        let stderr = MemoryOutputPipe::new(CAPTURE_BYTES);
        let ticks = Arc::new(AtomicU64::new(0));
        let mut builder = WasiCtx::builder();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // No preopened directories, no environment, no arguments (the defaults), and no
            // network at all rather than a network that refuses every address.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .secure_random(seeded_rng(seed, 1))
            .insecure_random(seeded_rng(seed, 2))
            .insecure_random_seed(u128::from(seed) << 64 | 0x5eed)
            .wall_clock(VirtualWallClock(VirtualClock(ticks.clone())))
            .monotonic_clock(VirtualClock(ticks));
        StoreState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_bytes,
                exceeded: None,
            },
            session,
            stdout,
            stderr,
        }
    }

    /// What the plugin printed to stdout, lossily decoded.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.contents()).into_owned()
    }

    /// What the plugin printed to stderr (a Rust plugin's panic message lands here).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }

    /// Gives the session back once the plugin is done.
    pub fn into_session(self) -> Session {
        self.session
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A ChaCha20 stream derived from the run's seed; `stream` keeps the secure and insecure
/// generators independent.
fn seeded_rng(seed: u64, stream: u64) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..].copy_from_slice(b"drpo-wasi-random");
    ChaCha20Rng::from_seed(key)
}

/// Virtual time: each read advances it by one millisecond, so a plugin that measures time sees
/// it pass, yet every run reads the same values.
struct VirtualClock(Arc<AtomicU64>);

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        (self.0.fetch_add(1, Ordering::Relaxed) + 1) * 1_000_000
    }
}

struct VirtualWallClock(VirtualClock);

impl HostWallClock for VirtualWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        VIRTUAL_EPOCH + Duration::from_nanos(self.0.now())
    }
}

/// Refuses linear-memory growth past the limit, and remembers that it did so that the error
/// can say "memory limit" rather than whatever the plugin's allocator makes of it.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = Some(desired);
            wasmtime::bail!(
                "memory limit exceeded: the plugin asked for {desired} bytes of linear memory, \
                 the limit is {} bytes",
                self.limit
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
