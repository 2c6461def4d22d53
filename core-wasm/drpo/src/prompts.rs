//! The three meta-prompts of DRPO and the JSON Schemas their answers must follow.
//!
//! - aspect selection (metrics role): analyse a query and pick 2–5 aspects, with reasons;
//! - judging (judge role): a rationale and an integer score 1–5 for each selected aspect;
//! - optimizing (optimizer role): analysis, thought and a new system prompt, seeing the last
//!   five prompts of the path.
//!
//! The inputs follow the published method; all wording is this project's own. Each prompt puts
//! what does not change first and the query, the reply and the other inputs last, so prompts
//! that share their instructions share a token prefix: a local model computes it once (its
//! prefix cache), and hosted servers that cache prompt prefixes charge less for it. The schemas
//! are strict-mode compatible (every object closes with `additionalProperties: false` and lists
//! all its properties as required) and are written with their keys in reading order, because a
//! schema-constrained decoder emits properties in schema order: the analysis should come before
//! the choice it justifies, and a rationale before its score.

use crate::aspects::{Aspect, CATALOGUE};
use crate::engine::RequestSettings;
use crate::types::{Message, Prompt, Request, Role, Sampling};

/// How many of the path's most recent prompts (the current one included) the optimizer sees.
pub const LINEAGE_WINDOW: usize = 5;

/// Fewest aspects the selector may choose.
pub const MIN_ASPECTS: usize = 2;
/// Most aspects the selector may choose.
pub const MAX_ASPECTS: usize = 5;

/// How every judge treats length, in one sentence: the in-context example critic puts its own
/// framing before the judge's prompt, and a second rule about length in other words read as a
/// contradiction of this one.
pub const LENGTH_RULE: &str = "Length is neither a merit nor a fault in itself: do not reward \
padding, and do not take points off for extra detail that helps the reader.";

/// The five fields of the selector's query analysis, in the published order.
pub const ANALYSIS_FIELDS: [&str; 5] = [
    "main_topic",
    "user_intent",
    "ambiguities",
    "response_format",
    "challenges",
];

/// A JSON object with keys in the given order (serde_json's own map would sort them).
fn object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A strict closed object schema whose properties are all required, in the given order.
fn closed_object(properties: &[(&str, String)]) -> String {
    let required: Vec<String> = properties.iter().map(|(k, _)| json_string(k)).collect();
    object(&[
        ("type", json_string("object")),
        ("properties", object(properties)),
        ("required", format!("[{}]", required.join(","))),
        ("additionalProperties", "false".to_string()),
    ])
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn string_schema() -> String {
    object(&[("type", json_string("string"))])
}

/// The schema of the aspect selector's answer, in the published shape
/// `{query_analysis: {...}, aspects_selection: {reasoning, selected_aspects}}`, so answers can be
/// stored in (and read from) a published metrics cache unchanged.
pub fn aspect_selection_schema() -> String {
    aspect_selection_schema_between(MIN_ASPECTS, MAX_ASPECTS)
}

/// [`aspect_selection_schema`] asking for `min` to `max` aspects.
pub fn aspect_selection_schema_between(min: usize, max: usize) -> String {
    let analysis: Vec<(&str, String)> = ANALYSIS_FIELDS
        .iter()
        .map(|f| (*f, string_schema()))
        .collect();
    let names: Vec<String> = CATALOGUE.iter().map(|a| json_string(a.name)).collect();
    let selected = object(&[
        ("type", json_string("array")),
        (
            "items",
            object(&[
                ("type", json_string("string")),
                ("enum", format!("[{}]", names.join(","))),
            ]),
        ),
        ("minItems", min.to_string()),
        ("maxItems", max.to_string()),
    ]);
    closed_object(&[
        ("query_analysis", closed_object(&analysis)),
        (
            "aspects_selection",
            closed_object(&[
                ("reasoning", string_schema()),
                ("selected_aspects", selected),
            ]),
        ),
    ])
}

/// The schema of a judgement on the given aspects: one `{rationale, score}` object per aspect,
/// keyed by the aspect's name, the score an integer from 1 to 5.
pub fn judge_schema(aspects: &[&Aspect]) -> String {
    let entry = closed_object(&[
        ("rationale", string_schema()),
        (
            "score",
            object(&[
                ("type", json_string("integer")),
                ("enum", "[1,2,3,4,5]".to_string()),
            ]),
        ),
    ]);
    let props: Vec<(&str, String)> = aspects.iter().map(|a| (a.name, entry.clone())).collect();
    closed_object(&props)
}

/// The schema of an optimizer answer: `{analysis, thought, new_system_prompt}`.
pub fn optimizer_schema() -> String {
    closed_object(&[
        ("analysis", string_schema()),
        ("thought", string_schema()),
        ("new_system_prompt", string_schema()),
    ])
}

/// The aspect-selection meta-prompt for one query.
pub fn aspect_selection_prompt(query: &str) -> String {
    let catalogue: String = CATALOGUE
        .iter()
        .map(|a| format!("- {}: {}\n", a.name, a.definition))
        .collect();
    format!(
        "You are an impartial evaluator getting ready to grade an AI assistant's reply to the \
user query shown below. Before seeing any reply, decide which qualities matter most when judging \
a reply to this particular query.

First, analyse the query:
1. main_topic: what the query is about;
2. user_intent: what the user is really trying to achieve;
3. ambiguities: anything unclear, mistaken or misleading in how the query is put;
4. response_format: the form a good reply should take (a list, steps, a story, code, a polite \
refusal, ...);
5. challenges: what makes a good reply hard, including the limits of an AI assistant.

Then choose at least {MIN_ASPECTS} and at most {MAX_ASPECTS} aspects from the catalogue below: \
the ones that would best tell a great reply from a poor one for this query. Write each name \
exactly as the catalogue spells it.

## Aspect catalogue
{catalogue}
## Query
{query}

## Answer format
Answer with a single JSON object and nothing else:
{{\"query_analysis\": {{\"main_topic\": \"...\", \"user_intent\": \"...\", \"ambiguities\": \"...\", \
\"response_format\": \"...\", \"challenges\": \"...\"}}, \"aspects_selection\": {{\"reasoning\": \
\"why these aspects decide the quality of a reply to this query\", \"selected_aspects\": [\"...\", \
\"...\"]}}}}
"
    )
}

/// The judging meta-prompt: the query, the answer, the selected aspects with their rubrics and
/// the selector's reasons for choosing them.
pub fn judge_prompt(query: &str, answer: &str, aspects: &[&Aspect], reasoning: &str) -> String {
    let rubrics: String = aspects.iter().map(|a| a.render_rubric()).collect();
    let template = object(
        &aspects
            .iter()
            .map(|a| {
                (
                    a.name,
                    // The placeholder is not JSON on purpose: it shows the model where the
                    // integer goes without suggesting a value.
                    object(&[
                        ("rationale", json_string("...")),
                        ("score", "<1-5>".to_string()),
                    ]),
                )
            })
            .collect::<Vec<_>>(),
    );
    format!(
        "You are a demanding but fair judge of AI assistant replies. You will be shown a user's \
query and an assistant's reply to it, and you will rate the reply on each of the aspects listed \
below.

## How to rate
For every aspect, first write a short rationale that points at concrete parts of the reply: what \
works, what is missing, what is wrong. Then give an integer score from 1 to 5 on that aspect's \
scale, where 1 means the reply fails the aspect badly and 5 means it could hardly be better. Judge \
the reply that was written, not the one you would have written. {LENGTH_RULE}

## Aspects to rate
{rubrics}
These aspects were chosen for this query for the following reasons: {reasoning}

## Answer format
Answer with a single JSON object and nothing else, with exactly these keys:
{template}

## Query
{query}

## Reply
{answer}

Now rate this reply, in the answer format above.
"
    )
}

/// The lineage block: the last [`LINEAGE_WINDOW`] prompts of the path (oldest first, the current
/// one last), labelled `---Version i---` and `---Current Version---` as in the published method.
pub fn lineage_block(path_prompts: &[String]) -> String {
    let start = path_prompts.len().saturating_sub(LINEAGE_WINDOW);
    let window = &path_prompts[start..];
    match window.split_last() {
        None => String::new(),
        Some((current, former)) => {
            let former: Vec<String> = former
                .iter()
                .enumerate()
                .map(|(i, p)| format!("---Version {}---\n{}", i + 1, p))
                .collect();
            format!("{}\n---Current Version---\n{}", former.join("\n"), current)
        }
    }
}

/// The optimizing meta-prompt. `evaluation` is the judge's JSON (aspect → rationale and score);
/// `path_prompts` holds every prompt from the root to the current one.
pub fn optimizer_prompt(
    current: &str,
    query: &str,
    answer: &str,
    evaluation: &str,
    path_prompts: &[String],
) -> String {
    let lineage = lineage_block(path_prompts);
    format!(
        "I am developing the system prompt of an AI assistant and would like your help to improve \
it. The system prompt is shown to the assistant before every conversation, so it has to work for \
any request a user might make, not only the one shown below. Below you will find the current \
system prompt, a query the assistant received, its reply, a judge's assessment of that reply and \
how the system prompt has changed so far.

## What to do
Work out where the reply fell short and why, then write a revised system prompt that would have \
produced a better reply while keeping what already works.

General guidance:
- The revision should raise the scores across the aspects, not trade one aspect for another.
- You may edit, add, remove or reword anything.
- Keep it general: it must help with every kind of request, so never mention this query or its \
topic.

Shape of the system prompt:
- Open with a paragraph on the assistant's role and abilities; it may be as long as it needs to be.
- Follow it with short \"- \" bullet points.
- Include bullets on what the assistant cannot do: it has no internet access or live data, it \
cannot act in the physical world, and it declines harmful or malicious requests.
- Declining is better than answering with something unrelated or unreliable.
- Include a bullet that keeps the tone human and conversational, never mechanical.
- Turn the judge's criticism into concrete advice on what to do and what to avoid.
- Keep every bullet brief.
- Add no more than 2 new bullets in this revision, and never have more than 8 bullets in total.
- When you remove material, fold any advice that is still generally useful into the remaining \
bullets instead of dropping it.

## Answer format
Answer with a single JSON object and nothing else:
{{\"analysis\": \"what went wrong in the reply and why\", \"thought\": \"how the system prompt \
should change to fix it\", \"new_system_prompt\": \"the complete revised system prompt\"}}

## Current system prompt
{current}

## A query the assistant received
{query}

## The assistant's reply under the current system prompt
{answer}

## A judge's assessment of that reply (per aspect: 1 is poor, 5 is excellent)
{evaluation}

## How the system prompt has changed so far (oldest first)
{lineage}

Now write the revised system prompt, in the answer format above.
"
    )
}

/// A single user message, as the metrics, judge and optimizer roles are prompted.
fn user_only(text: String) -> Prompt {
    Prompt::Chat(vec![Message::new("user", text)])
}

/// The request selecting the aspects for a query (greedy, as published).
pub fn aspect_selection_request(query: &str, settings: &RequestSettings) -> Request {
    Request {
        role: Role::Metrics,
        prompt: user_only(aspect_selection_prompt(query)),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: settings.metrics_max_tokens,
            n: 1,
            seed: settings.seed,
            stop: Vec::new(),
        },
        json_schema: Some(aspect_selection_schema()),
    }
}

/// The request judging an answer on the given aspects (greedy, as published, unless the
/// settings give the judge a temperature).
pub fn judge_request(
    query: &str,
    answer: &str,
    aspects: &[&Aspect],
    reasoning: &str,
    settings: &RequestSettings,
) -> Request {
    Request {
        role: Role::Judge,
        prompt: user_only(judge_prompt(query, answer, aspects, reasoning)),
        sampling: Sampling {
            temperature: settings.judge_temperature as f32,
            top_p: 1.0,
            max_tokens: settings.judge_max_tokens,
            n: 1,
            seed: settings.seed,
            stop: Vec::new(),
        },
        json_schema: Some(judge_schema(aspects)),
    }
}

/// The requests judging one answer `settings.judge_repeats` times (at least once), each repeat
/// with its own seed (the run's seed plus the repeat's index), so that a judge sampling above
/// temperature 0 answers each on its own. A repeat is one request on every aspect
/// ([`judge_request`]), or with `settings.judge_per_aspect` one request per aspect, in the
/// aspects' order; `engine::read_verdicts` reads them back.
pub fn judge_requests(
    query: &str,
    answer: &str,
    aspects: &[&Aspect],
    reasoning: &str,
    settings: &RequestSettings,
) -> Vec<Request> {
    judgement_parts(aspects, settings.judge_per_aspect)
        .into_iter()
        .flat_map(|part| (0..settings.judge_repeats.max(1)).map(move |k| (k, part)))
        .map(|(k, part)| {
            let mut request = judge_request(query, answer, part, reasoning, settings);
            request.sampling.seed = settings.seed.wrapping_add(u64::from(k));
            request
        })
        .collect()
}

/// The aspects each request of one judgement rates: all of them in one, or one each.
pub fn judgement_parts<'a, 'b>(
    aspects: &'b [&'a Aspect],
    per_aspect: bool,
) -> Vec<&'b [&'a Aspect]> {
    if per_aspect {
        aspects.chunks(1).collect()
    } else {
        vec![aspects]
    }
}

/// The request asking for `n_actions` new prompts in one call (temperature from the options,
/// top-p 0.95, as published).
pub fn optimizer_request(
    current: &str,
    query: &str,
    answer: &str,
    evaluation: &str,
    path_prompts: &[String],
    settings: &RequestSettings,
) -> Request {
    Request {
        role: Role::Optimizer,
        prompt: user_only(optimizer_prompt(
            current,
            query,
            answer,
            evaluation,
            path_prompts,
        )),
        sampling: Sampling {
            temperature: settings.temperature as f32,
            top_p: settings.optimizer_top_p as f32,
            max_tokens: settings.optimizer_max_tokens,
            n: settings.n_actions,
            seed: settings.seed,
            stop: Vec::new(),
        },
        json_schema: Some(optimizer_schema()),
    }
}

/// The optimizer request asked once more when every candidate `request` got was a prompt for
/// its one query: the same conversation, then the optimizer's own `answer`, then a reply that
/// says what is wrong with it and asks for a general prompt. The small optimizers this runs on
/// locally copy the query into the prompt however the first request warns them, but sometimes
/// correct it when told. `None` for a prompt that is not a chat.
pub fn general_prompt_request(request: &Request, answer: &str) -> Option<Request> {
    let Prompt::Chat(messages) = &request.prompt else {
        return None;
    };
    let mut messages = messages.clone();
    messages.push(Message::new("assistant", answer));
    messages.push(Message::new(
        "user",
        "That new_system_prompt is written for the one query above: it repeats the query and \
describes its task. The assistant will see the system prompt before every conversation, on any \
subject, so the prompt must not mention this query, its topic, its code or its details. Write the \
JSON again, with a new_system_prompt that gives general guidance on how the assistant should \
answer any request, fixing the weaknesses the judge found.",
    ));
    Some(Request {
        prompt: Prompt::Chat(messages),
        ..request.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aspects::find;
    use serde_json::Value;

    /// Every object in a schema must be closed and require all of its properties (what strict
    /// structured-output modes demand).
    fn assert_strict(schema: &Value) {
        if let Some(obj) = schema.as_object() {
            if obj.get("type") == Some(&Value::from("object")) {
                assert_eq!(obj.get("additionalProperties"), Some(&Value::Bool(false)));
                let props = obj["properties"].as_object().unwrap();
                let required: Vec<&str> = obj["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(required.len(), props.len());
                for k in props.keys() {
                    assert!(required.contains(&k.as_str()), "{k} not required");
                }
            }
            for v in obj.values() {
                assert_strict(v);
            }
        } else if let Some(arr) = schema.as_array() {
            arr.iter().for_each(assert_strict);
        }
    }

    #[test]
    fn schemas_are_valid_strict_json() {
        let aspects = [find("Safety").unwrap(), find("Critical Thinking").unwrap()];
        for text in [
            aspect_selection_schema(),
            judge_schema(&aspects),
            optimizer_schema(),
        ] {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_strict(&v);
        }
    }

    #[test]
    fn schemas_keep_reading_order() {
        let sel = aspect_selection_schema();
        assert!(sel.find("query_analysis").unwrap() < sel.find("aspects_selection").unwrap());
        let opt = optimizer_schema();
        assert!(opt.find("analysis").unwrap() < opt.find("thought").unwrap());
        assert!(opt.find("thought").unwrap() < opt.find("new_system_prompt").unwrap());
    }

    #[test]
    fn selection_schema_lists_the_catalogue() {
        let v: Value = serde_json::from_str(&aspect_selection_schema()).unwrap();
        let sel = &v["properties"]["aspects_selection"]["properties"]["selected_aspects"];
        assert_eq!(sel["items"]["enum"].as_array().unwrap().len(), 14);
        assert_eq!(sel["minItems"], 2);
        assert_eq!(sel["maxItems"], 5);
    }

    #[test]
    fn judge_schema_keys_are_the_aspects() {
        let aspects = [find("Depth").unwrap(), find("Empathy").unwrap()];
        let v: Value = serde_json::from_str(&judge_schema(&aspects)).unwrap();
        let keys: Vec<&String> = v["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["Depth", "Empathy"]);
    }

    #[test]
    fn prompts_carry_their_inputs() {
        let p = aspect_selection_prompt("How do tides work?");
        assert!(p.contains("How do tides work?"));
        assert!(p.contains("Critical Thinking"));
        let aspects = [find("Clarity").unwrap()];
        let j = judge_prompt("Q?", "A!", &aspects, "because");
        assert!(j.contains("## Query\nQ?") && j.contains("## Reply\nA!"));
        assert!(j.contains("because") && j.contains("- Clarity:"));
        assert!(j.contains("\"Clarity\""));
        assert!(!j.contains("Empathy"));
        assert!(j.contains(LENGTH_RULE));
    }

    #[test]
    fn lineage_shows_the_last_five_prompts() {
        let prompts: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
        let block = lineage_block(&prompts);
        assert_eq!(
            block,
            "---Version 1---\np2\n---Version 2---\np3\n---Version 3---\np4\n---Version 4---\np5\n---Current Version---\np6"
        );
        assert_eq!(
            lineage_block(&["only".to_string()]),
            "\n---Current Version---\nonly"
        );
        let opt = optimizer_prompt("p6", "q", "a", "{}", &prompts);
        assert!(opt.contains(&block));
        assert!(!opt.contains("p1\n"));
    }

    #[test]
    fn requests_use_the_published_sampling() {
        let o = RequestSettings::default();
        let a = [find("Clarity").unwrap()];
        let m = aspect_selection_request("q", &o);
        assert_eq!(
            (m.role, m.sampling.temperature, m.sampling.n),
            (Role::Metrics, 0.0, 1)
        );
        let j = judge_request("q", "a", &a, "r", &o);
        assert_eq!(
            (j.role, j.sampling.top_p, j.sampling.max_tokens),
            (Role::Judge, 1.0, 2048)
        );
        let p = optimizer_request("c", "q", "a", "{}", &["c".into()], &o);
        assert_eq!(p.role, Role::Optimizer);
        assert_eq!(
            (p.sampling.temperature, p.sampling.top_p, p.sampling.n),
            (0.2, 0.95, 3)
        );
        assert!(p.json_schema.is_some());
    }
}
