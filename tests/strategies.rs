//! `greedy.wasm` and `mcts.wasm` end to end through `drpo-host run`, against the loopback
//! OpenAI-compatible server: each run completes, records its tree with the details the viewer
//! shows, and `drpo-host replay` reproduces it.

use std::path::Path;

use drpo_tests::browser;
use drpo_tests::server::Server;
use drpo_tests::{
    assert_best_path, assert_replays, assert_rewards_differ, best_path_by, host, last_reward,
    mean_after_root, output, plugin, result_json, roles_at, text,
};

/// Runs `strategy` with `options` (KEY=VALUE) into `work/name`, and checks the replay and that
/// `tree.html` renders every node.
fn run_and_replay(strategy: &str, work: &Path, options: &[&str]) -> serde_json::Value {
    let server = Server::start();
    let dir = work.join(strategy);
    let mut command = host(&work.join("cache"));
    command
        .arg("run")
        .arg("--strategy")
        .arg(plugin(strategy))
        .arg("--log-dir")
        .arg(&dir)
        .args(roles_at(server.url()));
    for option in options {
        command.arg("--option").arg(option);
    }
    let out = output(&mut command);
    assert!(out.status.success(), "{}", text(&out));

    assert_replays(&work.join("cache"), &dir);
    let result = result_json(&dir);
    let dom = browser::dump_dom(&dir.join("tree.html"), "");
    assert_eq!(
        browser::rendered_nodes(&dom).len(),
        result["tree"].as_array().unwrap().len(),
        "tree.html in headless Chromium shows every node"
    );
    result
}

/// Every node has the fields the viewer reads, and its parent was recorded before it.
fn assert_viewable_tree(result: &serde_json::Value) -> usize {
    let tree = result["tree"].as_array().expect("result.json has a tree");
    for (index, node) in tree.iter().enumerate() {
        assert_eq!(node["id"], index, "{node}");
        if let Some(parent) = node["parent"].as_u64() {
            assert!((parent as usize) < index, "{node}");
        }
        let details = &node["details"];
        assert!(details["query"].is_string(), "{node}");
        assert!(details["answer"].is_string(), "{node}");
        let aspects = details["aspects"].as_array().expect("aspects");
        assert!(!aspects.is_empty(), "{node}");
        assert!(aspects[0]["rationale"].is_string(), "{node}");
    }
    tree.len()
}

#[test]
fn greedy_runs_records_its_trajectory_and_replays() {
    let work = tempfile::tempdir().unwrap();
    let result = run_and_replay("greedy", work.path(), &["steps=3", "eval_queries=2"]);
    assert_eq!(assert_viewable_tree(&result), 1 + 3);
    assert_rewards_differ(&result);
    // Greedy keeps the first prompt of the highest score.
    assert_best_path(&result, best_path_by(&result, |_| true, last_reward));
}

#[test]
fn mcts_runs_records_its_tree_and_replays() {
    let work = tempfile::tempdir().unwrap();
    // Three iterations cannot select a node at depth 3, so each expands one: whatever the
    // rewards steer selection to, the tree has three expansions of two children.
    let result = run_and_replay("mcts", work.path(), &["iterations=3", "depth=3", "width=2"]);
    assert_eq!(assert_viewable_tree(&result), 1 + 3 * 2);
    let tree = result["tree"].as_array().unwrap();
    let depths: Vec<u64> = tree.iter().map(|n| n["depth"].as_u64().unwrap()).collect();
    // The second iteration expands a child of the root; the third a child or a grandchild.
    let deepest = *depths.iter().max().unwrap();
    assert!((2..=3).contains(&deepest), "{depths:?}");
    assert_rewards_differ(&result);
    assert_best_path(&result, best_path_by(&result, |_| true, mean_after_root));
}

/// The Python strategy (`core-wasm/plugins/refine-py`, built by `scripts/build-python-plugin`
/// with componentize-py) runs in the same sandbox and replays bit for bit: CPython's start-up
/// reads WASI's random and clocks, which the sandbox answers from the run's seed.
#[test]
fn the_python_strategy_runs_records_its_tree_and_replays() {
    let work = tempfile::tempdir().unwrap();
    let result = run_and_replay("refine-py", work.path(), &["steps=2"]);
    assert_eq!(assert_viewable_tree(&result), 1 + 2);
    let tree = result["tree"].as_array().unwrap();
    assert_eq!(tree[1]["parent"], 0);
    assert_eq!(tree[1]["details"]["aspects"][1]["name"], "Clarity");
    assert_rewards_differ(&result);
    // A revision is kept when it beats the best so far.
    assert_best_path(&result, best_path_by(&result, |_| true, last_reward));
}

#[test]
fn pareto_runs_records_its_frontier_and_replays() {
    let work = tempfile::tempdir().unwrap();
    let result = run_and_replay(
        "pareto",
        work.path(),
        &["steps=4", "eval_queries=2", "merge_every=2"],
    );
    assert_eq!(assert_viewable_tree(&result), 1 + 4);
    assert_rewards_differ(&result);
    let details = &result["details"];
    let frontier: Vec<u64> = details["frontier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(!frontier.is_empty());
    // The result is the frontier node with the best mean reward; no node outside the frontier
    // beats it on every aspect.
    let best = result["best_path"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(frontier.contains(&best), "{details}");
    let nodes = details["nodes"].as_array().unwrap();
    let reward = |id: u64| nodes[id as usize]["reward"].as_f64().unwrap();
    assert!(frontier.iter().all(|&id| reward(id) <= reward(best)));
    for node in result["tree"].as_array().unwrap() {
        assert!(node["details"]["aspect_means"].is_object(), "{node}");
    }
}
