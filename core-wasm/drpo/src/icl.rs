//! In-context examples and the base model's prompt in the published training format.
//!
//! The training prompt is one text: a `# instructions` header, the system prompt, the in-context
//! examples (the first introduced by `# Query:`, later ones by `#Query:`, answers by
//! `#Answer:`, spelled exactly as the published code spells them), then `# Query:` with the
//! query, `# Answer:` and the `<START>` opener. Generation stops at `<END>`. A raw-completion
//! base model gets the text whole; a chat base model gets the instruction part as the system
//! message and the query part as the user message, as the published `is_GPT` path does.

use crate::options::Options;
use crate::types::{Example, Message, Prompt, Request, Role, Sampling};

/// The stop strings of every base-model request.
pub const STOP: [&str; 3] = ["<END>", "<END", "<|eot_id|>"];

/// The answer opener the examples and the prompt use.
pub const START: &str = "<START>";

/// How many examples are used when retrieval is off or unavailable (the published fixed pair).
pub const FIXED_EXAMPLES: usize = 2;

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

/// The base model's request: greedy, `base_max_tokens`, the published stop strings; raw text
/// unless `base_chat` is set.
pub fn base_request(
    system_prompt: &str,
    examples: &[&Example],
    query: &str,
    options: &Options,
) -> Request {
    let (system, user) = base_prompt_parts(system_prompt, examples, query);
    let prompt = if options.base_chat {
        Prompt::Chat(vec![
            Message::new("system", system),
            Message::new("user", user),
        ])
    } else {
        Prompt::Raw(system + &user)
    };
    Request {
        role: Role::Base,
        prompt,
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: options.base_max_tokens,
            n: 1,
            seed: options.seed,
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
    fn raw_and_chat_requests() {
        let a = ex("Q1?", "A1");
        let mut o = Options::default();
        let raw = base_request("P", &[&a], "q", &o);
        let (s, u) = base_prompt_parts("P", &[&a], "q");
        assert_eq!(raw.prompt, Prompt::Raw(format!("{s}{u}")));
        assert_eq!(raw.sampling.stop, vec!["<END>", "<END", "<|eot_id|>"]);
        assert_eq!(
            (raw.sampling.temperature, raw.sampling.max_tokens),
            (0.0, 2048)
        );
        assert!(raw.json_schema.is_none());
        o.base_chat = true;
        let chat = base_request("P", &[&a], "q", &o);
        assert_eq!(
            chat.prompt,
            Prompt::Chat(vec![Message::new("system", s), Message::new("user", u)])
        );
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
