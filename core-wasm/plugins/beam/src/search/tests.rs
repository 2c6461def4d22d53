//! The search against a scripted host whose answers follow each request's schema.

use super::*;
use drpo_kit::drpo::data;
use drpo_kit::{Prompt, Usage};

/// How the scripted judge scores: (query text, system prompt of the answer, aspect) → score.
type ScoreFn = Box<dyn Fn(&str, &str, &str) -> u8>;

/// How the scripted judge compares two answers: (query text, system prompt of the answer shown
/// first, of the one shown second) → its `better`.
type PreferFn = Box<dyn Fn(&str, &str, &str) -> &'static str>;

/// A host that answers every request from a script and records what it was asked.
struct Scripted {
    score: ScoreFn,
    /// Per `complete` call: the roles of its requests, in order.
    calls: Vec<Vec<Role>>,
    nodes: Vec<Node>,
    logs: Vec<(LogLevel, String)>,
    /// Every base prompt sent, in order.
    base_prompts: Vec<Prompt>,
    next_prompt: usize,
    /// The optimizer's choices for each request it answered, by the request's JSON: a repeated
    /// request gets them again, as a deterministic model gives them, not new numbers.
    optimizer_answers: std::collections::HashMap<String, Vec<String>>,
    /// Requests answered before every further request gets `budget-exhausted`.
    budget: Option<usize>,
    answered: usize,
    embed: Result<(), LlmError>,
    embed_calls: usize,
    /// Optimizer choices returned verbatim instead of valid JSON, when set.
    optimizer_garbage: bool,
    /// The optimizer's new prompts are the reply it was shown (up to where it repeats the
    /// query), when set.
    optimizer_pastes_reply: bool,
    /// Judge answers returned verbatim instead of valid JSON, when set.
    judge_garbage: bool,
    /// An aspect the judge leaves out of its answers, when set.
    judge_drops: Option<&'static str>,
    /// The comparisons' verdicts; without it, the answer with the higher Helpfulness score
    /// wins, and equal scores tie.
    prefer: Option<PreferFn>,
}

impl Scripted {
    fn new(score: impl Fn(&str, &str, &str) -> u8 + 'static) -> Self {
        Scripted {
            score: Box::new(score),
            calls: Vec::new(),
            nodes: Vec::new(),
            logs: Vec::new(),
            base_prompts: Vec::new(),
            next_prompt: 0,
            optimizer_answers: std::collections::HashMap::new(),
            budget: None,
            answered: 0,
            embed: Ok(()),
            embed_calls: 0,
            optimizer_garbage: false,
            optimizer_pastes_reply: false,
            judge_garbage: false,
            judge_drops: None,
            prefer: None,
        }
    }

    /// Never triggers a skip: every aspect scores 3.
    fn plain() -> Self {
        Scripted::new(|_, _, _| 3)
    }

    fn requests(&self, role: Role) -> usize {
        self.calls.iter().flatten().filter(|r| **r == role).count()
    }

    fn warnings(&self, needle: &str) -> usize {
        self.logs
            .iter()
            .filter(|(l, m)| *l == LogLevel::Warn && m.contains(needle))
            .count()
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).map(|i| i + start.len()).unwrap_or(0);
    let rest = &text[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

fn user_text(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Chat(messages) => messages.iter().map(|m| m.content.as_str()).collect(),
        Prompt::Raw(text) => text.clone(),
    }
}

impl Host for Scripted {
    fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>> {
        self.calls.push(batch.iter().map(|r| r.role).collect());
        batch
            .into_iter()
            .map(|r| {
                if let Some(budget) = self.budget
                    && self.answered >= budget
                {
                    return Err(LlmError::BudgetExhausted);
                }
                self.answered += 1;
                let text = user_text(&r.prompt);
                let choices: Vec<String> = match r.role {
                    Role::Metrics => vec![
                        r#"{"query_analysis": {"main_topic": "t", "user_intent": "u", "ambiguities": "none", "response_format": "prose", "challenges": "none"}, "aspects_selection": {"reasoning": "these matter", "selected_aspects": ["Helpfulness", "Clarity", "Depth"]}}"#
                            .to_string(),
                    ],
                    Role::Base => {
                        self.base_prompts.push(r.prompt.clone());
                        let system = between(&text, "# instructions\n\n", "\n\n");
                        let query = between(text.rsplit_once("# Query:\n").unwrap().1, "", "\n\n# Answer:");
                        vec![format!("[{system}] says: {query}\n<END>")]
                    }
                    Role::Judge if r.json_schema.as_deref().is_some_and(|s| s.contains("\"better\"")) => {
                        let query = between(&text, "The user's query:\n<<<\n", "\n>>>");
                        let first = between(&text, "The first reply:\n<<<\n[", "]");
                        let second = between(&text, "The second reply:\n<<<\n[", "]");
                        let better = match &self.prefer {
                            Some(prefer) => prefer(query, first, second),
                            None => {
                                let helpful = |system| (self.score)(query, system, "Helpfulness");
                                match helpful(first).cmp(&helpful(second)) {
                                    std::cmp::Ordering::Greater => "first",
                                    std::cmp::Ordering::Less => "second",
                                    std::cmp::Ordering::Equal => "tie",
                                }
                            }
                        };
                        vec![json!({"analysis": "compared", "better": better}).to_string()]
                    }
                    Role::Judge => {
                        let query = between(&text, "## Query\n", "\n\n## Reply");
                        let reply = between(&text, "## Reply\n", "\n\n## Aspects");
                        let system = between(reply, "[", "]");
                        let schema: Value =
                            serde_json::from_str(r.json_schema.as_deref().unwrap()).unwrap();
                        let mut verdict = serde_json::Map::new();
                        for aspect in schema["properties"].as_object().unwrap().keys() {
                            if self.judge_drops == Some(aspect.as_str()) {
                                continue;
                            }
                            let score = (self.score)(query, system, aspect);
                            verdict.insert(
                                aspect.clone(),
                                json!({"rationale": format!("{aspect} is fine"), "score": score}),
                            );
                        }
                        if self.judge_garbage {
                            vec!["I think it is pretty good.".to_string()]
                        } else {
                            vec![Value::Object(verdict).to_string()]
                        }
                    }
                    Role::Optimizer => {
                        let key = serde_json::to_string(&r).unwrap();
                        let next_prompt = &mut self.next_prompt;
                        let garbage = self.optimizer_garbage;
                        let shown = between(
                            &text,
                            "## The assistant's reply under the current system prompt\n",
                            "\n\n## ",
                        );
                        let shown = shown.split(" says:").next().unwrap_or_default().to_owned();
                        let pastes = self.optimizer_pastes_reply;
                        self.optimizer_answers
                            .entry(key)
                            .or_insert_with(|| {
                                (0..r.sampling.n)
                                    .map(|_| {
                                        *next_prompt += 1;
                                        if garbage {
                                            "not json".to_string()
                                        } else {
                                            let prompt = if pastes {
                                                shown.clone()
                                            } else {
                                                format!("prompt-{next_prompt}")
                                            };
                                            json!({"analysis": "a", "thought": "t", "new_system_prompt": prompt})
                                                .to_string()
                                        }
                                    })
                                    .collect()
                            })
                            .clone()
                    }
                };
                Ok(Completion {
                    choices,
                    usage: Usage::default(),
                })
            })
            .collect()
    }

    fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        self.embed_calls += 1;
        self.embed.clone()?;
        // Two "topics": texts mentioning "code" point one way, the rest the other.
        Ok(texts
            .iter()
            .map(|t| {
                if t.contains("code") {
                    vec![1.0, 0.0]
                } else {
                    vec![0.0, 1.0]
                }
            })
            .collect())
    }

    fn record_node(&mut self, node: Node) {
        self.nodes.push(node);
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.logs.push((level, message));
    }
}

fn queries(n: usize) -> Vec<Query> {
    (0..n)
        .map(|i| Query {
            id: format!("q{i}"),
            text: format!("query number {i}?"),
            tags: vec![],
        })
        .collect()
}

fn examples() -> Vec<Example> {
    [
        "How do I write code?",
        "Tell me about rivers.",
        "Debug my code.",
        "Why is the sky blue?",
    ]
    .iter()
    .map(|q| Example {
        query: q.to_string(),
        answer: format!("<START>\nAbout: {q}\n<END>"),
    })
    .collect()
}

fn options(json: &str) -> Options {
    Options::from_json(json).unwrap()
}

#[test]
fn published_call_counts_without_skips() {
    let mut host = Scripted::plain();
    let o = options("{}");
    let r = run(&mut host, &o, &queries(40), &examples()).unwrap();
    assert_eq!(host.requests(Role::Optimizer), 37);
    assert_eq!(r.stats.requests(Role::Optimizer), 37);
    assert_eq!(r.stats.choices(Role::Optimizer), 111);
    assert_eq!(host.requests(Role::Base), 112);
    assert_eq!(host.requests(Role::Judge), 112);
    assert_eq!(host.requests(Role::Metrics), 20);
    assert_eq!(r.tree.len(), 112);
    assert_eq!(host.nodes.len(), 112);
    assert_eq!(r.final_depth, 20);
    assert_eq!(r.stats.skips, 0);
    assert!(r.stop.is_none());
    assert_eq!(
        r.judgements,
        Judgements {
            asked: 112,
            usable: 112
        }
    );
    let details = r.details();
    assert_eq!(details["stop"], Value::Null);
    assert_eq!(details["judgements"], json!({"asked": 112, "usable": 112}));
    // Root: one call with the 20 aspect selections and the base answer, one with the judge;
    // then every one of the 19 levels: optimizers, base answers, judgements.
    assert_eq!(host.calls.len(), 2 + 19 * 3);
    assert_eq!(
        host.calls[0]
            .iter()
            .filter(|r| **r == Role::Metrics)
            .count(),
        20
    );
    assert_eq!(host.calls[1], vec![Role::Judge]);
    for level in host.calls[2..].chunks(3) {
        assert!(level[0].iter().all(|r| *r == Role::Optimizer));
        assert!(level[1].iter().all(|r| *r == Role::Base));
        assert!(level[2].iter().all(|r| *r == Role::Judge));
        assert_eq!(level[1].len(), level[2].len());
        assert_eq!(level[1].len(), level[0].len() * 3);
    }
    // The best path runs root to a terminal node at depth 19 (20 states).
    assert_eq!(r.best_path.len(), 20);
    assert_eq!(r.best_path[0], 0);
    assert_eq!(r.best_score, Some(3.0));
    assert_eq!(host.embed_calls, 1);
}

#[test]
fn warm_metrics_cache_costs_no_selection() {
    let mut cold = Scripted::plain();
    let first = run(&mut cold, &options("{}"), &queries(40), &examples()).unwrap();
    assert_eq!(first.new_metrics_cache.len(), 20);
    let mut o = options("{}");
    o.metrics_cache = first.new_metrics_cache.clone();
    let mut warm = Scripted::plain();
    let second = run(&mut warm, &o, &queries(40), &examples()).unwrap();
    assert_eq!(warm.requests(Role::Metrics), 0);
    assert_eq!(warm.requests(Role::Optimizer), 37);
    assert_eq!(warm.requests(Role::Base), 112);
    assert_eq!(warm.requests(Role::Judge), 112);
    assert!(second.new_metrics_cache.is_empty());
    assert_eq!(first.best_prompt, second.best_prompt);
    assert_eq!(first.best_path, second.best_path);
}

#[test]
fn published_cache_entries_with_other_spellings_are_used() {
    let mut o = options("{}");
    let q = queries(3);
    o.metrics_cache.insert(
        q[0].text.clone(),
        json!({"aspects_selection": {"reasoning": "r", "selected_aspects": ["Critical-Thinking", "Cultural Sensitivity"]}}),
    );
    o.depth = 1;
    let mut host = Scripted::plain();
    let r = run(&mut host, &o, &q, &[]).unwrap();
    assert_eq!(host.requests(Role::Metrics), 0);
    let names: Vec<&str> = r.tree[0].details["aspects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Critical Thinking", "Sensitivity"]);
    assert_eq!(r.tree[0].details["metrics_source"], "cache");
}

/// A scripted host whose first aspect selection for one query fails (a timeout); it answers
/// the next. It notes the calls (numbered from 1) that ask for that query's selection and that
/// answer it with the base model.
struct FlakySelection {
    inner: Scripted,
    query: &'static str,
    calls: usize,
    selection_calls: Vec<usize>,
    answer_calls: Vec<usize>,
}

impl Host for FlakySelection {
    fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>> {
        self.calls += 1;
        let selections: Vec<bool> = batch
            .iter()
            .map(|r| r.role == Role::Metrics && user_text(&r.prompt).contains(self.query))
            .collect();
        if batch.iter().any(|r| {
            r.role == Role::Base
                && user_text(&r.prompt).ends_with(&format!("{}\n\n# Answer:\n<START>", self.query))
        }) {
            self.answer_calls.push(self.calls);
        }
        let mut out = self.inner.complete(batch);
        for (result, selection) in out.iter_mut().zip(selections) {
            if selection {
                self.selection_calls.push(self.calls);
                if self.selection_calls.len() == 1 {
                    *result = Err(LlmError::Unavailable("timeout".into()));
                }
            }
        }
        out
    }
    fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        self.inner.embed(texts)
    }
    fn record_node(&mut self, node: Node) {
        self.inner.record_node(node)
    }
    fn log(&mut self, level: LogLevel, message: String) {
        self.inner.log(level, message)
    }
}

#[test]
fn a_selection_fetched_ahead_that_failed_is_asked_again_when_its_query_is_scored() {
    let mut host = FlakySelection {
        inner: Scripted::plain(),
        query: "query number 2?",
        calls: 0,
        selection_calls: Vec::new(),
        answer_calls: Vec::new(),
    };
    let r = run(&mut host, &options(r#"{"depth": 4}"#), &queries(9), &[]).unwrap();
    // Fetched ahead with the root's answer (call 1), failed; not asked at level 0, whose query
    // is 1; asked again in the call that answers query 2, and answered.
    assert_eq!(host.selection_calls.len(), 2, "{:?}", host.selection_calls);
    assert_eq!(host.selection_calls[0], 1);
    assert_eq!(host.answer_calls.len(), 1);
    assert_eq!(host.selection_calls[1], host.answer_calls[0]);
    let on_query_2: Vec<&TreeNode> = r
        .tree
        .iter()
        .filter(|n| n.details["query_index"] == 2)
        .collect();
    assert!(!on_query_2.is_empty());
    for node in on_query_2 {
        assert_eq!(node.details["metrics_source"], "model", "node {}", node.id);
    }
    assert_eq!(host.inner.requests(Role::Metrics), 4 + 1);
    assert_eq!(r.new_metrics_cache.len(), 4);
    assert_eq!(host.inner.warnings("asking again when it is scored"), 1);
}

#[test]
fn a_failed_selection_of_the_query_scored_now_falls_back() {
    let mut host = FlakySelection {
        inner: Scripted::plain(),
        query: "query number 0?",
        calls: 0,
        selection_calls: Vec::new(),
        answer_calls: Vec::new(),
    };
    let r = run(&mut host, &options(r#"{"depth": 2}"#), &queries(9), &[]).unwrap();
    assert_eq!(host.selection_calls, [1]);
    assert_eq!(r.tree[0].details["metrics_source"], "fallback");
    assert_eq!(r.tree[0].details["aspects"].as_array().unwrap().len(), 5);
}

#[test]
fn sequential_sends_one_request_per_call() {
    let mut host = Scripted::plain();
    let r = run(
        &mut host,
        &options(r#"{"sequential": true}"#),
        &queries(40),
        &examples(),
    )
    .unwrap();
    assert!(host.calls.iter().all(|c| c.len() == 1));
    assert_eq!(host.calls.len(), 37 + 112 + 112 + 20);
    assert_eq!(r.stats.complete_calls as usize, host.calls.len());
    assert_eq!(r.stats.choices(Role::Optimizer), 111);
    // Same search, same result as batched.
    let mut batched = Scripted::plain();
    let b = run(&mut batched, &options("{}"), &queries(40), &examples()).unwrap();
    assert_eq!((r.best_prompt, r.best_path), (b.best_prompt, b.best_path));
}

#[test]
fn all_skips_extend_depth_up_to_the_limit() {
    // Every answer scores 5: every level skips and asks for one more level.
    let mut host = Scripted::new(|_, _, _| 5);
    let o = options(r#"{"depth": 5, "max_depth_increase": 3}"#);
    let r = run(&mut host, &o, &queries(40), &examples()).unwrap();
    assert_eq!(r.final_depth, 8);
    assert_eq!(host.requests(Role::Optimizer), 0);
    // A chain: each skip keeps the prompt as the only child.
    assert_eq!(r.tree.len(), 8);
    assert_eq!(r.best_path.len(), 8);
    assert_eq!(host.requests(Role::Metrics), 8);
    assert!(r.tree.iter().all(|n| n.prompt == o.initial_system_prompt));
    assert_eq!(r.tree[3].details["origin"], "kept");
    assert_eq!(r.tree[3].details["skip"], "all_fives");
    assert_eq!(r.stats.skips, 7);
    assert_eq!(r.best_score, Some(5.0));
}

#[test]
fn depth_grows_at_most_once_per_level() {
    // Both beams skip at the same levels (queries 2 and 3 are easy for every prompt): each
    // such level grants one level, not two.
    let mut host = Scripted::new(|q, _, _| {
        if q.contains(" 2?") || q.contains(" 3?") {
            5
        } else {
            3
        }
    });
    let o = options(r#"{"depth": 6, "max_depth_increase": 10}"#);
    let r = run(&mut host, &o, &queries(40), &examples()).unwrap();
    assert_eq!(r.final_depth, 8);
    let deepest = r.tree.iter().map(|n| n.depth).max().unwrap();
    assert_eq!(deepest, 7);
    assert!(r.stats.skips >= 3, "{}", r.stats.skips);
    // The extra levels used queries 6 and 7, whose selections were fetched ahead.
    assert_eq!(host.requests(Role::Metrics), 8);
}

#[test]
fn high_mean_skips_but_four_and_a_half_does_not() {
    // Helpfulness 5, Clarity 5, Depth 4: mean 4.67 > 4.5 → skip.
    let mut host = Scripted::new(|_, _, a| if a == "Depth" { 4 } else { 5 });
    let r = run(
        &mut host,
        &options(r#"{"depth": 3, "max_depth_increase": 0}"#),
        &queries(9),
        &[],
    )
    .unwrap();
    assert_eq!(r.tree[0].details["skip"], "high_mean");
    assert_eq!(host.requests(Role::Optimizer), 0);
    assert_eq!(r.final_depth, 3);
    // Helpfulness 5, Clarity 4, Depth 4: mean 4.33, optimize.
    let mut host = Scripted::new(|_, _, a| if a == "Helpfulness" { 5 } else { 4 });
    let r = run(&mut host, &options(r#"{"depth": 2}"#), &queries(9), &[]).unwrap();
    assert_eq!(r.tree[0].details["skip"], Value::Null);
    assert_eq!(host.requests(Role::Optimizer), 1);
}

#[test]
fn unusable_judgements_keep_the_prompt_without_extra_depth() {
    let mut host = Scripted::plain();
    host.judge_garbage = true;
    let r = run(
        &mut host,
        &options(r#"{"depth": 4}"#),
        &queries(40),
        &examples(),
    )
    .unwrap();
    assert_eq!(r.final_depth, 4);
    assert_eq!(r.tree.len(), 4);
    assert!(r.tree.iter().all(|n| n.reward == 0.0));
    assert_eq!(r.tree[1].details["skip"], "no_judgement");
    assert!(host.warnings("no usable judgement") >= 3);
    assert!(
        r.tree[1].details["judge_problems"][0]
            .as_str()
            .unwrap()
            .contains("no JSON")
    );

    // The published behaviour, on request: the same failures also extend the depth.
    let mut host = Scripted::plain();
    host.judge_garbage = true;
    let o = options(
        r#"{"depth": 4, "max_depth_increase": 2, "unusable_judgement_extends_depth": true}"#,
    );
    let r = run(&mut host, &o, &queries(40), &examples()).unwrap();
    assert_eq!(r.final_depth, 6);
}

#[test]
fn a_judgement_that_leaves_out_an_aspect_is_unusable_and_grants_no_level() {
    // The judge gives 5 on Helpfulness and Clarity and leaves out Depth, where it would give 1.
    let mut host = Scripted::new(|_, _, a| if a == "Depth" { 1 } else { 5 });
    host.judge_drops = Some("Depth");
    let o = options(r#"{"depth": 3, "max_depth_increase": 5}"#);
    let r = run(&mut host, &o, &queries(40), &examples()).unwrap();
    assert_eq!(r.tree[0].reward, 0.0);
    assert_eq!(r.tree[0].details["skip"], "no_judgement");
    assert_eq!(r.tree[0].details["aspects"], json!([]));
    assert!(
        r.tree[0].details["judge_problems"][0]
            .as_str()
            .unwrap()
            .contains("no usable score for Depth"),
        "{}",
        r.tree[0].details
    );
    assert_eq!(
        r.final_depth, 3,
        "no extra level for an incomplete judgement"
    );
    assert_eq!(
        r.judgements,
        Judgements {
            asked: 3,
            usable: 0
        }
    );
}

#[test]
fn ranking_by_path_mean_and_by_last_reward() {
    // The judge likes some prompts better: prompt-1 scores 5 on the next query, prompt-2 scores
    // 1, and everything else 3 (no skip except prompt-1's own children, which do not matter).
    let score = |_: &str, system: &str, _: &str| match system {
        "prompt-1" => 4,
        "prompt-2" => 1,
        _ => 3,
    };
    let mut host = Scripted::new(score);
    let r = run(
        &mut host,
        &options(r#"{"depth": 3, "beam_size": 2}"#),
        &queries(9),
        &[],
    )
    .unwrap();
    // Level 0: children prompt-1 (4), prompt-2 (1), prompt-3 (3): the beam keeps 1 and 3.
    let level1: Vec<&TreeNode> = r.tree.iter().filter(|n| n.depth == 1).collect();
    assert_eq!(level1.len(), 3);
    // Level 1 expands prompt-1 then prompt-3 (ranked order), so their children come in that
    // order: prompt-4..6 from prompt-1, prompt-7..9 from prompt-3.
    let level2: Vec<&TreeNode> = r.tree.iter().filter(|n| n.depth == 2).collect();
    assert_eq!(level2.len(), 6);
    assert_eq!(level2[0].parent, Some(level1[0].id));
    assert_eq!(level2[3].parent, Some(level1[2].id));
    // All level-2 children score 3: path means 3.5 (under prompt-1) beat 3.0 (under prompt-3);
    // ties keep creation order, so the first child of prompt-1 wins.
    assert_eq!(r.best_path, vec![0, level1[0].id, level2[0].id]);
    assert_eq!(r.best_score, Some(3.5));
    assert_eq!(level2[0].path_score, 3.5);

    // With a beam of 1 the last reward ranks: everything at level 2 scores 3, so the best is
    // the first child (ties in creation order), with score 3.
    let mut host = Scripted::new(score);
    let r = run(
        &mut host,
        &options(r#"{"depth": 3, "beam_size": 1}"#),
        &queries(9),
        &[],
    )
    .unwrap();
    assert_eq!(r.best_score, Some(3.0));
    assert_eq!(r.tree.iter().filter(|n| n.depth == 2).count(), 3);
}

#[test]
fn aggregation_helpers_rank_stably() {
    let mut items = vec![
        BeamItem {
            node: 0,
            rewards: vec![3.0],
            score: 3.0,
        },
        BeamItem {
            node: 1,
            rewards: vec![4.0],
            score: 4.0,
        },
        BeamItem {
            node: 2,
            rewards: vec![3.0],
            score: 3.0,
        },
        BeamItem {
            node: 3,
            rewards: vec![4.0],
            score: 4.0,
        },
    ];
    rank(&mut items);
    let order: Vec<usize> = items.iter().map(|i| i.node).collect();
    assert_eq!(order, [1, 3, 0, 2]);
}

#[test]
fn new_prompts_are_scored_on_the_next_query() {
    let mut host = Scripted::plain();
    let r = run(&mut host, &options(r#"{"depth": 3}"#), &queries(9), &[]).unwrap();
    for n in &r.tree {
        assert_eq!(n.details["query_index"], n.depth, "node {}", n.id);
    }
    // The root answered query 0, so its optimized children answer query 1.
    assert_eq!(r.tree[1].details["query"], "query number 1?");
}

#[test]
fn queries_running_out_end_the_paths() {
    let mut host = Scripted::plain();
    let r = run(&mut host, &options("{}"), &queries(4), &examples()).unwrap();
    assert_eq!(r.tree.iter().map(|n| n.depth).max(), Some(3));
    assert_eq!(r.best_path.len(), 4);
    assert!(
        host.logs
            .iter()
            .any(|(_, m)| m.contains("queries are used up"))
    );
    // num_training_examples limits the queries used.
    let mut host = Scripted::plain();
    let r = run(
        &mut host,
        &options(r#"{"num_training_examples": 2}"#),
        &queries(9),
        &[],
    )
    .unwrap();
    assert_eq!(r.best_path.len(), 2);
}

#[test]
fn budget_exhaustion_returns_the_best_so_far() {
    let mut host = Scripted::plain();
    // Root (20 selections + base, judge) is 22 requests; level 0 is 1 + 3 + 3; stop in level 1.
    host.budget = Some(22 + 7 + 3);
    let r = run(&mut host, &options("{}"), &queries(40), &examples()).unwrap();
    assert_eq!(r.stop, Some(Stop::BudgetExhausted));
    assert_eq!(r.tree.len(), 4);
    assert_eq!(r.best_path.len(), 2);
    assert_eq!(r.best_score, Some(3.0));
    let details = r.details();
    assert_eq!(details["stopped"], "the budget is exhausted");
    assert_eq!(details["stop"], json!({"kind": "budget-exhausted"}));

    // Exhausted before anything was scored: the initial prompt, no score.
    let mut host = Scripted::plain();
    host.budget = Some(0);
    let r = run(&mut host, &options("{}"), &queries(40), &examples()).unwrap();
    assert_eq!(
        r.best_prompt.as_deref(),
        Some("You are a helpful assistant.")
    );
    assert_eq!(
        (r.best_score, r.best_path.len(), r.tree.len()),
        (None, 0, 0)
    );

    // Sequential mode stops at the first exhausted request.
    let mut host = Scripted::plain();
    host.budget = Some(3);
    let r = run(
        &mut host,
        &options(r#"{"sequential": true}"#),
        &queries(40),
        &examples(),
    )
    .unwrap();
    assert!(r.stop.is_some());
    assert_eq!(host.calls.len(), 4);
}

#[test]
fn garbage_optimizer_answers_keep_the_prompt() {
    let mut host = Scripted::plain();
    host.optimizer_garbage = true;
    let r = run(&mut host, &options(r#"{"depth": 3}"#), &queries(9), &[]).unwrap();
    assert_eq!(r.tree.len(), 3);
    assert!(host.warnings("candidate 0 dropped") >= 1);
    assert!(host.warnings("no usable candidate") >= 1);
    assert_eq!(r.tree[1].details["origin"], "kept");
}

#[test]
fn retrieval_picks_similar_examples() {
    let mut host = Scripted::plain();
    let mut qs = queries(3);
    qs[0].text = "Write code for me?".to_string();
    run(&mut host, &options(r#"{"depth": 1}"#), &qs, &examples()).unwrap();
    let text = user_text(&host.base_prompts[0]);
    // The two "code" examples, in pool order (equal similarity).
    assert!(text.contains("# Query:\nHow do I write code?\n\n#Answer:"));
    assert!(text.contains("#Query:\nDebug my code.\n\n#Answer:"));
    assert!(!text.contains("rivers"));
    assert!(text.ends_with("# Query:\nWrite code for me?\n\n# Answer:\n<START>"));
}

#[test]
fn unavailable_embeddings_fall_back_to_the_fixed_examples_once() {
    let mut host = Scripted::plain();
    host.embed = Err(LlmError::Unavailable("no embedder".into()));
    let mut qs = queries(5);
    qs[0].text = "Write code for me?".to_string();
    run(&mut host, &options(r#"{"depth": 3}"#), &qs, &examples()).unwrap();
    assert_eq!(host.embed_calls, 1);
    assert_eq!(host.warnings("no embeddings"), 1);
    let text = user_text(&host.base_prompts[0]);
    assert!(text.contains("How do I write code?") && text.contains("Tell me about rivers."));
    assert!(!text.contains("Debug my code."));

    // ret_icl off: no embedding call at all, same fixed pair.
    let mut host = Scripted::plain();
    run(
        &mut host,
        &options(r#"{"depth": 1, "ret_icl": false}"#),
        &qs,
        &examples(),
    )
    .unwrap();
    assert_eq!(host.embed_calls, 0);
}

#[test]
fn without_retrieval_the_base_model_sees_the_first_k_examples() {
    let shown = |host: &Scripted| {
        let text = user_text(&host.base_prompts[0]);
        let examples = examples();
        let shown: Vec<usize> = (0..examples.len())
            .filter(|&i| text.contains(&examples[i].query))
            .collect();
        shown
    };
    for (k, first) in [(1, vec![0]), (3, vec![0, 1, 2])] {
        let mut host = Scripted::plain();
        let o = options(&format!(r#"{{"depth": 1, "ret_icl": false, "k": {k}}}"#));
        run(&mut host, &o, &queries(2), &examples()).unwrap();
        assert_eq!(shown(&host), first, "ret_icl off, k {k}");

        let mut host = Scripted::plain();
        host.embed = Err(LlmError::Unavailable("no embedder".into()));
        let o = options(&format!(r#"{{"depth": 1, "k": {k}}}"#));
        run(&mut host, &o, &queries(2), &examples()).unwrap();
        assert_eq!(shown(&host), first, "no embedder, k {k}");
    }
}

#[test]
fn base_models_get_system_and_user_messages() {
    let mut host = Scripted::plain();
    run(
        &mut host,
        &options(r#"{"depth": 1}"#),
        &queries(2),
        &examples(),
    )
    .unwrap();
    let Prompt::Chat(messages) = &host.base_prompts[0] else {
        panic!("chat expected")
    };
    assert_eq!(messages.len(), 2);
    assert!(
        messages[0]
            .content
            .starts_with("# instructions\n\nYou are a helpful assistant.")
    );
    assert!(messages[1].content.starts_with("# Query:\n"));
}

#[test]
fn nodes_are_reported_with_their_details() {
    let mut host = Scripted::plain();
    let r = run(
        &mut host,
        &options(r#"{"depth": 2}"#),
        &queries(5),
        &examples(),
    )
    .unwrap();
    assert_eq!(host.nodes.len(), 4);
    let root = &host.nodes[0];
    assert_eq!((root.id, root.parent, root.depth), (0, None, 0));
    let d: Value = serde_json::from_str(&root.details).unwrap();
    assert_eq!(d["query"], "query number 0?");
    assert_eq!(d["aspects"].as_array().unwrap().len(), 3);
    assert_eq!(d["aspects"][0]["rationale"], "Helpfulness is fine");
    assert_eq!(d["metrics_reasoning"], "these matter");
    assert_eq!(d["origin"], "initial");
    assert!(d["answer"].as_str().unwrap().ends_with("query number 0?"));
    let child: Value = serde_json::from_str(&host.nodes[1].details).unwrap();
    assert_eq!(child["origin"], "optimized");
    assert_eq!(child["path_score"], 3.0);
    assert_eq!(host.nodes[1].parent, Some(0));
    assert_eq!(host.nodes[1].prompt, "prompt-1");

    let outcome = r.to_outcome();
    let details: Value = serde_json::from_str(&outcome.details).unwrap();
    assert_eq!(details["tree"].as_array().unwrap().len(), 4);
    assert_eq!(details["new_metrics_cache"].as_object().unwrap().len(), 2);
    assert_eq!(details["trace"].as_array().unwrap().len(), 2);
    assert_eq!(details["stats"]["requests"]["base"], 4);
    assert_eq!(outcome.best_path, r.best_path);
}

/// A scripted host whose every request of one role fails with the given error.
struct Failing {
    inner: Scripted,
    role: Role,
    error: LlmError,
}

impl Failing {
    fn new(role: Role, error: LlmError) -> Self {
        Failing {
            inner: Scripted::plain(),
            role,
            error,
        }
    }
}

impl Host for Failing {
    fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>> {
        let roles: Vec<Role> = batch.iter().map(|r| r.role).collect();
        let mut out = self.inner.complete(batch);
        for (r, role) in out.iter_mut().zip(roles) {
            if role == self.role {
                *r = Err(self.error.clone());
            }
        }
        out
    }
    fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        self.inner.embed(texts)
    }
    fn record_node(&mut self, node: Node) {
        self.inner.record_node(node)
    }
    fn log(&mut self, level: LogLevel, message: String) {
        self.inner.log(level, message)
    }
}

#[test]
fn failed_base_answers_score_zero_without_a_judge_call() {
    let mut host = Failing::new(Role::Base, LlmError::Unavailable("down".into()));
    let r = run(&mut host, &options(r#"{"depth": 2}"#), &queries(5), &[]).unwrap();
    assert_eq!(host.inner.requests(Role::Judge), 0);
    assert!(r.tree.iter().all(|n| n.reward == 0.0));
    assert!(
        r.tree[0].details["judge_problems"][0]
            .as_str()
            .unwrap()
            .contains("base model failed")
    );
    // A transient failure, however widespread, does not stop the search.
    assert_eq!(r.stop, None);
    assert_eq!(
        r.judgements,
        Judgements {
            asked: 2,
            usable: 0
        }
    );
}

#[test]
fn a_role_rejected_on_every_request_of_a_level_stops_the_search() {
    let error = "the model gpt-x does not exist";
    for sequential in [false, true] {
        let mut host = Failing::new(Role::Optimizer, LlmError::Rejected(error.into()));
        let o = options(&format!(r#"{{"depth": 5, "sequential": {sequential}}}"#));
        let r = run(&mut host, &o, &queries(9), &examples()).unwrap();
        assert_eq!(
            r.stop,
            Some(Stop::RoleFailed {
                role: Role::Optimizer,
                error: error.into()
            })
        );
        // The root was scored; nothing after the failed level was asked for.
        assert_eq!(r.tree.len(), 1);
        assert_eq!(host.inner.requests(Role::Optimizer), 1);
        assert_eq!(host.inner.requests(Role::Base), 1);
        assert_eq!(
            r.best_prompt.as_deref(),
            Some("You are a helpful assistant.")
        );
        let details = r.details();
        assert_eq!(
            details["stop"],
            json!({"kind": "role-failed", "role": "optimizer", "error": error})
        );
        assert!(
            details["stopped"].as_str().unwrap().contains(error),
            "{}",
            details["stopped"]
        );
        assert_eq!(details["judgements"], json!({"asked": 1, "usable": 1}));
    }

    // The judge rejected at the root: the search stops before any level, with the count.
    let mut host = Failing::new(Role::Judge, LlmError::Rejected(error.into()));
    let r = run(&mut host, &options("{}"), &queries(9), &examples()).unwrap();
    assert_eq!(
        Stop::details(r.stop.as_ref()),
        json!({"kind": "role-failed", "role": "judge", "error": error})
    );
    assert_eq!(
        r.judgements,
        Judgements {
            asked: 1,
            usable: 0
        }
    );
    assert_eq!((r.best_score, r.tree.len()), (None, 0));
}

#[test]
fn a_rejection_of_some_requests_of_a_role_does_not_stop_the_search() {
    // Only the answers under one of the optimizer's prompts are rejected.
    struct OneRejected(Scripted);
    impl Host for OneRejected {
        fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>> {
            let rejected: Vec<bool> = batch
                .iter()
                .map(|r| r.role == Role::Base && user_text(&r.prompt).contains("prompt-2"))
                .collect();
            let mut out = self.0.complete(batch);
            for (r, rejected) in out.iter_mut().zip(rejected) {
                if rejected {
                    *r = Err(LlmError::Rejected("prompt too long".into()));
                }
            }
            out
        }
        fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
            self.0.embed(texts)
        }
        fn record_node(&mut self, node: Node) {
            self.0.record_node(node)
        }
        fn log(&mut self, level: LogLevel, message: String) {
            self.0.log(level, message)
        }
    }
    let mut host = OneRejected(Scripted::plain());
    let r = run(&mut host, &options(r#"{"depth": 3}"#), &queries(9), &[]).unwrap();
    assert_eq!(r.stop, None);
    assert_eq!(r.tree.len(), 1 + 3 + 6);
    assert_eq!(
        r.judgements,
        Judgements {
            asked: 10,
            usable: 9
        }
    );
}

#[test]
fn bad_inputs_are_errors() {
    let mut host = Scripted::plain();
    assert!(run(&mut host, &options("{}"), &[], &[]).is_err());
    let mut bad = options("{}");
    bad.k = 0;
    assert!(
        run(&mut host, &bad, &queries(3), &[])
            .unwrap_err()
            .contains("k must")
    );
}

#[test]
fn the_demo_data_runs_end_to_end() {
    let queries = data::parse_queries_jsonl(data::DEMO_QUERIES_JSONL).unwrap();
    let examples = data::parse_examples(data::DEMO_EXAMPLES_JSON).unwrap();
    let mut host = Scripted::plain();
    let r = run(
        &mut host,
        &options(r#"{"depth": 4, "k": 3}"#),
        &queries,
        &examples,
    )
    .unwrap();
    assert_eq!(r.best_path.len(), 4);
    assert!(r.best_prompt.as_deref().unwrap().starts_with("prompt-"));
    assert_eq!(
        r.tree[0].details["icl_examples"].as_array().unwrap().len(),
        3
    );
}

#[test]
fn patience_ends_a_search_whose_best_path_stops_improving() {
    // Every answer scores 3: level 1's best path scores 3, and levels 2 and 3 do no better.
    let mut host = Scripted::plain();
    let r = run(
        &mut host,
        &options(r#"{"depth": 20, "beam_size": 2, "patience": 2}"#),
        &queries(40),
        &examples(),
    )
    .unwrap();
    let deepest = r.tree.iter().map(|n| n.depth).max().unwrap();
    assert_eq!(deepest, 3, "levels 2 and 3 did not improve on level 1");
    assert!(r.stop.is_none(), "patience is not a failure");
    assert_eq!(r.best_score, Some(3.0));
    assert_eq!(r.best_path.len(), 4, "the best path ends at level 3");
    let details = r.details();
    assert_eq!(
        details["patience"],
        json!({"levels": 2, "ended_after_level": 3, "best_level": 1})
    );
    assert!(
        details["ended_early"]
            .as_str()
            .unwrap()
            .starts_with("patience: no better score for 2 level(s) since level 1"),
        "{details}"
    );

    // Without patience the same search runs to its depth limit.
    let mut host = Scripted::plain();
    let r = run(
        &mut host,
        &options(r#"{"depth": 6}"#),
        &queries(40),
        &examples(),
    )
    .unwrap();
    assert_eq!(r.tree.iter().map(|n| n.depth).max(), Some(5));
    assert_eq!(r.details()["patience"], Value::Null);
    assert_eq!(r.details()["ended_early"], Value::Null);
}

#[test]
fn held_out_queries_choose_the_prompt_that_generalises() {
    // On the search's queries the judge likes "prompt-1" best (4) and the initial prompt least
    // (1); on the held-out queries only "prompt-1" scores well. The search's own best is a
    // deeper path, prompt-1's child; validation picks prompt-1 itself.
    let mut host = Scripted::new(
        |query, system, _| match (query.contains("held out"), system) {
            (true, "prompt-1") => 5,
            (true, _) => 2,
            (false, "prompt-1") => 4,
            (false, "You are a helpful assistant.") => 1,
            (false, _) => 3,
        },
    );
    let o = options(r#"{"depth": 3, "n_actions": 2, "validation": 2, "validation_candidates": 2}"#);
    let held = held_out(2);
    let searched = run(
        &mut Scripted::new(|_, _, _| 3),
        &o,
        &queries(3),
        &examples(),
    )
    .unwrap();
    let outcome = run_and_validate(&mut host, &o, &queries(3), &held, &examples()).unwrap();
    let details: Value = serde_json::from_str(&outcome.details).unwrap();
    let validation = &details["validation"];
    let by_search = validation["best_by_search_node"].as_u64().unwrap();
    assert_ne!(by_search, 1, "{validation}");
    assert_eq!(validation["chosen_node"], 1, "{validation}");
    assert_eq!(outcome.best_prompt.as_deref(), Some("prompt-1"));
    assert_eq!(
        (outcome.best_path.clone(), outcome.best_score),
        (vec![0, 1], Some(5.0))
    );
    let validated: Vec<u64> = validation["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_u64().unwrap())
        .collect();
    assert_eq!(
        validated,
        [by_search, 1, 0],
        "the search's best, the next distinct, the root"
    );
    assert_eq!(validation["queries"], json!(["h0", "h1"]));
    // The search's calls, then one embedding and two batched calls for the validation.
    assert_eq!(
        host.requests(Role::Base),
        searched.stats.requests(Role::Base) as usize + 6,
        "three candidates on two held-out queries"
    );
    let last_two: Vec<&Vec<Role>> = host.calls.iter().rev().take(2).collect();
    assert_eq!(last_two[0], &vec![Role::Judge; 6]);
    assert_eq!(last_two[1].iter().filter(|r| **r == Role::Base).count(), 6);
    assert_eq!(host.embed_calls, 2);
    assert!(details["new_metrics_cache"]["held out query 0?"].is_object());
    assert_eq!(
        details["judgements"]["asked"].as_u64(),
        Some(u64::from(searched.judgements.asked) + 6)
    );
}

#[test]
fn a_judge_asked_twice_per_answer_is_averaged_and_its_agreement_reported() {
    let o =
        options(r#"{"depth": 3, "n_actions": 2, "judge_repeats": 2, "judge_temperature": 0.5}"#);
    let mut host = Scripted::plain();
    let r = run(&mut host, &o, &queries(5), &examples()).unwrap();
    assert_eq!(host.requests(Role::Judge), 2 * host.requests(Role::Base));
    assert_eq!(r.judgements.asked as usize, host.requests(Role::Base));
    let details = r.details();
    // The scripted judge answers alike whatever the seed.
    assert_eq!(details["judge_spread"]["agreement"], 1.0, "{details}");
    assert_eq!(details["judge_spread"]["repeats"], 2);
    for e in crate::estimate::estimate(&o) {
        let made = host.requests(e.role) as u64;
        assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
    }
    let plain = run(
        &mut Scripted::plain(),
        &options(r#"{"depth": 3}"#),
        &queries(5),
        &[],
    )
    .unwrap();
    assert!(plain.details().get("judge_spread").is_none());
    let greedy_judge = Options::from_json(r#"{"judge_repeats": 3}"#).unwrap_err();
    assert!(
        greedy_judge.contains("judge_temperature above 0"),
        "{greedy_judge}"
    );
}

#[test]
fn a_candidate_that_quotes_the_query_it_was_written_from_is_dropped() {
    // The root answers "prompt 1", and the optimizer's first candidate is "prompt-1": a prompt
    // for that query only.
    let mut q = queries(4);
    q[0].text = "prompt 1".into();
    let level_one = |o: &Options| {
        let mut host = Scripted::plain();
        let r = run(&mut host, o, &q, &examples()).unwrap();
        let prompts: Vec<String> = r
            .tree
            .iter()
            .filter(|n| n.depth == 1)
            .map(|n| n.prompt.clone())
            .collect();
        (
            prompts,
            host.warnings("repeats 2 consecutive words of the query"),
        )
    };
    let strict = options(r#"{"depth": 2, "n_actions": 2}"#);
    assert_eq!(level_one(&strict), (vec!["prompt-2".to_owned()], 1));
    let published = options(r#"{"depth": 2, "n_actions": 2, "query_quote_words": 0}"#);
    assert_eq!(
        level_one(&published),
        (vec!["prompt-1".to_owned(), "prompt-2".to_owned()], 0)
    );
}

#[test]
fn a_beam_whose_every_candidate_quotes_the_query_asks_the_optimizer_again() {
    // The only candidate, "prompt-1", is a prompt for the query "prompt 1"; the second request
    // (shown that answer and why it was dropped) gets "prompt-2".
    let mut q = queries(4);
    q[0].text = "prompt 1".into();
    let mut host = Scripted::plain();
    let o = options(r#"{"depth": 2, "n_actions": 1}"#);
    let r = run(&mut host, &o, &q, &examples()).unwrap();
    let level_one: Vec<&str> = r
        .tree
        .iter()
        .filter(|n| n.depth == 1)
        .map(|n| n.prompt.as_str())
        .collect();
    assert_eq!(level_one, ["prompt-2"]);
    assert_eq!(host.requests(Role::Optimizer), 2);
    assert_eq!(
        host.warnings("node 0 candidate 0 dropped: it repeats 2 consecutive words"),
        1
    );
    for e in crate::estimate::estimate(&o) {
        let made = host.requests(e.role) as u64;
        assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
    }
}

#[test]
fn a_search_stopped_before_its_root_was_scored_skips_validation_without_a_call() {
    let o = options(r#"{"depth": 3, "validation": 2}"#);
    let held: Vec<Query> = queries(2);
    for budget in [0, 1] {
        let mut host = Scripted::plain();
        host.budget = Some(budget);
        let outcome = run_and_validate(&mut host, &o, &queries(4), &held, &examples()).unwrap();
        let details: Value = serde_json::from_str(&outcome.details).unwrap();
        assert_eq!(
            details["validation"]["skipped"], "the search stopped early",
            "{details}"
        );
        assert_eq!(host.embed_calls, 1, "only the search's own embedding");
    }
}

#[test]
fn validating_during_the_search_lets_patience_follow_the_held_out_mean() {
    // Later prompts score higher on the search's queries, never on the held-out ones.
    let score = |query: &str, system: &str, _: &str| -> u8 {
        if query.contains("held out") {
            return 3;
        }
        let n: u8 = system.trim_start_matches("prompt-").parse().unwrap_or(0);
        (2 + n / 3).min(4)
    };
    let held = held_out(2);
    let o = options(
        r#"{"depth": 6, "n_actions": 2, "patience": 1, "validation": 2, "validation_every": 1}"#,
    );
    let mut host = Scripted::new(score);
    let outcome = run_and_validate(&mut host, &o, &queries(8), &held, &examples()).unwrap();
    let details: Value = serde_json::from_str(&outcome.details).unwrap();
    let levels = details["level_validations"].as_array().unwrap();
    assert_eq!(levels.len(), 2, "{details}");
    assert_eq!(levels[0]["best"], 3.0);
    assert_eq!(details["patience"]["ended_after_level"], 2, "{details}");
    assert!(details["validation"]["chosen_node"].is_u64());
    for e in crate::estimate::estimate(&o) {
        let made = host.requests(e.role) as u64;
        assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
    }

    // Without it, patience follows the rising path score and the search goes on.
    let o = options(r#"{"depth": 6, "n_actions": 2, "patience": 1, "validation": 2}"#);
    let mut host = Scripted::new(score);
    let outcome = run_and_validate(&mut host, &o, &queries(8), &held, &examples()).unwrap();
    let details: Value = serde_json::from_str(&outcome.details).unwrap();
    assert!(details.get("level_validations").is_none());
    assert_eq!(
        details["patience"],
        json!({"levels": 1, "ended_after_level": null, "best_level": 5})
    );
    let refused = Options::from_json(r#"{"validation_every": 2}"#).unwrap_err();
    assert!(refused.contains("validation_every needs"), "{refused}");
}

#[test]
fn the_judge_spread_covers_the_held_out_judgements_too() {
    let held = held_out(2);
    let o = options(
        r#"{"depth": 3, "n_actions": 2, "judge_repeats": 2, "judge_temperature": 0.5,
            "validation": 2, "validation_every": 1}"#,
    );
    let mut host = Scripted::plain();
    let searched = run(&mut Scripted::plain(), &o, &queries(5), &examples()).unwrap();
    let outcome = run_and_validate(&mut host, &o, &queries(5), &held, &examples()).unwrap();
    let details: Value = serde_json::from_str(&outcome.details).unwrap();
    assert!(details["level_validations"].is_array(), "{details}");
    // Every answer judged (twice), in the search, at each level's validation and at the end,
    // has its three aspects' repeats compared.
    let answers = host.requests(Role::Judge) as u64 / 2;
    assert!(answers > searched.judgements.asked as u64, "{details}");
    assert_eq!(details["judge_spread"]["pairs"], 3 * answers, "{details}");
    assert_eq!(details["judgements"]["asked"], answers, "{details}");
}

#[test]
fn a_judge_asked_per_aspect_gives_the_search_the_same_rewards_in_more_requests() {
    let score = |query: &str, system: &str, aspect: &str| -> u8 {
        ((query.len() + system.len() + aspect.len()) % 5 + 1) as u8
    };
    let together = options(r#"{"depth": 3, "n_actions": 2}"#);
    let apart = options(r#"{"depth": 3, "n_actions": 2, "judge_per_aspect": true}"#);
    let mut one = Scripted::new(score);
    let mut each = Scripted::new(score);
    let r1 = run(&mut one, &together, &queries(5), &examples()).unwrap();
    let r2 = run(&mut each, &apart, &queries(5), &examples()).unwrap();
    let rewards = |r: &SearchResult| r.tree.iter().map(|n| n.reward).collect::<Vec<_>>();
    assert_eq!(rewards(&r1), rewards(&r2));
    assert_eq!(r1.best_prompt, r2.best_prompt);
    assert_eq!(r1.judgements, r2.judgements);
    // Three aspects per answer, each in a request of its own, in the same calls.
    assert_eq!(each.requests(Role::Judge), 3 * one.requests(Role::Judge));
    assert_eq!(each.calls.len(), one.calls.len());
    for e in crate::estimate::estimate(&apart) {
        let made = each.requests(e.role) as u64;
        assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
    }
    // An aspect the judge leaves out makes the judgement unusable, as in one request.
    let mut dropping = Scripted::plain();
    dropping.judge_drops = Some("Clarity");
    let dropped = run(&mut dropping, &apart, &queries(5), &examples()).unwrap();
    assert_eq!(dropped.judgements.usable, 0);
    assert!(dropping.warnings("Clarity") > 0);
}

#[test]
fn the_pairwise_reward_optimizes_what_the_judge_grades_perfect_and_keeps_a_winner() {
    // The judge grades every answer 5 on every aspect, but compared side by side it prefers
    // the answers written under prompt-2 (the optimizer's second candidate) to any other.
    let prefers_prompt_2 = |_: &str, first: &str, second: &str| match (first, second) {
        ("prompt-2", "prompt-2") => "tie",
        ("prompt-2", _) => "first",
        (_, "prompt-2") => "second",
        _ => "tie",
    };
    let json = r#"{"depth": 3, "beam_size": 2, "n_actions": 2, "max_depth_increase": 0"#;
    let absolute = options(&format!("{json}}}"));
    let pairwise = options(&format!(r#"{json}, "reward": "pairwise"}}"#));
    let mut graded = Scripted::new(|_, _, _| 5);
    graded.prefer = Some(Box::new(prefers_prompt_2));
    let kept = run(&mut graded, &absolute, &queries(4), &examples()).unwrap();
    // Graded alone, every answer is perfect: the prompt is kept and never rewritten.
    assert_eq!(
        kept.best_prompt.as_deref(),
        Some("You are a helpful assistant.")
    );
    assert_eq!(graded.requests(Role::Optimizer), 0);

    let mut compared = Scripted::new(|_, _, _| 5);
    compared.prefer = Some(Box::new(prefers_prompt_2));
    let r = run(&mut compared, &pairwise, &queries(4), &examples()).unwrap();
    assert_eq!(r.best_prompt.as_deref(), Some("prompt-2"));
    // Level 1: prompt-2 won (1) and its parent's prompt, kept beside it, tied (0.5); level 2:
    // prompt-2 kept (0.5) beat the candidates written from it.
    assert_eq!(r.best_score, Some(0.75));
    let best = &r.tree[r.best_path[1] as usize];
    assert_eq!(best.reward, 1.0);
    assert_eq!(best.details["pairwise"]["better"], "second");
    let against = best.details["pairwise"]["against"].as_u64().unwrap() as usize;
    assert_eq!(r.tree[against].details["origin"], "kept");
    assert_eq!(r.tree[against].prompt, "You are a helpful assistant.");
    assert_eq!(r.tree[against].reward, 0.5);
    assert_eq!(best.details["judge_mean"], 5.0);
    assert_eq!(
        r.comparisons,
        Some(Comparisons {
            wins: 1,
            ties: 3,
            losses: 2,
            unusable: 0
        })
    );
    assert_eq!(r.details()["comparisons"]["wins"], 1);
    assert!(
        r.details()["comparisons"]["summary"]
            .as_str()
            .unwrap()
            .contains("won 1, tied 3 and lost 2")
    );
    assert!(kept.details().get("comparisons").is_none());
    // Ten answers, each graded, and six candidates compared in both orders: the most the
    // estimate projects for these options.
    assert_eq!(compared.requests(Role::Base), 10);
    assert_eq!(compared.requests(Role::Judge), 10 + 12);
    assert_eq!(
        r.judgements,
        Judgements {
            asked: 22,
            usable: 22
        }
    );
    for e in crate::estimate::estimate(&pairwise) {
        let made = compared.requests(e.role) as u64;
        assert!(e.min_calls <= made && made <= e.max_calls, "{e:?}: {made}");
        if e.role != Role::Optimizer {
            assert_eq!(made, e.max_calls, "{e:?}");
        }
    }
}

#[test]
fn a_judge_that_only_prefers_a_position_changes_no_prompt() {
    let pairwise = options(r#"{"depth": 3, "n_actions": 2, "reward": "pairwise"}"#);
    let mut host = Scripted::plain();
    host.prefer = Some(Box::new(|_, _, _| "first"));
    let r = run(&mut host, &pairwise, &queries(4), &examples()).unwrap();
    assert_eq!(
        r.best_prompt.as_deref(),
        Some("You are a helpful assistant.")
    );
    assert_eq!(r.best_score, Some(0.5));
    let comparisons = r.comparisons.unwrap();
    assert_eq!((comparisons.wins, comparisons.losses), (0, 0));
    assert_eq!(comparisons.ties, 6);
    assert!(
        r.tree
            .iter()
            .filter(|n| n.details.get("pairwise").is_some())
            .all(|n| n.details["pairwise"]["flip"] == true)
    );
}

#[test]
fn comparisons_the_judge_cannot_answer_count_as_ties_and_are_reported() {
    let pairwise = options(r#"{"depth": 3, "n_actions": 2, "reward": "pairwise"}"#);
    let mut host = Scripted::plain();
    host.prefer = Some(Box::new(|_, _, _| "both"));
    let r = run(&mut host, &pairwise, &queries(4), &examples()).unwrap();
    assert_eq!(r.comparisons.unwrap().unusable, 6);
    assert!(
        r.tree
            .iter()
            .filter(|n| n.depth > 0)
            .all(|n| n.reward == 0.5)
    );
    assert_eq!(
        r.judgements,
        Judgements {
            asked: 22,
            usable: 10
        }
    );
    assert_eq!(host.warnings("comparison of a candidate"), 12);
}

#[test]
fn candidates_that_paste_the_reply_they_were_shown_are_dropped_and_asked_for_again() {
    // A long initial prompt, so that the base model's reply (which repeats it) is long.
    let initial = "You are a careful assistant who answers every question with clear reasons \
        and plain words for a reader new to the subject";
    let json = json!({"depth": 2, "n_actions": 2, "initial_system_prompt": initial});
    let mut host = Scripted::plain();
    host.optimizer_pastes_reply = true;
    let r = run(
        &mut host,
        &options(&json.to_string()),
        &queries(3),
        &examples(),
    )
    .unwrap();
    assert_eq!(
        host.warnings("consecutive words of the answer it was written from"),
        4
    );
    // Asked once more, told why, and its second answer pasted the reply too: the prompt is kept.
    assert_eq!(host.requests(Role::Optimizer), 2);
    assert_eq!(r.best_prompt.as_deref(), Some(initial));
    // With the guard off, the pasted reply is a candidate like any other.
    let mut off = Scripted::plain();
    off.optimizer_pastes_reply = true;
    let unguarded = json!({"depth": 2, "n_actions": 2, "initial_system_prompt": initial,
        "query_quote_words": 0});
    let r = run(
        &mut off,
        &options(&unguarded.to_string()),
        &queries(3),
        &examples(),
    )
    .unwrap();
    assert_eq!(off.requests(Role::Optimizer), 1);
    assert!(r.tree.iter().any(|n| n.prompt == format!("[{initial}]")));
}

/// `n` held-out queries, `h0`, `h1`, ...
fn held_out(n: usize) -> Vec<Query> {
    (0..n)
        .map(|i| Query {
            id: format!("h{i}"),
            text: format!("held out query {i}?"),
            tags: vec![],
        })
        .collect()
}
