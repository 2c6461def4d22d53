//! What the endgame's shortest-finish search adds to a constrained decoding step: the mask of
//! one step of a five-aspect judgement (the judge's schema) on the built-in judge's vocabulary
//! (151,936 tokens; the model file is fetched by `scripts/fetch-qwen.sh`, SmolLM2's 49,152 are
//! used when it is absent), three ways, interleaved, each on constraints that have written the
//! same part of the first aspect's rationale and one word more:
//! - mask: far from the end of the budget, where no search is made (every step before the
//!   whole answer's reach);
//! - mask + search: within reach, right after a token that may have opened something, where
//!   the shortest way to finish is worked out again (here: all five aspects' skeleton);
//! - mask, reused: within reach, inside a string, where the last figure stands (most steps).
//!
//! The ratios are to the plain mask. A decode step of the 1.5B at batch 1 takes about 80 ms on
//! the 2-core machine, of SmolLM2 about 12 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use drpo::aspects::CATALOGUE;
use drpo::prompts::judge_schema;
use drpo_benches::median;
use drpo_models::gguf::GgufFile;
use drpo_models::structured::{Constraint, Structured};
use drpo_models::tokenizer::Tokenizer;

const ROUNDS: usize = 40;

fn tokenizer() -> Tokenizer {
    let qwen = Path::new("../.cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    let smollm2 = Path::new("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let path = if qwen.is_file() { qwen } else { smollm2 };
    eprintln!("vocabulary of {}", path.display());
    let file = GgufFile::open(path).expect("fetch the model with scripts/fetch-qwen.sh");
    Tokenizer::from_gguf(&file).unwrap()
}

/// A constraint for a five-aspect judgement that has written `written`.
fn judgement(structured: &Structured, tokenizer: &Tokenizer, written: &str) -> Constraint {
    let aspects: Vec<_> = CATALOGUE.iter().take(5).collect();
    let mut constraint = structured.matcher(&judge_schema(&aspects)).unwrap();
    for id in tokenizer.encode(written, false).unwrap() {
        constraint.consume(id).unwrap();
    }
    constraint
}

fn time(
    rounds: &mut Vec<Duration>,
    mut constraint: Constraint,
    scores: &mut [f32],
    tokens_left: usize,
) {
    let start = Instant::now();
    constraint.mask(scores, tokens_left).unwrap();
    rounds.push(start.elapsed());
}

fn main() {
    let tokenizer = tokenizer();
    let vocab = tokenizer.vocab_size();
    let structured = Structured::new(&tokenizer, vocab).unwrap();
    let name = CATALOGUE[0].name;
    // The same answer so far, ending in a comma (which may open a member, so the next mask
    // within reach searches).
    let written = format!(r#"{{"{name}":{{"rationale":"The reply answers the question,"#);
    let word = tokenizer.encode(" well", false).unwrap()[0];
    let (mut plain, mut search, mut reused) = (Vec::new(), Vec::new(), Vec::new());
    let mut scores = vec![0.0f32; vocab];
    // Within the whole answer's reach, so the search is made, but with room enough left that
    // the answer is not in its endgame (whose own filter would be timed too).
    let reach = judgement(&structured, &tokenizer, &written).endgame();
    for _ in 0..ROUNDS {
        // Timed far from the end and within reach.
        for (times, tokens_left) in [(&mut plain, 10_000), (&mut search, reach)] {
            let mut constraint = judgement(&structured, &tokenizer, &written);
            constraint.consume(word).unwrap();
            time(times, constraint, &mut scores, tokens_left);
        }
        // Searched at the step before; the word since cannot have opened anything.
        let mut constraint = judgement(&structured, &tokenizer, &written);
        constraint.mask(&mut scores, reach).unwrap();
        constraint.consume(word).unwrap();
        time(&mut reused, constraint, &mut scores, reach - 1);
    }
    let plain = median(plain);
    println!(
        "          mask: {:>7.3} ms per step",
        plain.as_secs_f64() * 1e3
    );
    for (label, times) in [("mask + search", search), ("mask, reused", reused)] {
        let t = median(times);
        println!(
            "{label:>14}: {:>7.3} ms per step, {:.2}x the mask",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() / plain.as_secs_f64(),
        );
    }
}
