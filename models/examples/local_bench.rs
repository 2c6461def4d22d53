//! Decode and prefill speed of a local model through the generation API.
//!
//! `cargo run --release -p drpo-models --example local_bench -- [MODEL] [TOKENS] [REPEATS]`
//! (MODEL defaults to the SmolLM2 GGUF of `scripts/fetch-smollm2.sh`, TOKENS to 64, REPEATS
//! to 3).
//!
//! Prints prefill tokens/s, decode tokens/s at batch 1 and batch 8 (aggregate), the memory
//! bandwidth bound of batch-1 decoding (every weight byte read once per token, at the read
//! bandwidth measured here with one thread per core), and the peak resident memory. Each figure
//! is the best of REPEATS runs: on a shared machine the best run is the one least disturbed by
//! others. `DRPO_CPU_KERNEL=avx512|avx2|generic` picks the matmul kernel, to compare them.

use std::path::PathBuf;
use std::time::Instant;

use drpo_models::{DeviceSpec, GenerationRequest, KernelOptions, LocalModel, PromptInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let tokens: u32 = args.next().map_or(Ok(64), |s| s.parse())?;
    let repeats: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let start = Instant::now();
    let kernels = KernelOptions::from_env();
    let kernel = drpo_models::packed::kernel_name(&kernels);
    let model = LocalModel::load_on(&path, DeviceSpec::Cpu, kernels)?;
    println!(
        "load: {:.2} s ({}); matmul kernel: {}; {} threads",
        start.elapsed().as_secs_f64(),
        model.identity(),
        kernel,
        rayon::current_num_threads()
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
    let best_seconds = |requests: &[GenerationRequest]| -> Result<(f64, u32), String> {
        let mut best = (f64::MAX, 0);
        for _ in 0..repeats {
            let t = Instant::now();
            let out = model.generate(requests).map_err(|e| e.to_string())?;
            let seconds = t.elapsed().as_secs_f64();
            let generated = out.iter().map(|o| o.completion_tokens).sum();
            if seconds < best.0 {
                best = (seconds, generated);
            }
        }
        Ok(best)
    };

    // Warm-up, then prefill alone: one generated token.
    model.generate(&[request(0, 1)])?;
    let prompt_len = model.prompt_ids(&prompt(0))?.len();
    let (prefill_s, _) = best_seconds(&[request(0, 1)])?;
    println!(
        "prefill (batch 1, {prompt_len} tokens): {:.1} tok/s",
        prompt_len as f64 / prefill_s
    );

    let mut rates = Vec::new();
    for batch in [1usize, 8] {
        let requests: Vec<_> = (0..batch).map(|i| request(i, tokens)).collect();
        let short: Vec<_> = (0..batch).map(|i| request(i, 1)).collect();
        // Decode rate = (time for TOKENS tokens − time for 1 token) per extra token.
        let (one, _) = best_seconds(&short)?;
        let (all, generated) = best_seconds(&requests)?;
        let extra = generated as f64 - batch as f64;
        let rate = extra / (all - one).max(1e-9);
        println!(
            "decode batch {batch}: {rate:.1} tok/s aggregate ({generated} tokens in {all:.2} s)"
        );
        rates.push(rate);
    }
    println!("batch-8 / batch-1 aggregate: {:.2}x", rates[1] / rates[0]);

    let bandwidth = read_bandwidth();
    let file_bytes = std::fs::metadata(&path)?.len() as f64;
    let weight_bytes = model.cpu_model().expect("loaded on the CPU").weight_bytes() as f64;
    println!(
        "read bandwidth ({} threads): {:.1} GB/s; batch-1 decode bound: {:.0} tok/s reading the \
         {:.0} MB file once per token, {:.0} tok/s reading the {:.0} MB of weights as held in \
         memory; batch-1 decode reaches {:.0}% of the latter",
        rayon::current_num_threads(),
        bandwidth / 1e9,
        bandwidth / file_bytes,
        file_bytes / 1e6,
        bandwidth / weight_bytes,
        weight_bytes / 1e6,
        100.0 * rates[0] / (bandwidth / weight_bytes),
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM"))
    {
        println!("peak memory: {}", line.trim_start_matches("VmHWM:").trim());
    }
    Ok(())
}

/// Bytes per second read from memory by one thread per core, each summing its part of a
/// 256 MiB buffer (best of five).
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let words: Vec<u64> = (0..(256u64 << 20) / 8).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = words
            .par_chunks(words.len() / rayon::current_num_threads())
            .map(|part| part.iter().fold(0u64, |a, &w| a.wrapping_add(w)))
            .sum();
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words.len() * 8) as f64 / best
}
