//! `icl.wasm`: the published in-context example optimization (§1.8 of the reference). For each
//! example a stricter critic chooses 3 to 6 aspects for its query and judges its answer; an
//! optimizer then rewrites the answer from the critique, up to `num_iters` rounds. Each round
//! rewrites the latest answer with its own critique, as published, whether or not that answer
//! was kept: rewriting the best one again would send the same request as the round before
//! whenever a rewrite scored lower, and a deterministic model answers it the same way. The best
//! answer by the *sum* of its aspect scores is kept (a tie goes to the newer answer, as
//! published), and an example stops early once every aspect scores 5.
//!
//! All examples advance together: each phase (aspect selection, judging, rewriting) is one
//! batched `complete` call. The examples come from the host's `examples` import
//! (`drpo-host run --examples FILE`); the outcome's details hold the optimized examples, which
//! the host writes as `examples.json` in the published `{query: answer}` shape, ready for
//! `run --examples` and `generate --examples`. Every judged answer is recorded as a node (its
//! text in the node's prompt field), so the viewer shows each example's rewrites. The
//! rewriting prompt, with its two annotated answers, is the DRPO library's
//! (`drpo::icl::answer_rewrite_prompt`).
//!
//! Like the published `icl_metrics_cache`, the critic's aspect choices are kept per query
//! across runs: the `metrics_cache` option (which `--metrics-cache-path` fills from the file)
//! answers known queries at no cost, and the outcome's `new_metrics_cache` holds the choices
//! made in this run, which the host merges into the file.

use std::collections::BTreeMap;

use drpo_kit::drpo::aspects::{self, Aspect};
use drpo_kit::drpo::icl::{
    BASELINE_PROMPT, answer_rewrite_prompt, answer_rewrite_schema, wrap_answer,
};
use drpo_kit::drpo::parse::{self, Judgement};
use drpo_kit::drpo::prompts::{self, LINEAGE_WINDOW};
use drpo_kit::engine::{
    Judgements, RequestSettings, Selection, complete_batch, parse_selection_answer, request_sizes,
};
use drpo_kit::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Fewest aspects the critic chooses.
pub const MIN_ASPECTS: usize = 3;
/// Most aspects the critic chooses.
pub const MAX_ASPECTS: usize = 6;

/// The options `run` accepts, declared once: the schema `describe` publishes is derived from
/// this type (doc comments, defaults, minimums).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(
    crate = "drpo_kit::schemars",
    title = "In-context example optimization options"
)]
#[serde(default)]
pub struct Options {
    /// Most rewrites per example.
    pub num_iters: u32,
    /// How many examples to optimize, the first ones; 0 for all.
    pub num_samples: u32,
    /// Seed of every request.
    pub seed: u64,
    /// Token limit of an aspect selection.
    #[schemars(range(min = 1))]
    pub metrics_max_tokens: u32,
    /// Token limit of a judgement.
    #[schemars(range(min = 1))]
    pub judge_max_tokens: u32,
    /// Token limit of a rewritten answer.
    #[schemars(range(min = 1))]
    pub optimizer_max_tokens: u32,
    /// Known aspect choices of the critic, {query: {query_analysis, aspects_selection}}; --metrics-cache-path fills it (keep a file apart from the beam search's: the critic chooses 3-6 aspects).
    pub metrics_cache: BTreeMap<String, Value>,
}

impl Default for Options {
    fn default() -> Self {
        let requests = RequestSettings::default();
        Options {
            num_iters: 5,
            num_samples: 0,
            seed: requests.seed,
            metrics_max_tokens: requests.metrics_max_tokens,
            judge_max_tokens: requests.judge_max_tokens,
            optimizer_max_tokens: requests.optimizer_max_tokens,
            metrics_cache: BTreeMap::new(),
        }
    }
}

impl StrategyOptions for Options {
    fn schema() -> Value {
        derived_schema::<Self>()
    }
}

/// The critic's framing, put before the judge's usual instructions (our wording of the
/// published "ruthless critic"). The published critic also goes easy on length that is useful;
/// the judge's instructions that follow say so ([`prompts::LENGTH_RULE`]), and a second wording
/// here read as a rule against theirs.
const STRICT_CRITIC: &str = "You are a ruthless critic of example answers that will be shown \
to an AI assistant as models to imitate, so only a flawless answer deserves a 5. Take points off \
heavily even for small flaws. For every point you take off, say exactly what is wrong and how to \
fix it. Be especially harsh on poor structure.\n\n";

/// The critic's aspect-selection prompt: the usual analysis, 3 to 6 aspects.
pub fn aspect_selection_prompt(query: &str) -> String {
    let catalogue: String = aspects::CATALOGUE
        .iter()
        .map(|a| format!("- {}: {}\n", a.name, a.definition))
        .collect();
    format!(
        "You are a ruthless critic about to grade an example answer to the query below; the \
best answers will teach an AI assistant by example. Before reading the answer, analyse the \
query (its main topic, the user's intent, any ambiguity or false premise, the best form for a \
reply, what makes a good reply hard) and choose at least {MIN_ASPECTS} and at most \
{MAX_ASPECTS} aspects from the catalogue that decide whether an answer to this query is \
excellent. Write each name exactly as the catalogue spells it.

## Aspect catalogue
{catalogue}
## Query
{query}

## Answer format
Answer with a single JSON object and nothing else:
{{\"query_analysis\": {{\"main_topic\": \"...\", \"user_intent\": \"...\", \"ambiguities\": \
\"...\", \"response_format\": \"...\", \"challenges\": \"...\"}}, \"aspects_selection\": \
{{\"reasoning\": \"why these aspects decide the quality of an answer\", \"selected_aspects\": \
[\"...\", \"...\", \"...\"]}}}}
"
    )
}

/// The optimizer's answer.
#[derive(Debug, Deserialize)]
struct Rewrite {
    new_response: String,
}

/// One judged answer.
#[derive(Clone, Debug, Default)]
pub struct Candidate {
    /// The answer, in `<START>\n…\n<END>` form.
    pub answer: String,
    /// The critic's judgement.
    pub judgement: Judgement,
    /// Its node id.
    pub node: u32,
}

impl Candidate {
    /// The sum of the aspect scores (0 for an unusable judgement).
    pub fn sum(&self) -> u32 {
        self.judgement
            .scores
            .iter()
            .map(|s| u32::from(s.score))
            .sum()
    }
}

/// Whether `new` replaces `best`: a sum at least as high (ties go to the newer answer).
pub fn replaces(best: &Candidate, new: &Candidate) -> bool {
    new.sum() >= best.sum()
}

/// Whether every chosen aspect scored 5 (then the example needs no more rewriting).
pub fn all_fives(judgement: &Judgement, aspects: &[&'static Aspect]) -> bool {
    !aspects.is_empty()
        && aspects.iter().all(|a| {
            judgement
                .scores
                .iter()
                .any(|s| s.aspect == *a && s.score == 5)
        })
}

/// One example being optimized.
struct Work {
    query: String,
    initial: String,
    aspects: Vec<&'static Aspect>,
    reasoning: String,
    aspects_source: &'static str,
    best: Candidate,
    /// The answer the next round rewrites: the last one judged, kept or not.
    latest: Candidate,
    rewrites: u32,
    finished: bool,
}

/// Everything the run needs between phases.
struct Optimizer<'h, H: Host> {
    host: &'h mut H,
    options: RequestSettings,
    next_node: u32,
    /// The metrics cache the run was given.
    cache: &'h BTreeMap<String, Value>,
    /// The critic's usable choices made in this run, for the metrics cache.
    new_cache: BTreeMap<String, Value>,
    /// The critic's judgements asked for and usable.
    judgements: Judgements,
}

impl<H: Host> Optimizer<'_, H> {
    /// The critic's aspects for each query: from the metrics cache when it knows the query,
    /// else asked in one batch (the general-quality aspects when the answer is unusable).
    fn select(&mut self, queries: &[&str]) -> Result<Vec<Selection>, Stop> {
        let cached: Vec<Option<Selection>> = queries.iter().map(|q| self.cached(q)).collect();
        let batch = queries
            .iter()
            .zip(&cached)
            .filter(|(_, known)| known.is_none())
            .map(|(q, _)| {
                let mut request = prompts::aspect_selection_request(q, &self.options);
                request.prompt =
                    Prompt::Chat(vec![Message::new("user", aspect_selection_prompt(q))]);
                request.json_schema = Some(prompts::aspect_selection_schema_between(
                    MIN_ASPECTS,
                    MAX_ASPECTS,
                ));
                request
            })
            .collect();
        let mut answers = complete_batch(self.host, batch)?.into_iter();
        let mut selections = Vec::with_capacity(queries.len());
        for (query, known) in queries.iter().zip(cached) {
            let selection = match known {
                Some(selection) => selection,
                // `complete_batch` answers every request: one answer per unknown query.
                None => match answers.next() {
                    Some(answer) => self.absorb_selection(query, answer),
                    None => Selection::fallback(self.host, "no answer from the host"),
                },
            };
            selections.push(selection);
        }
        Ok(selections)
    }

    /// The metrics cache's selection for `query`, if it holds a usable one.
    fn cached(&mut self, query: &str) -> Option<Selection> {
        let entry = self.cache.get(query)?;
        match parse::parse_cached_selection(entry, MAX_ASPECTS) {
            Ok(selection) => Some(Selection::parsed(selection, "cache")),
            Err(e) => {
                self.host.warn(format!(
                    "metrics cache entry for {query:?} unusable ({e}); asking the critic"
                ));
                None
            }
        }
    }

    /// The critic's answer for `query` as a selection, kept for the metrics cache when usable.
    fn absorb_selection(&mut self, query: &str, answer: Result<Completion, LlmError>) -> Selection {
        match parse_selection_answer(answer, MAX_ASPECTS) {
            Ok((object, selection)) => {
                self.new_cache
                    .insert(query.to_owned(), Value::Object(object));
                Selection::parsed(selection, "model")
            }
            Err(e) => Selection::fallback(self.host, &e),
        }
    }

    /// Judges `(work index, answer)` pairs with the strict critic and records each as a node.
    fn judge(
        &mut self,
        work: &[Work],
        answers: Vec<(usize, String, Option<u32>)>,
        depth: u32,
    ) -> Result<Vec<(usize, Candidate)>, Stop> {
        let batch = answers
            .iter()
            .map(|(i, answer, _)| {
                let w = &work[*i];
                let mut request = prompts::judge_request(
                    &w.query,
                    answer,
                    &w.aspects,
                    &w.reasoning,
                    &self.options,
                );
                let prompt = prompts::judge_prompt(&w.query, answer, &w.aspects, &w.reasoning);
                request.prompt = Prompt::Chat(vec![Message::new(
                    "user",
                    format!("{STRICT_CRITIC}{prompt}"),
                )]);
                request
            })
            .collect();
        self.judgements.ask(answers.len());
        let results = complete_batch(self.host, batch)?;
        let mut judged = Vec::with_capacity(answers.len());
        for ((i, answer, parent), result) in answers.into_iter().zip(results) {
            let judgement = match result {
                Ok(c) => match c.choices.first() {
                    Some(text) => parse::parse_judgement(text, &work[i].aspects),
                    None => Judgement::unusable("the critic returned no choice"),
                },
                Err(e) => Judgement::unusable(format!("the critic failed: {e}")),
            };
            self.judgements.received(&judgement);
            let candidate = Candidate {
                answer,
                judgement,
                node: self.next_node,
            };
            self.next_node += 1;
            let scores = candidate.judgement.scores.len().max(1) as f64;
            self.host.record(
                candidate.node,
                parent,
                depth,
                &candidate.answer,
                f64::from(candidate.sum()) / scores,
                &json!({
                    "query": work[i].query,
                    "answer": candidate.answer,
                    "aspects": candidate.judgement.scores.iter()
                        .map(|s| json!({"name": s.aspect.name, "score": s.score, "rationale": s.rationale}))
                        .collect::<Vec<_>>(),
                    "score_sum": candidate.sum(),
                    "judge_problems": candidate.judgement.problems,
                }),
            );
            judged.push((i, candidate));
        }
        Ok(judged)
    }

    /// One rewrite of each example's latest answer, from its critique; examples whose rewrite
    /// is unusable get none.
    fn rewrite(&mut self, work: &[Work], active: &[usize]) -> Result<Vec<(usize, String)>, Stop> {
        let batch = active
            .iter()
            .map(|&i| {
                let w = &work[i];
                let critique =
                    serde_json::to_string_pretty(&w.latest.judgement.to_json()).unwrap_or_default();
                let mut request = chat_request(
                    Role::Optimizer,
                    answer_rewrite_prompt(&w.query, &w.latest.answer, &critique),
                    self.options.optimizer_max_tokens,
                );
                request.sampling.seed = self.options.seed;
                request.json_schema = Some(answer_rewrite_schema());
                request
            })
            .collect();
        let results = complete_batch(self.host, batch)?;
        let mut rewrites = Vec::new();
        for (&i, result) in active.iter().zip(results) {
            let parsed = match result {
                Ok(c) => c
                    .choices
                    .first()
                    .ok_or_else(|| "empty completion".to_owned())
                    .and_then(|text| {
                        let object = parse::extract_object(text)?;
                        serde_json::from_value::<Rewrite>(Value::Object(object))
                            .map_err(|e| e.to_string())
                    }),
                Err(e) => Err(format!("the call failed: {e}")),
            };
            match parsed {
                Ok(r) if !r.new_response.trim().is_empty() => {
                    rewrites.push((i, wrap_answer(&r.new_response)));
                }
                Ok(_) => self.host.warn(format!("example {i}: the rewrite is empty")),
                Err(e) => self
                    .host
                    .warn(format!("example {i}: the rewrite is unusable ({e})")),
            }
        }
        Ok(rewrites)
    }
}

/// Optimizes `examples`; see the crate documentation.
pub fn optimize<H: Host>(
    host: &mut H,
    options: &Options,
    examples: Vec<Example>,
) -> Result<Outcome, String> {
    let take = match options.num_samples {
        0 => examples.len(),
        n => n as usize,
    };
    let examples: Vec<Example> = examples.into_iter().take(take).collect();
    if examples.is_empty() {
        return Err("no in-context examples to optimize (give a file with --examples)".into());
    }
    let mut optimizer = Optimizer {
        host,
        options: RequestSettings {
            seed: options.seed,
            metrics_max_tokens: options.metrics_max_tokens,
            judge_max_tokens: options.judge_max_tokens,
            optimizer_max_tokens: options.optimizer_max_tokens,
            ..RequestSettings::default()
        },
        next_node: 0,
        cache: &options.metrics_cache,
        new_cache: BTreeMap::new(),
        judgements: Judgements::default(),
    };
    let queries: Vec<&str> = examples.iter().map(|e| e.query.as_str()).collect();
    let stop = |why: Stop| format!("the examples could not be judged: {why}");
    let selections = optimizer.select(&queries).map_err(stop)?;
    let mut work: Vec<Work> = examples
        .iter()
        .zip(selections)
        .map(|(e, selection)| Work {
            query: e.query.clone(),
            initial: wrap_answer(&e.answer),
            aspects: selection.aspects,
            reasoning: selection.reasoning,
            aspects_source: selection.source,
            best: Candidate::default(),
            latest: Candidate::default(),
            rewrites: 0,
            finished: false,
        })
        .collect();
    let initial = work
        .iter()
        .enumerate()
        .map(|(i, w)| (i, w.initial.clone(), None))
        .collect();
    for (i, candidate) in optimizer.judge(&work, initial, 0).map_err(stop)? {
        let w = &mut work[i];
        w.finished = all_fives(&candidate.judgement, &w.aspects);
        w.best = candidate.clone();
        w.latest = candidate;
    }
    let mut stopped = None;
    for round in 1..=options.num_iters {
        let active: Vec<usize> = (0..work.len()).filter(|&i| !work[i].finished).collect();
        if active.is_empty() {
            break;
        }
        let step = optimizer.rewrite(&work, &active).and_then(|rewrites| {
            let answers = rewrites
                .into_iter()
                .map(|(i, answer)| (i, answer, Some(work[i].latest.node)))
                .collect();
            optimizer.judge(&work, answers, round)
        });
        let judged = match step {
            Ok(judged) => judged,
            Err(why) => {
                optimizer.host.warn(format!(
                    "stopped in round {round}: {why}; keeping the best so far"
                ));
                stopped = Some(why);
                break;
            }
        };
        for &i in &active {
            work[i].rewrites += 1;
        }
        for (i, candidate) in judged {
            let w = &mut work[i];
            if replaces(&w.best, &candidate) {
                w.finished = all_fives(&candidate.judgement, &w.aspects);
                w.best = candidate.clone();
            }
            w.latest = candidate;
        }
    }
    let improved = work.iter().filter(|w| w.best.answer != w.initial).count();
    optimizer.host.info(format!(
        "{improved} of {} example answers replaced by a better-scored rewrite",
        work.len()
    ));
    let means: Vec<f64> = work
        .iter()
        .map(|w| f64::from(w.best.sum()) / w.aspects.len().max(1) as f64)
        .collect();
    let details = json!({
        "kind": "icl-examples",
        "examples": work.iter().map(|w| json!({
            "query": w.query,
            "answer": w.best.answer,
            "initial_answer": w.initial,
            "aspects": w.aspects.iter().map(|a| a.name).collect::<Vec<_>>(),
            "aspects_source": w.aspects_source,
            "score_sum": w.best.sum(),
            "all_fives": all_fives(&w.best.judgement, &w.aspects),
            "rewrites": w.rewrites,
            "node": w.best.node,
        })).collect::<Vec<_>>(),
        "stopped": stopped.as_ref().map(Stop::to_string),
        "stop": Stop::details(stopped.as_ref()),
        "judgements": optimizer.judgements,
        "new_metrics_cache": optimizer.new_cache,
    });
    Ok(Outcome {
        best_prompt: None,
        best_score: Some(means.iter().sum::<f64>() / means.len() as f64),
        // Each example has its own chain of rewrites and its own best node (`examples[].node`):
        // there is no one path from a root to a best node.
        best_path: Vec::new(),
        details: details.to_string(),
    })
}

/// Per example: one aspect selection unless the metrics cache knows its query, 1 + `num_iters`
/// judgements, `num_iters` rewrites at most; at least the first judgement. The host does not say
/// how many examples there are before the run, so the estimate is per example (`num_samples`,
/// or 1 when 0), and as many selections as there are examples may be cached.
pub fn estimate_calls(options: &Options) -> Vec<RoleEstimate> {
    let examples = u64::from(options.num_samples.max(1));
    let iters = u64::from(options.num_iters);
    let settings = RequestSettings {
        metrics_max_tokens: options.metrics_max_tokens,
        judge_max_tokens: options.judge_max_tokens,
        optimizer_max_tokens: options.optimizer_max_tokens,
        ..RequestSettings::default()
    };
    request_sizes(&settings, BASELINE_PROMPT, LINEAGE_WINDOW)
        .into_iter()
        .map(|mut e| {
            (e.min_calls, e.max_calls) = match e.role {
                Role::Base => (0, 0),
                Role::Metrics => (
                    examples.saturating_sub(options.metrics_cache.len() as u64),
                    examples,
                ),
                Role::Judge => (examples, examples * (1 + iters)),
                Role::Optimizer => (0, examples * iters),
            };
            e
        })
        .collect()
}

/// The exported strategy.
struct Icl;

impl Strategy for Icl {
    type Options = Options;
    const NAME: &'static str = "icl";
    const DESCRIPTION: &'static str = "DRPO's in-context example optimization: a strict critic chooses 3-6 \
aspects per example query and judges the answer; an optimizer rewrites it for up to num_iters \
rounds, keeping the best by score sum (ties to the newer) and stopping early at all fives. The \
run directory gets examples.json ({query: answer}) for run/generate --examples.";

    fn run<H: StrategyHost>(host: &mut H, options: Options) -> Result<Outcome, String> {
        let examples = host.examples();
        optimize(host, &options, examples)
    }

    fn estimate(options: &Options) -> Result<Vec<RoleEstimate>, String> {
        Ok(estimate_calls(options))
    }
}

export_strategy!(Icl);

#[cfg(test)]
mod tests {
    use super::*;
    use drpo_kit::testing::ScriptedHost;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// The judged answer inside a critic prompt.
    fn judged_answer(prompt: &str) -> String {
        prompt
            .split("## Reply\n")
            .nth(1)
            .and_then(|rest| rest.split("\n\n## Aspects").next())
            .unwrap_or_default()
            .to_owned()
    }

    /// The critic's score of the answer in its prompt: the number after the first "v" (`v3` →
    /// 3 on every aspect), 1 when there is none.
    fn score_by_version(prompt: &str) -> u8 {
        judged_answer(prompt)
            .split('v')
            .nth(1)
            .and_then(|rest| rest.get(..1)?.parse().ok())
            .unwrap_or(1)
    }

    /// The answer an optimizer prompt asks to rewrite.
    fn current_answer(prompt: &str) -> &str {
        prompt
            .split("## Current answer\n<START>\n")
            .nth(1)
            .and_then(|rest| rest.split("\n<END>").next())
            .unwrap_or_default()
    }

    /// A host whose critic scores by [`score_by_version`] and whose optimizer rewrites answer
    /// `from` into `to` for each `(from, to)` given, anything else into "v1": a function of the
    /// request, as a deterministic model is. The optimizer's prompts are kept.
    fn host(rewrites: &[(&str, &str)]) -> (ScriptedHost, Rc<RefCell<Vec<String>>>) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let rewrites: Vec<(String, String)> = rewrites
            .iter()
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect();
        let log = seen.clone();
        let mut host = ScriptedHost::new(score_by_version, move |prompt, _| {
            log.borrow_mut().push(prompt.to_owned());
            let current = current_answer(prompt);
            rewrites
                .iter()
                .find(|(from, _)| from == current)
                .map_or_else(|| "v1".to_owned(), |(_, to)| to.clone())
        });
        host.optimizer_field = "new_response".into();
        (host, seen)
    }

    fn options(num_iters: u32) -> Options {
        Options {
            num_iters,
            ..Options::default()
        }
    }

    fn example(answer: &str) -> Vec<Example> {
        vec![Example {
            query: "How do tides work?".into(),
            answer: answer.into(),
        }]
    }

    fn best(outcome: &Outcome) -> Value {
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        details["examples"][0].clone()
    }

    #[test]
    fn keeps_the_best_by_sum_ties_to_the_newer_and_stops_at_all_fives() {
        // v2 initially; v3 better (kept); v3 again (a tie: the newer is kept); v1 worse (not
        // kept, but rewritten next); v5 all fives (kept, and the loop stops with rounds unused).
        let chain = [
            ("v2 initial", "v3 first"),
            ("v3 first", "v3 second"),
            ("v3 second", "v1 worse"),
            ("v1 worse", "v5 best"),
        ];
        let (mut h, seen) = host(&chain);
        let outcome = optimize(&mut h, &options(6), example("v2 initial")).unwrap();
        let kept = best(&outcome);
        assert_eq!(kept["answer"], "<START>\nv5 best\n<END>");
        assert_eq!(kept["initial_answer"], "<START>\nv2 initial\n<END>");
        assert_eq!(kept["all_fives"], true);
        assert_eq!(kept["rewrites"], 4);
        assert_eq!(kept["score_sum"], 10, "two scripted aspects at 5");
        let prompts = seen.borrow();
        assert_eq!(prompts.len(), 4, "stopped early: no fifth or sixth rewrite");
        // Each round rewrites the answer the round before wrote, the worse one included.
        let rewritten: Vec<&str> = prompts.iter().map(|p| current_answer(p)).collect();
        assert_eq!(
            rewritten,
            ["v2 initial", "v3 first", "v3 second", "v1 worse"]
        );
        // The optimizer sees the library's annotated answers before the answer it rewrites.
        let annotated = drpo_kit::drpo::icl::ANNOTATED_EXAMPLES[1].annotated_answer;
        let shown = prompts[0]
            .find(annotated)
            .expect("the annotated answers are shown");
        assert!(
            shown
                < prompts[0]
                    .find("## Current answer\n<START>\nv2 initial")
                    .unwrap()
        );
        // Nodes: the initial answer and one per rewrite, each child of the answer it rewrote.
        let parents: Vec<Option<u32>> = h.nodes.iter().map(|n| n.parent).collect();
        assert_eq!(parents, [None, Some(0), Some(1), Some(2), Some(3)]);
        assert!(outcome.best_path.is_empty());
        assert_eq!(outcome.best_score, Some(5.0));
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(details["judgements"], json!({"asked": 5, "usable": 5}));
        assert_eq!(details["examples"][0]["node"], 4);
        assert_eq!(details["stop"], Value::Null);

        // Three rounds: the tie went to the newer answer, and the worse one was not kept.
        let (mut h, _) = host(&chain);
        let outcome = optimize(&mut h, &options(3), example("v2 initial")).unwrap();
        assert_eq!(best(&outcome)["answer"], "<START>\nv3 second\n<END>");
    }

    #[test]
    fn each_round_rewrites_the_latest_answer_so_no_request_repeats() {
        // The optimizer is a pure function of its request, as a deterministic model (or the
        // response cache) is: every rewrite is named by a hash of the prompt and scores 1, below
        // the initial answer, so none is kept.
        let mut h = ScriptedHost::new(score_by_version, |prompt, _| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(prompt, &mut hasher);
            format!("v1 rewrite {:016x}", std::hash::Hasher::finish(&hasher))
        });
        h.optimizer_field = "new_response".into();
        let outcome = optimize(&mut h, &options(4), example("v3 initial")).unwrap();
        let asked: Vec<&Request> = h
            .requests
            .iter()
            .filter(|r| r.role == Role::Optimizer)
            .collect();
        assert_eq!(asked.len(), 4);
        for (i, request) in asked.iter().enumerate() {
            for later in &asked[i + 1..] {
                assert_ne!(request.prompt, later.prompt, "round {} repeats", i + 1);
            }
        }
        assert_eq!(best(&outcome)["answer"], "<START>\nv3 initial\n<END>");
        assert_eq!(best(&outcome)["rewrites"], 4);
    }

    #[test]
    fn an_answer_already_perfect_is_not_rewritten_and_num_iters_bounds_the_rest() {
        let (mut h, seen) = host(&[]);
        let outcome = optimize(&mut h, &options(5), example("v5 fine")).unwrap();
        assert_eq!(best(&outcome)["rewrites"], 0);
        assert!(seen.borrow().is_empty());

        let (mut h, seen) = host(&[("v4 good", "v1 a"), ("v1 a", "v1 b")]);
        let outcome = optimize(&mut h, &options(2), example("v4 good")).unwrap();
        assert_eq!(seen.borrow().len(), 2);
        assert_eq!(best(&outcome)["answer"], "<START>\nv4 good\n<END>");
        assert_eq!(h.requests_for(Role::Metrics), 1);
        assert_eq!(h.requests_for(Role::Judge), 3);
    }

    #[test]
    fn a_spent_budget_keeps_the_best_so_far() {
        let (mut h, _) = host(&[("v2 start", "v3 better")]);
        // Selection, first judgement, first rewrite, its judgement: then the budget is spent.
        h.budget = Some(4);
        let outcome = optimize(&mut h, &options(5), example("v2 start")).unwrap();
        assert_eq!(best(&outcome)["answer"], "<START>\nv3 better\n<END>");
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert!(details["stopped"].as_str().unwrap().contains("budget"));
        assert_eq!(details["stop"], json!({"kind": "budget-exhausted"}));
    }

    #[test]
    fn a_role_rejected_on_every_request_stops_with_the_best_so_far() {
        let (mut h, _) = host(&[]);
        h.reject = Some((Role::Optimizer, "unknown model".into()));
        let outcome = optimize(&mut h, &options(5), example("v2 start")).unwrap();
        assert_eq!(h.requests_for(Role::Optimizer), 1, "no second round");
        assert_eq!(best(&outcome)["answer"], "<START>\nv2 start\n<END>");
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(
            details["stop"],
            json!({"kind": "role-failed", "role": "optimizer", "error": "unknown model"})
        );
        assert_eq!(details["judgements"], json!({"asked": 1, "usable": 1}));

        // The critic rejected from the start: nothing can be judged, and the run says why.
        let (mut h, _) = host(&[]);
        h.reject = Some((Role::Judge, "unknown model".into()));
        let error = optimize(&mut h, &options(5), example("v2 start")).unwrap_err();
        assert!(error.contains("judge role failed"), "{error}");
    }

    #[test]
    fn the_critic_is_strict_and_asks_for_three_to_six_aspects() {
        let (mut h, _) = host(&[]);
        optimize(&mut h, &options(0), example("v5")).unwrap();
        let text = |r: &Request| match &r.prompt {
            Prompt::Chat(m) => m[0].content.clone(),
            Prompt::Raw(t) => t.clone(),
        };
        let metrics = h.requests.iter().find(|r| r.role == Role::Metrics).unwrap();
        assert!(text(metrics).contains("at least 3 and at most 6 aspects"));
        let schema: Value = serde_json::from_str(metrics.json_schema.as_deref().unwrap()).unwrap();
        let selected = &schema["properties"]["aspects_selection"]["properties"]["selected_aspects"];
        assert_eq!(
            (selected["minItems"].as_u64(), selected["maxItems"].as_u64()),
            (Some(3), Some(6))
        );
        let judge = h.requests.iter().find(|r| r.role == Role::Judge).unwrap();
        assert!(text(judge).starts_with("You are a ruthless critic"));
        // One rule on length, the judge's: the critic's framing had its own, which read as the
        // opposite of the judge's.
        assert_eq!(text(judge).to_lowercase().matches("length").count(), 1);
        assert!(text(judge).contains(prompts::LENGTH_RULE));
    }

    fn examples(queries: &[&str]) -> Vec<Example> {
        queries
            .iter()
            .map(|q| Example {
                query: q.to_string(),
                answer: "v5 already perfect".into(),
            })
            .collect()
    }

    fn details(outcome: &Outcome) -> Value {
        serde_json::from_str(&outcome.details).unwrap()
    }

    #[test]
    fn a_second_run_with_the_metrics_cache_asks_only_for_new_queries() {
        let (mut cold, _) = host(&[]);
        let first = optimize(
            &mut cold,
            &options(0),
            examples(&["How do tides work?", "Why is ice slippery?"]),
        )
        .unwrap();
        assert_eq!(cold.requests_for(Role::Metrics), 2);
        let cache = details(&first)["new_metrics_cache"].clone();
        let cache: BTreeMap<String, Value> = serde_json::from_value(cache).unwrap();
        assert_eq!(
            cache.keys().collect::<Vec<_>>(),
            ["How do tides work?", "Why is ice slippery?"]
        );
        assert_eq!(
            cache["How do tides work?"]["aspects_selection"]["selected_aspects"],
            json!(["Helpfulness", "Clarity"]),
            "the critic's answer as given"
        );

        let mut warm_options = options(0);
        warm_options.metrics_cache = cache;
        let (mut warm, _) = host(&[]);
        let second = optimize(
            &mut warm,
            &warm_options,
            examples(&[
                "How do tides work?",
                "What is a leap year?",
                "Why is ice slippery?",
            ]),
        )
        .unwrap();
        let asked: Vec<&Request> = warm
            .requests
            .iter()
            .filter(|r| r.role == Role::Metrics)
            .collect();
        assert_eq!(asked.len(), 1, "only the new query is asked");
        let Prompt::Chat(messages) = &asked[0].prompt else {
            panic!("chat expected")
        };
        assert!(
            messages[0]
                .content
                .contains("## Query\nWhat is a leap year?")
        );
        let details = details(&second);
        let sources: Vec<&Value> = details["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["aspects_source"])
            .collect();
        assert_eq!(sources, [&json!("cache"), &json!("model"), &json!("cache")]);
        assert_eq!(
            details["examples"][0]["aspects"],
            json!(["Helpfulness", "Clarity"])
        );
        let new: Vec<&String> = details["new_metrics_cache"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(new, ["What is a leap year?"]);
        let estimate = estimate_calls(&warm_options);
        let metrics = estimate.iter().find(|e| e.role == Role::Metrics).unwrap();
        assert_eq!((metrics.min_calls, metrics.max_calls), (0, 1));
    }

    #[test]
    fn an_unusable_cache_entry_is_asked_again() {
        let mut options = options(0);
        options
            .metrics_cache
            .insert("How do tides work?".into(), json!(["Clarity"]));
        let (mut h, _) = host(&[]);
        let outcome = optimize(&mut h, &options, examples(&["How do tides work?"])).unwrap();
        assert_eq!(h.requests_for(Role::Metrics), 1);
        assert!(
            h.logs
                .iter()
                .any(|(_, line)| line.contains("metrics cache entry")
                    && line.contains("not an object")),
            "{:?}",
            h.logs
        );
        assert_eq!(details(&outcome)["examples"][0]["aspects_source"], "model");
    }

    #[test]
    fn no_examples_is_an_error() {
        let (mut h, _) = host(&[]);
        let err = optimize(&mut h, &options(5), Vec::new()).unwrap_err();
        assert!(err.contains("--examples"), "{err}");
    }
}
