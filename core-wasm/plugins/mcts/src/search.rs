//! The search loop: the tree of [`crate::tree`] grown with DRPO's optimizer and judge.

use drpo_kit::drpo::validation::{self, Candidate};
use drpo_kit::engine::{self, Evaluation, Scorer, Stop};
use drpo_kit::{Example, Host, HostExt, Outcome, Query};
use serde_json::{Value, json};

use crate::Options;
use crate::tree::Tree;

/// Runs the search: the root is the initial prompt judged on the first query; each iteration
/// selects a node by UCT, expands it with `width` optimizer proposals judged on the next query
/// (a node at depth d is judged on query d, round robin), and backpropagates the best new
/// child's reward. A leaf at the depth limit backpropagates its own reward. A spent budget ends
/// the search with the best so far. With `validation` queries held out of `queries`, the best
/// distinct prompts and the initial one are judged on them at the end and the best held-out
/// mean wins.
pub fn run<H: Host>(
    host: &mut H,
    options: &Options,
    queries: &[Query],
    examples: Vec<Example>,
) -> Result<Outcome, String> {
    options.requests.check()?;
    let (queries, held_out) = validation::split(
        queries.to_vec(),
        options.held_out.validation,
        options.requests.seed,
    )?;
    let queries = queries.as_slice();
    if queries.is_empty() {
        return Err("no training queries to search with".into());
    }
    let mut scorer = Scorer::new(options.requests.request_settings(options.width), examples);
    let query_at = |depth: u32| queries[depth as usize % queries.len()].clone();
    let root = (options.requests.initial_system_prompt.clone(), query_at(0));
    let mut evaluations: Vec<Evaluation> = match scorer.evaluate(host, std::slice::from_ref(&root))
    {
        Ok(evaluations) => evaluations,
        Err(stopped) => {
            host.warn(format!("the root could not be judged: {stopped}"));
            return Ok(stopped.before_any_score(root.0, scorer.judgements()));
        }
    };
    let mut tree = Tree::new(evaluations[0].reward);
    record(host, &tree, &evaluations, 0, 0);

    let mut stopped = None;
    let mut iterations = 0;
    for iteration in 1..=options.iterations {
        let leaf = tree.select(options.exploration, options.depth);
        if !tree.can_expand(leaf, options.depth) {
            let reward = tree.nodes[leaf].reward;
            tree.backpropagate(leaf, reward);
            host.debug(format!(
                "iteration {iteration}: node {leaf} is a leaf; reward {reward:.3}"
            ));
            iterations = iteration;
            continue;
        }
        match expand(
            host,
            &mut scorer,
            &mut tree,
            &mut evaluations,
            leaf,
            options,
            iteration,
            &query_at,
        ) {
            Ok(()) => iterations = iteration,
            Err(why) => {
                host.warn(format!(
                    "search stopped early: {why}; returning the best so far"
                ));
                stopped = Some(why);
                break;
            }
        }
    }

    let best = tree.best();
    let path: Vec<u32> = tree.path(best).iter().map(|&i| i as u32).collect();
    let score = tree.path_score(best);
    host.info(format!("best path {path:?} with score {score:.3}"));
    let nodes: Vec<Value> = tree
        .nodes
        .iter()
        .enumerate()
        .map(|(id, n)| {
            json!({"id": id, "parent": n.parent, "depth": n.depth, "reward": n.reward,
                   "visits": n.visits, "value": n.value()})
        })
        .collect();
    let mut outcome = Outcome {
        best_prompt: Some(evaluations[best].prompt.clone()),
        best_score: Some(score),
        best_path: path,
        details: json!({
            "iterations": iterations,
            "stopped": stopped.as_ref().map(Stop::to_string),
            "stop": Stop::details(stopped.as_ref()),
            "judgements": scorer.judgements(),
            "tree": nodes,
        })
        .to_string(),
    };
    let nodes = (0..tree.nodes.len())
        .map(|id| Candidate {
            node: id as u32,
            prompt: evaluations[id].prompt.clone(),
            search_score: Some(tree.path_score(id)),
        })
        .collect();
    validation::conclude_scored(
        host,
        &mut scorer,
        &held_out,
        nodes,
        options.held_out.validation_candidates as usize,
        &mut outcome,
        |id| tree.path(id as usize).iter().map(|&i| i as u32).collect(),
    );
    engine::add_judge_spread(&mut outcome, scorer.judge_spread());
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn expand<H: Host>(
    host: &mut H,
    scorer: &mut Scorer,
    tree: &mut Tree,
    evaluations: &mut Vec<Evaluation>,
    leaf: usize,
    options: &Options,
    iteration: u32,
    query_at: &dyn Fn(u32) -> Query,
) -> Result<(), Stop> {
    let lineage: Vec<String> = tree
        .path(leaf)
        .iter()
        .map(|&i| evaluations[i].prompt.clone())
        .collect();
    let prompts = scorer.propose(host, &evaluations[leaf], &lineage, options.width)?;
    let query = query_at(tree.nodes[leaf].depth + 1);
    let candidates: Vec<(String, Query)> =
        prompts.into_iter().map(|p| (p, query.clone())).collect();
    let judged = scorer.evaluate(host, &candidates)?;
    let rewards: Vec<f64> = judged.iter().map(|e| e.reward).collect();
    let children = tree.expand(leaf, &rewards);
    evaluations.extend(judged);
    for &child in &children {
        record(host, tree, evaluations, child, iteration);
    }
    // The simulation step: the best new child stands for the expansion (the first on ties).
    let simulated = children.iter().copied().reduce(|best, c| {
        if tree.nodes[c].reward > tree.nodes[best].reward {
            c
        } else {
            best
        }
    });
    match simulated {
        Some(child) => {
            let reward = tree.nodes[child].reward;
            tree.backpropagate(child, reward);
            host.info(format!(
                "iteration {iteration}: expanded node {leaf} into {children:?}; node {child} backpropagates {reward:.3}"
            ));
        }
        None => {
            let reward = tree.nodes[leaf].reward;
            tree.backpropagate(leaf, reward);
            host.warn(format!(
                "iteration {iteration}: node {leaf} got no usable candidate"
            ));
        }
    }
    Ok(())
}

fn record<H: Host>(
    host: &mut H,
    tree: &Tree,
    evaluations: &[Evaluation],
    id: usize,
    iteration: u32,
) {
    let node = &tree.nodes[id];
    let evaluation = &evaluations[id];
    let mut details = evaluation.details();
    details["query_index"] = json!(node.depth);
    details["origin"] = json!(if node.parent.is_none() {
        "initial"
    } else {
        "optimized"
    });
    details["iteration"] = json!(iteration);
    details["path_score"] = json!(tree.path_score(id));
    host.record(
        id as u32,
        node.parent.map(|p| p as u32),
        node.depth,
        &evaluation.prompt,
        evaluation.reward,
        &details,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpo_kit::Role;
    use drpo_kit::testing::{ScriptedHost, queries};

    fn options(iterations: u32, depth: u32, width: u32) -> Options {
        let mut options = Options::default();
        (options.iterations, options.depth, options.width) = (iterations, depth, width);
        options
    }

    /// The optimizer: the prompt it improves with "+" appended for choice 1, "-" otherwise.
    fn plus_or_minus(optimizer: &str, choice: u32) -> String {
        let current = optimizer
            .split("---Current Version---\n")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .unwrap_or("Start.");
        format!("{current}{}", if choice == 1 { "+" } else { "-" })
    }

    /// The optimizer appends "+" to the prompt it improves for choice 1 and "-" otherwise; the
    /// judge scores by the count of "+" minus "-" in the prompt, from 3.
    fn scripted() -> ScriptedHost {
        ScriptedHost::new(
            |judged| {
                let prompt = judged.split("# instructions").nth(1).unwrap_or_default();
                let prompt = prompt.split("# Query").next().unwrap_or_default();
                let up = prompt.matches('+').count() as i32;
                let down = prompt.matches('-').count() as i32;
                (3 + up - down).clamp(1, 5) as u8
            },
            plus_or_minus,
        )
    }

    #[test]
    fn held_out_queries_choose_the_result() {
        // On the held-out query the judge likes only the initial prompt; elsewhere each "+"
        // raises the score, so the search itself prefers a deep "+" prompt.
        let mut opts = options(4, 3, 2);
        opts.held_out.validation = 1;
        opts.held_out.validation_candidates = 2;
        let (_, held) = validation::split(queries(5), 1, 0).unwrap();
        let held_text = held[0].text.clone();
        let mut host = ScriptedHost::new(
            move |judged| {
                let prompt = judged.split("# instructions").nth(1).unwrap_or_default();
                let prompt = prompt.split("# Query").next().unwrap_or_default();
                match judged.contains(&held_text) {
                    true if prompt.contains(['+', '-']) => 1,
                    true => 5,
                    false => (3 + prompt.matches('+').count()).min(5) as u8,
                }
            },
            plus_or_minus,
        );
        let outcome = run(&mut host, &opts, &queries(5), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        let validation = &details["validation"];
        assert_ne!(validation["best_by_search_node"], 0, "{details}");
        assert_eq!(validation["chosen_node"], 0, "{details}");
        assert_eq!(validation["candidates"].as_array().unwrap().len(), 3);
        assert_eq!(outcome.best_path, [0]);
        assert_eq!(outcome.best_score, Some(5.0));
    }

    #[test]
    fn the_search_follows_the_rewarded_branch_and_counts_its_calls() {
        let mut host = scripted();
        let outcome = run(&mut host, &options(4, 3, 2), &queries(5), Vec::new()).unwrap();
        // 1: the root expands into "-" (node 1, reward 2) and "+" (node 2, reward 4); node 2
        //    backpropagates. 2: node 1 is unvisited, so UCT picks it: "--" (1), "-+" (3).
        // 3: node 2 has the better mean: "+-" (3), "++" (5, backpropagated). 4: node 2 again
        //    (mean 4.5), then its unvisited child 5 ("+-") is expanded.
        assert_eq!(host.nodes.len(), 1 + 4 * 2);
        let parents: Vec<Option<u32>> = host.nodes.iter().map(|n| n.parent).collect();
        assert_eq!(
            parents,
            [
                None,
                Some(0),
                Some(0),
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                Some(5),
                Some(5)
            ]
        );
        assert_eq!(
            outcome.best_prompt.as_deref(),
            Some("You are a helpful assistant.++")
        );
        assert_eq!(outcome.best_path, [0, 2, 6]);
        assert_eq!(outcome.best_score, Some(4.5));
        assert_eq!(host.requests_for(Role::Optimizer), 4);
        assert_eq!(host.requests_for(Role::Base), 1 + 4 * 2);
        assert_eq!(host.requests_for(Role::Judge), 1 + 4 * 2);
        assert_eq!(
            host.requests_for(Role::Metrics),
            4,
            "queries 0..=3 once each"
        );
        let estimates = crate::estimate_calls(&options(4, 3, 2));
        for e in estimates {
            let made = host.requests_for(e.role) as u64;
            assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
        }
        // Expansion shows the optimizer the node's lineage, answer and judgement, and asks for
        // `width` candidates in one request.
        let expansions: Vec<&drpo_kit::Request> = host
            .requests
            .iter()
            .filter(|r| r.role == Role::Optimizer)
            .collect();
        let drpo_kit::Prompt::Chat(messages) = &expansions[2].prompt else {
            panic!("the optimizer is prompted with chat messages")
        };
        let text = &messages[0].content;
        assert!(
            text.contains("---Current Version---\nYou are a helpful assistant.+"),
            "{text}"
        );
        assert!(text.contains("scripted 4"), "the judge's rationale: {text}");
        assert_eq!(expansions[2].sampling.n, 2);
        let details: Value = serde_json::from_str(&host.nodes[1].details).unwrap();
        assert_eq!(details["origin"], "optimized");
        assert_eq!(details["query_id"], "q1");
        assert!(details["aspects"][0]["rationale"].is_string());
    }

    #[test]
    fn leaves_at_the_depth_limit_cost_nothing() {
        let mut host = scripted();
        let outcome = run(&mut host, &options(6, 1, 2), &queries(3), Vec::new()).unwrap();
        assert_eq!(
            host.requests_for(Role::Optimizer),
            1,
            "only the root can be expanded"
        );
        assert_eq!(host.nodes.len(), 3);
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(details["iterations"], 6);
        assert_eq!(details["stop"], Value::Null);
        assert_eq!(details["judgements"], json!({"asked": 3, "usable": 3}));
        assert_eq!(details["tree"][0]["visits"], 6);
    }

    #[test]
    fn a_role_rejected_on_every_request_stops_with_the_best_so_far() {
        let mut host = scripted();
        host.reject = Some((Role::Optimizer, "unknown model".into()));
        let outcome = run(&mut host, &options(5, 3, 2), &queries(5), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(
            details["stop"],
            json!({"kind": "role-failed", "role": "optimizer", "error": "unknown model"})
        );
        assert_eq!(host.requests_for(Role::Optimizer), 1);
        assert_eq!(outcome.best_path, [0]);
        assert_eq!(details["judgements"], json!({"asked": 1, "usable": 1}));
    }

    #[test]
    fn a_spent_budget_returns_the_best_so_far() {
        let mut host = scripted();
        host.budget = Some(10);
        let outcome = run(&mut host, &options(20, 5, 2), &queries(5), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert!(details["stopped"].as_str().unwrap().contains("budget"));
        assert_eq!(details["stop"], json!({"kind": "budget-exhausted"}));
        assert!(outcome.best_prompt.is_some());
    }
}
