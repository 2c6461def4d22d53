//! The search loop: the frontier of [`crate::frontier`] grown with DRPO's optimizer and judge.

use drpo_kit::drpo::prompts;
use drpo_kit::drpo::validation::{self, Candidate};
use drpo_kit::engine::{self, Evaluation, Scorer, Stop};
use drpo_kit::{Example, Host, HostExt, Message, Outcome, Prompt, Query};
use serde_json::{Value, json};

use crate::Options;
use crate::frontier::{self, AspectMeans};

/// One prompt tried.
struct Tried {
    prompt: String,
    parent: Option<usize>,
    depth: u32,
    evaluations: Vec<Evaluation>,
    means: AspectMeans,
}

/// Runs the search; see the crate documentation.
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
    let eval: Vec<Query> = queries
        .iter()
        .take(options.eval_queries as usize)
        .cloned()
        .collect();
    if eval.is_empty() {
        return Err("no training queries to search with".into());
    }
    let mut scorer = Scorer::new(options.requests.request_settings(1), examples);
    let root = options.requests.initial_system_prompt.clone();
    let evaluations = match judge(host, &mut scorer, &root, &eval) {
        Ok(evaluations) => evaluations,
        Err(stopped) => {
            host.warn(format!("the initial prompt could not be judged: {stopped}"));
            return Ok(stopped.before_any_score(root, scorer.judgements()));
        }
    };
    let mut tried: Vec<Tried> = Vec::new();
    add(host, &mut tried, root, None, evaluations, &[]);
    let mut stopped = None;
    let mut merges = 0;
    let mut steps = 0;
    for step in 1..=options.steps {
        match take_step(host, &mut scorer, &mut tried, options, &eval, step) {
            Ok(merged) => merges += u32::from(merged),
            Err(why) => {
                host.warn(format!(
                    "search stopped early: {why}; returning the best so far"
                ));
                stopped = Some(why);
                break;
            }
        }
        steps = step;
    }
    let all: Vec<AspectMeans> = tried.iter().map(|t| t.means.clone()).collect();
    let front = frontier::frontier(&all);
    // The frontier prompt with the best mean reward, the first on ties.
    let best = front.iter().copied().fold(front[0], |best, i| {
        if all[i].reward > all[best].reward {
            i
        } else {
            best
        }
    });
    host.info(format!(
        "frontier {front:?}; best node {best} with mean reward {:.3}",
        all[best].reward
    ));
    let nodes: Vec<Value> = tried
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "parent": t.parent, "reward": t.means.reward,
                   "aspects": t.means.aspects, "frontier": front.contains(&id)})
        })
        .collect();
    let mut outcome = Outcome {
        best_prompt: Some(tried[best].prompt.clone()),
        best_score: Some(all[best].reward),
        best_path: path_to(&tried, best),
        details: json!({
            "steps": steps,
            "merges": merges,
            "frontier": front,
            "stopped": stopped.as_ref().map(Stop::to_string),
            "stop": Stop::details(stopped.as_ref()),
            "judgements": scorer.judgements(),
            "nodes": nodes,
        })
        .to_string(),
    };
    // Validation chooses among the frontier (the search's choice first, then by mean reward)
    // and the initial prompt.
    let candidate = |id: usize| Candidate {
        node: id as u32,
        prompt: tried[id].prompt.clone(),
        search_score: Some(tried[id].means.reward),
    };
    let mut ranked = front.clone();
    ranked.sort_by(|&a, &b| all[b].reward.total_cmp(&all[a].reward));
    let shortlist = validation::shortlist(
        std::iter::once(best).chain(ranked).map(candidate),
        candidate(0),
        options.held_out.validation_candidates as usize,
    );
    validation::conclude(
        host,
        &mut scorer,
        &held_out,
        shortlist,
        &mut outcome,
        |id| path_to(&tried, id as usize),
    );
    engine::add_judge_spread(&mut outcome, scorer.judge_spread());
    Ok(outcome)
}

fn judge<H: Host>(
    host: &mut H,
    scorer: &mut Scorer,
    prompt: &str,
    eval: &[Query],
) -> Result<Vec<Evaluation>, Stop> {
    let candidates: Vec<(String, Query)> = eval
        .iter()
        .map(|q| (prompt.to_owned(), q.clone()))
        .collect();
    scorer.evaluate(host, &candidates)
}

/// One step: a merge of two frontier prompts every `merge_every` steps (when two lead on
/// different aspects), else an improvement of the frontier prompt whose turn it is. Returns
/// whether it merged.
fn take_step<H: Host>(
    host: &mut H,
    scorer: &mut Scorer,
    tried: &mut Vec<Tried>,
    options: &Options,
    eval: &[Query],
    step: u32,
) -> Result<bool, Stop> {
    let all: Vec<AspectMeans> = tried.iter().map(|t| t.means.clone()).collect();
    let front = frontier::frontier(&all);
    let merge_now = options.merge_every > 0 && step.is_multiple_of(options.merge_every);
    let pair = frontier::merge_pair(&all, &front).filter(|_| merge_now);
    let (parent, merged_from, proposals) = match pair {
        Some((a, b)) => {
            let mut request = prompts::optimizer_request("", "", "", "", &[], scorer.options());
            request.prompt = Prompt::Chat(vec![Message::new(
                "user",
                merge_prompt(&tried[a], &tried[b]),
            )]);
            request.sampling.n = 1;
            // Each step samples anew: a step that repeats an earlier request (the frontier
            // unchanged after a step with no usable prompt) would get its answer again.
            request.sampling.seed = request.sampling.seed.wrapping_add(u64::from(step - 1));
            (a, vec![a, b], scorer.ask_for_prompts(host, request)?)
        }
        None => {
            let parent = front[(step as usize - 1) % front.len()];
            // The judged answer the judge liked least says most about what to change (one
            // without a usable judgement shows the optimizer no scores).
            let evaluations = &tried[parent].evaluations;
            let weakest = evaluations
                .iter()
                .filter(|e| e.judgement.is_usable())
                .min_by(|x, y| x.reward.total_cmp(&y.reward))
                .unwrap_or(&evaluations[0]);
            let lineage: Vec<String> = path_to(tried, parent)
                .iter()
                .map(|&i| tried[i as usize].prompt.clone())
                .collect();
            (
                parent,
                Vec::new(),
                scorer.propose_again(host, weakest, &lineage, 1, u64::from(step - 1))?,
            )
        }
    };
    let Some(prompt) = proposals.into_iter().next() else {
        host.warn(format!("step {step}: the optimizer gave no usable prompt"));
        return Ok(false);
    };
    let evaluations = judge(host, scorer, &prompt, eval)?;
    let merged = !merged_from.is_empty();
    let id = add(host, tried, prompt, Some(parent), evaluations, &merged_from);
    host.info(format!(
        "step {step}: node {id} from node {parent}{} scored {:.3}",
        if merged { " (merged)" } else { "" },
        tried[id].means.reward
    ));
    Ok(merged)
}

/// Adds a judged prompt to the search and records its node.
fn add<H: Host>(
    host: &mut H,
    tried: &mut Vec<Tried>,
    prompt: String,
    parent: Option<usize>,
    evaluations: Vec<Evaluation>,
    merged_from: &[usize],
) -> usize {
    let id = tried.len();
    let means = AspectMeans::of(&evaluations);
    let depth = parent.map_or(0, |p| tried[p].depth + 1);
    let mut details = evaluations[0].details();
    details["origin"] = json!(match (parent, merged_from.is_empty()) {
        (None, _) => "initial",
        (Some(_), true) => "optimized",
        (Some(_), false) => "merged",
    });
    details["merged_from"] = json!(merged_from);
    details["evaluations"] = evaluations.iter().map(Evaluation::details).collect();
    details["aspect_means"] = json!(means.aspects);
    details["path_score"] = json!(means.reward);
    host.record(
        id as u32,
        parent.map(|p| p as u32),
        depth,
        &prompt,
        means.reward,
        &details,
    );
    tried.push(Tried {
        prompt,
        parent,
        depth,
        evaluations,
        means,
    });
    id
}

/// Node ids from the initial prompt to `id`.
fn path_to(tried: &[Tried], id: usize) -> Vec<u32> {
    let mut path = vec![id as u32];
    while let Some(parent) = tried[*path.last().unwrap_or(&0) as usize].parent {
        path.push(parent as u32);
    }
    path.reverse();
    path
}

/// The optimizer's prompt for merging `a` and `b`: both prompts, and the aspects on which each
/// scored higher than the other.
fn merge_prompt(a: &Tried, b: &Tried) -> String {
    let lead = |x: &Tried, y: &Tried| {
        let lines: Vec<String> = frontier::strengths(&x.means, &y.means)
            .iter()
            .map(|(name, mine, theirs)| format!("- {name}: {mine:.2} against {theirs:.2}"))
            .collect();
        if lines.is_empty() {
            "- (no aspect)".to_owned()
        } else {
            lines.join("\n")
        }
    };
    format!(
        "You are combining two system prompts for an AI assistant. Both were tried on the same \
questions and a judge scored the answers on several aspects from 1 to 5; each prompt did better \
than the other on some aspects.

System prompt A:
{}

Where A scored higher than B:
{}

System prompt B:
{}

Where B scored higher than A:
{}

Write one new system prompt that keeps what makes each of them strong, so that it should score \
at least as well as the better of the two on every aspect. It must work for any question: do not \
mention these questions, the scores or the judge. Answer with a single JSON object and nothing \
else:
{{\"analysis\": \"what each prompt does well\", \"thought\": \"how the new prompt combines \
them\", \"new_system_prompt\": \"the complete new system prompt\"}}
",
        a.prompt,
        lead(a, b),
        b.prompt,
        lead(b, a)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpo_kit::Role;
    use drpo_kit::testing::{ScriptedHost, queries};

    fn options(steps: u32, merge_every: u32) -> Options {
        Options {
            steps,
            eval_queries: 2,
            merge_every,
            ..Options::default()
        }
    }

    /// The judge: "clear" in the prompt gives 5 on Clarity, "helpful" 5 on Helpfulness, 2
    /// otherwise. The optimizer adds "clear" on its first improvement, "helpful" on its second,
    /// and for a merge writes both words.
    fn scripted() -> ScriptedHost {
        let mut improvements = 0;
        let mut host = ScriptedHost::new(
            |_| 2,
            move |optimizer, _| {
                if optimizer.contains("You are combining two system prompts") {
                    return "Be clear and helpful.".to_owned();
                }
                improvements += 1;
                if improvements == 1 {
                    "Be clear.".into()
                } else {
                    "Be helpful.".into()
                }
            },
        );
        host.score_aspect = Some(Box::new(|judged: &str, aspect: &str| {
            let prompt = judged.split("# instructions").nth(1).unwrap_or_default();
            let prompt = prompt.split("# Query").next().unwrap_or_default();
            match aspect {
                "Clarity" if prompt.contains("clear") => 5,
                "Helpfulness" if prompt.contains("helpful") => 5,
                _ => 2,
            }
        }));
        host
    }

    #[test]
    fn two_prompts_strong_on_different_aspects_are_merged_into_one_that_dominates_both() {
        let mut host = scripted();
        let mut opts = options(3, 3);
        opts.requests.initial_system_prompt = "Answer.".into();
        let outcome = run(&mut host, &opts, &queries(2), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        // Node 1 "Be clear." leads on Clarity, node 2 "Be helpful." on Helpfulness; step 3
        // merges them into node 3, which dominates every other.
        assert_eq!(details["merges"], 1, "{details}");
        assert_eq!(details["frontier"], json!([3]), "{details}");
        assert_eq!(
            outcome.best_prompt.as_deref(),
            Some("Be clear and helpful.")
        );
        assert_eq!(outcome.best_path, [0, 1, 3]);
        assert_eq!(outcome.best_score, Some(5.0));
        let merged: Value = serde_json::from_str(&host.nodes[3].details).unwrap();
        assert_eq!(merged["origin"], "merged");
        assert_eq!(merged["merged_from"], json!([1, 2]));
        let merge_request = host
            .requests
            .iter()
            .filter(|r| r.role == Role::Optimizer)
            .nth(2)
            .unwrap();
        let Prompt::Chat(messages) = &merge_request.prompt else {
            panic!("chat")
        };
        assert!(
            messages[0].content.contains("Be clear.")
                && messages[0].content.contains("- Clarity: 5.00 against 2.00"),
            "{}",
            messages[0].content
        );
        for e in crate::estimate_calls(&opts) {
            let made = host.requests_for(e.role) as u64;
            assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
        }
    }

    #[test]
    fn without_merges_the_frontier_keeps_both_specialists() {
        let mut host = scripted();
        let mut opts = options(2, 0);
        opts.requests.initial_system_prompt = "Answer.".into();
        let outcome = run(&mut host, &opts, &queries(2), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(details["frontier"], json!([1, 2]));
        assert_eq!(details["merges"], 0);
        assert_eq!(outcome.best_path, [0, 1], "the first of equal mean rewards");
    }

    /// A step after one with no usable prompt asks the same parent again, with another seed:
    /// the same request would get the same unusable answer.
    #[test]
    fn a_step_after_an_unusable_proposal_asks_with_another_seed() {
        let mut unusable = true;
        let mut host = ScriptedHost::new(
            |_| 2,
            move |_, _| {
                // An empty prompt is unusable.
                if std::mem::take(&mut unusable) {
                    String::new()
                } else {
                    "Be clear.".into()
                }
            },
        );
        let outcome = run(&mut host, &options(2, 0), &queries(2), Vec::new()).unwrap();
        let seeds: Vec<u64> = host
            .requests
            .iter()
            .filter(|r| r.role == Role::Optimizer)
            .map(|r| r.sampling.seed)
            .collect();
        assert_eq!(seeds.len(), 2);
        assert_ne!(seeds[0], seeds[1], "the second step samples anew");
        assert!(
            host.logs
                .iter()
                .any(|(_, m)| m.contains("step 1: the optimizer gave no usable prompt")),
            "{:?}",
            host.logs
        );
        assert!(outcome.best_prompt.is_some());
        let prompts: Vec<&str> = host.nodes.iter().map(|n| n.prompt.as_str()).collect();
        assert_eq!(prompts, ["You are a helpful assistant.", "Be clear."]);
    }

    #[test]
    fn a_spent_budget_returns_the_frontier_so_far() {
        let mut host = scripted();
        host.budget = Some(12);
        let outcome = run(&mut host, &options(5, 3), &queries(2), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(details["stop"], json!({"kind": "budget-exhausted"}));
        assert!(outcome.best_prompt.is_some());
    }
}
