//! `greedy.wasm`: an OPRO-style search. The optimizer sees the trajectory of prompts tried so
//! far with their scores (lowest first, as OPRO orders them) and the judge's notes on the best
//! one, writes one new prompt per step, and the search keeps the best. A prompt's score is its
//! mean DRPO reward on the same few training queries, so scores are comparable across steps.
//! Built only on the public plugin kit; [`search`] runs against any [`Host`] and is tested
//! natively.

use drpo_kit::drpo::prompts;
use drpo_kit::drpo::validation::{self, Candidate};
use drpo_kit::engine::{self, Evaluation, Scorer, Stop};
use drpo_kit::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The options `run` accepts, declared once: the schema `describe` publishes is derived from
/// this type (doc comments, defaults, minimums).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(
    crate = "drpo_kit::schemars",
    title = "OPRO-style greedy search options"
)]
#[serde(default)]
pub struct Options {
    /// New prompts to try, one optimizer call each.
    #[schemars(range(min = 1))]
    pub steps: u32,
    /// Training queries every prompt is judged on.
    #[schemars(range(min = 1))]
    pub eval_queries: u32,
    /// Most scored prompts shown to the optimizer (the best).
    #[schemars(range(min = 1))]
    pub trajectory: u32,
    /// Seed, token limits, the optimizer's temperature, the initial prompt.
    #[serde(flatten)]
    pub requests: Settings,
    /// The validation split: queries held out of the search to choose its result on.
    #[serde(flatten)]
    pub held_out: HeldOut,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 8,
            eval_queries: 2,
            trajectory: 8,
            requests: Settings::with_temperature(1.0),
            held_out: HeldOut::default(),
        }
    }
}

impl StrategyOptions for Options {
    fn schema() -> Value {
        derived_schema::<Self>()
    }
}

/// The calls per role ([`drpo_kit::stepwise_estimate`]): each step's prompt is judged on
/// `eval_queries` queries, like the initial prompt.
pub fn estimate_calls(options: &Options) -> Vec<RoleEstimate> {
    drpo_kit::stepwise_estimate(
        &options.requests,
        &options.held_out,
        options.steps,
        options.eval_queries,
    )
}

/// One prompt tried, with its mean reward over the evaluation queries.
struct Tried {
    prompt: String,
    score: f64,
    parent: Option<usize>,
    depth: u32,
    evaluations: Vec<Evaluation>,
}

/// Runs the search; see the crate documentation. With `validation` queries held out of
/// `queries`, the best distinct prompts and the initial one are judged on them at the end and
/// the best held-out mean wins.
pub fn search<H: Host>(
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
    let mut tried = Vec::new();
    let evaluations = match judge(host, &mut scorer, &root, &eval) {
        Ok(evaluations) => evaluations,
        Err(stopped) => {
            host.warn(format!("the initial prompt could not be judged: {stopped}"));
            return Ok(stopped.before_any_score(root, scorer.judgements()));
        }
    };
    add(host, &mut tried, root, None, evaluations, 0);
    let mut best = 0;
    let mut stopped = None;
    let mut steps = 0;
    for step in 1..=options.steps {
        match take_step(host, &mut scorer, &mut tried, best, options, &eval, step) {
            Ok(Some(id)) if tried[id].score > tried[best].score => {
                host.info(format!(
                    "step {step}: new best node {id} ({:.3})",
                    tried[id].score
                ));
                best = id;
            }
            Ok(_) => {}
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
    let trajectory: Vec<Value> = tried
        .iter()
        .enumerate()
        .map(|(id, t)| json!({"id": id, "parent": t.parent, "score": t.score, "prompt": t.prompt}))
        .collect();
    host.info(format!(
        "best node {best} with score {:.3}",
        tried[best].score
    ));
    let mut outcome = Outcome {
        best_prompt: Some(tried[best].prompt.clone()),
        best_score: Some(tried[best].score),
        best_path: path_to(&tried, best),
        details: json!({
            "steps": steps,
            "stopped": stopped.as_ref().map(Stop::to_string),
            "stop": Stop::details(stopped.as_ref()),
            "judgements": scorer.judgements(),
            "trajectory": trajectory,
        })
        .to_string(),
    };
    let nodes = tried
        .iter()
        .enumerate()
        .map(|(id, t)| Candidate {
            node: id as u32,
            prompt: t.prompt.clone(),
            search_score: Some(t.score),
        })
        .collect();
    validation::conclude_scored(
        host,
        &mut scorer,
        &held_out,
        nodes,
        options.held_out.validation_candidates as usize,
        &mut outcome,
        |id| path_to(&tried, id as usize),
    );
    engine::add_judge_spread(&mut outcome, scorer.judge_spread());
    Ok(outcome)
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

/// Asks for one new prompt, judges it, records it; `None` when the optimizer gave nothing
/// usable.
fn take_step<H: Host>(
    host: &mut H,
    scorer: &mut Scorer,
    tried: &mut Vec<Tried>,
    best: usize,
    options: &Options,
    eval: &[Query],
    step: u32,
) -> Result<Option<usize>, Stop> {
    let mut request = prompts::optimizer_request("", "", "", "", &[], scorer.options());
    request.prompt = Prompt::Chat(vec![Message::new(
        "user",
        optimizer_prompt(tried, best, options.trajectory as usize),
    )]);
    let Some(prompt) = scorer.ask_for_prompts(host, request)?.into_iter().next() else {
        host.warn(format!("step {step}: the optimizer gave no usable prompt"));
        return Ok(None);
    };
    let evaluations = judge(host, scorer, &prompt, eval)?;
    let depth = tried[best].depth + 1;
    Ok(Some(add(
        host,
        tried,
        prompt,
        Some(best),
        evaluations,
        depth,
    )))
}

fn add<H: Host>(
    host: &mut H,
    tried: &mut Vec<Tried>,
    prompt: String,
    parent: Option<usize>,
    evaluations: Vec<Evaluation>,
    depth: u32,
) -> usize {
    let id = tried.len();
    let score = evaluations.iter().map(|e| e.reward).sum::<f64>() / evaluations.len() as f64;
    // The first evaluation's fields at the top level, as every strategy shows one query per
    // node; the others in `evaluations`.
    let mut details = evaluations[0].details();
    details["origin"] = json!(if parent.is_none() {
        "initial"
    } else {
        "optimized"
    });
    details["evaluations"] = evaluations.iter().map(Evaluation::details).collect();
    details["path_score"] = json!(score);
    host.record(
        id as u32,
        parent.map(|p| p as u32),
        depth,
        &prompt,
        score,
        &details,
    );
    tried.push(Tried {
        prompt,
        score,
        parent,
        depth,
        evaluations,
    });
    id
}

/// The optimizer's meta-prompt: the best `shown` prompts so far, lowest score first, then the
/// judge's notes on the best prompt's answers.
fn optimizer_prompt(tried: &[Tried], best: usize, shown: usize) -> String {
    let mut order: Vec<usize> = (0..tried.len()).collect();
    order.sort_by(|&a, &b| tried[b].score.total_cmp(&tried[a].score).then(a.cmp(&b)));
    order.truncate(shown);
    order.reverse();
    let history: Vec<String> = order
        .iter()
        .map(|&i| {
            format!(
                "System prompt:\n{}\nScore: {:.2}",
                tried[i].prompt, tried[i].score
            )
        })
        .collect();
    let notes: Vec<String> = tried[best]
        .evaluations
        .iter()
        .map(|e| format!("Question: {}\nJudgement: {}", e.query.text, e.feedback()))
        .collect();
    format!(
        "You are improving the system prompt of an AI assistant. Each system prompt below was \
tried on the same training questions; its score is the mean of a judge's ratings of the \
assistant's answers, from 1 (poor) to 5 (excellent). They are listed from the lowest score to \
the highest.\n\n{}\n\nWhat the judge said about the answers under the best prompt:\n\n{}\n\n\
Write a new system prompt that is different from every prompt above and should score higher \
than all of them. Answer with a single JSON object and nothing else:\n\
{{\"analysis\": \"what the scores and the judgement show\", \"thought\": \"what the new prompt \
changes\", \"new_system_prompt\": \"the complete new system prompt\"}}\n",
        history.join("\n\n"),
        notes.join("\n\n")
    )
}

/// The exported strategy.
struct Greedy;

impl Strategy for Greedy {
    type Options = Options;
    const NAME: &'static str = "greedy";
    const DESCRIPTION: &'static str = "OPRO-style greedy prompt search scored with DRPO's \
reward: every step shows the optimizer the best prompts so far with their scores (lowest first) \
and the judge's notes on the best one, asks for one new prompt, and judges it on the same \
eval_queries training queries; the best prompt is kept. With `validation` queries held out, the \
best distinct prompts and the initial one are judged on them at the end, and the best held-out \
mean wins.";

    fn run<H: StrategyHost>(host: &mut H, options: Options) -> Result<Outcome, String> {
        let queries = host.queries(None);
        let examples = host.examples();
        search(host, &options, &queries, examples)
    }

    fn estimate(options: &Options) -> Result<Vec<RoleEstimate>, String> {
        Ok(estimate_calls(options))
    }
}

export_strategy!(Greedy);

#[cfg(test)]
mod tests {
    use super::*;
    use drpo_kit::testing::{ScriptedHost, queries};

    fn options(steps: u32) -> Options {
        Options {
            steps,
            ..Options::default()
        }
    }

    /// The judge scores a prompt by its length in words (capped at 5); the optimizer writes the
    /// best prompt in its context plus one word, except every third step, which it botches.
    fn scripted() -> ScriptedHost {
        let mut step = 0;
        ScriptedHost::new(
            |judged| {
                let prompt = judged.split("# instructions").nth(1).unwrap_or_default();
                let prompt = prompt.split("# Query").next().unwrap_or_default();
                prompt.split_whitespace().count().clamp(1, 5) as u8
            },
            move |optimizer, _| {
                step += 1;
                let best = optimizer
                    .split("System prompt:\n")
                    .last()
                    .and_then(|p| p.split("\nScore:").next())
                    .unwrap_or_default();
                if step % 3 == 0 {
                    "Short.".into()
                } else {
                    format!("{best} more")
                }
            },
        )
    }

    #[test]
    fn the_best_prompt_is_kept_and_the_trajectory_shown_lowest_first() {
        let mut host = scripted();
        let mut opts = options(4);
        opts.requests.initial_system_prompt = "Be good.".into();
        let outcome = search(&mut host, &opts, &queries(3), Vec::new()).unwrap();
        // Scores: "Be good." 2; "Be good. more" 3; "… more more" 4; "Short." 1; "… more ×3" 5.
        assert_eq!(
            outcome.best_prompt.as_deref(),
            Some("Be good. more more more")
        );
        assert_eq!(outcome.best_score, Some(5.0));
        assert_eq!(outcome.best_path, [0, 1, 2, 4]);
        assert_eq!(
            host.nodes[3].parent,
            Some(2),
            "the botched prompt improves node 2"
        );
        assert_eq!(host.nodes[3].reward, 1.0);
        let last_optimizer = host
            .requests
            .iter()
            .rev()
            .find(|r| r.role == Role::Optimizer)
            .unwrap();
        let Prompt::Chat(messages) = &last_optimizer.prompt else {
            panic!()
        };
        let text = &messages[0].content;
        let order: Vec<usize> = [
            "Short.",
            "Be good.\n",
            "Be good. more\n",
            "Be good. more more\n",
        ]
        .iter()
        .map(|p| text.find(&format!("System prompt:\n{p}")).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(host.requests_for(Role::Optimizer), 4);
        assert_eq!(host.requests_for(Role::Base), 5 * 2);
        assert_eq!(
            host.requests_for(Role::Metrics),
            2,
            "the same two queries throughout"
        );
        for e in estimate_calls(&opts) {
            let made = host.requests_for(e.role) as u64;
            assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
        }
        let details: Value = serde_json::from_str(&host.nodes[1].details).unwrap();
        assert_eq!(details["evaluations"].as_array().unwrap().len(), 2);
        assert_eq!(details["query_id"], "q0");
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(details["stop"], Value::Null);
        assert_eq!(details["judgements"], json!({"asked": 10, "usable": 10}));
    }

    #[test]
    fn held_out_queries_choose_the_result_and_the_projection_counts_them() {
        // On the held-out query the judge likes only the initial prompt; elsewhere it scores by
        // length, so the search itself prefers the longest prompt.
        let mut opts = options(2);
        opts.requests.initial_system_prompt = "Be good.".into();
        opts.held_out.validation = 1;
        let (search_part, held) = validation::split(queries(4), 1, 0).unwrap();
        let held_text = held[0].text.clone();
        let mut host = ScriptedHost::new(
            move |judged| match judged.contains(&held_text) {
                true if judged.contains("more") => 1,
                true => 5,
                false => 2 + judged.matches("more").count().min(3) as u8,
            },
            move |optimizer, _| {
                format!(
                    "{} more",
                    optimizer
                        .split("System prompt:\n")
                        .last()
                        .and_then(|p| p.split("\nScore:").next())
                        .unwrap_or_default()
                )
            },
        );
        let outcome = search(&mut host, &opts, &queries(4), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(details["validation"]["best_by_search_node"], 2, "{details}");
        assert_eq!(details["validation"]["chosen_node"], 0, "{details}");
        assert_eq!(outcome.best_prompt.as_deref(), Some("Be good."));
        assert_eq!(
            (outcome.best_path.clone(), outcome.best_score),
            (vec![0], Some(5.0))
        );
        assert!(
            host.requests
                .iter()
                .filter(|r| r.role == Role::Base)
                .take(6)
                .all(|r| !format!("{:?}", r.prompt).contains(&held[0].text)),
            "the search never sees the held-out query"
        );
        assert_eq!(search_part.len(), 3);
        for e in estimate_calls(&opts) {
            let made = host.requests_for(e.role) as u64;
            assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
        }
    }

    #[test]
    fn a_role_rejected_on_every_request_stops_with_the_best_so_far() {
        let mut host = scripted();
        host.reject = Some((Role::Optimizer, "unknown model".into()));
        let outcome = search(&mut host, &options(5), &queries(3), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(
            details["stop"],
            json!({"kind": "role-failed", "role": "optimizer", "error": "unknown model"})
        );
        assert_eq!(details["steps"], 0);
        assert_eq!(host.requests_for(Role::Optimizer), 1);
        assert_eq!(outcome.best_path, [0]);
        assert_eq!(details["judgements"], json!({"asked": 2, "usable": 2}));
    }

    #[test]
    fn a_role_that_fails_before_the_first_score_still_gives_an_outcome_that_says_why() {
        let mut host = scripted();
        host.reject = Some((Role::Base, "role base is not granted".into()));
        let outcome = search(&mut host, &options(5), &queries(3), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(
            details["stop"],
            json!({"kind": "role-failed", "role": "base", "error": "role base is not granted"})
        );
        assert_eq!(outcome.best_score, None);
        assert_eq!(
            outcome.best_prompt.as_deref(),
            Some(options(5).requests.initial_system_prompt.as_str())
        );
        assert_eq!(details["judgements"]["usable"], 0);
    }

    #[test]
    fn a_spent_budget_returns_the_best_so_far() {
        let mut host = scripted();
        host.budget = Some(9);
        let outcome = search(&mut host, &options(10), &queries(3), Vec::new()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert!(details["stopped"].as_str().unwrap().contains("budget"));
        assert_eq!(details["stop"], json!({"kind": "budget-exhausted"}));
        assert!(outcome.best_score.is_some());
    }
}
