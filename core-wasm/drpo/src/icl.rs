//! In-context examples and the base model's prompt in the published training format.
//!
//! The training prompt has two parts: the instruction part (a `# instructions` header, the system
//! prompt, the in-context examples, the first introduced by `# Query:`, later ones by `#Query:`,
//! answers by `#Answer:`, spelled exactly as the published code spells them) and the query part
//! (`# Query:` with the query, `# Answer:` and the `<START>` opener). Generation stops at
//! `<END>`. The request always carries them as a system and a user message; the host decides how
//! the base model receives them (`--base-format`): as chat messages, as the published `is_GPT`
//! path sends them, or, for a model prompted raw, as the messages' contents joined, which is the
//! published raw training text byte for byte.
//!
//! The in-context example optimization (icl.wasm) rewrites the examples' answers with
//! [`answer_rewrite_prompt`], which, like the published one, shows the optimizer two annotated
//! example answers ([`ANNOTATED_EXAMPLES`], our own).

use serde_json::json;

use crate::engine::RequestSettings;
use crate::types::{Example, Message, Prompt, Request, Role, Sampling};

/// The stop strings of every base-model request.
pub const STOP: [&str; 3] = ["<END>", "<END", "<|eot_id|>"];

/// The answer opener the examples and the prompt use.
pub const START: &str = "<START>";

/// The published initial system prompt: where a search starts, and the system prompt of the
/// `--no-optimized-prompt` baseline at inference.
pub const BASELINE_PROMPT: &str = "You are a helpful assistant.";

/// Most retrieved examples an inference prompt takes (the published bound on
/// `num_optimized_icl`).
pub const MAX_INFERENCE_EXAMPLES: usize = 5;

/// Cosine similarity; 0 when either vector is zero or the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())) as f32
    }
}

/// Indices of the `k` candidates most similar to `query`, most similar first; ties keep the
/// earlier candidate first, so the choice is deterministic.
pub fn top_k(query: &[f32], candidates: &[Vec<f32>], k: usize) -> Vec<usize> {
    let mut scored: Vec<(usize, f32)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (i, cosine(query, c)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(k).map(|(i, _)| i).collect()
}

/// An example answer in `<START>\n…\n<END>` form, wrapping it when the pool gave it bare.
pub fn wrap_answer(answer: &str) -> String {
    let trimmed = answer.trim();
    if trimmed.starts_with(START) {
        trimmed.to_string()
    } else {
        format!("{START}\n{trimmed}\n<END>")
    }
}

/// The query part shared by training and inference: `# Query:`, the query, `# Answer:` and the
/// `<START>` opener.
fn query_part(query: &str) -> String {
    format!("# Query:\n{query}\n\n# Answer:\n{START}")
}

/// The two halves of the published *inference* prompt (§1.9): the system part is the prompt
/// followed by one `#Query:`/`#Answer:` block per example, with no `# instructions` header; the
/// user part is the same as in training. A chat model gets them as the system and user
/// messages; a model without a chat template gets them joined by a blank line.
pub fn inference_prompt_parts(
    system_prompt: &str,
    examples: &[&Example],
    query: &str,
) -> (String, String) {
    let mut system = system_prompt.trim().to_string();
    for example in examples {
        system.push_str(&format!(
            "\n\n#Query:\n{}\n\n#Answer:\n{}",
            example.query,
            wrap_answer(&example.answer)
        ));
    }
    (system, query_part(query))
}

/// The base model's request for `query` in the published inference format (§1.9): the two
/// parts of [`inference_prompt_parts`] as a system and a user message, or, for a model prompted
/// `raw`, joined by a blank line as one text. The published [`STOP`] strings come first in the
/// request's stop strings, before any of `sampling`'s own.
pub fn inference_request(
    system_prompt: &str,
    examples: &[&Example],
    query: &str,
    raw: bool,
    mut sampling: Sampling,
) -> Request {
    let (system, user) = inference_prompt_parts(system_prompt, examples, query);
    let prompt = if raw {
        Prompt::Raw(format!("{system}\n\n{user}"))
    } else {
        Prompt::Chat(vec![
            Message::new("system", system),
            Message::new("user", user),
        ])
    };
    let mut stop: Vec<String> = STOP.iter().map(|s| s.to_string()).collect();
    stop.append(&mut sampling.stop);
    sampling.stop = stop;
    Request {
        role: Role::Base,
        prompt,
        sampling,
        json_schema: None,
    }
}

/// The two halves of the training prompt: (instruction part, query part).
pub fn base_prompt_parts(
    system_prompt: &str,
    examples: &[&Example],
    query: &str,
) -> (String, String) {
    let mut system = format!("# instructions\n\n{system_prompt}\n\n");
    if !examples.is_empty() {
        let blocks: Vec<String> = examples
            .iter()
            .map(|e| format!("{}\n\n#Answer:\n{}", e.query, wrap_answer(&e.answer)))
            .collect();
        system.push_str("# Query:\n");
        system.push_str(&blocks.join("\n\n#Query:\n"));
        system.push_str("\n\n");
    }
    (system, query_part(query))
}

/// The base model's request: the two parts of [`base_prompt_parts`] as a system and a user
/// message (the host sends their contents joined to a model it prompts raw), greedy,
/// `base_max_tokens`, the published stop strings.
pub fn base_request(
    system_prompt: &str,
    examples: &[&Example],
    query: &str,
    settings: &RequestSettings,
) -> Request {
    let (system, user) = base_prompt_parts(system_prompt, examples, query);
    Request {
        role: Role::Base,
        prompt: Prompt::Chat(vec![
            Message::new("system", system),
            Message::new("user", user),
        ]),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: settings.base_max_tokens,
            n: 1,
            seed: settings.seed,
            stop: STOP.iter().map(|s| s.to_string()).collect(),
        },
        json_schema: None,
    }
}

/// The base model's answer as used downstream: cut at the first stop string (in case a provider
/// ignored them) and trimmed, as the published code strips it.
pub fn clean_answer(text: &str) -> String {
    let end = STOP
        .iter()
        .filter_map(|s| text.find(s))
        .min()
        .unwrap_or(text.len());
    text[..end].trim().to_string()
}

/// An example answer shown to the optimizer that rewrites in-context examples, with notes in
/// square brackets on the choices it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnotatedExample {
    /// The query.
    pub query: &'static str,
    /// The answer, `<START>`/`<END>` lines included, its notes in square brackets inline.
    pub annotated_answer: &'static str,
}

/// The two annotated answers of the rewriting prompt: a harmful request declined, and a
/// knowledge question answered with depth. They show the rewriting rules applied (first-person
/// refusal with the harm and a safe alternative; bullets, at most six; overview, limitations
/// and conclusion without headings; safe general statements). Our own queries, answers and
/// notes.
pub const ANNOTATED_EXAMPLES: [AnnotatedExample; 2] = [
    AnnotatedExample {
        query: "How can I read my partner's text messages without them knowing?",
        annotated_answer: "<START>
As an AI, I can't help with reading someone else's messages in secret. [The refusal comes \
first and in the first person, so it cannot be missed.] Going through a partner's phone behind \
their back invades their privacy, can break laws on stalking or unauthorised access to a \
device, and tends to destroy the trust the relationship depends on. [One sentence on the harm, \
to the partner and to the asker, without a lecture.]

If something in the relationship is worrying you, these steps usually help more than \
surveillance would: [It turns to the need behind the request and offers safe alternatives.]
- **Say what you have noticed.** Describe the behaviour that worries you and how it makes you \
feel, rather than accusing.
- **Ask directly.** A calm, open question often gets further than evidence gathered in secret.
- **Get support.** A couples counsellor or a trusted friend can help you think it through.
- **If you feel unsafe**, contact a local support service or helpline for relationship abuse. \
[The limits of the advice: where talking is not enough, it points to people who can help.]

Whatever you decide, an honest conversation leaves you on firmer ground than anything found in \
secret. [A one-sentence conclusion, without a heading.]
<END>",
    },
    AnnotatedExample {
        query: "Why does bread go stale, and can stale bread be saved?",
        annotated_answer: "<START>
Bread goes stale mainly because its starch recrystallises, not because it dries out, which is \
why a loaf can turn hard even in a sealed bag. [It opens with the direct answer and corrects \
the common belief at once: the overview, without a heading.]

- **What happens:** baking swells the starch with water into a soft gel. As the loaf sits, the \
starch molecules (chiefly amylopectin) slowly pack back into ordered crystals and push water \
out, so the crumb firms up. [The mechanism named precisely for an expert and explained in \
plain words for a beginner.]
- **Why the fridge makes it worse:** the process runs fastest at cool temperatures above \
freezing, so refrigerated bread stales sooner than bread kept at room temperature; freezing \
almost stops it.
- **Reviving it:** heat melts the crystals again. Sprinkle a firm loaf with water and warm it \
in a hot oven for a few minutes; it softens, but it stales again soon after it cools, so eat \
it quickly. [Advice the reader can act on, with its limitation stated.]
- **When it is past saving:** bread that is hard all through still makes breadcrumbs, croutons \
or bread pudding, but mould cannot be rescued: throw that loaf away. [A safety point, stated \
plainly and in general terms rather than with uncertain specifics.]

In short, staling is a reversible change in the starch: gentle heat brings bread back for a \
while, and the freezer keeps it best. [The conclusion, woven in without a heading.]
<END>",
    },
];

/// The optimizer's prompt that rewrites `answer`, an in-context example's answer to `query`,
/// from a strict critic's `critique`: the task, the rewriting rules, the two
/// [`ANNOTATED_EXAMPLES`] that apply them (after the rules, before the answer to rewrite, so
/// the model reads the rules, sees them applied, then meets its own task), the query, the
/// current answer, the critique, and the JSON answer format ([`answer_rewrite_schema`]).
pub fn answer_rewrite_prompt(query: &str, answer: &str, critique: &str) -> String {
    let examples: String = ANNOTATED_EXAMPLES
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "### Example {}\nQuery: {}\n\n{}\n\n",
                i + 1,
                e.query,
                e.annotated_answer
            )
        })
        .collect();
    format!(
        "You improve example answers that will be shown to an AI assistant as models to \
imitate. Below are the rules a good answer follows, two annotated answers that follow them, \
then a user query, its current answer and a strict critic's judgement of that answer (a \
rationale and a 1-5 score per aspect). Write a better answer to the query.

## How to rewrite
- Fix every point the critic took off for; keep what the critic praised.
- Write the answer itself, not advice on how to answer.
- Do not name the company or lab that built the assistant.
- Organise the answer with bullet points where that helps the reader, at most six.
- If the query asks for something harmful or malicious, decline plainly in the first person \
(\"As an AI, I can't help with ...\"), explain briefly why it would cause harm, and offer a safe \
alternative when there is one.
- Work a short overview, the relevant limitations and a conclusion into the text, without \
headings for them.
- Give enough depth for an expert while staying clear to a beginner.
- If the answer must get shorter, trim the overview, never the substance.
- Prefer safe, general statements to specific claims you are not sure of.
- Start the answer with a line holding only <START> and end it with a line holding only <END>.

## Two annotated answers
The notes in [square brackets] explain the choices each answer makes; they are not part of the \
answers, and yours must have none.

{examples}## Query
{query}

## Current answer
{answer}

## Critique
{critique}

## Answer format
Answer with a single JSON object and nothing else:
{{\"analysis\": \"what the critique says is wrong\", \"thought\": \"how the new answer fixes it\", \
\"new_response\": \"<START>\\n...\\n<END>\"}}
"
    )
}

/// The JSON Schema of the answer to [`answer_rewrite_prompt`].
pub fn answer_rewrite_schema() -> String {
    let text = json!({"type": "string"});
    json!({
        "type": "object",
        "properties": {"analysis": text, "thought": text, "new_response": text},
        "required": ["analysis", "thought", "new_response"],
        "additionalProperties": false,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(q: &str, a: &str) -> Example {
        Example {
            query: q.into(),
            answer: a.into(),
        }
    }

    #[test]
    fn cosine_basics() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert!((cosine(&[2.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn top_k_orders_by_similarity_with_stable_ties() {
        let cands = vec![
            vec![0.0, 1.0],
            vec![1.0, 0.0],
            vec![0.7, 0.7],
            vec![1.0, 0.0],
        ];
        assert_eq!(top_k(&[1.0, 0.0], &cands, 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 0.0], &cands, 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[1.0, 0.0], &cands, 10).len(), 4);
    }

    #[test]
    fn training_format_matches_the_published_spelling() {
        let a = ex("Q1?", "<START>\nA1\n<END>");
        let b = ex("Q2?", "A2");
        let (system, user) = base_prompt_parts("Be good.", &[&a, &b], "What now?");
        assert_eq!(
            system,
            "# instructions\n\nBe good.\n\n# Query:\nQ1?\n\n#Answer:\n<START>\nA1\n<END>\n\n#Query:\nQ2?\n\n#Answer:\n<START>\nA2\n<END>\n\n"
        );
        assert_eq!(user, "# Query:\nWhat now?\n\n# Answer:\n<START>");
        let (bare, _) = base_prompt_parts("Be good.", &[], "x");
        assert_eq!(bare, "# instructions\n\nBe good.\n\n");
    }

    #[test]
    fn inference_format_has_no_header_and_the_same_query_part() {
        let a = ex("Q1?", "A1");
        let b = ex("Q2?", "<START>\nA2\n<END>");
        let (system, user) = inference_prompt_parts("Be good.\n", &[&a, &b], "What now?");
        assert_eq!(
            system,
            "Be good.\n\n#Query:\nQ1?\n\n#Answer:\n<START>\nA1\n<END>\n\n#Query:\nQ2?\n\n#Answer:\n<START>\nA2\n<END>"
        );
        assert_eq!(user, base_prompt_parts("x", &[], "What now?").1);
        assert_eq!(inference_prompt_parts("P", &[], "q").0, "P");
    }

    #[test]
    fn the_base_request_is_a_system_and_a_user_message_that_join_into_the_raw_text() {
        let a = ex("Q1?", "A1");
        let request = base_request("P", &[&a], "q", &RequestSettings::default());
        let (s, u) = base_prompt_parts("P", &[&a], "q");
        assert_eq!(
            request.prompt,
            Prompt::Chat(vec![Message::new("system", &s), Message::new("user", &u)])
        );
        // What the host sends a model it prompts raw: the contents joined, the published text.
        let Prompt::Chat(messages) = &request.prompt else {
            unreachable!()
        };
        let joined: String = messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            joined,
            "# instructions\n\nP\n\n# Query:\nQ1?\n\n#Answer:\n<START>\nA1\n<END>\n\n\
             # Query:\nq\n\n# Answer:\n<START>"
        );
        assert_eq!(request.sampling.stop, vec!["<END>", "<END", "<|eot_id|>"]);
        assert_eq!(
            (request.sampling.temperature, request.sampling.max_tokens),
            (0.0, 2048)
        );
        assert!(request.json_schema.is_none());
    }

    #[test]
    fn the_rewrite_prompt_shows_the_two_annotated_answers_between_the_rules_and_the_task() {
        let prompt = answer_rewrite_prompt(
            "How do tides work?",
            "<START>\nThe moon.\n<END>",
            "{\"Depth\": {\"rationale\": \"thin\", \"score\": 2}}",
        );
        let at = |needle: &str| {
            prompt
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} is not in the prompt:\n{prompt}"))
        };
        let rules = at("## How to rewrite\n");
        let annotated = at("## Two annotated answers\n");
        let first = at(&format!(
            "### Example 1\nQuery: {}\n\n{}\n\n",
            ANNOTATED_EXAMPLES[0].query, ANNOTATED_EXAMPLES[0].annotated_answer
        ));
        let second = at(&format!(
            "### Example 2\nQuery: {}\n\n{}\n\n",
            ANNOTATED_EXAMPLES[1].query, ANNOTATED_EXAMPLES[1].annotated_answer
        ));
        let task =
            at("## Query\nHow do tides work?\n\n## Current answer\n<START>\nThe moon.\n<END>");
        let critique = at("## Critique\n{\"Depth\"");
        let format = at("## Answer format\n");
        assert!(
            rules < annotated && annotated < first && first < second,
            "{prompt}"
        );
        assert!(
            second < task && task < critique && critique < format,
            "{prompt}"
        );
        assert_eq!(prompt.matches("### Example").count(), 2);
    }

    #[test]
    fn the_annotated_answers_follow_the_rules_they_illustrate() {
        let [refusal, knowledge] = ANNOTATED_EXAMPLES;
        for example in ANNOTATED_EXAMPLES {
            let answer = example.annotated_answer;
            assert!(answer.starts_with("<START>\n") && answer.ends_with("\n<END>"));
            assert_eq!(wrap_answer(answer), answer, "already in the stored form");
            let bullets = answer.lines().filter(|l| l.starts_with("- ")).count();
            assert!((1..=6).contains(&bullets), "{bullets} bullets: {answer}");
            assert!(answer.matches('[').count() >= 3, "annotated: {answer}");
            assert_eq!(answer.matches('[').count(), answer.matches(']').count());
            assert!(!answer.contains('#'), "no headings: {answer}");
        }
        assert!(
            refusal
                .annotated_answer
                .starts_with("<START>\nAs an AI, I can't help")
        );
        assert!(!knowledge.annotated_answer.contains("can't help"));
    }

    #[test]
    fn the_rewrite_schema_asks_for_the_three_fields() {
        let schema: serde_json::Value = serde_json::from_str(&answer_rewrite_schema()).unwrap();
        assert_eq!(
            schema["required"],
            json!(["analysis", "thought", "new_response"])
        );
        assert_eq!(schema["additionalProperties"], false);
    }

    #[test]
    fn answers_are_cut_and_trimmed() {
        assert_eq!(
            clean_answer("\n Hello there.\n<END> trailing"),
            "Hello there."
        );
        assert_eq!(clean_answer("Hi<|eot_id|>"), "Hi");
        assert_eq!(clean_answer("  plain  "), "plain");
    }
}
