//! DRPO's reward for any search: answer a training query under a candidate prompt with the base
//! model, pick the aspects that matter for the query (once per query), judge the answer on them,
//! and take the mean score; and the optimizer's proposals from that feedback.
//!
//! Every phase is one batched `complete` call: [`Scorer::evaluate`] makes at most two (aspect
//! selections together with the answers, then the judgements), however many candidates it is
//! given. The prompts, schemas and parsing are the DRPO library's ([`drpo::prompts`],
//! [`drpo::parse`], [`drpo::reward`]), so every strategy built on the kit is judged the same way,
//! and so is the end of a run: a batch stops it by the library's rule ([`Stop::check`]), and
//! [`Scorer::judgements`] counts the judgements for the outcome's details.

use std::collections::BTreeMap;

use drpo::aspects::{self, Aspect};
use drpo::icl;
use drpo::options::Options;
pub use drpo::outcome::{Judgements, Stop};
use drpo::parse::{self, Judgement};
use drpo::prompts;
use drpo::reward;
use drpo::types::{Completion, Example, Host, LlmError, LogLevel, Outcome, Query, Request, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::OptionsSchema;

/// The request settings every DRPO-scored search shares, as options: put them in a strategy's
/// options struct with `#[serde(flatten)]` and in its schema with [`Settings::add_to`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Settings {
    /// The prompt the search starts from.
    pub initial_system_prompt: String,
    /// Seed of every request.
    pub seed: u64,
    /// The optimizer's sampling temperature.
    pub temperature: f64,
    /// Token limit of a base-model answer.
    pub base_max_tokens: u32,
    /// Token limit of an aspect selection.
    pub metrics_max_tokens: u32,
    /// Token limit of a judgement.
    pub judge_max_tokens: u32,
    /// Token limit of each optimizer candidate.
    pub optimizer_max_tokens: u32,
    /// In-context examples the base model sees: the first `k` of the pool.
    pub k: u32,
}

impl Settings {
    /// Adds the settings to `schema`; `temperature` is the optimizer's default temperature.
    pub fn add_to(schema: OptionsSchema, temperature: f64) -> OptionsSchema {
        let defaults = Options::default();
        schema
            .string(
                "initial_system_prompt",
                &defaults.initial_system_prompt,
                "The system prompt the search starts from.",
            )
            .integer("seed", 0, 0, "Seed of every request.")
            .number(
                "temperature",
                temperature,
                0.0,
                "Sampling temperature of the optimizer.",
            )
            .integer(
                "base_max_tokens",
                defaults.base_max_tokens.into(),
                1,
                "Token limit of a base-model answer.",
            )
            .integer(
                "metrics_max_tokens",
                defaults.metrics_max_tokens.into(),
                1,
                "Token limit of an aspect selection.",
            )
            .integer(
                "judge_max_tokens",
                defaults.judge_max_tokens.into(),
                1,
                "Token limit of a judgement.",
            )
            .integer(
                "optimizer_max_tokens",
                defaults.optimizer_max_tokens.into(),
                1,
                "Token limit of each optimizer candidate.",
            )
            .integer(
                "k",
                defaults.k.into(),
                1,
                "In-context examples the base model sees: the first k of the pool.",
            )
    }

    /// The DRPO library's request options for these settings, the optimizer writing
    /// `candidates` prompts per request.
    pub fn request_options(&self, candidates: u32) -> Options {
        Options {
            n_actions: candidates.max(1),
            temperature: self.temperature,
            seed: self.seed,
            base_max_tokens: self.base_max_tokens,
            metrics_max_tokens: self.metrics_max_tokens,
            judge_max_tokens: self.judge_max_tokens,
            optimizer_max_tokens: self.optimizer_max_tokens,
            k: self.k,
            initial_system_prompt: self.initial_system_prompt.clone(),
            ..Options::default()
        }
    }
}

/// The run cannot go on: a budget is spent, or a role fails on every request. A strategy
/// returns its best result so far, with [`Stop::details`] as its details' `stop`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped(pub Stop);

impl Stopped {
    /// The outcome of a search stopped before its first prompt was scored: that prompt, no
    /// score, and why, so the host writes the results and names the cause in its exit code.
    pub fn before_any_score(&self, prompt: String, judgements: Judgements) -> Outcome {
        Outcome {
            best_prompt: Some(prompt),
            best_score: None,
            best_path: Vec::new(),
            details: json!({
                "stopped": self.0.to_string(),
                "stop": Stop::details(Some(&self.0)),
                "judgements": judgements,
            })
            .to_string(),
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The aspects chosen for one query, and where they came from.
#[derive(Clone, Debug)]
struct Selection {
    aspects: Vec<&'static Aspect>,
    reasoning: String,
    source: &'static str,
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

    /// The judgement as the optimizer reads it: `{aspect: {rationale, score}}`, indented.
    pub fn feedback(&self) -> String {
        serde_json::to_string_pretty(&self.judgement.to_json()).unwrap_or_default()
    }
}

/// Scores candidates and asks for new ones, remembering each query's aspect selection.
pub struct Scorer {
    options: Options,
    examples: Vec<Example>,
    selections: BTreeMap<String, Selection>,
    judgements: Judgements,
}

impl Scorer {
    /// A scorer whose requests follow `options` (seed, token limits, the optimizer's sampling)
    /// and show the base model the first `options.k` of `examples` in context.
    pub fn new(options: Options, examples: Vec<Example>) -> Self {
        Scorer {
            options,
            examples,
            selections: BTreeMap::new(),
            judgements: Judgements::default(),
        }
    }

    /// Judges each `(prompt, query)` pair: at most two `complete` calls for the whole list.
    /// Failures of single requests become unusable judgements (reward 0, the reason in the
    /// details); only a spent budget stops.
    pub fn evaluate<H: Host>(
        &mut self,
        host: &mut H,
        candidates: &[(String, Query)],
    ) -> Result<Vec<Evaluation>, Stopped> {
        let mut new_queries: Vec<&str> = Vec::new();
        for (_, query) in candidates {
            let text = query.text.as_str();
            if !self.selections.contains_key(text) && !new_queries.contains(&text) {
                new_queries.push(text);
            }
        }
        let shown: Vec<&Example> = self.examples.iter().take(self.options.k as usize).collect();
        let mut batch: Vec<Request> = new_queries
            .iter()
            .map(|q| prompts::aspect_selection_request(q, &self.options))
            .collect();
        batch.extend(
            candidates.iter().map(|(prompt, query)| {
                icl::base_request(prompt, &shown, &query.text, &self.options)
            }),
        );
        let mut results = complete_batch(host, batch)?;
        let answers = results.split_off(new_queries.len());
        for (text, result) in new_queries.iter().zip(results) {
            let selection = select(host, result);
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
                judge_requests.push(prompts::judge_request(
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
                    let judgement = match verdicts.next() {
                        Some(Ok(c)) => match c.choices.first() {
                            Some(v) => parse::parse_judgement(v, &selection.aspects),
                            None => Judgement::unusable("the judge returned no choice"),
                        },
                        Some(Err(e)) => Judgement::unusable(format!("the judge failed: {e}")),
                        None => Judgement::unusable("the judge gave no answer"),
                    };
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
    /// candidates are dropped with a warning; an empty list means none was usable.
    pub fn propose<H: Host>(
        &mut self,
        host: &mut H,
        parent: &Evaluation,
        path_prompts: &[String],
        n: u32,
    ) -> Result<Vec<String>, Stopped> {
        let mut request = prompts::optimizer_request(
            &parent.prompt,
            &parent.query.text,
            &parent.answer,
            &parent.feedback(),
            path_prompts,
            &self.options,
        );
        request.sampling.n = n.max(1);
        self.ask_for_prompts(host, request)
    }

    /// Runs one optimizer request whose choices follow [`prompts::optimizer_schema`] and returns
    /// the usable new prompts.
    pub fn ask_for_prompts<H: Host>(
        &mut self,
        host: &mut H,
        request: Request,
    ) -> Result<Vec<String>, Stopped> {
        let mut prompts = Vec::new();
        match complete_batch(host, vec![request])?.pop() {
            Some(Ok(completion)) => {
                for (i, choice) in completion.choices.iter().enumerate() {
                    match parse::parse_proposal(choice) {
                        Ok(p) => prompts.push(p.new_system_prompt),
                        Err(e) => host.log(LogLevel::Warn, format!("candidate {i} dropped: {e}")),
                    }
                }
            }
            Some(Err(e)) => host.log(LogLevel::Warn, format!("the optimizer failed: {e}")),
            None => host.log(LogLevel::Warn, "the optimizer gave no answer".to_owned()),
        }
        Ok(prompts)
    }

    /// The request options in use (seed, token limits, sampling).
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The judgements [`Scorer::evaluate`] asked for so far, and how many were usable: the
    /// outcome details' `judgements`.
    pub fn judgements(&self) -> Judgements {
        self.judgements
    }
}

/// Sends one batch as every DRPO strategy does: a short answer is padded with failures, and the
/// answers as a whole may stop the run ([`Stop::check`]).
pub fn complete_batch<H: Host>(
    host: &mut H,
    batch: Vec<Request>,
) -> Result<Vec<Result<Completion, LlmError>>, Stopped> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let roles: Vec<Role> = batch.iter().map(|r| r.role).collect();
    let mut results = host.complete(batch);
    results.resize_with(roles.len(), || {
        Err(LlmError::Unavailable("no answer from the host".into()))
    });
    match Stop::check(&roles, &results) {
        Some(stop) => Err(Stopped(stop)),
        None => Ok(results),
    }
}

fn select<H: Host>(host: &mut H, result: Result<Completion, LlmError>) -> Selection {
    let parsed = match result {
        Ok(c) => match c.choices.first() {
            Some(answer) => {
                parse::extract_object(answer).and_then(|obj| parse::parse_aspect_selection(&obj))
            }
            None => Err("empty completion".to_owned()),
        },
        Err(e) => Err(format!("the call failed: {e}")),
    };
    match parsed {
        Ok(selection) => Selection {
            aspects: selection.aspects,
            reasoning: selection.reasoning,
            source: "model",
        },
        Err(e) => {
            host.log(
                LogLevel::Warn,
                format!("aspect selection unusable ({e}); using the general-quality aspects"),
            );
            Selection {
                aspects: aspects::fallback(),
                reasoning: "The aspect selection failed, so the general-quality aspects are used."
                    .to_owned(),
                source: "fallback",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ScriptedHost, queries};
    use drpo::types::Prompt;

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
            let mut scorer = Scorer::new(Options::default(), Vec::new());
            let stopped = scorer.evaluate(&mut host, &candidates).unwrap_err();
            assert_eq!(
                stopped.0,
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
        let mut scorer = Scorer::new(Options::default(), Vec::new());
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
            Stop::details(Some(&stopped.0)),
            serde_json::json!({"kind": "role-failed", "role": "optimizer", "error": "no such model"})
        );
    }

    #[test]
    fn the_base_model_sees_the_first_k_examples() {
        for (k, first) in [(1, vec![0]), (3, vec![0, 1, 2])] {
            let mut host = ScriptedHost::new(|_| 3, |_, _| String::new());
            let options = Options {
                k,
                ..Options::default()
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
