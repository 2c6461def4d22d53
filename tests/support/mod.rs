//! Shared helpers for the integration tests: where the built binaries and plugins are, and a
//! scripted OpenAI-compatible server on loopback.

pub mod browser;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// A shipped plugin, built by `scripts/build-plugins` into `target/plugins/`.
pub fn plugin(name: &str) -> PathBuf {
    let path = workspace()
        .join("target/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run ./scripts/build-plugins (and ./scripts/build-python-plugin for \
         refine-py) first; ./scripts/test does",
        path.display()
    );
    path
}

/// The `drpo-host` binary of the current build profile (`./scripts/test` builds it first:
/// cargo does not build another package's binaries for these tests).
pub fn host_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/drpo-host
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let binary = profile_dir.join("drpo-host");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p drpo-host` (./scripts/test does)",
        binary.display()
    );
    binary
}

/// A `drpo-host` command with an isolated cache directory and no API key in its environment.
pub fn host(cache: &Path) -> Command {
    let mut command = Command::new(host_binary());
    command
        .env("DRPO_CACHE_DIR", cache)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    command
}

/// `drpo-host SUBCOMMAND` (`run`, `generate`) with the built plugin `strategy`, its compiled
/// plugins cached in `cache`, its run in `run_dir`.
pub fn strategy_in(
    cache: &Path,
    subcommand: &str,
    strategy: &str,
    run_dir: impl AsRef<Path>,
) -> Command {
    let mut command = host(cache);
    command
        .arg(subcommand)
        .arg("--strategy")
        .arg(plugin(strategy))
        .arg("--log-dir")
        .arg(run_dir.as_ref());
    command
}

/// `drpo-host generate` with generate.wasm, its compiled plugins cached in `cache`, its run in
/// `run_dir`.
pub fn generate_in(cache: &Path, run_dir: impl AsRef<Path>) -> Command {
    strategy_in(cache, "generate", "generate", run_dir)
}

/// The flags that route all four roles to `api_base`.
pub fn roles_at(api_base: &str) -> Vec<String> {
    let mut args = Vec::new();
    for flag in [
        "--base-model-name",
        "--eval-model-name",
        "--metrics-model-name",
        "--optimize-model-name",
    ] {
        args.push(flag.to_owned());
        args.push("test-model".to_owned());
    }
    args.push("--api-base".into());
    args.push(api_base.into());
    args
}

/// Runs a command and returns its output, printing it when the test fails later.
pub fn output(command: &mut Command) -> Output {
    let output = command.output().expect("start drpo-host");
    eprintln!(
        "--- {:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        command,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// stdout and stderr together, as text.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `result.json` of a run directory.
pub fn result_json(run_dir: &Path) -> serde_json::Value {
    let path = run_dir.join("result.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The requests the preflight of the run in `run_dir` sent (its checks of the remote models).
pub fn preflight_requests(run_dir: &Path) -> usize {
    drpo_host::runlog::read_log(&run_dir.join("run.log"))
        .unwrap_or_else(|e| panic!("{e}"))
        .preflight()
        .map_or(0, |preflight| preflight.requests.len())
}

/// Asserts that a run exited with code 5: a budget stopped it (its results written).
pub fn assert_budget_stopped(output: &Output) {
    assert_eq!(output.status.code(), Some(5), "{}", text(output));
}

/// Replays the run in `run_dir` (compiled plugins cached in `cache`) and asserts that it
/// reproduced the run; returns what `replay` printed.
pub fn assert_replays(cache: &Path, run_dir: &Path) -> String {
    let replay = output(host(cache).arg("replay").arg(run_dir));
    let printed = text(&replay);
    assert!(replay.status.success(), "{printed}");
    assert!(printed.contains("replay reproduced the run"), "{printed}");
    printed
}
