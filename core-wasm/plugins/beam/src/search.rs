//! The DRPO beam search, as published (reference §1.2, §1.7), with the calls of each level
//! batched.
//!
//! - Level *d* uses one query, `queries[d + 1]`, for every beam; the root answers `queries[0]`
//!   under the initial prompt. A new prompt is therefore scored on the query *after* the one whose
//!   feedback produced it.
//! - A node is expanded by the skip rule ([`drpo_kit::drpo::reward::decide`]): a skip keeps the prompt as
//!   the only child and may grant one more level (at most one per level, at most
//!   `max_depth_increase` in all); otherwise the optimizer writes `n_actions` new prompts.
//! - Paths are ranked by the mean of their per-step rewards (the last reward when the beam is 1);
//!   the best `beam_size` survive each level (a stable sort, so ties keep creation order, as in
//!   Python); a path stops when its length reaches the depth limit or the queries run out; the
//!   best terminal path wins.
//! - With `reward: pairwise` (not published), a node's reward is not its answer's grade but
//!   how its answer fares against its parent prompt's answer to the same query, judged side by
//!   side in both orders ([`drpo_kit::drpo::pairwise`]): every optimized beam keeps its prompt
//!   as one more child (the baseline, 0.5), each candidate scores 1, 0.5 or 0, and high grades
//!   skip nothing. Every answer is still graded, for the optimizer to read.
//!
//! Batching: each level makes one `complete` call with every optimizer request, one with every
//! base answer (plus the aspect selections still missing for upcoming queries), and one with every
//! judgement. With `sequential`, each request goes in a call of its own, like the published code.
//! The whole tree is kept and each node is reported through [`Host::record_node`] once its
//! level is complete. A spent budget, or a role whose every request of a level's phase was
//! rejected alike ([`Stop::check`]), stops the search cleanly with the best result so far.

use std::collections::{BTreeMap, BTreeSet};

use drpo_kit::drpo::aspects;
use drpo_kit::drpo::engine::{
    self, JudgeSpread, Judgements, RequestSettings, Scorer, Selection, Stop, WrittenFrom,
    parse_selection_answer,
};
use drpo_kit::drpo::icl;
use drpo_kit::drpo::pairwise::{self, Pair, Preference};
use drpo_kit::drpo::parse::{self, Judgement};
use drpo_kit::drpo::patience::Patience;
use drpo_kit::drpo::prompts;
use drpo_kit::drpo::reward::{self, Decision, DepthLimit, SkipReason};
use drpo_kit::drpo::validation::{self, Candidate};
use drpo_kit::{
    Completion, Example, Host, LlmError, LogLevel, Node, Outcome, Query, Request, Role,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::options::{Options, Reward};

/// Requests and calls made during a search, per role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Requests sent, per role name.
    pub requests: BTreeMap<String, u32>,
    /// Choices asked for (the sum of `n`), per role name.
    pub choices: BTreeMap<String, u32>,
    /// `complete` calls made.
    pub complete_calls: u32,
    /// `embed` calls made.
    pub embed_calls: u32,
    /// Nodes whose prompt was kept by the skip rule.
    pub skips: u32,
}

impl Stats {
    /// Requests sent for one role.
    pub fn requests(&self, role: Role) -> u32 {
        self.requests.get(role.name()).copied().unwrap_or(0)
    }

    fn count(&mut self, request: &Request) {
        let role = request.role.name().to_string();
        *self.requests.entry(role.clone()).or_default() += 1;
        *self.choices.entry(role).or_default() += request.sampling.n;
    }

    /// Choices asked for one role.
    pub fn choices(&self, role: Role) -> u32 {
        self.choices.get(role.name()).copied().unwrap_or(0)
    }
}

/// One node of the tree as the search keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeNode {
    /// Node id (its index in the tree).
    pub id: u32,
    /// Parent id; `None` for the root.
    pub parent: Option<u32>,
    /// Level (root 0).
    pub depth: u32,
    /// The system prompt.
    pub prompt: String,
    /// Reward of its answer (mean judge score; 0 if unusable).
    pub reward: f64,
    /// Score of the path ending here (the ranking key); 0 for the root.
    pub path_score: f64,
    /// The details JSON reported with the node.
    pub details: Value,
}

/// What a search produced.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    /// The best prompt (the initial prompt if nothing was scored).
    pub best_prompt: Option<String>,
    /// The best path's score; `None` when the best path has no scored step.
    pub best_score: Option<f64>,
    /// Node ids from the root to the best node.
    pub best_path: Vec<u32>,
    /// Every node, in creation order.
    pub tree: Vec<TreeNode>,
    /// Aspect selections made by the metrics model in this run, in the published cache shape.
    pub new_metrics_cache: BTreeMap<String, Value>,
    /// The depth limit at the end (initial depth plus levels granted).
    pub final_depth: u32,
    /// Why the search stopped before finishing, if it did.
    pub stop: Option<Stop>,
    /// The patience rule, and whether it ended the search.
    pub patience: Patience,
    /// Judgements asked for and usable.
    pub judgements: Judgements,
    /// How much the judge's repeats disagreed, over every judgement of the search (those on
    /// the held-out queries during it included).
    pub spread: JudgeSpread,
    /// How many times the judge was asked about each answer.
    pub judge_repeats: u32,
    /// Each level the beam was judged on the held-out queries (`validation_every`): its nodes
    /// and their held-out means.
    pub level_validations: Vec<Value>,
    /// With `reward: pairwise`, how the candidates fared against their parents.
    pub comparisons: Option<Comparisons>,
    /// Calls made.
    pub stats: Stats,
}

impl SearchResult {
    /// The outcome `details` JSON: a tree summary, the new metrics-cache entries, the stats, why
    /// the search stopped early (`stop`, and `stopped` in words) and the judgements' count.
    pub fn details(&self) -> Value {
        let nodes: Vec<Value> = self
            .tree
            .iter()
            .map(|n| {
                json!({
                    "id": n.id,
                    "parent": n.parent,
                    "depth": n.depth,
                    "reward": n.reward,
                    "path_score": n.path_score,
                    "skip": n.details.get("skip").cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        let trace: Vec<Value> = self
            .best_path
            .iter()
            .filter_map(|id| self.tree.get(*id as usize))
            .map(|n| json!({"id": n.id, "prompt": n.prompt, "reward": n.reward}))
            .collect();
        let mut details = json!({
            "final_depth": self.final_depth,
            "stopped": self.stop.as_ref().map(Stop::to_string),
            "stop": Stop::details(self.stop.as_ref()),
            "ended_early": self.patience.message(),
            "patience": self.patience.details(),
            "judgements": self.judgements,
            "stats": self.stats,
            "trace": trace,
            "tree": nodes,
            "new_metrics_cache": self.new_metrics_cache,
        });
        let spread = self.spread.details(self.judge_repeats);
        if !spread.is_null() {
            details["judge_spread"] = spread;
        }
        if !self.level_validations.is_empty() {
            details["level_validations"] = Value::from(self.level_validations.clone());
        }
        if let Some(comparisons) = &self.comparisons {
            details["comparisons"] = comparisons.details();
        }
        details
    }

    /// The WIT outcome of this result.
    pub fn to_outcome(&self) -> Outcome {
        Outcome {
            best_prompt: self.best_prompt.clone(),
            best_score: self.best_score,
            best_path: self.best_path.clone(),
            details: self.details().to_string(),
        }
    }
}

/// A beam entry: a node and the rewards along its path (the root's excluded).
#[derive(Clone)]
struct BeamItem {
    node: usize,
    rewards: Vec<f64>,
    score: f64,
}

/// A node to be created: its parent and its prompt.
struct Child {
    parent: Option<usize>,
    prompt: String,
    kept: bool,
}

/// A scored node before it is reported.
struct Scored {
    answer: String,
    judgement: Judgement,
    icl: Vec<usize>,
    /// With `reward: pairwise`: the sibling (an index among the level's children) whose answer,
    /// under the parent's prompt, this one was compared with, and the comparison.
    comparison: Option<(usize, Pair)>,
}

/// How the pairwise comparisons of a search came out, from the candidates' side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Comparisons {
    /// Candidates whose answer both orders preferred to the parent prompt's.
    pub wins: u32,
    /// Ties, flips included.
    pub ties: u32,
    /// Candidates whose answer both orders found worse.
    pub losses: u32,
    /// Comparisons with an unusable verdict in either order (the candidate scores as a tie).
    pub unusable: u32,
}

impl Comparisons {
    /// The details field `comparisons`: the counts, and a line saying what they mean.
    fn details(&self) -> Value {
        let mut details = json!(self);
        details["summary"] = Value::from(format!(
            "pairwise reward: the candidates won {}, tied {} and lost {} against their parent \
             prompts ({} not judged, counted as ties); a path scores the mean, 0 to 1",
            self.wins, self.ties, self.losses, self.unusable
        ));
        details
    }

    fn count(&mut self, pair: &Pair) {
        match pair.outcome() {
            None => self.unusable += 1,
            Some((Preference::Second, _)) => self.wins += 1,
            Some((Preference::First, _)) => self.losses += 1,
            Some((Preference::Tie, _)) => self.ties += 1,
        }
    }
}

enum Retrieval {
    /// Example vectors, and query vectors by query index.
    Vectors(Vec<Vec<f32>>, Vec<Vec<f32>>),
    /// The first `k` examples for every query.
    Fixed,
}

struct Search<'a, H: Host> {
    host: &'a mut H,
    options: &'a Options,
    /// What every request is sent with, from the options.
    requests: RequestSettings,
    queries: &'a [Query],
    examples: &'a [Example],
    metrics: BTreeMap<String, Selection>,
    new_cache: BTreeMap<String, Value>,
    /// Queries whose selection, fetched ahead, failed: asked again when they are scored, so a
    /// passing failure does not leave them with the fallback aspects for the whole run.
    retry_when_scored: BTreeSet<String>,
    retrieval: Retrieval,
    tree: Vec<TreeNode>,
    judgements: Vec<Judgement>,
    judgement_count: Judgements,
    spread: JudgeSpread,
    comparisons: Comparisons,
    answers: Vec<String>,
    depth: DepthLimit,
    beam: Vec<BeamItem>,
    terminal: Vec<BeamItem>,
    patience: Patience,
    stats: Stats,
    /// Queries held out of the search, judged during it with `validation_every`.
    held_out: &'a [Query],
    /// The scorer of those judgements, made at the first validated level.
    validator: Option<Scorer>,
    /// Each validated level's nodes and held-out means.
    level_validations: Vec<Value>,
}

/// Runs the search. `queries` are used in order (at most `num_training_examples` of them);
/// `examples` is the in-context example pool. Errors only for unusable input; model failures
/// are handled inside and `budget-exhausted` ends the search with the best result so far.
pub fn run<H: Host>(
    host: &mut H,
    options: &Options,
    queries: &[Query],
    examples: &[Example],
) -> Result<SearchResult, String> {
    search_with(host, options, queries, &[], examples)
}

/// [`run`], judging the beam on `held_out` during the search where `validation_every` asks.
fn search_with<H: Host>(
    host: &mut H,
    options: &Options,
    queries: &[Query],
    held_out: &[Query],
    examples: &[Example],
) -> Result<SearchResult, String> {
    options.validate()?;
    let used = queries.len().min(options.num_training_examples as usize);
    if used == 0 {
        return Err("no training queries to search with".to_string());
    }
    let mut search = Search {
        host,
        options,
        requests: options.request_settings(),
        queries: &queries[..used],
        examples,
        metrics: BTreeMap::new(),
        new_cache: BTreeMap::new(),
        retry_when_scored: BTreeSet::new(),
        retrieval: Retrieval::Fixed,
        tree: Vec::new(),
        judgements: Vec::new(),
        judgement_count: Judgements::default(),
        spread: JudgeSpread::default(),
        comparisons: Comparisons::default(),
        answers: Vec::new(),
        depth: DepthLimit::new(options.depth, options.max_depth_increase),
        beam: Vec::new(),
        terminal: Vec::new(),
        patience: Patience::new(options.patience),
        stats: Stats::default(),
        held_out,
        validator: None,
        level_validations: Vec::new(),
    };
    let stop = search.search().err();
    if let Some(why) = &stop {
        search.log(
            LogLevel::Warn,
            format!("search stopped early: {why}; returning the best so far"),
        );
    }
    Ok(search.finish(stop))
}

/// Runs the search on `queries` and, with queries held out, ends it by judging the best distinct
/// prompts and the initial one on `held_out` and returning the best held-out mean
/// ([`validation::conclude`]). The held-out queries are answered with the in-context examples
/// retrieved for them (the first `k` without retrieval) and their aspect selections come from
/// the metrics cache where it has them, as in the search; they go in one batched call each
/// phase even in `sequential` mode.
pub fn run_and_validate<H: Host>(
    host: &mut H,
    options: &Options,
    queries: &[Query],
    held_out: &[Query],
    examples: &[Example],
) -> Result<Outcome, String> {
    let result = search_with(host, options, queries, held_out, examples)?;
    let mut outcome = result.to_outcome();
    if held_out.is_empty() {
        return Ok(outcome);
    }
    if result.stop.is_some() || result.tree.is_empty() {
        // Nothing to validate: `conclude` records why, without a call.
        let mut idle = Scorer::new(options.request_settings(), Vec::new());
        validation::conclude(host, &mut idle, held_out, Vec::new(), &mut outcome, |n| {
            vec![n]
        });
        return Ok(outcome);
    }
    let mut scorer = validation_scorer(host, options, held_out, examples);
    let best = result.best_path.last().copied();
    let mut ranked: Vec<&TreeNode> = result.tree.iter().filter(|n| n.parent.is_some()).collect();
    ranked.sort_by(|a, b| b.path_score.total_cmp(&a.path_score));
    let candidate = |n: &TreeNode| Candidate {
        node: n.id,
        prompt: n.prompt.clone(),
        search_score: n.parent.map(|_| n.path_score),
    };
    let shortlist = validation::shortlist(
        best.iter()
            .filter_map(|&id| result.tree.get(id as usize))
            .chain(ranked)
            .filter(|n| n.parent.is_some())
            .map(candidate),
        candidate(&result.tree[0]),
        options.held_out.validation_candidates as usize,
    );
    validation::conclude(
        host,
        &mut scorer,
        held_out,
        shortlist,
        &mut outcome,
        |node| path_to(&result.tree, node as usize),
    );
    // The judge's spread over the search's judgements and the validation's together.
    let mut spread = result.spread.clone();
    spread.absorb(scorer.spread());
    engine::add_judge_spread(&mut outcome, spread.details(result.judge_repeats));
    let made = scorer.selections_made();
    if !made.is_empty() {
        let mut details: Value = serde_json::from_str(&outcome.details).unwrap_or_default();
        for (query, selection) in made {
            details["new_metrics_cache"][query] = selection.clone();
        }
        outcome.details = details.to_string();
    }
    Ok(outcome)
}

/// The scorer that validates: the search's request settings, each held-out query shown the
/// examples retrieved for it, and the metrics cache's selections.
fn validation_scorer<H: Host>(
    host: &mut H,
    options: &Options,
    held_out: &[Query],
    examples: &[Example],
) -> Scorer {
    let mut scorer = Scorer::new(options.request_settings(), examples.to_vec());
    for query in held_out {
        if let Some(cached) = options.metrics_cache.get(&query.text)
            && let Ok(selection) = parse::parse_cached_selection(cached, prompts::MAX_ASPECTS)
        {
            scorer.know_selection(&query.text, Selection::parsed(selection, "cache"));
        }
    }
    if !options.ret_icl || examples.is_empty() {
        return scorer;
    }
    let mut texts: Vec<String> = examples.iter().map(|e| e.query.clone()).collect();
    texts.extend(held_out.iter().map(|q| q.text.clone()));
    let wanted = texts.len();
    let why = match host.embed(texts) {
        Ok(mut vectors) if vectors.len() == wanted => {
            let queries = vectors.split_off(examples.len());
            for (query, vector) in held_out.iter().zip(queries) {
                let shown = icl::top_k(&vector, &vectors, options.k as usize)
                    .into_iter()
                    .map(|i| examples[i].clone())
                    .collect();
                scorer.show_examples_for(&query.text, shown);
            }
            return scorer;
        }
        Ok(vectors) => format!("{} vectors for {wanted} texts", vectors.len()),
        Err(e) => e.to_string(),
    };
    host.log(
        LogLevel::Warn,
        format!(
            "no embeddings for the held-out queries ({why}); they are shown the first {} \
             in-context examples",
            options.k
        ),
    );
    scorer
}

/// Node ids from the root to `node`.
fn path_to(tree: &[TreeNode], node: usize) -> Vec<u32> {
    let mut ids = vec![node as u32];
    let mut at = tree[node].parent;
    while let Some(p) = at {
        ids.push(p);
        at = tree[p as usize].parent;
    }
    ids.reverse();
    ids
}

/// The evaluation as the optimizer sees it: the published `json.dumps(eval, indent=4)` shape.
fn pretty4(value: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    match value.serialize(&mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => value.to_string(),
    }
}

/// Stable descending sort by path score (Python's `sort(reverse=True)` keeps ties in order).
fn rank(items: &mut [BeamItem]) {
    items.sort_by(|a, b| b.score.total_cmp(&a.score));
}

impl<H: Host> Search<'_, H> {
    fn log(&mut self, level: LogLevel, message: String) {
        self.host.log(level, message);
    }

    fn search(&mut self) -> Result<(), Stop> {
        self.setup_retrieval()?;
        let root = Child {
            parent: None,
            prompt: self.options.initial_system_prompt.clone(),
            kept: false,
        };
        let ids = self.score_level(vec![root], 0)?;
        self.beam = vec![BeamItem {
            node: ids[0],
            rewards: Vec::new(),
            score: 0.0,
        }];
        let mut level = 0u32;
        while !self.beam.is_empty() {
            self.expand(level)?;
            level += 1;
        }
        Ok(())
    }

    /// Expands one level. The beam is replaced only when the whole level succeeded, so a stop
    /// in the middle leaves the previous level's beam as the best so far.
    fn expand(&mut self, level: u32) -> Result<(), Stop> {
        let length = level as usize + 1;
        // Every path in the beam has the same length, so they end together.
        if self.depth.is_terminal(length, self.queries.len()) {
            let why = if length >= self.queries.len() {
                "the queries are used up"
            } else {
                "they reached the depth limit"
            };
            self.log(
                LogLevel::Info,
                format!(
                    "level {level}: {} path(s) end because {why}",
                    self.beam.len()
                ),
            );
            let done = std::mem::take(&mut self.beam);
            self.terminal.extend(done);
            return Ok(());
        }
        let active = self.beam.clone();
        let query_index = length;
        self.log(
            LogLevel::Info,
            format!(
                "level {level}: expanding {} beam(s); next query {} (depth limit {})",
                active.len(),
                self.queries[query_index].id,
                self.depth.current()
            ),
        );

        // The skip rule, and at most one extra level for this level.
        let decisions: Vec<Decision> = active.iter().map(|b| self.decide(b.node)).collect();
        let mut extended = false;
        for (item, decision) in active.iter().zip(&decisions) {
            if let Decision::Skip(reason) = decision {
                self.stats.skips += 1;
                let level = if *reason == SkipReason::NoJudgement {
                    LogLevel::Warn
                } else {
                    LogLevel::Info
                };
                self.log(level, format!("node {}: {}", item.node, reason.message()));
                if !extended && reason.extends_depth(self.options.unusable_judgement_extends_depth)
                {
                    if self.depth.extend() {
                        extended = true;
                        self.log(
                            LogLevel::Info,
                            format!("depth limit raised to {}", self.depth.current()),
                        );
                    } else {
                        self.log(
                            LogLevel::Info,
                            "depth limit already at its maximum increase".to_string(),
                        );
                    }
                }
            }
        }

        let actions = self.propose(&active, &decisions, query_index - 1)?;
        let mut children = Vec::new();
        let mut parents = Vec::new();
        for (item, prompts) in active.iter().zip(actions) {
            for (prompt, kept) in prompts {
                children.push(Child {
                    parent: Some(item.node),
                    prompt,
                    kept,
                });
                parents.push(item.clone());
            }
        }
        let ids = self.score_level(children, query_index)?;
        let mut next: Vec<BeamItem> = ids
            .iter()
            .zip(parents)
            .map(|(&node, parent)| {
                let mut rewards = parent.rewards;
                rewards.push(self.tree[node].reward);
                let score = reward::aggregate(&rewards, self.options.beam_size);
                BeamItem {
                    node,
                    rewards,
                    score,
                }
            })
            .collect();
        for item in &next {
            self.tree[item.node].path_score = item.score;
        }
        // Report the nodes now that their path scores are known.
        for item in &next {
            self.report(item.node);
        }
        rank(&mut next);
        next.truncate(self.options.beam_size as usize);
        // Patience follows the held-out mean where the beam is validated during the search,
        // else the best path score.
        let watched = match self.validate_level(&next, level + 1)? {
            Some(mean) => Some(mean),
            None if self.validates_during_search() => None,
            None => next.first().map(|best| best.score),
        };
        if let Some(score) = watched
            && self.patience.observe(level + 1, score)
        {
            let why = self.patience.message().unwrap_or_default();
            self.log(LogLevel::Info, format!("level {}: {why}", level + 1));
            self.terminal.extend(next);
            self.beam = Vec::new();
            return Ok(());
        }
        self.beam = next;
        Ok(())
    }

    /// The skip rule for a node ([`reward::decide`]); with `reward: pairwise` a high score keeps
    /// no prompt, since the reward asks whether a candidate beats its parent, not how high a
    /// judge grades it.
    fn decide(&self, node: usize) -> Decision {
        self.decide_on(&self.judgements[node])
    }

    fn decide_on(&self, judgement: &Judgement) -> Decision {
        match reward::decide(judgement) {
            Decision::Skip(SkipReason::AllFives | SkipReason::HighMean)
                if self.options.reward == Reward::Pairwise =>
            {
                Decision::Optimize
            }
            decision => decision,
        }
    }

    fn validates_during_search(&self) -> bool {
        self.options.validation_every > 0 && !self.held_out.is_empty()
    }

    /// With `validation_every`, after every that many levels: the distinct prompts of the new
    /// beam judged on the held-out queries (one batch per phase), recorded in the details'
    /// `level_validations`; returns the best held-out mean. `None` on other levels.
    fn validate_level(&mut self, beam: &[BeamItem], level: u32) -> Result<Option<f64>, Stop> {
        if !self.validates_during_search() || !level.is_multiple_of(self.options.validation_every) {
            return Ok(None);
        }
        if self.validator.is_none() {
            let scorer = validation_scorer(self.host, self.options, self.held_out, self.examples);
            self.validator = Some(scorer);
        }
        let mut nodes: Vec<usize> = Vec::new();
        for item in beam {
            if !nodes
                .iter()
                .any(|&n| self.tree[n].prompt == self.tree[item.node].prompt)
            {
                nodes.push(item.node);
            }
        }
        let held_out = self.held_out;
        let pairs: Vec<(String, Query)> = nodes
            .iter()
            .map(|&n| self.tree[n].prompt.clone())
            .flat_map(|prompt| held_out.iter().map(move |q| (prompt.clone(), q.clone())))
            .collect();
        let scorer = self.validator.as_mut().expect("made above");
        let evaluations = scorer.evaluate(self.host, &pairs)?;
        let means: Vec<f64> = evaluations
            .chunks(self.held_out.len())
            .map(|c| c.iter().map(|e| e.reward).sum::<f64>() / c.len() as f64)
            .collect();
        let best = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        self.log(
            LogLevel::Info,
            format!(
                "level {level}: held-out means {:?} of nodes {nodes:?}",
                means.iter().map(|m| format!("{m:.2}")).collect::<Vec<_>>()
            ),
        );
        self.level_validations.push(json!({
            "level": level,
            "nodes": nodes,
            "held_out_means": means,
            "best": best,
        }));
        Ok(Some(best))
    }

    /// The prompts each active beam proposes: its own prompt on a skip, the optimizer's
    /// candidates otherwise (its own prompt again if none is usable). The bool says "kept".
    fn propose(
        &mut self,
        active: &[BeamItem],
        decisions: &[Decision],
        query_index: usize,
    ) -> Result<Vec<Vec<(String, bool)>>, Stop> {
        let query = &self.queries[query_index].text;
        let mut requests = Vec::new();
        for (item, decision) in active.iter().zip(decisions) {
            if *decision == Decision::Optimize {
                let node = &self.tree[item.node];
                let path = self.path_prompts(item.node);
                requests.push(prompts::optimizer_request(
                    &node.prompt,
                    query,
                    &self.answers[item.node],
                    &pretty4(&self.judgements[item.node].to_json()),
                    &path,
                    &self.requests,
                ));
            }
        }
        let limit = self.options.query_quote_words;
        let mut results = self.complete(requests.clone())?.into_iter();
        let mut requests = requests.into_iter();
        let mut actions: Vec<Vec<(String, bool)>> = Vec::new();
        // Beams whose every candidate was a prompt for the query: asked once more, together.
        let mut again = Vec::new();
        for (item, decision) in active.iter().zip(decisions) {
            if *decision != Decision::Optimize {
                actions.push(Vec::new());
                continue;
            }
            let request = requests.next().expect("one request per optimized beam");
            let label = format!("node {} ", item.node);
            let written_from = WrittenFrom {
                query,
                answer: &self.answers[item.node],
            };
            let (prompts, follow_up) = engine::usable_prompts(
                self.host,
                &request,
                results.next(),
                Some(written_from),
                limit,
                &label,
            );
            if let Some(request) = follow_up {
                again.push((actions.len(), item.node, request));
            }
            actions.push(prompts.into_iter().map(|p| (p, false)).collect());
        }
        if !again.is_empty() {
            self.log(
                LogLevel::Info,
                format!(
                    "{} beam(s) got only prompts for the query; asking the optimizer again",
                    again.len()
                ),
            );
            let requests = again.iter().map(|(_, _, r)| r.clone()).collect();
            let answers = self.complete(requests)?;
            for ((at, node, request), answer) in again.iter().zip(answers) {
                let label = format!("node {node} asked again: ");
                let written_from = WrittenFrom {
                    query,
                    answer: &self.answers[*node],
                };
                let (prompts, _) = engine::usable_prompts(
                    self.host,
                    request,
                    Some(answer),
                    Some(written_from),
                    limit,
                    &label,
                );
                actions[*at] = prompts.into_iter().map(|p| (p, false)).collect();
            }
        }
        for ((item, decision), prompts) in active.iter().zip(decisions).zip(&mut actions) {
            if prompts.is_empty() {
                if *decision == Decision::Optimize {
                    self.log(
                        LogLevel::Warn,
                        format!(
                            "node {}: no usable candidate; keeping its prompt",
                            item.node
                        ),
                    );
                }
                prompts.push((self.tree[item.node].prompt.clone(), true));
            } else if self.options.reward == Reward::Pairwise {
                // The parent's prompt answers the next query too: the baseline its candidates
                // are compared with, and a child that survives if none beats it.
                prompts.insert(0, (self.tree[item.node].prompt.clone(), true));
            }
        }
        Ok(actions)
    }

    /// The prompts from the root to `node`.
    fn path_prompts(&self, node: usize) -> Vec<String> {
        self.path(node)
            .iter()
            .map(|&i| self.tree[i as usize].prompt.clone())
            .collect()
    }

    /// Node ids from the root to `node`.
    fn path(&self, node: usize) -> Vec<u32> {
        path_to(&self.tree, node)
    }

    /// Sends one phase's requests (one call, or one call each in sequential mode). Answers are
    /// padded or cut to the number of requests; the phase's answers as a whole may stop the
    /// search ([`Stop::check`]).
    fn complete(
        &mut self,
        requests: Vec<Request>,
    ) -> Result<Vec<Result<Completion, LlmError>>, Stop> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = requests.len();
        let roles: Vec<Role> = requests.iter().map(|r| r.role).collect();
        let mut results = Vec::with_capacity(wanted);
        if self.options.sequential {
            for request in requests {
                self.stats.count(&request);
                self.stats.complete_calls += 1;
                let answer = self.host.complete(vec![request]).into_iter().next();
                let answer = answer.unwrap_or_else(|| {
                    Err(LlmError::Unavailable("the host returned no answer".into()))
                });
                let exhausted = answer == Err(LlmError::BudgetExhausted);
                results.push(answer);
                if exhausted {
                    break;
                }
            }
        } else {
            requests.iter().for_each(|r| self.stats.count(r));
            self.stats.complete_calls += 1;
            results = self.host.complete(requests);
        }
        // Sequential mode sends nothing after a spent budget; only a host's own shortfall is news.
        if results.len() != wanted && !results.contains(&Err(LlmError::BudgetExhausted)) {
            self.log(
                LogLevel::Warn,
                format!("the host answered {} of {wanted} requests", results.len()),
            );
        }
        engine::settle(&roles, results)
    }

    /// Embeds the example pool and every query the search may reach, once; falls back to the
    /// first `k` examples (logged once) when embedding is off, impossible or unavailable.
    fn setup_retrieval(&mut self) -> Result<(), Stop> {
        if !self.options.ret_icl || self.examples.is_empty() {
            return Ok(());
        }
        let reachable = self.queries.len().min(
            (self.options.depth as usize).saturating_add(self.options.max_depth_increase as usize),
        );
        let mut texts: Vec<String> = self.examples.iter().map(|e| e.query.clone()).collect();
        texts.extend(self.queries[..reachable].iter().map(|q| q.text.clone()));
        self.stats.embed_calls += 1;
        match self.host.embed(texts) {
            Ok(mut vectors) if vectors.len() == self.examples.len() + reachable => {
                let queries = vectors.split_off(self.examples.len());
                self.retrieval = Retrieval::Vectors(vectors, queries);
            }
            Ok(vectors) => self.log(
                LogLevel::Warn,
                format!(
                    "embedding returned {} vectors for {} texts; using the first {} in-context examples",
                    vectors.len(),
                    self.examples.len() + reachable,
                    self.options.k
                ),
            ),
            Err(LlmError::BudgetExhausted) => return Err(Stop::BudgetExhausted),
            Err(e) => self.log(
                LogLevel::Warn,
                format!(
                    "no embeddings ({e}); using the first {} in-context examples",
                    self.options.k
                ),
            ),
        }
        Ok(())
    }

    /// The in-context examples for a query: the `k` most similar, or the first `k` of the pool
    /// when there are no vectors for it.
    fn icl_for(&self, query_index: usize) -> Vec<usize> {
        let k = self.options.k as usize;
        let retrieved = match &self.retrieval {
            Retrieval::Vectors(examples, queries) => {
                queries.get(query_index).map(|q| icl::top_k(q, examples, k))
            }
            Retrieval::Fixed => None,
        };
        retrieved.unwrap_or_else(|| (0..self.examples.len().min(k)).collect())
    }

    /// Aspect-selection requests for the given queries (the one scored now first) that neither
    /// this run nor the cache has answered yet (cache hits are resolved here, at no cost); an
    /// upcoming query whose selection failed waits until it is scored. Returns the query texts
    /// asked.
    fn metrics_requests(&mut self, indices: &[usize]) -> (Vec<String>, Vec<Request>) {
        let mut texts: Vec<String> = Vec::new();
        for (position, &i) in indices.iter().enumerate() {
            let text = self.queries[i].text.clone();
            let waits = position > 0 && self.retry_when_scored.contains(&text);
            if waits || self.metrics.contains_key(&text) || texts.contains(&text) {
                continue;
            }
            if let Some(cached) = self.options.metrics_cache.get(&text) {
                match parse::parse_cached_selection(cached, prompts::MAX_ASPECTS) {
                    Ok(sel) => {
                        self.metrics.insert(text, Selection::parsed(sel, "cache"));
                        continue;
                    }
                    Err(e) => self.log(
                        LogLevel::Warn,
                        format!(
                            "metrics cache entry for query {} unusable ({e}); asking again",
                            self.queries[i].id
                        ),
                    ),
                }
            }
            texts.push(text);
        }
        let requests = texts
            .iter()
            .map(|t| prompts::aspect_selection_request(t, &self.requests))
            .collect();
        (texts, requests)
    }

    /// Keeps the selections made for `texts`. A failed one falls back to the general-quality
    /// aspects only for `scored`, the query scored now; another is asked again when scored.
    fn absorb_metrics(
        &mut self,
        texts: Vec<String>,
        results: Vec<Result<Completion, LlmError>>,
        scored: &str,
    ) {
        for (text, result) in texts.into_iter().zip(results) {
            let metrics = match parse_selection_answer(result, prompts::MAX_ASPECTS) {
                Ok((object, sel)) => {
                    for p in &sel.problems {
                        self.log(LogLevel::Warn, format!("aspect selection: {p}"));
                    }
                    self.new_cache.insert(text.clone(), Value::Object(object));
                    Selection::parsed(sel, "model")
                }
                Err(e) if text != scored => {
                    self.log(
                        LogLevel::Warn,
                        format!(
                            "aspect selection for an upcoming query unusable ({e}); asking again \
                             when it is scored"
                        ),
                    );
                    self.retry_when_scored.insert(text);
                    continue;
                }
                Err(e) => Selection::fallback(self.host, &e),
            };
            self.metrics.insert(text, metrics);
        }
    }

    /// Answers and judges a set of new nodes on one query, then adds them to the tree
    /// (reporting happens once their path scores are known). Returns their indices.
    fn score_level(
        &mut self,
        children: Vec<Child>,
        query_index: usize,
    ) -> Result<Vec<usize>, Stop> {
        let query = self.queries[query_index].clone();
        // Aspect selections: batched mode fetches every query the current depth limit reaches
        // (in the same call as the base answers), this level's first; sequential mode only this
        // level's query.
        let ahead: Vec<usize> = if self.options.sequential {
            vec![query_index]
        } else {
            (query_index
                ..self
                    .queries
                    .len()
                    .min(self.depth.current() as usize)
                    .max(query_index + 1))
                .collect()
        };
        let (metric_texts, metric_requests) = self.metrics_requests(&ahead);
        let icl = self.icl_for(query_index);
        let chosen: Vec<&Example> = icl.iter().map(|&i| &self.examples[i]).collect();
        let base_requests: Vec<Request> = children
            .iter()
            .map(|c| icl::base_request(&c.prompt, &chosen, &query.text, &self.requests))
            .collect();
        let answers = if self.options.sequential {
            let metric_results = self.complete(metric_requests)?;
            self.absorb_metrics(metric_texts, metric_results, &query.text);
            self.complete(base_requests)?
        } else {
            let n_metrics = metric_requests.len();
            let mut results =
                self.complete(metric_requests.into_iter().chain(base_requests).collect())?;
            let answers = results.split_off(n_metrics);
            self.absorb_metrics(metric_texts, results, &query.text);
            answers
        };
        let metrics = self
            .metrics
            .get(&query.text)
            .cloned()
            .unwrap_or_else(|| Selection {
                aspects: aspects::fallback(),
                reasoning: String::new(),
                source: "fallback",
            });

        // Judge every answer that exists (`judge_repeats` times each).
        let mut texts: Vec<Result<String, String>> = Vec::new();
        let mut judge_requests = Vec::new();
        for answer in answers {
            let text = match answer {
                Ok(c) => c
                    .choices
                    .first()
                    .map(|a| icl::clean_answer(a))
                    .ok_or_else(|| "the base model returned no choice".to_string()),
                Err(e) => Err(format!("the base model failed: {e}")),
            };
            if let Ok(answer) = &text {
                judge_requests.extend(prompts::judge_requests(
                    &query.text,
                    answer,
                    &metrics.aspects,
                    &metrics.reasoning,
                    &self.requests,
                ));
            }
            texts.push(text);
        }
        self.judgement_count.ask(texts.len());
        let mut verdicts = self.complete(judge_requests)?.into_iter();
        let mut scored = Vec::new();
        for text in texts {
            let (answer, judgement) = match text {
                Ok(answer) => {
                    let judgement = engine::read_verdicts(
                        &mut verdicts,
                        &metrics.aspects,
                        &self.requests,
                        &mut self.spread,
                    );
                    (answer, judgement)
                }
                Err(why) => (String::new(), Judgement::unusable(why)),
            };
            self.judgement_count.received(&judgement);
            scored.push(Scored {
                answer,
                judgement,
                icl: icl.clone(),
                comparison: None,
            });
        }
        if self.options.reward == Reward::Pairwise {
            self.compare_with_parents(&children, &mut scored, &query.text, &metrics)?;
        }

        let mut ids = Vec::new();
        let first = self.tree.len();
        for (child, s) in children.into_iter().zip(scored) {
            ids.push(self.add_node(child, s, query_index, &metrics, first));
        }
        Ok(ids)
    }

    /// `reward: pairwise`: each candidate's answer compared with the answer of its kept sibling
    /// (its parent's prompt on the same query), in both orders, in one batch, on the aspects
    /// chosen for the query.
    fn compare_with_parents(
        &mut self,
        children: &[Child],
        scored: &mut [Scored],
        query: &str,
        metrics: &Selection,
    ) -> Result<(), Stop> {
        let weigh = pairwise::aspects_weighing(&metrics.aspects);
        let mut compared = Vec::new();
        let mut requests = Vec::new();
        for (i, child) in children.iter().enumerate() {
            let baseline = children
                .iter()
                .position(|c| c.kept && c.parent == child.parent);
            let Some(baseline) = baseline.filter(|_| !child.kept) else {
                continue;
            };
            let (ours, theirs) = (&scored[i], &scored[baseline]);
            if ours.answer.is_empty() || theirs.answer.is_empty() {
                continue;
            }
            requests.extend(pairwise::requests(
                query,
                &theirs.answer,
                &ours.answer,
                &weigh,
                &self.requests,
            ));
            compared.push((i, baseline));
        }
        self.judgement_count.ask(requests.len());
        let mut verdicts = self.complete(requests)?.into_iter();
        for (i, baseline) in compared {
            let pair = pairwise::read_pair(&mut verdicts);
            self.judgement_count.usable += pair.usable_verdicts() as u32;
            self.comparisons.count(&pair);
            for problem in [&pair.in_order, &pair.swapped]
                .into_iter()
                .filter_map(|v| v.as_ref().err())
            {
                self.log(
                    LogLevel::Warn,
                    format!("comparison of a candidate with its parent's prompt: {problem}"),
                );
            }
            scored[i].comparison = Some((baseline, pair));
        }
        Ok(())
    }

    /// A child's reward: its answer's mean aspect score, or with `reward: pairwise` its points
    /// against its parent's prompt (a kept prompt, or a comparison that could not be judged,
    /// scores as a tie); 0 without an answer.
    fn reward_of(&self, child: &Child, s: &Scored) -> f64 {
        if self.options.reward == Reward::Absolute || child.parent.is_none() {
            return reward::reward(&s.judgement);
        }
        if s.answer.is_empty() {
            return 0.0;
        }
        s.comparison
            .as_ref()
            .and_then(|(_, pair)| pair.second_points())
            .unwrap_or(0.5)
    }

    fn add_node(
        &mut self,
        child: Child,
        s: Scored,
        query_index: usize,
        metrics: &Selection,
        level_start: usize,
    ) -> usize {
        let id = self.tree.len();
        let depth = child.parent.map(|p| self.tree[p].depth + 1).unwrap_or(0);
        let reward = self.reward_of(&child, &s);
        if !s.judgement.problems.is_empty() {
            let level = if s.judgement.is_usable() {
                LogLevel::Info
            } else {
                LogLevel::Warn
            };
            self.log(
                level,
                format!("node {id} judgement: {}", s.judgement.problems.join("; ")),
            );
        }
        let skip = match self.decide_on(&s.judgement) {
            Decision::Skip(reason) => Value::from(reason.name()),
            Decision::Optimize => Value::Null,
        };
        let query = &self.queries[query_index];
        let aspects: Vec<Value> = s
            .judgement
            .scores
            .iter()
            .map(|a| json!({"name": a.aspect.name, "score": a.score, "rationale": a.rationale}))
            .collect();
        let mut details = json!({
            "query_index": query_index,
            "query_id": query.id,
            "query": query.text,
            "answer": s.answer,
            "origin": if child.parent.is_none() { "initial" } else if child.kept { "kept" } else { "optimized" },
            "aspects": aspects,
            "metrics_reasoning": metrics.reasoning,
            "metrics_source": metrics.source,
            "judge_problems": s.judgement.problems,
            "skip": skip,
            "icl_examples": s.icl.iter().map(|&i| self.examples[i].query.clone()).collect::<Vec<_>>(),
        });
        if self.options.reward == Reward::Pairwise {
            details["judge_mean"] = Value::from(reward::reward(&s.judgement));
            if let Some((baseline, pair)) = &s.comparison {
                let mut compared = pair.to_json();
                compared["against"] = Value::from(level_start + baseline);
                details["pairwise"] = compared;
            }
        }
        self.tree.push(TreeNode {
            id: id as u32,
            parent: child.parent.map(|p| p as u32),
            depth,
            prompt: child.prompt,
            reward,
            path_score: 0.0,
            details,
        });
        self.answers.push(s.answer);
        self.judgements.push(s.judgement);
        if child.parent.is_none() {
            self.report(id);
        }
        id
    }

    fn report(&mut self, id: usize) {
        let n = &self.tree[id];
        let mut details = n.details.clone();
        details["path_score"] = Value::from(n.path_score);
        let node = Node {
            id: n.id,
            parent: n.parent,
            depth: n.depth,
            prompt: n.prompt.clone(),
            reward: n.reward,
            details: details.to_string(),
        };
        self.host.record_node(node);
    }

    fn finish(mut self, stop: Option<Stop>) -> SearchResult {
        let mut candidates = std::mem::take(&mut self.terminal);
        if stop.is_some() {
            for item in std::mem::take(&mut self.beam) {
                if !candidates.iter().any(|c| c.node == item.node) {
                    candidates.push(item);
                }
            }
        }
        rank(&mut candidates);
        let (best_prompt, best_score, best_path) = match candidates.first() {
            Some(best) => (
                Some(self.tree[best.node].prompt.clone()),
                (!best.rewards.is_empty()).then_some(best.score),
                self.path(best.node),
            ),
            None => (
                Some(self.options.initial_system_prompt.clone()),
                None,
                Vec::new(),
            ),
        };
        if let Some(score) = best_score {
            self.log(
                LogLevel::Info,
                format!("best path {best_path:?} with score {score:.3}"),
            );
        }
        if let Some(validator) = &self.validator {
            self.judgement_count.add(validator.judgements());
            self.spread.absorb(validator.spread());
        }
        SearchResult {
            best_prompt,
            best_score,
            best_path,
            tree: self.tree,
            new_metrics_cache: self.new_cache,
            final_depth: self.depth.current(),
            stop,
            patience: self.patience,
            judgements: self.judgement_count,
            spread: self.spread,
            judge_repeats: self.requests.judge_repeats,
            level_validations: self.level_validations,
            comparisons: (self.options.reward == Reward::Pairwise).then_some(self.comparisons),
            stats: self.stats,
        }
    }
}

#[cfg(test)]
mod tests;
