//! `generate.wasm`: answers queries the way the published DRPO answers them after a search
//! (§1.9 of the reference). Each query's system message is the system prompt followed by the k
//! in-context examples nearest the query (cosine similarity of the host's embeddings, one
//! batched `embed` call for the examples and the queries together), as `#Query:`/`#Answer:`
//! blocks; the user message is `# Query:` … `# Answer:` `<START>`, and generation stops at
//! `<END>`. All queries go to the base model in one batch.
//!
//! The queries, the system prompt and the examples come in the options, so the run log's header
//! records exactly what was answered and `replay` needs nothing else; `drpo-host generate` fills
//! them from its flags and writes the answers the outcome's details hold.

use drpo_kit::drpo::icl;
use drpo_kit::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The options `run` accepts, declared once: the schema `describe` publishes is derived from
/// this type (doc comments, defaults, minimums).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "drpo_kit::schemars", title = "Inference options")]
#[serde(default)]
pub struct Options {
    /// The queries to answer: {id, text, tags} objects.
    #[schemars(with = "Vec<Value>")]
    pub queries: Vec<Query>,
    /// The system prompt the answers are written under.
    pub system_prompt: String,
    /// In-context examples, {query, answer} objects; each query gets the k nearest.
    #[schemars(with = "Vec<Value>")]
    pub examples: Vec<Example>,
    /// How many examples each query gets (at most 5, as published).
    #[schemars(range(min = 1))]
    pub k: u32,
    /// Choose each query's examples by embedding similarity; false: the first k.
    pub retrieve: bool,
    /// One raw text (system part, blank line, query part) instead of chat messages.
    pub raw: bool,
    /// Token limit of an answer.
    #[schemars(range(min = 1))]
    pub max_tokens: u32,
    /// Sampling temperature. The default 0 is greedy, so the answers are the same on every run; the published inference samples at 0.7.
    #[schemars(range(min = 0.0))]
    pub temperature: f64,
    /// Nucleus sampling mass, in (0, 1].
    #[schemars(range(min = 0.0))]
    pub top_p: f64,
    /// Sampling seed.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queries: Vec::new(),
            system_prompt: icl::BASELINE_PROMPT.to_owned(),
            examples: Vec::new(),
            k: 3,
            retrieve: true,
            raw: false,
            max_tokens: 512,
            temperature: 0.0,
            top_p: 0.95,
            seed: 0,
        }
    }
}

impl StrategyOptions for Options {
    fn schema() -> Value {
        derived_schema::<Self>()
    }
}

/// Checks what the schema's types and minimums cannot say.
fn validate(options: &Options) -> Result<(), String> {
    if options.queries.is_empty() {
        return Err("no queries to answer (option `queries` is empty)".into());
    }
    if options.k as usize > icl::MAX_INFERENCE_EXAMPLES {
        return Err(format!(
            "option k must be at most {}, not {}",
            icl::MAX_INFERENCE_EXAMPLES,
            options.k
        ));
    }
    if !(options.top_p > 0.0 && options.top_p <= 1.0) {
        return Err(format!(
            "option top_p must be in (0, 1], not {}",
            options.top_p
        ));
    }
    Ok(())
}

/// The examples each query gets, by index into `options.examples`: the k nearest by cosine
/// similarity, or the first k when retrieval is off.
pub fn choose_examples<H: Host>(
    host: &mut H,
    options: &Options,
) -> Result<Vec<Vec<usize>>, String> {
    let k = options.k as usize;
    let queries = options.queries.len();
    if options.examples.is_empty() {
        return Ok(vec![Vec::new(); queries]);
    }
    if !options.retrieve {
        let first: Vec<usize> = (0..options.examples.len().min(k)).collect();
        return Ok(vec![first; queries]);
    }
    let mut texts: Vec<String> = options.examples.iter().map(|e| e.query.clone()).collect();
    texts.extend(options.queries.iter().map(|q| q.text.clone()));
    let wanted = texts.len();
    let mut vectors = host
        .embed(texts)
        .map_err(|e| format!("the embedding model failed: {e}"))?;
    if vectors.len() != wanted {
        return Err(format!(
            "the embedding model returned {} vectors for {wanted} texts",
            vectors.len()
        ));
    }
    let query_vectors = vectors.split_off(options.examples.len());
    Ok(query_vectors
        .iter()
        .map(|q| icl::top_k(q, &vectors, k))
        .collect())
}

/// The base model's request for `query` in the published inference format.
pub fn request(options: &Options, examples: &[&Example], query: &str) -> Request {
    let sampling = Sampling {
        temperature: options.temperature as f32,
        top_p: options.top_p as f32,
        max_tokens: options.max_tokens,
        n: 1,
        seed: options.seed,
        stop: Vec::new(),
    };
    icl::inference_request(
        &options.system_prompt,
        examples,
        query,
        options.raw,
        sampling,
    )
}

/// Answers the queries; see the crate documentation. A query the base model could not answer
/// gets an `error` instead of an `answer` in the details; the run still succeeds.
pub fn generate<H: Host>(host: &mut H, options: &Options) -> Result<Outcome, String> {
    validate(options)?;
    let chosen = choose_examples(host, options)?;
    let batch: Vec<Request> = options
        .queries
        .iter()
        .zip(&chosen)
        .map(|(query, picks)| {
            let picked: Vec<&Example> = picks.iter().map(|&i| &options.examples[i]).collect();
            request(options, &picked, &query.text)
        })
        .collect();
    host.info(format!(
        "answering {} quer{}",
        batch.len(),
        if batch.len() == 1 { "y" } else { "ies" }
    ));
    let mut results = host.complete(batch).into_iter();
    let mut answered = 0;
    let answers: Vec<Value> = options
        .queries
        .iter()
        .zip(&chosen)
        .map(|(query, picks)| {
            let mut entry = json!({
                "id": query.id,
                "query": query.text,
                "tags": query.tags,
                "examples": picks.iter().map(|&i| &options.examples[i].query).collect::<Vec<_>>(),
            });
            match results.next() {
                Some(Ok(completion)) => {
                    let text = completion.choices.first().map_or("", String::as_str);
                    entry["answer"] = Value::from(icl::clean_answer(text));
                    answered += 1;
                }
                Some(Err(error)) => entry["error"] = Value::from(error.to_string()),
                None => entry["error"] = Value::from("the host gave no answer"),
            }
            entry
        })
        .collect();
    if answered < answers.len() {
        host.warn(format!(
            "{} of {} queries got no answer",
            answers.len() - answered,
            answers.len()
        ));
    }
    Ok(Outcome {
        best_prompt: None,
        best_score: None,
        best_path: Vec::new(),
        details: json!({"kind": "generation", "answers": answers}).to_string(),
    })
}

/// One base-model request per query, nothing else; the prompt is counted from the system
/// prompt, the k longest examples and the longest query, at four characters per token.
pub fn estimate_calls(options: &Options) -> Vec<RoleEstimate> {
    let queries = options.queries.len() as u64;
    let mut example_chars: Vec<usize> = options
        .examples
        .iter()
        .map(|e| e.query.len() + e.answer.len())
        .collect();
    example_chars.sort_unstable_by(|a, b| b.cmp(a));
    let longest_query = options.queries.iter().map(|q| q.text.len()).max();
    let chars = options.system_prompt.len()
        + example_chars.iter().take(options.k as usize).sum::<usize>()
        + longest_query.unwrap_or(0);
    Role::ALL
        .into_iter()
        .map(|role| {
            let base = role == Role::Base;
            RoleEstimate {
                role,
                min_calls: if base { queries } else { 0 },
                max_calls: if base { queries } else { 0 },
                prompt_tokens_per_call: if base { chars.div_ceil(4) as u64 } else { 0 },
                max_completion_tokens_per_call: if base { options.max_tokens.into() } else { 0 },
            }
        })
        .collect()
}

/// The exported strategy.
struct Generate;

impl Strategy for Generate {
    type Options = Options;
    const NAME: &'static str = "generate";
    const DESCRIPTION: &'static str = "Answers queries in the published DRPO inference format: the system \
prompt, then the k in-context examples nearest each query by embedding similarity, then the \
query; the base model answers all queries in one batch. The queries, the system prompt and the \
examples come in the options (drpo-host generate fills them); the answers are in the outcome's \
details.";

    fn run<H: StrategyHost>(host: &mut H, options: Options) -> Result<Outcome, String> {
        generate(host, &options)
    }

    fn estimate(options: &Options) -> Result<Vec<RoleEstimate>, String> {
        Ok(estimate_calls(options))
    }
}

export_strategy!(Generate);

#[cfg(test)]
mod tests {
    use super::*;
    use drpo_kit::drpo::types::{Completion, LlmError, LogLevel, Node, Usage};

    /// A host whose embedder points a text about cats along the first axis, dogs the second,
    /// anything else the third, and whose base model answers with the text of the request's
    /// last message (or the raw prompt) followed by a stop string and more text.
    #[derive(Default)]
    struct TopicHost {
        requests: Vec<Request>,
        embedded: Vec<Vec<String>>,
        embed_fails: bool,
        fail_query: Option<&'static str>,
    }

    impl drpo_kit::Host for TopicHost {
        fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>> {
            self.requests.extend(batch.iter().cloned());
            batch
                .into_iter()
                .map(|request| {
                    let text = match request.prompt {
                        Prompt::Raw(text) => text,
                        Prompt::Chat(messages) => messages.last().unwrap().content.clone(),
                    };
                    if self.fail_query.is_some_and(|q| text.contains(q)) {
                        return Err(LlmError::Unavailable("down".into()));
                    }
                    Ok(Completion {
                        choices: vec![format!(" answer to {} \n<END> ignored", text.len())],
                        usage: Usage::default(),
                    })
                })
                .collect()
        }

        fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
            if self.embed_fails {
                return Err(LlmError::Unavailable("no embedding model".into()));
            }
            self.embedded.push(texts.clone());
            Ok(texts
                .iter()
                .map(|t| {
                    let t = t.to_lowercase();
                    match (t.contains("cat"), t.contains("dog")) {
                        (true, _) => vec![1.0, 0.0, 0.0],
                        (_, true) => vec![0.0, 1.0, 0.0],
                        _ => vec![0.0, 0.0, 1.0],
                    }
                })
                .collect())
        }

        fn record_node(&mut self, _: Node) {}

        fn log(&mut self, _: LogLevel, _: String) {}
    }

    fn options(queries: &[&str]) -> Options {
        let queries = queries
            .iter()
            .enumerate()
            .map(|(i, text)| Query {
                id: format!("q{i}"),
                text: text.to_string(),
                tags: if i == 1 {
                    vec!["harmful".into()]
                } else {
                    vec![]
                },
            })
            .collect();
        let examples = [
            ("How do I walk a dog?", "On a lead."),
            ("Why do dogs bark?", "To talk."),
            ("What do cats eat?", "<START>\nMeat.\n<END>"),
        ]
        .iter()
        .map(|(q, a)| Example {
            query: q.to_string(),
            answer: a.to_string(),
        })
        .collect();
        Options {
            system_prompt: "Be kind.".into(),
            queries,
            examples,
            k: 1,
            ..Options::default()
        }
    }

    fn details(outcome: &Outcome) -> Value {
        serde_json::from_str(&outcome.details).unwrap()
    }

    #[test]
    fn each_query_gets_its_nearest_examples_in_the_published_format() {
        let mut host = TopicHost::default();
        let outcome = generate(&mut host, &options(&["Is my cat hungry?", "Hi"])).unwrap();
        assert_eq!(host.embedded.len(), 1, "one batched embed call");
        assert_eq!(
            host.embedded[0],
            [
                "How do I walk a dog?",
                "Why do dogs bark?",
                "What do cats eat?",
                "Is my cat hungry?",
                "Hi"
            ]
        );
        assert_eq!(host.requests.len(), 2, "one request per query");
        let Prompt::Chat(messages) = &host.requests[0].prompt else {
            panic!("chat expected")
        };
        assert_eq!(
            messages[0].content,
            "Be kind.\n\n#Query:\nWhat do cats eat?\n\n#Answer:\n<START>\nMeat.\n<END>"
        );
        assert_eq!(
            messages[1].content,
            "# Query:\nIs my cat hungry?\n\n# Answer:\n<START>"
        );
        let sampling = &host.requests[0].sampling;
        assert_eq!(sampling.stop, ["<END>", "<END", "<|eot_id|>"]);
        assert_eq!(
            (sampling.max_tokens, sampling.temperature, sampling.top_p),
            (512, 0.0, 0.95)
        );
        let details = details(&outcome);
        let first = &details["answers"][0];
        assert_eq!(first["examples"], json!(["What do cats eat?"]));
        let user_length = messages[1].content.len();
        assert_eq!(
            first["answer"],
            format!("answer to {user_length}"),
            "cut at <END> and trimmed"
        );
        assert_eq!(details["answers"][1]["tags"], json!(["harmful"]));
        assert_eq!(outcome.best_prompt, None);
    }

    #[test]
    fn without_retrieval_every_query_gets_the_first_k_and_raw_is_one_text() {
        let mut host = TopicHost::default();
        let mut options = options(&["Is my cat hungry?"]);
        options.retrieve = false;
        options.raw = true;
        options.k = 2;
        generate(&mut host, &options).unwrap();
        assert!(host.embedded.is_empty());
        assert_eq!(
            host.requests[0].prompt,
            Prompt::Raw(
                "Be kind.\n\n#Query:\nHow do I walk a dog?\n\n#Answer:\n<START>\nOn a lead.\n<END>\
                 \n\n#Query:\nWhy do dogs bark?\n\n#Answer:\n<START>\nTo talk.\n<END>\
                 \n\n# Query:\nIs my cat hungry?\n\n# Answer:\n<START>"
                    .into()
            )
        );

        let mut host = TopicHost::default();
        options.examples.clear();
        options.retrieve = true;
        generate(&mut host, &options).unwrap();
        assert!(host.embedded.is_empty(), "no examples: nothing to embed");
        assert_eq!(
            host.requests[0].prompt,
            Prompt::Raw("Be kind.\n\n# Query:\nIs my cat hungry?\n\n# Answer:\n<START>".into())
        );
    }

    #[test]
    fn a_failed_answer_is_reported_per_query_and_a_failed_embedding_fails_the_run() {
        let mut host = TopicHost {
            fail_query: Some("Hi"),
            ..TopicHost::default()
        };
        let outcome = generate(&mut host, &options(&["Is my cat hungry?", "Hi"])).unwrap();
        let details = details(&outcome);
        assert!(details["answers"][0]["answer"].is_string());
        assert_eq!(details["answers"][1]["error"], "unavailable: down");
        assert!(details["answers"][1].get("answer").is_none());

        let mut host = TopicHost {
            embed_fails: true,
            ..TopicHost::default()
        };
        let error = generate(&mut host, &options(&["Hi"])).unwrap_err();
        assert!(
            error.contains("embedding model failed") && error.contains("no embedding model"),
            "{error}"
        );
        assert!(host.requests.is_empty());
    }

    #[test]
    fn bad_options_are_named() {
        let mut host = TopicHost::default();
        let mut bad = options(&["Hi"]);
        bad.k = 6;
        assert!(
            generate(&mut host, &bad)
                .unwrap_err()
                .contains("k must be at most 5")
        );
        bad = options(&[]);
        assert!(
            generate(&mut host, &bad)
                .unwrap_err()
                .contains("no queries")
        );
        bad = options(&["Hi"]);
        bad.top_p = 0.0;
        assert!(generate(&mut host, &bad).unwrap_err().contains("top_p"));
        assert!(host.requests.is_empty());
        let missing = Options::parse(r#"{"queries": [{"id": "a"}]}"#).unwrap_err();
        assert!(missing.contains("text"), "{missing}");
    }

    #[test]
    fn the_estimate_is_one_base_request_per_query() {
        let options = options(&["Is my cat hungry?", "Hi"]);
        let estimate = estimate_calls(&options);
        let base = estimate.iter().find(|e| e.role == Role::Base).unwrap();
        assert_eq!((base.min_calls, base.max_calls), (2, 2));
        // "Be kind." (8) + the longest example (17 + 19) + the longest query (17), over 4.
        assert_eq!(base.prompt_tokens_per_call, 16);
        assert_eq!(base.max_completion_tokens_per_call, 512);
        assert!(
            estimate
                .iter()
                .filter(|e| e.role != Role::Base)
                .all(|e| e.max_calls == 0)
        );
    }
}
