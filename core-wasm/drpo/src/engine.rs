//! The DRPO scoring engine: what a prompt is worth, apart from how a strategy searches the
//! space of prompts. Every strategy (beam, greedy, mcts, icl, eval) sends its requests and reads
//! its answers through this module, so a change to how DRPO scores reaches all of them at once.
//!
//! - [`RequestSettings`]: the seed, sampling and token limits the request builders of
//!   [`crate::prompts`] and [`crate::icl`] take;
//! - [`complete_batch`]: one batched call, stopped by the library's rule ([`Stop::check`]):
//!   a spent budget, or a role rejected on every request;
//! - [`Selection`]: a query's aspects, parsed from the metrics model's answer, from the metrics
//!   cache, or the general-quality fallback when the answer is unusable;
//! - [`Scorer`]: the reward of a candidate prompt (base answer, aspect selection once per query,
//!   judgement, mean score) and the optimizer's proposals, in as few batched calls as possible,
//!   with the node details the viewer shows.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::aspects::{self, Aspect, CATALOGUE};
use crate::icl;
pub use crate::outcome::{JudgeSpread, Judgements, Stop};
use crate::parse::{self, AspectSelection, Judgement};
use crate::prompts;
use crate::reward;
use crate::types::{
    Completion, Example, Host, LlmError, LogLevel, Query, Request, Role, RoleEstimate,
};

/// What DRPO's requests are sent with. Strategies fill it from their options; the defaults are
/// the published ones.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSettings {
    /// Seed of every request.
    pub seed: u64,
    /// The optimizer's sampling temperature.
    pub temperature: f64,
    /// The optimizer's nucleus mass.
    pub optimizer_top_p: f64,
    /// Candidate prompts per optimizer request (its `n`).
    pub n_actions: u32,
    /// Token limit of a base-model answer.
    pub base_max_tokens: u32,
    /// Token limit of an aspect selection.
    pub metrics_max_tokens: u32,
    /// Token limit of a judgement.
    pub judge_max_tokens: u32,
    /// The judge's sampling temperature (published: 0, greedy). Above 0, judgements drawn with
    /// different seeds differ, which measures how much the judge's verdicts owe to chance.
    pub judge_temperature: f64,
    /// Judgements asked per answer, each with its own seed; the reward uses their mean
    /// (published: 1). More than one needs a `judge_temperature` above 0.
    pub judge_repeats: u32,
    /// Each aspect judged by a request of its own, the requests of one answer sent together
    /// (not published: one request judges every aspect). A small judge writing one short
    /// verdict at a time does not run out of room or copy one aspect's score into the next, and
    /// a batch decodes the aspects side by side.
    pub judge_per_aspect: bool,
    /// An optimizer candidate that repeats this many consecutive words of the query it was
    /// written from, or paraphrases it with this many of its longer words, or repeats twice this
    /// many of the answer it was shown, is dropped ([`parse::check_not_quoting`],
    /// [`parse::check_not_copying_answer`]); 0 keeps every candidate, as published.
    pub query_quote_words: u32,
    /// Token limit of each optimizer candidate.
    pub optimizer_max_tokens: u32,
    /// In-context examples the base model sees.
    pub k: u32,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            seed: 0,
            temperature: 0.2,
            optimizer_top_p: 0.95,
            n_actions: 3,
            base_max_tokens: 2048,
            metrics_max_tokens: 2048,
            judge_max_tokens: 2048,
            judge_temperature: 0.0,
            judge_repeats: 1,
            judge_per_aspect: false,
            query_quote_words: 6,
            optimizer_max_tokens: 2048,
            k: 2,
        }
    }
}

impl RequestSettings {
    /// The judge requests one answer takes, fewest and most: `judge_repeats` times the
    /// judgement's parts (one request, or with `judge_per_aspect` one per aspect, from one to
    /// [`prompts::MAX_ASPECTS`]).
    pub fn judge_requests_per_answer(&self) -> (u64, u64) {
        let repeats = u64::from(self.judge_repeats.max(1));
        if self.judge_per_aspect {
            (repeats, repeats * prompts::MAX_ASPECTS as u64)
        } else {
            (repeats, repeats)
        }
    }

    /// The requests (fewest, most) that `role`'s `calls` take, where a judge's call is one
    /// judgement of one answer ([`RequestSettings::judge_requests_per_answer`]) and every other
    /// role's one request. Saturating: options as large as a user may give must not wrap to a
    /// small projection.
    pub fn requests_of(&self, role: Role, (min, max): (u64, u64)) -> (u64, u64) {
        let (times_min, times_max) = match role {
            Role::Judge => self.judge_requests_per_answer(),
            _ => (1, 1),
        };
        (min.saturating_mul(times_min), max.saturating_mul(times_max))
    }
}

/// The aspects chosen for one query, and where they came from.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The aspects the judge scores.
    pub aspects: Vec<&'static Aspect>,
    /// Why they were chosen (passed on to the judge).
    pub reasoning: String,
    /// `model`, `cache` or `fallback`, for the node details.
    pub source: &'static str,
}

impl Selection {
    /// A selection parsed from the metrics model's answer (`model`) or a cache entry (`cache`).
    pub fn parsed(selection: AspectSelection, source: &'static str) -> Self {
        Selection {
            aspects: selection.aspects,
            reasoning: selection.reasoning,
            source,
        }
    }

    /// The general-quality aspects, used when a query's selection is unusable; logs why.
    pub fn fallback<H: Host>(host: &mut H, why: &str) -> Self {
        host.log(
            LogLevel::Warn,
            format!("aspect selection unusable ({why}); using the general-quality aspects"),
        );
        Selection {
            aspects: aspects::fallback(),
            reasoning: "The aspect selection failed, so the general-quality aspects are used."
                .to_owned(),
            source: "fallback",
        }
    }
}

/// Parses the metrics model's answer to an aspect-selection request (at most `max` aspects):
/// the object, as the metrics cache keeps it, and the selection; or why it is unusable.
pub fn parse_selection_answer(
    result: Result<Completion, LlmError>,
    max: usize,
) -> Result<(Map<String, Value>, AspectSelection), String> {
    match result {
        Ok(c) => match c.choices.first() {
            Some(answer) => parse::extract_object(answer).and_then(|object| {
                parse::parse_aspect_selection_at_most(&object, max).map(|sel| (object, sel))
            }),
            None => Err("empty completion".to_owned()),
        },
        Err(e) => Err(format!("the call failed: {e}")),
    }
}

/// One candidate prompt judged on one query.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The candidate system prompt.
    pub prompt: String,
    /// The query it was judged on.
    pub query: Query,
    /// The base model's cleaned answer (empty when the base model failed).
    pub answer: String,
    /// The judgement; unusable ones have no scores and say why in `problems`.
    pub judgement: Judgement,
    /// The mean aspect score in [1, 5]; 0 when the judgement is unusable.
    pub reward: f64,
    selection: Selection,
}

impl Evaluation {
    /// The node details the viewer shows: the query, the answer, each aspect's score and
    /// rationale, and why the aspects were chosen (the same keys `beam.wasm` records).
    pub fn details(&self) -> Value {
        let aspects: Vec<Value> = self
            .judgement
            .scores
            .iter()
            .map(|a| json!({"name": a.aspect.name, "score": a.score, "rationale": a.rationale}))
            .collect();
        json!({
            "query_id": self.query.id,
            "query": self.query.text,
            "answer": self.answer,
            "aspects": aspects,
            "metrics_reasoning": self.selection.reasoning,
            "metrics_source": self.selection.source,
            "judge_problems": self.judgement.problems,
        })
    }

    /// The names of the aspects chosen for the query (scored or not).
    pub fn aspects(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.selection.aspects.iter().map(|a| a.name)
    }

    /// The judgement as the optimizer reads it: `{aspect: {rationale, score}}`, indented.
    pub fn feedback(&self) -> String {
        serde_json::to_string_pretty(&self.judgement.to_json()).unwrap_or_default()
    }
}

/// Scores candidates and asks for new ones, remembering each query's aspect selection.
pub struct Scorer {
    options: RequestSettings,
    examples: Vec<Example>,
    /// The examples shown for particular queries (retrieved by similarity), by query text;
    /// other queries are shown the first `k` of `examples`.
    examples_for: BTreeMap<String, Vec<Example>>,
    selections: BTreeMap<String, Selection>,
    /// The metrics model's usable answers, in the metrics cache's shape, by query text.
    selections_made: BTreeMap<String, Value>,
    judgements: Judgements,
    spread: JudgeSpread,
}

impl Scorer {
    /// A scorer whose requests follow `options` (seed, token limits, the optimizer's sampling)
    /// and show the base model the first `options.k` of `examples` in context.
    pub fn new(options: RequestSettings, examples: Vec<Example>) -> Self {
        Scorer {
            options,
            examples,
            examples_for: BTreeMap::new(),
            selections: BTreeMap::new(),
            selections_made: BTreeMap::new(),
            judgements: Judgements::default(),
            spread: JudgeSpread::default(),
        }
    }

    /// Shows the base model `examples` (instead of the first `k`) whenever it answers `query`.
    pub fn show_examples_for(&mut self, query: &str, examples: Vec<Example>) {
        self.examples_for.insert(query.to_owned(), examples);
    }

    /// Uses `selection` for `query` instead of asking the metrics model (a metrics-cache hit).
    pub fn know_selection(&mut self, query: &str, selection: Selection) {
        self.selections.insert(query.to_owned(), selection);
    }

    /// The aspect selections the metrics model made for this scorer, in the metrics cache's
    /// shape (`{query_analysis, aspects_selection}`), by query text.
    pub fn selections_made(&self) -> &BTreeMap<String, Value> {
        &self.selections_made
    }

    /// Judges each `(prompt, query)` pair: at most two `complete` calls for the whole list.
    /// Failures of single requests become unusable judgements (reward 0, the reason in the
    /// details); only a spent budget stops.
    pub fn evaluate<H: Host>(
        &mut self,
        host: &mut H,
        candidates: &[(String, Query)],
    ) -> Result<Vec<Evaluation>, Stop> {
        let mut new_queries: Vec<&str> = Vec::new();
        for (_, query) in candidates {
            let text = query.text.as_str();
            if !self.selections.contains_key(text) && !new_queries.contains(&text) {
                new_queries.push(text);
            }
        }
        let first_k: Vec<&Example> = self.examples.iter().take(self.options.k as usize).collect();
        let mut batch: Vec<Request> = new_queries
            .iter()
            .map(|q| prompts::aspect_selection_request(q, &self.options))
            .collect();
        batch.extend(candidates.iter().map(|(prompt, query)| {
            let shown = match self.examples_for.get(&query.text) {
                Some(retrieved) => retrieved.iter().collect(),
                None => first_k.clone(),
            };
            icl::base_request(prompt, &shown, &query.text, &self.options)
        }));
        let mut results = complete_batch(host, batch)?;
        let answers = results.split_off(new_queries.len());
        for (text, result) in new_queries.iter().zip(results) {
            let selection = match parse_selection_answer(result, prompts::MAX_ASPECTS) {
                Ok((object, selection)) => {
                    self.selections_made
                        .insert((*text).to_owned(), Value::Object(object));
                    Selection::parsed(selection, "model")
                }
                Err(why) => Selection::fallback(host, &why),
            };
            self.selections.insert((*text).to_owned(), selection);
        }

        let mut judge_requests = Vec::new();
        let mut pending = Vec::new();
        for ((prompt, query), answer) in candidates.iter().zip(answers) {
            let selection = self.selections[&query.text].clone();
            let answer = match answer {
                Ok(c) => c
                    .choices
                    .first()
                    .map(|a| icl::clean_answer(a))
                    .ok_or_else(|| "the base model returned no choice".to_owned()),
                Err(e) => Err(format!("the base model failed: {e}")),
            };
            if let Ok(text) = &answer {
                judge_requests.extend(prompts::judge_requests(
                    &query.text,
                    text,
                    &selection.aspects,
                    &selection.reasoning,
                    &self.options,
                ));
            }
            pending.push((prompt, query, answer, selection));
        }
        self.judgements.ask(pending.len());
        let mut verdicts = complete_batch(host, judge_requests)?.into_iter();
        let mut evaluations = Vec::new();
        for (prompt, query, answer, selection) in pending {
            let (answer, judgement) = match answer {
                Ok(answer) => {
                    let judgement = read_verdicts(
                        &mut verdicts,
                        &selection.aspects,
                        &self.options,
                        &mut self.spread,
                    );
                    (answer, judgement)
                }
                Err(why) => (String::new(), Judgement::unusable(why)),
            };
            self.judgements.received(&judgement);
            if !judgement.problems.is_empty() {
                host.log(
                    LogLevel::Warn,
                    format!(
                        "judgement on query {}: {}",
                        query.id,
                        judgement.problems.join("; ")
                    ),
                );
            }
            evaluations.push(Evaluation {
                prompt: prompt.clone(),
                query: query.clone(),
                answer,
                reward: reward::reward(&judgement),
                judgement,
                selection,
            });
        }
        Ok(evaluations)
    }

    /// Asks the optimizer once for `n` improved prompts from `parent`'s answer and judgement,
    /// showing the lineage `path_prompts` (root first, `parent` last) as DRPO does. Unparsable
    /// candidates, and those that quote `parent`'s query ([`parse::check_not_quoting`]), are
    /// dropped with a warning; an empty list means none was usable.
    pub fn propose<H: Host>(
        &mut self,
        host: &mut H,
        parent: &Evaluation,
        path_prompts: &[String],
        n: u32,
    ) -> Result<Vec<String>, Stop> {
        self.propose_again(host, parent, path_prompts, n, 0)
    }

    /// [`Self::propose`] for the `attempt`-th time from the same parent, with the optimizer's
    /// seed moved on by `attempt`: the same request again would get the same answer again (a
    /// model at a fixed seed, or the response cache), so a search that asks anew after a step
    /// with no usable prompt would ask in vain. Attempt 0 is [`Self::propose`].
    pub fn propose_again<H: Host>(
        &mut self,
        host: &mut H,
        parent: &Evaluation,
        path_prompts: &[String],
        n: u32,
        attempt: u64,
    ) -> Result<Vec<String>, Stop> {
        let mut request = prompts::optimizer_request(
            &parent.prompt,
            &parent.query.text,
            &parent.answer,
            &parent.feedback(),
            path_prompts,
            &self.options,
        );
        request.sampling.n = n.max(1);
        request.sampling.seed = request.sampling.seed.wrapping_add(attempt);
        let written_from = WrittenFrom {
            query: &parent.query.text,
            answer: &parent.answer,
        };
        self.ask(host, request, Some(written_from))
    }

    /// Runs one optimizer request whose choices follow [`prompts::optimizer_schema`] and returns
    /// the usable new prompts.
    pub fn ask_for_prompts<H: Host>(
        &mut self,
        host: &mut H,
        request: Request,
    ) -> Result<Vec<String>, Stop> {
        self.ask(host, request, None)
    }

    /// Asks `request` and returns the usable prompts. When every candidate was a prompt for
    /// the query it was `written_from`, asks once more, saying what is wrong
    /// ([`prompts::general_prompt_request`]).
    fn ask<H: Host>(
        &mut self,
        host: &mut H,
        request: Request,
        written_from: Option<WrittenFrom<'_>>,
    ) -> Result<Vec<String>, Stop> {
        let limit = self.options.query_quote_words;
        let answer = complete_batch(host, vec![request.clone()])?.pop();
        let (prompts, again) = usable_prompts(host, &request, answer, written_from, limit, "");
        let Some(again) = again else {
            return Ok(prompts);
        };
        host.log(
            LogLevel::Info,
            "every candidate was a prompt for its query; asking the optimizer again".to_owned(),
        );
        let answer = complete_batch(host, vec![again.clone()])?.pop();
        Ok(usable_prompts(host, &again, answer, written_from, limit, "asked again: ").0)
    }

    /// The request options in use (seed, token limits, sampling).
    pub fn options(&self) -> &RequestSettings {
        &self.options
    }

    /// The judgements [`Scorer::evaluate`] asked for so far, and how many were usable: the
    /// outcome details' `judgements`.
    pub fn judgements(&self) -> Judgements {
        self.judgements
    }

    /// The outcome details' `judge_spread` (`null` unless the judge is asked more than once).
    pub fn judge_spread(&self) -> Value {
        self.spread.details(self.options.judge_repeats)
    }

    /// The judge's spread over the judgements asked so far, to pool with another scorer's.
    pub fn spread(&self) -> &JudgeSpread {
        &self.spread
    }
}

/// Reads the judge's answers about one answer from `verdicts`, as [`prompts::judge_requests`]
/// asked them with `settings` (each part of the judgement `judge_repeats` times), joins each
/// repeat's parts ([`Judgement::join`]) and combines the repeats into one judgement
/// ([`Judgement::combine`]), noting the spread.
pub fn read_verdicts(
    verdicts: &mut impl Iterator<Item = Result<Completion, LlmError>>,
    aspects: &[&'static Aspect],
    settings: &RequestSettings,
    spread: &mut JudgeSpread,
) -> Judgement {
    let repeats = settings.judge_repeats.max(1) as usize;
    let mut parts_by_repeat: Vec<Vec<Judgement>> = vec![Vec::new(); repeats];
    for part in prompts::judgement_parts(aspects, settings.judge_per_aspect) {
        for parts in &mut parts_by_repeat {
            parts.push(match verdicts.next() {
                Some(Ok(c)) => match c.choices.first() {
                    Some(v) => parse::parse_judgement(v, part),
                    None => Judgement::unusable("the judge returned no choice"),
                },
                Some(Err(e)) => Judgement::unusable(format!("the judge failed: {e}")),
                None => Judgement::unusable("the judge gave no answer"),
            });
        }
    }
    let judged: Vec<Judgement> = parts_by_repeat.into_iter().map(Judgement::join).collect();
    spread.observe(&judged);
    match <[Judgement; 1]>::try_from(judged) {
        Ok([one]) => one,
        Err(judged) => Judgement::combine(&judged),
    }
}

/// Adds the judge's spread (`Scorer::judge_spread`) to an outcome's details as `judge_spread`,
/// unless it is `null` (the judge was asked once).
pub fn add_judge_spread(outcome: &mut crate::types::Outcome, spread: Value) {
    if spread.is_null() {
        return;
    }
    let mut details: Value = serde_json::from_str(&outcome.details).unwrap_or(json!({}));
    if details.is_object() {
        details["judge_spread"] = spread;
        outcome.details = details.to_string();
    }
}

/// Checks the judge's settings: more than one repeat needs a judge that samples.
pub fn check_judge_repeats(repeats: u32, temperature: f64) -> Result<(), String> {
    if repeats > 1 && temperature <= 0.0 {
        return Err(format!(
            "judge_repeats {repeats} needs judge_temperature above 0: a greedy judge gives the \
             same verdict every time"
        ));
    }
    Ok(())
}

/// What an optimizer request was written from: the query, and the base model's answer to it
/// that the optimizer was shown. A candidate that quotes either is a prompt for that one query.
#[derive(Clone, Copy, Debug)]
pub struct WrittenFrom<'a> {
    /// The query.
    pub query: &'a str,
    /// The answer the optimizer was shown.
    pub answer: &'a str,
}

/// The usable prompts among the choices `answer` gave to `request` (each with its analysis and
/// thought logged at debug level; each dropped one warned about, `label` starting every line),
/// and, when none was usable and one was a prompt for the query it was `written_from`, the
/// request to ask once more ([`prompts::general_prompt_request`]).
pub fn usable_prompts<H: Host>(
    host: &mut H,
    request: &Request,
    answer: Option<Result<Completion, LlmError>>,
    written_from: Option<WrittenFrom<'_>>,
    limit: u32,
    label: &str,
) -> (Vec<String>, Option<Request>) {
    let mut prompts = Vec::new();
    let mut about_the_query = None;
    match answer {
        Some(Ok(completion)) => {
            for (i, choice) in completion.choices.iter().enumerate() {
                let dropped = match parse::parse_proposal(choice) {
                    Err(e) => e,
                    Ok(p) => match written_from.map(|from| {
                        parse::check_not_quoting(&p.new_system_prompt, from.query, limit).and(
                            parse::check_not_copying_answer(
                                &p.new_system_prompt,
                                from.answer,
                                limit,
                            ),
                        )
                    }) {
                        Some(Err(why)) => {
                            about_the_query.get_or_insert_with(|| choice.clone());
                            why
                        }
                        _ => {
                            host.log(
                                LogLevel::Debug,
                                format!(
                                    "{label}candidate {i}: analysis: {} | thought: {}",
                                    p.analysis, p.thought
                                ),
                            );
                            prompts.push(p.new_system_prompt);
                            continue;
                        }
                    },
                };
                host.log(
                    LogLevel::Warn,
                    format!("{label}candidate {i} dropped: {dropped}"),
                );
            }
        }
        Some(Err(e)) => host.log(LogLevel::Warn, format!("{label}the optimizer failed: {e}")),
        None => host.log(
            LogLevel::Warn,
            format!("{label}the optimizer gave no answer"),
        ),
    }
    let again = match about_the_query {
        Some(choice) if prompts.is_empty() => prompts::general_prompt_request(request, &choice),
        _ => None,
    };
    (prompts, again)
}

/// Sends one batch as every DRPO strategy does: a short answer is padded with failures, and the
/// answers as a whole may stop the run ([`Stop::check`]).
pub fn complete_batch<H: Host>(
    host: &mut H,
    batch: Vec<Request>,
) -> Result<Vec<Result<Completion, LlmError>>, Stop> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let roles: Vec<Role> = batch.iter().map(|r| r.role).collect();
    let results = host.complete(batch);
    settle(&roles, results)
}

/// The answers to requests of `roles` as a strategy reads them: one per request (a host's
/// shortfall padded with failures, so answers stay matched to their requests), or the [`Stop`]
/// they call for.
pub fn settle(
    roles: &[Role],
    mut results: Vec<Result<Completion, LlmError>>,
) -> Result<Vec<Result<Completion, LlmError>>, Stop> {
    results.resize_with(roles.len(), || {
        Err(LlmError::Unavailable("no answer from the host".into()))
    });
    match Stop::check(roles, &results) {
        Some(stop) => Err(stop),
        None => Ok(results),
    }
}

/// Characters per token, the usual rule of thumb for English text.
const CHARS_PER_TOKEN: u64 = 4;
/// A typical training query or example answer, in characters.
const TYPICAL_TEXT_CHARS: u64 = 600;

fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(CHARS_PER_TOKEN)
}

/// The size of one request of each role, in [`Role::ALL`] order, for a strategy's projection,
/// which fills in how many calls it makes (here 0). Rough: prompts are counted at four
/// characters per token, and a query or an example answer is taken to be of typical length.
/// `system_prompt` is the prompt a search starts from; `lineage` the length of the longest path
/// whose prompts the optimizer is shown (it shows at most [`prompts::LINEAGE_WINDOW`]).
pub fn request_sizes(
    settings: &RequestSettings,
    system_prompt: &str,
    lineage: usize,
) -> Vec<RoleEstimate> {
    let examples = settings.k as u64 * TYPICAL_TEXT_CHARS;
    let base_prompt = tokens(system_prompt.len())
        + examples / CHARS_PER_TOKEN
        + 2 * TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN;
    let metrics_prompt =
        tokens(prompts::aspect_selection_prompt("").len()) + TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN;
    let judged_together = if settings.judge_per_aspect { 1 } else { 6 };
    let some_aspects: Vec<_> = CATALOGUE.iter().take(judged_together).collect();
    let judge_prompt = tokens(prompts::judge_prompt("", "", &some_aspects, "").len())
        + TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN
        + settings.base_max_tokens as u64;
    let lineage: Vec<String> = vec![system_prompt.to_owned(); lineage];
    let optimizer_prompt = tokens(prompts::optimizer_prompt("", "", "", "", &lineage).len())
        + TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN
        + settings.base_max_tokens as u64
        + settings.judge_max_tokens as u64;
    let size = |role, prompt_tokens_per_call, max_completion_tokens_per_call| RoleEstimate {
        role,
        min_calls: 0,
        max_calls: 0,
        prompt_tokens_per_call,
        max_completion_tokens_per_call,
    };
    vec![
        size(Role::Base, base_prompt, settings.base_max_tokens as u64),
        size(
            Role::Metrics,
            metrics_prompt,
            settings.metrics_max_tokens as u64,
        ),
        size(Role::Judge, judge_prompt, settings.judge_max_tokens as u64),
        size(
            Role::Optimizer,
            optimizer_prompt,
            settings.optimizer_max_tokens as u64 * settings.n_actions.max(1) as u64,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ScriptedHost, queries};
    use crate::types::Prompt;

    fn examples(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                query: format!("example query {i}?"),
                answer: format!("example answer {i}"),
            })
            .collect()
    }

    #[test]
    fn a_role_rejected_on_every_request_stops_the_scorer() {
        let candidates: Vec<(String, Query)> = queries(2)
            .into_iter()
            .map(|q| ("P".to_owned(), q))
            .collect();
        for role in [Role::Base, Role::Judge, Role::Metrics] {
            let mut host = ScriptedHost::new(|_| 3, |_, _| String::new());
            host.reject = Some((role, "no such model".into()));
            let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
            let stopped = scorer.evaluate(&mut host, &candidates).unwrap_err();
            assert_eq!(
                stopped,
                Stop::RoleFailed {
                    role,
                    error: "no such model".into()
                }
            );
            let asked = if role == Role::Judge { 2 } else { 0 };
            assert_eq!(
                scorer.judgements(),
                Judgements { asked, usable: 0 },
                "{role:?}"
            );
        }
        let mut host = ScriptedHost::new(|_| 3, |_, _| String::new());
        host.reject = Some((Role::Optimizer, "no such model".into()));
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let judged = scorer.evaluate(&mut host, &candidates).unwrap();
        assert_eq!(
            scorer.judgements(),
            Judgements {
                asked: 2,
                usable: 2
            }
        );
        let stopped = scorer.propose(&mut host, &judged[0], &[], 3).unwrap_err();
        assert_eq!(
            Stop::details(Some(&stopped)),
            serde_json::json!({"kind": "role-failed", "role": "optimizer", "error": "no such model"})
        );
    }

    /// When every candidate is a prompt for its query, the optimizer is asked once more, shown
    /// its answer and what is wrong with it; a general prompt then is used. Candidates that fail
    /// only to parse are not asked about again.
    #[test]
    fn an_optimizer_that_wrote_only_prompts_for_the_query_is_asked_again() {
        let query = queries(1).remove(0);
        let candidates = vec![("P".to_owned(), query.clone())];
        let quoted = query.text.clone();
        let mut host = ScriptedHost::new(
            |_| 3,
            move |conversation, _| {
                if conversation.contains("That new_system_prompt is written for the one query") {
                    "Answer every request plainly.".to_owned()
                } else {
                    format!("You answer this: {quoted}")
                }
            },
        );
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let judged = scorer.evaluate(&mut host, &candidates).unwrap();
        let prompts = scorer.propose(&mut host, &judged[0], &[], 2).unwrap();
        assert_eq!(prompts, ["Answer every request plainly."; 2]);
        let optimizer: Vec<&Request> = host
            .requests
            .iter()
            .filter(|r| r.role == Role::Optimizer)
            .collect();
        assert_eq!(optimizer.len(), 2);
        let Prompt::Chat(again) = &optimizer[1].prompt else {
            panic!("a chat")
        };
        let roles: Vec<&str> = again.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert!(again[1].content.contains("You answer this"), "{again:?}");
        assert!(
            again[2].content.contains("it repeats the query"),
            "{again:?}"
        );

        // Unparsable candidates are dropped without a second request.
        let mut host = ScriptedHost::new(|_| 3, |_, _| String::new());
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let judged = scorer.evaluate(&mut host, &candidates).unwrap();
        assert!(
            scorer
                .propose(&mut host, &judged[0], &[], 2)
                .unwrap()
                .is_empty()
        );
        assert_eq!(host.requests_for(Role::Optimizer), 1);
    }

    #[test]
    fn repeated_judgements_are_averaged_and_their_spread_reported() {
        // The judge's answers cycle 3, 4, 5 (each repeat is a request of its own seed).
        let mut next = 2u8;
        let mut host = ScriptedHost::new(
            move |_| {
                next = if next == 5 { 3 } else { next + 1 };
                next
            },
            |_, _| String::new(),
        );
        let options = RequestSettings {
            judge_repeats: 3,
            judge_temperature: 0.7,
            seed: 10,
            ..RequestSettings::default()
        };
        let mut scorer = Scorer::new(options, Vec::new());
        let candidates: Vec<(String, Query)> = queries(2)
            .into_iter()
            .map(|q| ("P".to_owned(), q))
            .collect();
        let judged = scorer.evaluate(&mut host, &candidates).unwrap();
        let seeds: Vec<u64> = host
            .requests
            .iter()
            .filter(|r| r.role == Role::Judge)
            .map(|r| r.sampling.seed)
            .collect();
        assert_eq!(seeds, [10, 11, 12, 10, 11, 12]);
        for evaluation in &judged {
            assert_eq!(evaluation.reward, 4.0, "the mean of 3, 4 and 5");
            assert!(evaluation.judgement.scores.iter().all(|s| s.score == 4));
        }
        assert_eq!(
            scorer.judgements(),
            Judgements {
                asked: 2,
                usable: 2
            }
        );
        let spread = scorer.judge_spread();
        assert_eq!(spread["repeats"], 3);
        assert_eq!(spread["agreement"], 0.0);
        let std = spread["aspects"]["Helpfulness"]["mean_std"]
            .as_f64()
            .unwrap();
        assert!((std - (2.0f64 / 3.0).sqrt()).abs() < 1e-12, "{spread}");
        assert_eq!(
            Scorer::new(RequestSettings::default(), Vec::new()).judge_spread(),
            Value::Null
        );
        assert!(
            check_judge_repeats(3, 0.0)
                .unwrap_err()
                .contains("judge_temperature")
        );
        assert!(check_judge_repeats(3, 0.7).is_ok() && check_judge_repeats(1, 0.0).is_ok());
    }

    #[test]
    fn the_base_model_sees_the_first_k_examples() {
        for (k, first) in [(1, vec![0]), (3, vec![0, 1, 2])] {
            let mut host = ScriptedHost::new(|_| 3, |_, _| String::new());
            let options = RequestSettings {
                k,
                ..RequestSettings::default()
            };
            let mut scorer = Scorer::new(options, examples(4));
            let query = queries(1).remove(0);
            scorer.evaluate(&mut host, &[("P".into(), query)]).unwrap();
            let base = host.requests.iter().find(|r| r.role == Role::Base).unwrap();
            let Prompt::Chat(messages) = &base.prompt else {
                panic!("the base request is chat messages")
            };
            let shown: Vec<usize> = (0..4)
                .filter(|i| messages[0].content.contains(&format!("example query {i}?")))
                .collect();
            assert_eq!(shown, first, "k {k}");
        }
    }
}
