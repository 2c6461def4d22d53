//! What a run found, in the shapes a person reads: `result.json` (schema:
//! `docs/result.schema.json`), `trace.txt`, and the published implementation's `output.json`.
//!
//! A [`RunReport`] is built from the generic node records any strategy makes (`record-node`)
//! and the outcome it returns, never from one strategy's own structures; details a strategy
//! puts in a node (beam: query, answer, aspects with scores and rationales) are carried as
//! they are. It can be rebuilt from a run log alone, so older or interrupted runs get the
//! same files.

use std::collections::BTreeMap;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bindings::types::{Node, Outcome};
use crate::runlog::{CallRequest, EndStatus, Entry, Header};
use crate::tree::{Refused, Tree};

/// The version of the `result.json` layout, written as its `format` field.
pub const RESULT_FORMAT: &str = "drpo-result/2";

/// The contents of `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Always [`RESULT_FORMAT`].
    pub format: String,
    /// The strategy that ran.
    pub strategy: StrategyName,
    /// How the run ended.
    pub status: RunStatus,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// The best prompt found.
    pub best_prompt: Option<String>,
    /// The strategy's score of the best path (beam: the mean reward of its steps, the root
    /// excluded, like the published `cum_reward`).
    pub best_score: Option<f64>,
    /// Node ids from the root to the best node.
    pub best_path: Vec<u32>,
    /// Node count, best and mean reward at each depth.
    pub levels: Vec<LevelSummary>,
    /// Every node the strategy recorded that fits the tree (see [`crate::tree`]), in the order
    /// it recorded them.
    pub tree: Vec<ReportNode>,
    /// What the host left out of this report, and why: nodes that did not fit the tree, and a
    /// best path that was not a path of it.
    pub refused: Vec<String>,
    /// The strategy's own outcome details (JSON when it sent JSON, else a string).
    pub details: Value,
}

/// A strategy's name and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyName {
    /// As the strategy describes itself.
    pub name: String,
    /// As the strategy describes itself.
    pub version: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The strategy returned an outcome.
    Finished,
    /// The strategy returned an error, trapped or hit a limit.
    Failed,
    /// The run log has no end: the run was killed (or is still going).
    Interrupted,
}

impl RunStatus {
    /// As written in `result.json`.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// One node of the search tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportNode {
    /// Node id, unique in the run.
    pub id: u32,
    /// The parent's id; `None` for a root.
    pub parent: Option<u32>,
    /// Distance from the root.
    pub depth: u32,
    /// The system prompt this node holds.
    pub prompt: String,
    /// Its reward.
    pub reward: f64,
    /// What the strategy reported with it: a JSON object when it sent one, else its text.
    pub details: Value,
}

/// The nodes at one depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// The depth.
    pub depth: u32,
    /// Nodes at this depth.
    pub nodes: usize,
    /// The highest reward at this depth.
    pub best_reward: f64,
    /// The mean reward at this depth.
    pub mean_reward: f64,
}

impl RunReport {
    /// The report of a run that ended with `outcome` (or `error`) after recording `tree`, whose
    /// refused nodes were `refused`. A best path that is not a path of the tree is left out
    /// (and said so in `refused`).
    pub fn new(
        strategy: StrategyName,
        ending: Result<&Outcome, Option<&str>>,
        tree: &Tree,
        refused: &[Refused],
    ) -> RunReport {
        let mut problems: Vec<String> = refused.iter().map(Refused::to_string).collect();
        let (status, error, outcome) = match ending {
            Ok(outcome) => (RunStatus::Finished, None, Some(outcome)),
            Err(Some(error)) => (RunStatus::Failed, Some(error.to_owned()), None),
            Err(None) => (RunStatus::Interrupted, None, None),
        };
        let best_path = match outcome.map(|o| (&o.best_path, tree.check_path(&o.best_path))) {
            Some((path, Ok(()))) => path.clone(),
            Some((path, Err(not_a_path))) => {
                problems.push(format!("best path {path:?} left out: {not_a_path}"));
                Vec::new()
            }
            None => Vec::new(),
        };
        let tree: Vec<ReportNode> = tree.nodes().iter().map(ReportNode::from_node).collect();
        let levels = level_summaries(&tree);
        RunReport {
            format: RESULT_FORMAT.into(),
            strategy,
            status,
            error,
            best_prompt: outcome.and_then(|o| o.best_prompt.clone()),
            best_score: outcome.and_then(|o| o.best_score),
            best_path,
            levels,
            tree,
            refused: problems,
            details: outcome.map_or(Value::Null, |o| json_or_text(&o.details)),
        }
    }

    /// The report of a recorded run: its nodes from the `record-node` calls, its outcome from
    /// the end frame (an interrupted run has none).
    pub fn from_log(entries: &[Entry]) -> Option<RunReport> {
        let mut header: Option<&Header> = None;
        let mut tree = Tree::new();
        let mut refused = Vec::new();
        let mut end = None;
        for entry in entries {
            match entry {
                Entry::Header(h) => header = Some(h),
                Entry::Call(call) => {
                    if let CallRequest::RecordNode(node) = &call.request
                        && let Err(refusal) = tree.insert(node.clone())
                    {
                        refused.push(refusal);
                    }
                }
                Entry::End(e) => end = Some(&e.status),
                Entry::Preflight(_) => {}
            }
        }
        let header = header?;
        let strategy = StrategyName {
            name: header.plugin_name.clone(),
            version: header.plugin_version.clone(),
        };
        let ending = match end {
            Some(EndStatus::Finished(outcome)) => Ok(outcome),
            Some(EndStatus::Failed(error)) => Err(Some(error.as_str())),
            None => Err(None),
        };
        Some(RunReport::new(strategy, ending, &tree, &refused))
    }

    /// The nodes of the best path, root first.
    pub fn best_nodes(&self) -> impl Iterator<Item = &ReportNode> {
        self.best_path
            .iter()
            .filter_map(|id| self.tree.iter().find(|n| n.id == *id))
    }

    /// `trace.txt`: the prompt at each step of the best path, in the published layout (a
    /// `--- Step i ---` banner, the prompt, a rule).
    pub fn trace(&self) -> String {
        let mut text = String::new();
        for (step, node) in self.best_nodes().enumerate() {
            let dashes = "-".repeat(20);
            text.push_str(&format!("{dashes} Step {step} {dashes}\n"));
            text.push_str(node.prompt.trim_end());
            text.push('\n');
            text.push_str(&"-".repeat(50));
            text.push('\n');
        }
        text
    }

    /// The published implementation's `output.json`: `{"level i": {"Prompt": ...,
    /// "Evaluation of the prompt": {aspect: {"rationale": ..., "score": "4"}}}}` for each node
    /// of the best path, root first. Scores are strings, as the published judge wrote them; a
    /// node without aspects (an unusable judgement) has an empty evaluation, as published.
    pub fn published(&self) -> PublishedOutput<'_> {
        PublishedOutput(self.best_nodes().collect())
    }
}

impl ReportNode {
    fn from_node(node: &Node) -> ReportNode {
        ReportNode {
            id: node.id,
            parent: node.parent,
            depth: node.depth,
            prompt: node.prompt.clone(),
            reward: node.reward,
            details: match json_or_text(&node.details) {
                object @ Value::Object(_) => object,
                // Only objects have fields a reader can look for; anything else stays as sent.
                _ => Value::String(node.details.clone()),
            },
        }
    }

    /// The judge's evaluation in the published shape, from the `aspects` detail (beam's
    /// `[{name, score, rationale}]`).
    fn published_evaluation(&self) -> serde_json::Map<String, Value> {
        let mut evaluation = serde_json::Map::new();
        let aspects = self.details.get("aspects").and_then(Value::as_array);
        for aspect in aspects.into_iter().flatten() {
            let Some(name) = aspect.get("name").and_then(Value::as_str) else {
                continue;
            };
            let score = match aspect.get("score") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            let rationale = aspect.get("rationale").cloned().unwrap_or(Value::Null);
            evaluation.insert(
                name.to_owned(),
                serde_json::json!({"rationale": rationale, "score": score}),
            );
        }
        evaluation
    }
}

/// The best path in the published `output.json` shape; serialises with its levels in order.
pub struct PublishedOutput<'a>(Vec<&'a ReportNode>);

impl Serialize for PublishedOutput<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written by hand so the levels keep path order whatever serde_json's map ordering.
        struct Level<'a>(&'a ReportNode);
        impl Serialize for Level<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("Prompt", &self.0.prompt)?;
                map.serialize_entry("Evaluation of the prompt", &self.0.published_evaluation())?;
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (level, node) in self.0.iter().enumerate() {
            map.serialize_entry(&format!("level {level}"), &Level(node))?;
        }
        map.end()
    }
}

fn level_summaries(tree: &[ReportNode]) -> Vec<LevelSummary> {
    let mut rewards_at: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for node in tree {
        rewards_at.entry(node.depth).or_default().push(node.reward);
    }
    rewards_at
        .into_iter()
        .map(|(depth, rewards)| LevelSummary {
            depth,
            nodes: rewards.len(),
            best_reward: rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            mean_reward: rewards.iter().sum::<f64>() / rewards.len() as f64,
        })
        .collect()
}

/// Strategies send details as JSON text; keep it as JSON when it parses, as text otherwise.
fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, parent: Option<u32>, depth: u32, reward: f64, details: &str) -> Node {
        Node {
            id,
            parent,
            depth,
            prompt: format!("prompt {id}\nline two"),
            reward,
            details: details.into(),
        }
    }

    fn report() -> RunReport {
        let aspects = r#"{"aspects":[{"name":"Clarity","score":4,"rationale":"clear"},{"name":"Depth","score":2,"rationale":"thin"}]}"#;
        let nodes = [
            node(0, None, 0, 3.0, aspects),
            node(1, Some(0), 1, 4.0, "{}"),
            node(2, Some(0), 1, 2.0, "[1, 2]"),
            node(3, Some(1), 2, 5.0, aspects),
        ];
        let outcome = Outcome {
            best_prompt: Some("prompt 3".into()),
            best_score: Some(4.5),
            best_path: vec![0, 1, 3],
            details: r#"{"final_depth":3}"#.into(),
        };
        let (tree, refused) = Tree::of(nodes);
        RunReport::new(beam(), Ok(&outcome), &tree, &refused)
    }

    fn beam() -> StrategyName {
        StrategyName {
            name: "beam".into(),
            version: "1".into(),
        }
    }

    #[test]
    fn levels_summarise_each_depth() {
        let levels = report().levels;
        assert_eq!(levels.len(), 3);
        assert_eq!((levels[1].nodes, levels[1].best_reward), (2, 4.0));
        assert_eq!(levels[1].mean_reward, 3.0);
        assert_eq!(levels[2].best_reward, 5.0);
    }

    #[test]
    fn node_details_stay_objects_or_become_text() {
        let report = report();
        assert_eq!(report.tree[0].details["aspects"][1]["rationale"], "thin");
        assert_eq!(report.tree[2].details, Value::String("[1, 2]".into()));
        assert_eq!(report.details["final_depth"], 3);
    }

    #[test]
    fn the_trace_holds_each_step_of_the_best_path() {
        let trace = report().trace();
        let expected = format!(
            "{d} Step 0 {d}\nprompt 0\nline two\n{r}\n{d} Step 1 {d}\nprompt 1\nline two\n{r}\n{d} Step 2 {d}\nprompt 3\nline two\n{r}\n",
            d = "-".repeat(20),
            r = "-".repeat(50)
        );
        assert_eq!(trace, expected);
    }

    #[test]
    fn published_output_lists_levels_in_path_order_with_string_scores() {
        let text = serde_json::to_string(&report().published()).unwrap();
        assert!(text.starts_with(
            r#"{"level 0":{"Prompt":"prompt 0\nline two","Evaluation of the prompt":{"#
        ));
        let level_1 = text.find("\"level 1\"").unwrap();
        let level_2 = text.find("\"level 2\"").unwrap();
        assert!(level_1 < level_2);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["level 0"]["Evaluation of the prompt"]["Clarity"],
            serde_json::json!({"rationale": "clear", "score": "4"})
        );
        assert_eq!(
            value["level 1"]["Evaluation of the prompt"],
            serde_json::json!({})
        );
        assert_eq!(value["level 2"]["Prompt"], "prompt 3\nline two");
    }

    #[test]
    fn refused_nodes_and_a_false_best_path_are_left_out_and_named() {
        let (tree, refused) = Tree::of([
            node(0, None, 0, 1.0, "{}"),
            node(1, Some(0), 1, 2.0, "{}"),
            node(2, Some(5), 1, 9.0, "{}"),
            node(3, Some(0), u32::MAX, 9.0, "{}"),
        ]);
        let outcome = Outcome {
            best_prompt: Some("prompt 2".into()),
            best_score: Some(9.0),
            best_path: vec![0, 2],
            details: String::new(),
        };
        let report = RunReport::new(beam(), Ok(&outcome), &tree, &refused);
        let ids: Vec<u32> = report.tree.iter().map(|n| n.id).collect();
        assert_eq!(ids, [0, 1]);
        assert_eq!(report.levels.len(), 2);
        assert!(report.best_path.is_empty());
        assert_eq!(report.trace(), "");
        assert_eq!(
            report.refused,
            [
                "node 2 was refused: its parent 5 is not a node recorded before it",
                "node 3 was refused: its depth is 4294967295, but 1 is its distance from the root",
                "best path [0, 2] left out: the best path names node 2, which the tree does not hold",
            ]
        );
    }

    #[test]
    fn an_interrupted_run_has_its_nodes_and_no_best_path() {
        let (tree, refused) = Tree::of([node(0, None, 0, 1.0, "{}")]);
        let report = RunReport::new(beam(), Err(None), &tree, &refused);
        assert_eq!(report.status, RunStatus::Interrupted);
        assert!(report.best_path.is_empty());
        assert_eq!(report.trace(), "");
        assert_eq!(report.tree.len(), 1);
    }
}
