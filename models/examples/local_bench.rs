//! Decode and prefill speed of a local model through the generation API.
//!
//! `cargo run -p drpo-models --example local_bench -- [MODEL] [TOKENS]`
//! (MODEL defaults to the SmolLM2 GGUF of `scripts/fetch-smollm2.sh`, TOKENS to 32).
//!
//! Prints prefill tokens/s, decode tokens/s at batch 1 and batch 8 (aggregate), their ratio,
//! the memory-bandwidth bound of batch-1 decoding for the file (every weight byte read once
//! per token, at the measured copy bandwidth of this machine), and the peak resident memory.

use std::path::PathBuf;
use std::time::Instant;

use drpo_models::{GenerationRequest, LocalModel, PromptInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let tokens: u32 = args.next().map_or(Ok(32), |s| s.parse())?;
    let start = Instant::now();
    let model = LocalModel::load(&path)?;
    println!(
        "load: {:.2} s ({})",
        start.elapsed().as_secs_f64(),
        model.identity()
    );

    let prompt = |i: usize| {
        PromptInput::Raw(format!(
            "Question {i}: write a short story about a robot who learns to paint. Answer:"
        ))
    };
    let request = |i: usize, max_tokens: u32| GenerationRequest {
        // Sampling keeps rows from ending early on EOS; stop strings none.
        temperature: 0.8,
        top_p: 0.95,
        seed: i as u64,
        ..GenerationRequest::greedy(prompt(i), max_tokens)
    };

    // Warm-up, then prefill alone: one generated token.
    model.generate(&[request(0, 1)])?;
    let prompt_len = model.prompt_ids(&prompt(0))?.len();
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        model.generate(&[request(0, 1)])?;
    }
    let prefill = (reps * prompt_len) as f64 / t.elapsed().as_secs_f64();
    println!("prefill (batch 1, {prompt_len} tokens): {prefill:.1} tok/s");

    let mut rates = Vec::new();
    for batch in [1usize, 8] {
        let requests: Vec<_> = (0..batch).map(|i| request(i, tokens)).collect();
        let short: Vec<_> = (0..batch).map(|i| request(i, 1)).collect();
        // Decode rate = (time for TOKENS tokens − time for 1 token) per extra token.
        let t = Instant::now();
        model.generate(&short)?;
        let one = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = model.generate(&requests)?;
        let all = t.elapsed().as_secs_f64();
        let generated: u32 = out.iter().map(|o| o.completion_tokens).sum();
        let extra = generated as f64 - batch as f64;
        let rate = extra / (all - one).max(1e-9);
        println!(
            "decode batch {batch}: {rate:.1} tok/s aggregate ({generated} tokens in {all:.2} s)"
        );
        rates.push(rate);
    }
    println!("batch-8 / batch-1 aggregate: {:.2}x", rates[1] / rates[0]);

    // Memory bandwidth: copy 256 MiB a few times.
    let buf = vec![1u8; 256 << 20];
    let mut dst = vec![0u8; 256 << 20];
    let t = Instant::now();
    for _ in 0..4 {
        dst.copy_from_slice(&buf);
        std::hint::black_box(&dst);
    }
    let bandwidth = 4.0 * 2.0 * (256u64 << 20) as f64 / t.elapsed().as_secs_f64();
    let file_bytes = std::fs::metadata(&path)?.len() as f64;
    let f32_bytes = f32_weight_bytes(&model);
    println!(
        "memory bandwidth (copy): {:.1} GB/s; bound for batch-1 decode: {:.0} tok/s reading the \
         {:.0} MB file, {:.0} tok/s reading the {:.0} MB of f32 weights this backend multiplies",
        bandwidth / 1e9,
        bandwidth / file_bytes,
        file_bytes / 1e6,
        bandwidth / f32_bytes,
        f32_bytes / 1e6
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM"))
    {
        println!("peak memory: {}", line.trim_start_matches("VmHWM:").trim());
    }
    Ok(())
}

/// Bytes of f32 weights read per decoded token (blocks and output head; the embedding is only
/// gathered).
fn f32_weight_bytes(model: &LocalModel) -> f64 {
    let c = model.model().config();
    let (d, hd, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
    let (h, kv) = (c.num_attention_heads, c.kv_heads());
    let per_layer = d * (h + 2 * kv) * hd + h * hd * d + 3 * d * i;
    4.0 * (c.num_hidden_layers * per_layer + d * c.vocab_size) as f64
}
