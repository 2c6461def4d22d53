//! A scripted [`Host`] for testing a search natively (`cargo test`, no WebAssembly): it plays
//! the four DRPO roles with answers in the shapes the [`crate::engine`] expects, and
//! keeps every request, node and log line for assertions. A request it has answered before gets
//! the same answer again, as a deterministic model or the host's response cache gives it, so a
//! search that repeats a request cannot pass a test on a second answer it would never get.

use std::collections::HashMap;

use crate::types::{
    Completion, Example, Host, LlmError, LogLevel, Node, Prompt, Query, Request, Role, Usage,
};
use serde_json::{Map, Value, json};

/// Scores a judged answer: receives the judge's prompt (which quotes the base model's answer,
/// and the scripted base model answers with its whole prompt, so the candidate system prompt is
/// in there) and returns the score for every aspect.
pub type ScoreFn = Box<dyn FnMut(&str) -> u8>;

/// Scores one aspect of a judged answer: `(judge's prompt, aspect name) -> score`.
pub type AspectScoreFn = Box<dyn FnMut(&str, &str) -> u8>;

/// Writes the `choice`-th new system prompt from the optimizer's prompt.
pub type ProposeFn = Box<dyn FnMut(&str, u32) -> String>;

/// `n` training queries, `q0` to `q{n-1}`, each a distinct question.
pub fn queries(n: usize) -> Vec<Query> {
    (0..n)
        .map(|i| Query {
            id: format!("q{i}"),
            text: format!("question {i}?"),
            tags: vec![],
        })
        .collect()
}

/// A judge's answer to a pairwise comparison ([`crate::pairwise`]) that names `better`.
pub fn comparison_answer(better: &str) -> Result<Completion, LlmError> {
    Ok(Completion {
        choices: vec![json!({"analysis": "because", "better": better}).to_string()],
        usage: Usage::default(),
    })
}

/// A query compared in both orders, the judge naming `in_order`, then `swapped`.
pub fn compared(in_order: &str, swapped: &str) -> crate::pairwise::Pair {
    crate::pairwise::read_pair(
        &mut [comparison_answer(in_order), comparison_answer(swapped)].into_iter(),
    )
}

/// A host whose models are closures.
pub struct ScriptedHost {
    score: ScoreFn,
    propose: ProposeFn,
    /// Every request, in order.
    pub requests: Vec<Request>,
    /// How many `complete` calls were made.
    pub complete_calls: usize,
    /// Every recorded node, in order.
    pub nodes: Vec<Node>,
    /// Every log line, in order.
    pub logs: Vec<(LogLevel, String)>,
    /// After this many requests, every further request answers `budget-exhausted`.
    pub budget: Option<usize>,
    /// Every request of this role is rejected with this message (a model that does not exist).
    pub reject: Option<(Role, String)>,
    /// The key of the optimizer's answer that holds what `propose` wrote (default
    /// `new_system_prompt`; a strategy that rewrites answers asks for another).
    pub optimizer_field: String,
    /// The training queries a strategy under test is given (none unless set).
    pub queries: Vec<Query>,
    /// The in-context examples a strategy under test is given (none unless set).
    pub examples: Vec<Example>,
    /// Scores each aspect on its own when set: `(judge's prompt, aspect name) -> score`,
    /// instead of one score for every aspect.
    pub score_aspect: Option<AspectScoreFn>,
    /// The choices given to each request answered, by the request's JSON.
    answered: HashMap<String, Vec<String>>,
}

impl ScriptedHost {
    /// A host whose judge scores with `score` and whose optimizer writes with `propose`; the
    /// metrics model always picks Helpfulness and Clarity.
    pub fn new(
        score: impl FnMut(&str) -> u8 + 'static,
        propose: impl FnMut(&str, u32) -> String + 'static,
    ) -> Self {
        ScriptedHost {
            score: Box::new(score),
            propose: Box::new(propose),
            requests: Vec::new(),
            complete_calls: 0,
            nodes: Vec::new(),
            logs: Vec::new(),
            budget: None,
            reject: None,
            optimizer_field: "new_system_prompt".into(),
            queries: Vec::new(),
            examples: Vec::new(),
            score_aspect: None,
            answered: HashMap::new(),
        }
    }

    /// How many requests went to `role`.
    pub fn requests_for(&self, role: Role) -> usize {
        self.requests.iter().filter(|r| r.role == role).count()
    }

    fn answer(&mut self, request: &Request) -> Vec<String> {
        let text = match &request.prompt {
            Prompt::Raw(text) => text.clone(),
            Prompt::Chat(messages) => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        match request.role {
            Role::Base => vec![text],
            Role::Metrics => vec![
                json!({"query_analysis": {}, "aspects_selection": {
                    "reasoning": "scripted", "selected_aspects": ["Helpfulness", "Clarity"]}})
                .to_string(),
            ],
            Role::Judge => {
                let score = (self.score)(&text);
                let schema: Value = request
                    .json_schema
                    .as_deref()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(Value::Null);
                let mut judgement = Map::new();
                for aspect in schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    let score = match &mut self.score_aspect {
                        Some(per_aspect) => per_aspect(&text, aspect),
                        None => score,
                    };
                    judgement.insert(
                        aspect.clone(),
                        json!({"rationale": format!("scripted {score}"), "score": score}),
                    );
                }
                vec![Value::Object(judgement).to_string()]
            }
            Role::Optimizer => (0..request.sampling.n.max(1))
                .map(|i| {
                    let mut answer = json!({"analysis": "scripted", "thought": "scripted"});
                    answer[self.optimizer_field.as_str()] = Value::from((self.propose)(&text, i));
                    answer.to_string()
                })
                .collect(),
        }
    }
}

impl Host for ScriptedHost {
    fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>> {
        self.complete_calls += 1;
        batch
            .into_iter()
            .map(|request| {
                if self.budget.is_some_and(|b| self.requests.len() >= b) {
                    return Err(LlmError::BudgetExhausted);
                }
                if let Some((role, message)) = &self.reject
                    && *role == request.role
                {
                    let error = LlmError::Rejected(message.clone());
                    self.requests.push(request);
                    return Err(error);
                }
                let key = serde_json::to_string(&request).unwrap_or_default();
                let choices = match self.answered.get(&key) {
                    Some(choices) => choices.clone(),
                    None => {
                        let choices = self.answer(&request);
                        self.answered.insert(key, choices.clone());
                        choices
                    }
                };
                self.requests.push(request);
                Ok(Completion {
                    choices,
                    usage: Usage::default(),
                })
            })
            .collect()
    }

    fn embed(&mut self, _texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        Err(LlmError::Unavailable(
            "the scripted host has no embedding model".into(),
        ))
    }

    fn record_node(&mut self, node: Node) {
        self.nodes.push(node);
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.logs.push((level, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{RequestSettings, Scorer, Stop};

    fn query(id: &str) -> Query {
        Query {
            id: id.into(),
            text: format!("question {id}?"),
            tags: Vec::new(),
        }
    }

    #[test]
    fn the_scorer_batches_and_reuses_aspect_selections() {
        let mut host = ScriptedHost::new(
            |judged| if judged.contains("careful") { 5 } else { 2 },
            |_, i| format!("prompt {i}"),
        );
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let candidates = vec![
            ("Be careful.".to_string(), query("a")),
            ("Be quick.".to_string(), query("a")),
            ("Be careful.".to_string(), query("b")),
        ];
        let evaluations = scorer.evaluate(&mut host, &candidates).unwrap();
        let rewards: Vec<f64> = evaluations.iter().map(|e| e.reward).collect();
        assert_eq!(rewards, [5.0, 2.0, 5.0]);
        assert_eq!(
            host.complete_calls, 2,
            "selections with answers, then judgements"
        );
        assert_eq!(
            host.requests_for(Role::Metrics),
            2,
            "one per distinct query"
        );
        let details = evaluations[1].details();
        assert_eq!(details["query_id"], "a");
        assert_eq!(details["aspects"][0]["name"], "Helpfulness");
        assert_eq!(details["aspects"][0]["score"], 2);

        scorer.evaluate(&mut host, &candidates[..1]).unwrap();
        assert_eq!(host.requests_for(Role::Metrics), 2, "query a is known now");

        let proposals = scorer
            .propose(&mut host, &evaluations[1], &["Be quick.".into()], 3)
            .unwrap();
        assert_eq!(proposals, ["prompt 0", "prompt 1", "prompt 2"]);
    }

    #[test]
    fn a_repeated_request_gets_the_answer_it_got_before() {
        let mut calls = 0;
        let mut host = ScriptedHost::new(
            |_| 3,
            move |_, _| {
                calls += 1;
                format!("prompt {calls}")
            },
        );
        let request = crate::prompts::optimizer_request(
            "p",
            "q",
            "a",
            "{}",
            &[],
            &RequestSettings::default(),
        );
        let first = host.complete(vec![request.clone()]);
        let again = host.complete(vec![request.clone()]);
        assert_eq!(first, again);
        let mut other = request;
        other.sampling.seed = 1;
        assert_ne!(host.complete(vec![other]), first);
        assert_eq!(host.requests.len(), 3);
    }

    #[test]
    fn a_spent_budget_stops_the_scorer() {
        let mut host = ScriptedHost::new(|_| 3, |_, _| String::new());
        host.budget = Some(1);
        let mut scorer = Scorer::new(RequestSettings::default(), Vec::new());
        let stopped = scorer
            .evaluate(&mut host, &[("p".into(), query("a"))])
            .unwrap_err();
        assert_eq!(stopped, Stop::BudgetExhausted);
    }
}
