//! Choosing the final prompt on queries the search never saw.
//!
//! DRPO returns the prompt whose path scored best on the very queries it was optimised on, by
//! the judge it was optimised against, so its choice rewards fitting those queries. With a
//! validation split, a search holds some training queries out ([`split`], drawn with the run's
//! seed), runs on the rest, and at the end its best distinct prompts and the initial prompt
//! ([`shortlist`]) are answered and judged on the held-out queries ([`validate`]); the best
//! held-out mean wins ([`choose`]). The initial prompt is always scored, so a search that
//! found nothing better on unseen queries returns the prompt it started from.

use serde_json::{Value, json};

use crate::data::{SplitMix64, sample};
use crate::engine::{Evaluation, Scorer, Stop};
use crate::types::{Host, LogLevel, Outcome, Query};

/// Mixed into the run's seed so the held-out draw is not the host's query shuffle again.
const SPLIT_SALT: u64 = 0x5641_4c49_4441_5445;

/// Splits `queries` into the queries a search may use and `held_out` queries for choosing its
/// result. The held-out queries are drawn uniformly with `seed`; both parts keep the order the
/// queries came in. Errs when fewer than `held_out + 1` queries are given.
pub fn split(
    queries: Vec<Query>,
    held_out: u32,
    seed: u64,
) -> Result<(Vec<Query>, Vec<Query>), String> {
    let held_out = held_out as usize;
    if held_out == 0 {
        return Ok((queries, Vec::new()));
    }
    if queries.len() <= held_out {
        return Err(format!(
            "validation holds out {held_out} queries and the search needs at least one more, \
             but the data gave {}; lower --validation or add queries",
            queries.len()
        ));
    }
    let indices: Vec<usize> = (0..queries.len()).collect();
    let mut rng = SplitMix64::new(seed ^ SPLIT_SALT);
    let mut chosen = sample(&indices, held_out, &mut rng);
    chosen.sort_unstable();
    let (mut search, mut validation) = (Vec::new(), Vec::new());
    for (i, query) in queries.into_iter().enumerate() {
        if chosen.binary_search(&i).is_ok() {
            validation.push(query);
        } else {
            search.push(query);
        }
    }
    Ok((search, validation))
}

/// A prompt a search may return, and what the search itself thought of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The node that holds it; its path becomes the best path when it is chosen.
    pub node: u32,
    /// The system prompt.
    pub prompt: String,
    /// The search's own score of the node (beam: its path score); `None` when the search
    /// gives it none (beam's root).
    pub search_score: Option<f64>,
}

/// The candidates to validate: the first `k` distinct prompts of `ranked` (best first by the
/// search's own score, the search's choice at the head), then `initial` unless its prompt is
/// among them.
pub fn shortlist(
    ranked: impl IntoIterator<Item = Candidate>,
    initial: Candidate,
    k: usize,
) -> Vec<Candidate> {
    let mut list: Vec<Candidate> = Vec::new();
    for candidate in ranked {
        if list.len() == k {
            break;
        }
        if !list.iter().any(|c| c.prompt == candidate.prompt) {
            list.push(candidate);
        }
    }
    if !list.iter().any(|c| c.prompt == initial.prompt) {
        list.push(initial);
    }
    list
}

/// The index of the best mean; a tie goes to the earlier candidate, the one the search itself
/// ranked higher.
pub fn choose(means: &[f64]) -> usize {
    let mut best = 0;
    for (i, mean) in means.iter().enumerate() {
        if *mean > means[best] {
            best = i;
        }
    }
    best
}

/// One candidate's rewards on the held-out queries.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The candidate.
    pub candidate: Candidate,
    /// Its reward on each held-out query, in query order (0 for an unusable judgement, as in
    /// the search).
    pub rewards: Vec<f64>,
    /// The mean of `rewards`.
    pub mean: f64,
}

/// The validation of a search's shortlist, and the candidate it chose.
#[derive(Clone, Debug)]
pub struct Validation {
    /// The held-out queries' ids.
    pub query_ids: Vec<String>,
    /// Every candidate, in shortlist order (the search's best first).
    pub scored: Vec<Validated>,
    /// The index in `scored` of the chosen candidate.
    pub chosen: usize,
}

/// Answers and judges every candidate on every held-out query through `scorer` (two batched
/// calls), and chooses the best mean. Only a stop of the run ([`Stop`]) fails it.
pub fn validate<H: Host>(
    host: &mut H,
    scorer: &mut Scorer,
    shortlist: Vec<Candidate>,
    held_out: &[Query],
) -> Result<Validation, Stop> {
    let pairs: Vec<(String, Query)> = shortlist
        .iter()
        .flat_map(|c| held_out.iter().map(|q| (c.prompt.clone(), q.clone())))
        .collect();
    let evaluations = scorer.evaluate(host, &pairs)?;
    let mut rewards = evaluations.chunks(held_out.len().max(1));
    let scored: Vec<Validated> = shortlist
        .into_iter()
        .map(|candidate| {
            let rewards: Vec<f64> = rewards
                .next()
                .unwrap_or_default()
                .iter()
                .map(|e: &Evaluation| e.reward)
                .collect();
            let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
            Validated {
                candidate,
                rewards,
                mean,
            }
        })
        .collect();
    let means: Vec<f64> = scored.iter().map(|v| v.mean).collect();
    let validation = Validation {
        query_ids: held_out.iter().map(|q| q.id.clone()).collect(),
        chosen: choose(&means),
        scored,
    };
    host.log(LogLevel::Info, validation.summary());
    Ok(validation)
}

fn score_text(score: Option<f64>) -> String {
    score.map_or_else(|| "none".to_owned(), |s| format!("{s:.2}"))
}

impl Validation {
    /// The chosen candidate.
    pub fn chosen(&self) -> &Validated {
        &self.scored[self.chosen]
    }

    /// What the validation decided, in one sentence.
    pub fn summary(&self) -> String {
        let n = self.query_ids.len();
        let chosen = self.chosen();
        let by_search = &self.scored[0];
        if self.chosen == 0 {
            return format!(
                "validation on {n} held-out queries kept the search's best, node {} (held-out \
                 mean {:.2}, search score {}), against {} other candidate(s)",
                chosen.candidate.node,
                chosen.mean,
                score_text(chosen.candidate.search_score),
                self.scored.len() - 1
            );
        }
        format!(
            "validation on {n} held-out queries chose node {} (held-out mean {:.2}, search score \
             {}) over the search's best, node {} (held-out mean {:.2}, search score {})",
            chosen.candidate.node,
            chosen.mean,
            score_text(chosen.candidate.search_score),
            by_search.candidate.node,
            by_search.mean,
            score_text(by_search.candidate.search_score)
        )
    }

    /// The outcome details' `validation`: the held-out query ids, each candidate's node, search
    /// score, held-out mean and rewards, the chosen node, the search's own best and the summary.
    pub fn details(&self) -> Value {
        let candidates: Vec<Value> = self
            .scored
            .iter()
            .map(|v| {
                json!({
                    "node": v.candidate.node,
                    "search_score": v.candidate.search_score,
                    "validation_score": v.mean,
                    "rewards": v.rewards,
                })
            })
            .collect();
        json!({
            "queries": self.query_ids,
            "candidates": candidates,
            "chosen_node": self.chosen().candidate.node,
            "best_by_search_node": self.scored[0].candidate.node,
            "summary": self.summary(),
        })
    }
}

/// A search's last step when it held queries out: validates `shortlist` on `held_out` and
/// makes the best held-out mean the outcome's result (`path_to` gives a node's path, root
/// first). Skipped, and said so in the details' `validation`, when the search
/// already stopped early or nothing was held out; a stop during the validation keeps the
/// search's own result and is recorded as the outcome's `stop`. The validation's judgements are
/// added to the details' `judgements`.
pub fn conclude<H: Host>(
    host: &mut H,
    scorer: &mut Scorer,
    held_out: &[Query],
    shortlist: Vec<Candidate>,
    outcome: &mut Outcome,
    path_to: impl Fn(u32) -> Vec<u32>,
) {
    if held_out.is_empty() {
        return;
    }
    let mut details: Value = serde_json::from_str(&outcome.details).unwrap_or(json!({}));
    if !details.is_object() {
        details = json!({});
    }
    if !details["stop"].is_null() {
        skip(host, &mut details, "the search stopped early");
        outcome.details = details.to_string();
        return;
    }
    let before = scorer.judgements();
    match validate(host, scorer, shortlist, held_out) {
        Ok(validation) => {
            let chosen = validation.chosen();
            outcome.best_prompt = Some(chosen.candidate.prompt.clone());
            outcome.best_score = Some(chosen.mean);
            outcome.best_path = path_to(chosen.candidate.node);
            details["validation"] = validation.details();
        }
        Err(stop) => {
            skip(host, &mut details, &format!("it stopped: {stop}"));
            details["stop"] = Stop::details(Some(&stop));
            details["stopped"] = Value::from(stop.to_string());
        }
    }
    let after = scorer.judgements();
    for (key, added) in [
        ("asked", after.asked - before.asked),
        ("usable", after.usable - before.usable),
    ] {
        let so_far = details["judgements"][key].as_u64().unwrap_or(0);
        details["judgements"][key] = Value::from(so_far + u64::from(added));
    }
    outcome.details = details.to_string();
}

/// [`conclude`] for a search that scores every node, its root (node 0, the initial prompt)
/// included, and returns the best one: `nodes` in any order are ranked best first by their
/// search score (a stable sort, so of equal scores the earliest comes first, as such a search
/// chooses), and the best `k` distinct prompts and the root are validated.
pub fn conclude_scored<H: Host>(
    host: &mut H,
    scorer: &mut Scorer,
    held_out: &[Query],
    mut nodes: Vec<Candidate>,
    k: usize,
    outcome: &mut Outcome,
    path_to: impl Fn(u32) -> Vec<u32>,
) {
    let Some(root) = nodes.iter().find(|c| c.node == 0).cloned() else {
        return;
    };
    let score = |c: &Candidate| c.search_score.unwrap_or(f64::NEG_INFINITY);
    nodes.sort_by(|a, b| score(b).total_cmp(&score(a)));
    let list = shortlist(nodes, root, k);
    conclude(host, scorer, held_out, list, outcome, path_to);
}

fn skip<H: Host>(host: &mut H, details: &mut Value, why: &str) {
    let summary = format!("validation skipped: {why}; the result is the search's own best");
    host.log(LogLevel::Warn, summary.clone());
    details["validation"] = json!({"skipped": why, "summary": summary});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RequestSettings;
    use crate::testing::{ScriptedHost, queries};

    fn candidate(node: u32, prompt: &str, score: Option<f64>) -> Candidate {
        Candidate {
            node,
            prompt: prompt.to_owned(),
            search_score: score,
        }
    }

    #[test]
    fn the_split_follows_the_seed_and_keeps_every_query_once() {
        let ids = |qs: &[Query]| qs.iter().map(|q| q.id.clone()).collect::<Vec<_>>();
        let (search, held) = split(queries(10), 3, 7).unwrap();
        let (search_again, held_again) = split(queries(10), 3, 7).unwrap();
        assert_eq!(
            ids(&held),
            ids(&held_again),
            "the same seed draws the same queries"
        );
        assert_eq!(ids(&search), ids(&search_again));
        assert_eq!((search.len(), held.len()), (7, 3));
        let mut all = ids(&search);
        all.extend(ids(&held));
        all.sort();
        let mut expected = ids(&queries(10));
        expected.sort();
        assert_eq!(all, expected, "every query is in exactly one part");
        let positions = |part: &[Query]| {
            part.iter()
                .map(|q| queries(10).iter().position(|p| p.id == q.id).unwrap())
                .collect::<Vec<_>>()
        };
        assert!(positions(&search).is_sorted() && positions(&held).is_sorted());
        let draws: std::collections::BTreeSet<Vec<String>> = (0..8)
            .map(|seed| ids(&split(queries(10), 3, seed).unwrap().1))
            .collect();
        assert!(draws.len() > 4, "other seeds draw other queries: {draws:?}");
    }

    #[test]
    fn no_validation_keeps_the_queries_and_too_few_queries_is_an_error() {
        let (search, held) = split(queries(4), 0, 1).unwrap();
        assert_eq!((search, held.len()), (queries(4), 0));
        let error = split(queries(3), 3, 1).unwrap_err();
        assert!(
            error.contains("holds out 3") && error.contains("gave 3"),
            "{error}"
        );
        assert_eq!(split(queries(4), 3, 1).unwrap().0.len(), 1);
    }

    #[test]
    fn the_shortlist_is_distinct_and_always_holds_the_initial_prompt() {
        let ranked = vec![
            candidate(4, "B", Some(4.0)),
            candidate(5, "B", Some(4.0)),
            candidate(2, "C", Some(3.5)),
            candidate(3, "D", Some(3.0)),
        ];
        let initial = candidate(0, "A", None);
        let list = shortlist(ranked.clone(), initial.clone(), 2);
        let nodes: Vec<u32> = list.iter().map(|c| c.node).collect();
        assert_eq!(nodes, [4, 2, 0]);
        let with_initial = shortlist(
            vec![candidate(1, "A", Some(5.0)), candidate(2, "C", Some(1.0))],
            initial,
            1,
        );
        assert_eq!(
            with_initial.len(),
            1,
            "the initial prompt is not scored twice"
        );
    }

    #[test]
    fn the_best_mean_wins_and_a_tie_keeps_the_search_s_order() {
        assert_eq!(choose(&[3.0, 4.0, 2.0]), 1);
        assert_eq!(choose(&[3.0, 3.0, 2.0]), 0);
        assert_eq!(choose(&[0.0, 0.0]), 0);
    }

    #[test]
    fn validation_scores_every_candidate_on_every_held_out_query_and_chooses_by_mean() {
        // The scripted base model answers with its whole prompt; the judge gives 5 to answers
        // under the prompt "Alpha-prompt", 2 to the others.
        let mut host = ScriptedHost::new(
            |judged| {
                if judged.contains("Alpha-prompt") {
                    5
                } else {
                    2
                }
            },
            |_, _| String::new(),
        );
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let list = vec![
            candidate(3, "Beta-prompt", Some(4.5)),
            candidate(0, "Alpha-prompt", None),
        ];
        let held = queries(3);
        let validation = validate(&mut host, &mut scorer, list, &held).unwrap();
        assert_eq!(validation.chosen().candidate.node, 0);
        assert_eq!(validation.scored[0].rewards, [2.0, 2.0, 2.0]);
        assert_eq!(validation.scored[1].mean, 5.0);
        let base_requests = host
            .requests
            .iter()
            .filter(|r| r.role == crate::types::Role::Base);
        assert_eq!(base_requests.count(), 6, "two candidates on three queries");
        let details = validation.details();
        assert_eq!(details["chosen_node"], 0);
        assert_eq!(details["best_by_search_node"], 3);
        assert_eq!(details["queries"], json!(["q0", "q1", "q2"]));
        let summary = details["summary"].as_str().unwrap();
        assert!(
            summary.contains("chose node 0") && summary.contains("over the search's best, node 3"),
            "{summary}"
        );
    }

    fn outcome(details: Value) -> Outcome {
        Outcome {
            best_prompt: Some("Beta-prompt".into()),
            best_score: Some(4.5),
            best_path: vec![0, 3],
            details: details.to_string(),
        }
    }

    #[test]
    fn concluding_makes_the_choice_the_result_and_counts_its_judgements() {
        let judge = |judged: &str| {
            if judged.contains("Alpha-prompt") {
                5
            } else {
                2
            }
        };
        let list = || {
            vec![
                candidate(3, "Beta-prompt", Some(4.5)),
                candidate(0, "Alpha-prompt", None),
            ]
        };
        let mut host = ScriptedHost::new(judge, |_, _| String::new());
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let mut result =
            outcome(json!({"kept": true, "stop": null, "judgements": {"asked": 4, "usable": 3}}));
        conclude(
            &mut host,
            &mut scorer,
            &queries(2),
            list(),
            &mut result,
            |n| vec![n],
        );
        assert_eq!(result.best_prompt.as_deref(), Some("Alpha-prompt"));
        assert_eq!(
            (result.best_score, result.best_path.clone()),
            (Some(5.0), vec![0])
        );
        let details: Value = serde_json::from_str(&result.details).unwrap();
        assert_eq!(details["kept"], true);
        assert_eq!(details["validation"]["chosen_node"], 0);
        assert_eq!(details["judgements"], json!({"asked": 8, "usable": 7}));

        // A search that stopped early is not validated.
        let mut host = ScriptedHost::new(judge, |_, _| String::new());
        let mut stopped = outcome(json!({"stop": {"kind": "budget-exhausted"}}));
        conclude(
            &mut host,
            &mut scorer,
            &queries(2),
            list(),
            &mut stopped,
            |n| vec![n],
        );
        assert!(host.requests.is_empty());
        assert_eq!(stopped.best_prompt.as_deref(), Some("Beta-prompt"));
        let details: Value = serde_json::from_str(&stopped.details).unwrap();
        assert_eq!(details["validation"]["skipped"], "the search stopped early");

        // A budget spent during the validation keeps the search's result and says why.
        let mut host = ScriptedHost::new(judge, |_, _| String::new());
        host.budget = Some(1);
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let mut spent = outcome(json!({"stop": null}));
        conclude(
            &mut host,
            &mut scorer,
            &queries(2),
            list(),
            &mut spent,
            |n| vec![n],
        );
        assert_eq!(spent.best_prompt.as_deref(), Some("Beta-prompt"));
        let details: Value = serde_json::from_str(&spent.details).unwrap();
        assert_eq!(details["stop"], json!({"kind": "budget-exhausted"}));
        assert!(
            details["validation"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("validation skipped: it stopped"),
            "{details}"
        );

        // Nothing held out: nothing asked, nothing changed.
        let mut host = ScriptedHost::new(judge, |_, _| String::new());
        let mut plain = outcome(json!({"stop": null}));
        conclude(&mut host, &mut scorer, &[], list(), &mut plain, |n| vec![n]);
        assert_eq!(plain, outcome(json!({"stop": null})));
        assert!(host.requests.is_empty());
    }
}
