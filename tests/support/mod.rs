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

/// A run of beam.wasm in `work/name` (compiled plugins cached in `work/cache`), its roles at
/// `api_base`, with `flags`.
pub fn beam_run(work: &Path, api_base: &str, name: &str, flags: &[&str]) -> Output {
    let mut command = strategy_in(&work.join("cache"), "run", "beam", work.join(name));
    output(command.args(roles_at(api_base)).args(flags))
}

/// A run of testkit.wasm in `work/run` (compiled plugins cached in `work/cache`), its roles at
/// `api_base`, with `options` (`KEY=VALUE`, `mode=` among them) and then `flags`.
pub fn testkit_run(work: &Path, api_base: &str, options: &[&str], flags: &[&str]) -> Output {
    let mut command = strategy_in(&work.join("cache"), "run", "testkit", work.join("run"));
    command.args(roles_at(api_base));
    for option in options {
        command.args(["--option", option]);
    }
    output(command.args(flags))
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

/// The best path of a run, recomputed from the tree in its `result.json` (each node's reward
/// and parent): of the nodes `candidate` accepts, the one whose path (its rewards from the root
/// on) `score` rates highest, the first created winning a tie. Returns the node ids from the
/// root, and the score.
pub fn best_path_by(
    result: &serde_json::Value,
    candidate: impl Fn(&serde_json::Value) -> bool,
    score: impl Fn(&[f64]) -> f64,
) -> (Vec<u64>, f64) {
    let tree = result["tree"].as_array().expect("result.json has a tree");
    let node = |id: u64| &tree[usize::try_from(id).unwrap()];
    let mut best: Option<(Vec<u64>, f64)> = None;
    for end in tree.iter().filter(|n| candidate(n)) {
        let mut path = vec![end["id"].as_u64().unwrap()];
        while let Some(parent) = node(*path.last().unwrap())["parent"].as_u64() {
            path.push(parent);
        }
        path.reverse();
        let rewards: Vec<f64> = path
            .iter()
            .map(|&id| node(id)["reward"].as_f64().unwrap())
            .collect();
        let score = score(&rewards);
        // serde_json may round a parsed reward by an ulp: closer scores count as a tie.
        if best.as_ref().is_none_or(|(_, top)| score > top + 1e-9) {
            best = Some((path, score));
        }
    }
    best.expect("the tree has a node")
}

/// The mean of a path's rewards after the root's (the root's own when it is alone): DRPO's
/// path score, and MCTS's.
pub fn mean_after_root(rewards: &[f64]) -> f64 {
    match rewards {
        [root] => *root,
        _ => rewards[1..].iter().sum::<f64>() / (rewards.len() - 1) as f64,
    }
}

/// The reward of a path's last node: the score of a strategy that keeps the best prompt so far.
pub fn last_reward(rewards: &[f64]) -> f64 {
    *rewards.last().expect("a path has a node")
}

/// Beam's best path recomputed from its tree ([`best_path_by`]): the deepest level's paths are
/// the terminal ones, scored by [`mean_after_root`] (by the last reward when the beam is 1).
pub fn beam_best_path(result: &serde_json::Value, beam_size: u32) -> (Vec<u64>, f64) {
    let tree = result["tree"].as_array().expect("result.json has a tree");
    let deepest = tree.iter().filter_map(|n| n["depth"].as_u64()).max();
    best_path_by(
        result,
        |n| n["depth"].as_u64() == deepest,
        |rewards| {
            if beam_size <= 1 {
                last_reward(rewards)
            } else {
                mean_after_root(rewards)
            }
        },
    )
}

/// Asserts that `result.json`'s best path, best score and best prompt are those of `expected`
/// (a path and its score, recomputed from the tree).
pub fn assert_best_path(result: &serde_json::Value, expected: (Vec<u64>, f64)) {
    let (path, score) = expected;
    let reported: Vec<u64> = result["best_path"]
        .as_array()
        .expect("result.json has a best path")
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    assert_eq!(reported, path, "best path");
    let best_score = result["best_score"].as_f64().expect("a best score");
    assert!(
        (best_score - score).abs() < 1e-9,
        "best score {best_score}, recomputed {score}"
    );
    let last = usize::try_from(*path.last().unwrap()).unwrap();
    assert_eq!(result["best_prompt"], result["tree"][last]["prompt"]);
}

/// Asserts that the rewards of the tree's nodes are not all equal, so that which node is best
/// depends on the ranking.
pub fn assert_rewards_differ(result: &serde_json::Value) {
    let rewards: Vec<f64> = result["tree"]
        .as_array()
        .expect("result.json has a tree")
        .iter()
        .map(|n| n["reward"].as_f64().unwrap())
        .collect();
    assert!(
        rewards.iter().any(|r| *r != rewards[0]),
        "the rewards differ, so the ranking decides: {rewards:?}"
    );
}
