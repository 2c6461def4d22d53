//! What the endgame's shortest-finish search adds to a constrained decoding step: the mask of
//! one step of a five-aspect judgement (the judge's schema) on the built-in judge's vocabulary
//! (151,936 tokens; the model file is fetched by `scripts/fetch-qwen.sh`, SmolLM2's 49,152 are
//! used when it is absent), three ways, interleaved:
//! - mask: far from the end of the budget, where no search is made (every step before the
//!   endgame's reach);
//! - mask + search: within reach of the end, right after a token that may have opened
//!   something, where the shortest way to finish is worked out again;
//! - mask, cached: within reach, inside a string, where the last figure is reused (most steps
//!   within reach).
//!
//! Each is timed over fresh constraints that have written the same first aspect; the ratios
//! are to the plain mask. A decode step of the 1.5B at batch 1 takes about 80 ms here, of
//! SmolLM2 about 12 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use drpo::aspects::CATALOGUE;
use drpo::prompts::judge_schema;
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

fn time(rounds: &mut Vec<Duration>, mut constraint: Constraint, vocab: usize, tokens_left: usize) {
    let mut scores = vec![0.0f32; vocab];
    let start = Instant::now();
    constraint.mask(&mut scores, tokens_left).unwrap();
    rounds.push(start.elapsed());
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let tokenizer = tokenizer();
    let vocab = tokenizer.vocab_size();
    let structured = Structured::new(&tokenizer, vocab).unwrap();
    let name = CATALOGUE[0].name;
    let first = format!(r#"{{"{name}":{{"rationale":"The reply answers the question"#);
    let (mut plain, mut search, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        time(
            &mut plain,
            judgement(&structured, &tokenizer, &first),
            vocab,
            10_000,
        );
        time(
            &mut search,
            judgement(&structured, &tokenizer, &first),
            vocab,
            20,
        );
        let mut warm = judgement(&structured, &tokenizer, &first);
        let mut scores = vec![0.0f32; vocab];
        warm.mask(&mut scores, 20).unwrap();
        let word = tokenizer.encode(" well", false).unwrap();
        warm.consume(word[0]).unwrap();
        time(&mut cached, warm, vocab, 20);
    }
    let plain = median(plain);
    for (label, times) in [("mask + search", search), ("mask, cached", cached)] {
        let t = median(times);
        println!(
            "{label:>14}: {:>9.3} ms per step, {:.2}x the plain mask ({:.3} ms)",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() / plain.as_secs_f64(),
            plain.as_secs_f64() * 1e3
        );
    }
}
