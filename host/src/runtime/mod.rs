//! The plugin runtime: loads strategy components and runs them in a deterministic sandbox.
//!
//! * **Engine**: wasmtime's component model with async host imports; fuel metering (a
//!   deterministic instruction budget), epoch interruption (the wall-clock deadline), NaN
//!   canonicalisation and deterministic relaxed SIMD, and no threads, so that the same plugin
//!   given the same answers computes the same thing on every machine.
//! * **Loading** checks what the file is before compiling it (a core module, a component for
//!   another contract version...) and keeps compiled components in a cache keyed by the plugin's
//!   sha256 and the engine's configuration, so a second start skips compilation.
//! * **Running** gives each call its own store ([`sandbox::StoreState`]): a virtual WASI, the
//!   memory limiter, and the [`Session`] that answers the plugin's import calls.

mod divergence;
mod records;
mod sandbox;
mod session;

pub use divergence::{Divergence, first_difference, first_value_difference};
pub use records::{
    DEFAULT_ERROR_KIB, DEFAULT_LOG_LINE_KIB, DEFAULT_NODE_KIB, DEFAULT_RECORDS_MIB, RecordLimits,
};
pub use sandbox::{Limits, StoreState};
pub use session::{Answered, Live, Observer, Session, SessionFailure};

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, Store, Trap};

use crate::bindings::types::{Info, Outcome, Plan};
use crate::bindings::{Strategy, WIT_PACKAGE, WIT_VERSION};

/// How often the deadline clock ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a plugin could not be loaded or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    // Not `source`: the cause is in the message, and a source would print it a second time.
    #[error("cannot read plugin {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} is not a WebAssembly file (it starts with {found}); a strategy is a `.wasm` \
         component, e.g. built with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm { path: PathBuf, found: String },
    #[error(
        "{path} is a core WebAssembly module, not a component; build the strategy for \
         `wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: PathBuf },
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} was built against {found}, but this drpo-host implements \
         {WIT_PACKAGE}@{WIT_VERSION}; rebuild the plugin against the WIT file shipped with this \
         host (versions {compatible} are compatible)"
    )]
    WrongVersion {
        path: PathBuf,
        found: String,
        compatible: String,
    },
    #[error(
        "{path} is not a drpo strategy: it must export `describe` and `run` from the world \
         `{WIT_PACKAGE}/strategy@{WIT_VERSION}` ({missing})"
    )]
    NotAStrategy { path: PathBuf, missing: String },
    #[error("plugin {plugin} ran out of fuel: it used its whole budget of {limit} instructions")]
    Fuel { plugin: String, limit: u64 },
    #[error("plugin {plugin} exceeded its memory limit of {limit} bytes (it asked for {asked})")]
    Memory {
        plugin: String,
        limit: usize,
        asked: usize,
    },
    #[error("plugin {plugin} exceeded its wall-clock deadline of {limit:?}")]
    Deadline { plugin: String, limit: Duration },
    #[error("plugin {plugin} panicked: {message}")]
    Panic { plugin: String, message: String },
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin} stopped: {failure}")]
    Host {
        plugin: String,
        failure: Box<SessionFailure>,
    },
    #[error("plugin {plugin} failed: {message}")]
    Strategy { plugin: String, message: String },
}

/// Where a loaded plugin's machine code came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled now: the runtime has no cache, or nothing was cached for this plugin and engine.
    Now,
    /// Read from the cache.
    FromCache,
    /// Compiled again because the cached copy could not be loaded (why); the cache is rewritten.
    Again(String),
}

impl std::fmt::Display for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compiled::Now => write!(f, "compiled now"),
            Compiled::FromCache => write!(f, "read from the compiled cache"),
            Compiled::Again(why) => write!(
                f,
                "compiled again: the cached copy could not be loaded ({why})"
            ),
        }
    }
}

/// A loaded, compiled strategy.
#[derive(Clone)]
pub struct Plugin {
    component: Component,
    path: PathBuf,
    sha256: String,
    wit_package: String,
    compiled: Compiled,
}

impl Plugin {
    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sha256 of the `.wasm` file, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where its machine code came from: the cache, or a compilation (and why).
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The contract it was built against, e.g. `drpo:strategy@0.2.0`.
    pub fn wit_package(&self) -> &str {
        &self.wit_package
    }

    fn label(&self) -> String {
        self.path.display().to_string()
    }
}

/// What one export call produced, and the session, the observer and the output it leaves
/// behind.
pub struct Finished<T, O = ()> {
    pub result: Result<T, PluginError>,
    pub session: Session,
    /// The observer of the run's calls, given back.
    pub observer: O,
    /// The plugin's stdout and stderr.
    pub stdout: String,
    pub stderr: String,
    /// Fuel the call consumed.
    pub fuel_used: u64,
}

impl<T> Finished<T> {
    /// The same, with `observer` given back.
    fn with_observer<O>(self, observer: O) -> Finished<T, O> {
        Finished {
            result: self.result,
            session: self.session,
            observer,
            stdout: self.stdout,
            stderr: self.stderr,
            fuel_used: self.fuel_used,
        }
    }
}

/// Compiles and runs strategy plugins.
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    /// A runtime whose compiled plugins are cached in `cache_dir` (none: always compile).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            // No threads: wasmtime is built without its `threads` feature.
            .shared_memory(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Strategy::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |state| state)?;
        start_epoch_ticker(&engine);
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache_dir,
        })
    }

    /// The default place for compiled plugins: `components` in [`Runtime::cache_root`].
    pub fn default_cache_dir() -> Option<PathBuf> {
        Runtime::cache_root().map(|root| root.join("components"))
    }

    /// drpo's cache directory: `$DRPO_CACHE_DIR`, else `$XDG_CACHE_HOME/drpo`, else
    /// `~/.cache/drpo`.
    pub fn cache_root() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DRPO_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("drpo"))
    }

    /// Loads a plugin: checks that it is a component for this contract and compiles it (or
    /// takes it from the cache).
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|error| PluginError::Read {
            path: path.to_owned(),
            error,
        })?;
        check_header(path, &bytes)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let (component, compiled) = self.compile(path, &bytes, &sha256)?;
        let wit_package = check_contract(path, &self.engine, &component)?;
        Ok(Plugin {
            component,
            path: path.to_owned(),
            sha256,
            wit_package,
            compiled,
        })
    }

    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Component, Compiled), PluginError> {
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        };
        let Some(cache_dir) = &self.cache_dir else {
            let component = Component::new(&self.engine, bytes).map_err(invalid)?;
            return Ok((component, Compiled::Now));
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let cached = cache_dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
        let mut compiled = Compiled::Now;
        if cached.is_file() {
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash (it is in the name), in a directory only this tool writes.
            // A damaged file fails to deserialize and is recompiled below.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok((component, Compiled::FromCache)),
                Err(error) => {
                    compiled = Compiled::Again(format!("{}: {error:#}", cached.display()));
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        // The cache is an optimisation: failing to write it must not fail the run.
        if let Ok(serialized) = component.serialize() {
            let _ = std::fs::create_dir_all(cache_dir);
            let temporary = cached.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&temporary, serialized).is_ok() {
                let _ = std::fs::rename(&temporary, &cached);
            }
        }
        Ok((component, compiled))
    }

    /// Calls the plugin's `describe`.
    pub async fn describe(&self, plugin: &Plugin, limits: Limits) -> Finished<Info> {
        let session = Session::replay(Vec::new());
        self.call(plugin, 0, limits, session, |strategy, store| {
            Box::pin(async move { strategy.call_describe(store).await.map(Ok) })
        })
        .await
    }

    /// Calls the plugin's `estimate` with `options` (JSON): the calls and tokens a run may
    /// spend per role, and its levels. The plugin may not call the host.
    pub async fn estimate(&self, plugin: &Plugin, options: &str, limits: Limits) -> Finished<Plan> {
        let options = options.to_owned();
        let session = Session::replay(Vec::new());
        self.call(plugin, 0, limits, session, move |strategy, store| {
            Box::pin(async move { strategy.call_estimate(store, &options).await })
        })
        .await
    }

    /// Calls the plugin's `run` with `options` (JSON), its imports answered by `session` and
    /// seen by `observer`, which comes back in [`Finished`].
    pub async fn run<O: Observer + 'static>(
        &self,
        plugin: &Plugin,
        options: &str,
        seed: u64,
        limits: Limits,
        mut session: Session,
        observer: O,
    ) -> Finished<Outcome, O> {
        let options = options.to_owned();
        let lent = Arc::new(std::sync::Mutex::new(observer));
        session.observer = Some(Box::new(session::Lent(lent.clone())));
        let mut finished = self
            .call(plugin, seed, limits, session, move |strategy, store| {
                Box::pin(async move { strategy.call_run(store, &options).await })
            })
            .await;
        // The session's copy goes first, so the observer is ours alone again.
        finished.session.observer = None;
        let observer = Arc::into_inner(lent)
            .expect("the session held the only other reference")
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let mut finished = finished.with_observer(observer);
        if let Ok(outcome) = &finished.result
            && let Err(refusal) = finished.session.records.admit_outcome(outcome)
        {
            finished.result = Err(PluginError::Host {
                plugin: plugin.label(),
                failure: Box::new(SessionFailure::RecordLimit(refusal)),
            });
        }
        finished
    }

    async fn call<T, F>(
        &self,
        plugin: &Plugin,
        seed: u64,
        limits: Limits,
        session: Session,
        export: F,
    ) -> Finished<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
            &'a Strategy,
            &'a mut Store<StoreState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<Result<T, String>>> + Send + 'a>,
        >,
    {
        let mut session = session;
        session.records = records::RecordMeter::new(limits.records);
        let mut store = Store::new(
            &self.engine,
            StoreState::new(seed, limits.memory_bytes, session),
        );
        store.limiter(|state| &mut state.limiter);
        // `set_fuel` cannot fail on an engine with fuel enabled.
        store.set_fuel(limits.fuel).expect("fuel is enabled");
        let ticks = (limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let outcome = {
            let work = async {
                let strategy =
                    Strategy::instantiate_async(&mut store, &plugin.component, &self.linker)
                        .await?;
                export(&strategy, &mut store).await
            };
            // The epoch deadline stops a plugin that computes; this timeout also stops one that
            // waits on a host call that never returns. The margin lets the epoch fire first.
            tokio::time::timeout(limits.deadline + EPOCH_TICK * 10, work).await
        };
        let fuel_used = limits.fuel - store.get_fuel().unwrap_or(0);
        let result = match outcome {
            Err(_elapsed) => Err(PluginError::Deadline {
                plugin: plugin.label(),
                limit: limits.deadline,
            }),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(message))) => Err(PluginError::Strategy {
                plugin: plugin.label(),
                message: store.data().session.records.cut_error(message),
            }),
            Ok(Err(error)) => Err(classify(plugin, limits, store.data_mut(), &error)),
        };
        let stdout = store.data().stdout();
        let stderr = store.data().stderr();
        let result = result.map_err(|error| match attach_panic(error, &stderr) {
            PluginError::Panic { plugin, message } => PluginError::Panic {
                plugin,
                message: store.data().session.records.cut_error(message),
            },
            other => other,
        });
        Finished {
            result,
            session: store.into_data().into_session(),
            observer: (),
            stdout,
            stderr,
            fuel_used,
        }
    }
}

/// Names the limit or failure behind a trap.
fn classify(
    plugin: &Plugin,
    limits: Limits,
    state: &mut StoreState,
    error: &wasmtime::Error,
) -> PluginError {
    let label = plugin.label();
    if let Some(failure) = state.session.failure.take() {
        return PluginError::Host {
            plugin: label,
            failure: Box::new(failure),
        };
    }
    if let Some(asked) = state.limiter.exceeded {
        return PluginError::Memory {
            plugin: label,
            limit: state.limiter.limit(),
            asked,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginError::Fuel {
            plugin: label,
            limit: limits.fuel,
        },
        Some(Trap::Interrupt) => PluginError::Deadline {
            plugin: label,
            limit: limits.deadline,
        },
        _ => PluginError::Trap {
            plugin: label,
            message: format!("{error:#}"),
        },
    }
}

/// A Rust plugin that panics prints the message to stderr and then traps; report the message.
fn attach_panic(error: PluginError, stderr: &str) -> PluginError {
    match error {
        PluginError::Trap { plugin, message } => match panic_message(stderr) {
            Some(panic) => PluginError::Panic {
                plugin,
                message: panic,
            },
            None => PluginError::Trap { plugin, message },
        },
        other => other,
    }
}

fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at ")?;
    let after = &stderr[start..];
    // "panicked at src/lib.rs:10:5:\nmessage\nnote: ..."
    let message: Vec<&str> = after
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with("note:"))
        .collect();
    let location = after.lines().next().unwrap_or_default();
    Some(format!(
        "{} ({})",
        message.join("\n").trim(),
        location.trim_end_matches(':')
    ))
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let found = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(PluginError::NotWasm {
            path: path.to_owned(),
            found: if found.is_empty() {
                "nothing: the file is empty".into()
            } else {
                format!("bytes {found}")
            },
        });
    }
    // Bytes 4..8: version 1 and layer 0 is a core module; layer 1 is a component.
    if bytes[6..8] == [0, 0] {
        return Err(PluginError::CoreModule {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Checks the component's imports and exports against this host's contract and returns the
/// package it was built against.
fn check_contract(
    path: &Path,
    engine: &Engine,
    component: &Component,
) -> Result<String, PluginError> {
    let ty = component.component_type();
    let prefix = format!("{WIT_PACKAGE}/");
    let mut found_version = None;
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix(&prefix) {
            found_version = rest.split_once('@').map(|(_, version)| version.to_owned());
        }
    }
    if let Some(version) = &found_version
        && !compatible(version)
    {
        return Err(PluginError::WrongVersion {
            path: path.to_owned(),
            found: format!("{WIT_PACKAGE}@{version}"),
            compatible: compatible_range(),
        });
    }
    let exports: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
        .map(|(name, _)| name.to_owned())
        .collect();
    let missing: Vec<&str> = ["describe", "run"]
        .into_iter()
        .filter(|name| !exports.iter().any(|e| e == name))
        .collect();
    if !missing.is_empty() {
        let exported = if exports.is_empty() {
            "it exports no functions".to_owned()
        } else {
            format!("it exports {}", exports.join(", "))
        };
        return Err(PluginError::NotAStrategy {
            path: path.to_owned(),
            missing: format!("missing {}; {exported}", missing.join(" and ")),
        });
    }
    let version = found_version.unwrap_or_else(|| WIT_VERSION.to_owned());
    Ok(format!("{WIT_PACKAGE}@{version}"))
}

/// Semver compatibility: same major, or before 1.0 the same minor.
fn compatible(version: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    let (ours, theirs) = (parts(WIT_VERSION), parts(version));
    if ours.len() < 2 || theirs.len() < 2 {
        return false;
    }
    if ours[0] == 0 {
        theirs[0] == 0 && theirs[1] == ours[1]
    } else {
        theirs[0] == ours[0]
    }
}

fn compatible_range() -> String {
    let mut parts = WIT_VERSION.split('.');
    let (major, minor) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    if major == "0" {
        format!("{major}.{minor}.x")
    } else {
        format!("{major}.x")
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("drpo-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compatible_within_the_same_minor_before_one_point_oh() {
        assert_eq!(
            WIT_VERSION, "0.2.0",
            "this test's versions follow the contract's"
        );
        assert!(compatible("0.2.0"));
        assert!(compatible("0.2.7"));
        assert!(!compatible("0.1.0"));
        assert!(!compatible("0.3.0"));
        assert!(!compatible("1.0.0"));
        assert!(!compatible("garbage"));
        assert_eq!(compatible_range(), "0.2.x");
    }

    #[test]
    fn recognises_files_that_are_not_components() {
        let path = Path::new("p.wasm");
        assert!(matches!(
            check_header(path, b"hello world"),
            Err(PluginError::NotWasm { .. })
        ));
        assert!(matches!(
            check_header(path, b""),
            Err(PluginError::NotWasm { .. })
        ));
        assert!(matches!(
            check_header(path, b"\0asm\x01\0\0\0"),
            Err(PluginError::CoreModule { .. })
        ));
        assert!(check_header(path, b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn extracts_a_rust_panic_message() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:12:9:\nthe plugin gave up\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "the plugin gave up (panicked at src/lib.rs:12:9)"
        );
        assert_eq!(panic_message("nothing here"), None);
    }
}
