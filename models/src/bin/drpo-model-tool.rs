//! `drpo-model-tool`: writes random-weight models, measures decoding speed, and checks that a
//! device computes the same logits, and gives the same answers, as the CPU.
//!
//! ```text
//! drpo-model-tool random-model --config mistral-7b|tiny-llama|tiny-mistral|PATH --out DIR [--seed S] [--tokenizer]
//! drpo-model-tool bench  --config mistral-7b --device cuda [--batch 1,8,32] [--prompt-len 128] [--gen 128]
//! drpo-model-tool parity --config tiny-mistral --device cuda
//! drpo-model-tool matmul --config mistral-7b --device cuda [--rows 1,8,32] [--kernels mma,rows,cmma]
//! drpo-model-tool generate --model DIR --device cuda --against cpu [--schema JSON] PROMPT...
//! ```
//!
//! `bench`, `parity`, `matmul` and `generate` print human lines on stderr and one JSON object
//! per result on stdout, for scripts to collect.
//!
//! Built with the `cuda-compile-only` feature, `--device cuda` is a device that compiles every
//! kernel for an H100 and runs none (`drpo_models::cuda::compile_only`): the tool then ends with
//! the kernels it compiled, and fails if one did not compile. The numbers it prints before are
//! not results.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{FloatDType, Int, Tensor, TensorData, backend::Backend};
use clap::{Parser, Subcommand};
use drpo_models::device::{PendingIds, greedy_ids};
use drpo_models::gguf::GgufFile;
use drpo_models::llama::{Llama, Logits, WeightStorage};
use drpo_models::load::hf::{self, StoreDtype};
use drpo_models::{
    Arrival, DeviceSpec, GenerationRequest, KernelOptions, LlamaConfig, LocalModel, PromptInput,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[derive(Parser)]
#[command(
    version,
    about = "Model utilities for drpo: random models, speed, device parity"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a Hugging Face model directory with random weights.
    RandomModel {
        /// A preset (mistral-7b, mistral-7b-v0.2, mistral-7b-v0.3, tiny-llama, tiny-mistral,
        /// tiny-qwen2), a config.json, or a model directory.
        #[arg(long)]
        config: String,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Storage type: f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Largest shard, in MiB; bigger models are split with an index file.
        #[arg(long, default_value_t = 2048)]
        shard_mib: usize,
        /// Also write a small tokenizer (byte tokens, so any text encodes) and a chat template,
        /// so that the directory answers prompts (`generate`, drpo-host's `local:DIR`).
        #[arg(long)]
        tokenizer: bool,
    },
    /// Measure prefill and greedy decode speed.
    Bench {
        /// Random weights of this config (preset, config.json or directory), made on the device.
        #[arg(long, conflicts_with = "model")]
        config: Option<String>,
        /// A model directory or GGUF file to load instead (a GGUF file's blocks stay packed on
        /// the CPU, as `local:` models run).
        #[arg(long)]
        model: Option<PathBuf>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        batch: Vec<usize>,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// Tokens generated per sequence.
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// Seed of the weights and prompts.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Time the first run of each batch size: no warm-up run before it (on the CPU there
        /// are no kernels to compile, and a big model's warm-up costs as much as the run).
        #[arg(long)]
        no_warm_up: bool,
    },
    /// Compare a device's logits and greedy tokens with the CPU's (f32) on one model.
    Parity {
        /// Random weights of this config, written to a temporary directory.
        #[arg(long, conflicts_with = "model")]
        config: Option<String>,
        /// A model directory to load instead.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The device checked against the CPU.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Greedy tokens generated per prompt.
        #[arg(long, default_value_t = 16)]
        gen_tokens: usize,
        /// Largest allowed |logit difference| relative to the largest |logit|.
        #[arg(long, default_value_t = 0.05)]
        tolerance: f32,
        /// Seed of the prompts (and of the random weights).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Time each weight projection of a config alone, per small-row matmul kernel, and check
    /// each kernel's products against the same product computed on the host in f64.
    Matmul {
        /// A preset, config.json or model directory: its projections' shapes are measured.
        #[arg(long, default_value = "mistral-7b")]
        config: String,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Activation rows, comma-separated (the batch of a decode step).
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        rows: Vec<usize>,
        /// Small-row kernels (`DRPO_CUDA_SMALL_MATMUL` names), comma-separated. Each is measured
        /// as the decoder would run it: `mma` below 8 rows is the `rows` kernel, and a kernel that
        /// cannot take a shape gives way to the next one (with a warning on stderr).
        #[arg(long, value_delimiter = ',', default_value = "mma,rows,cmma")]
        kernels: Vec<String>,
        /// Timed products per shape and kernel.
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// Answer prompts through the generation API that drpo-host's `local:` models use (batched
    /// rows, the KV cache on the device, schema-constrained decoding), greedily: once
    /// unconstrained (the choices taken on the device) and, with --schema, once under the
    /// schema (the logits read back and masked); then unconstrained again as `serve` decodes,
    /// the other prompts joining the first's batch after its third token (continuous batching).
    /// With --against, the same on a second device, answer by answer. Fails when a run fails,
    /// an answer under the schema does not parse, or a joined answer differs from the batch's.
    Generate {
        /// A GGUF file, or a model directory with a tokenizer (`random-model --tokenizer`).
        #[arg(long)]
        model: PathBuf,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// A second device answering the same requests, for comparison (e.g. `cpu`).
        #[arg(long)]
        against: Option<String>,
        /// Most tokens per answer.
        #[arg(long, default_value_t = 32)]
        max_tokens: u32,
        /// A JSON schema that every prompt is also answered under (needs the `structured`
        /// feature).
        #[arg(long)]
        schema: Option<String>,
        /// The prompts (user messages of a chat), answered in one batch.
        #[arg(required = true)]
        prompts: Vec<String>,
    },
}

/// Arguments of `matmul`.
struct MatmulArgs {
    rows: Vec<usize>,
    kernels: Vec<String>,
    iters: usize,
}

/// Calls `$f::<B>(&device, args...)` for the backend and device that `$spec` names.
macro_rules! with_backend {
    ($spec:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        let spec: DeviceSpec = $spec;
        spec.check_available()?;
        match spec {
            DeviceSpec::Cpu => {
                let device = Default::default();
                $f::<drpo_models::device::CpuBackend>(&device, $($arg),*)
            }
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => drpo_models::device::on_cuda(index, |device| {
                probe_device::<drpo_models::device::CudaBackend>(device, spec)?;
                $f::<drpo_models::device::CudaBackend>(device, $($arg),*)
            }),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => unreachable!("check_available refused it"),
        }
    }};
}

fn main() -> ExitCode {
    // DRPO_WATCHDOG_S=N (default 10; 0 turns it off): report a stage that lasts N seconds.
    let watchdog = std::env::var("DRPO_WATCHDOG_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(10.0);
    if watchdog > 0.0 {
        progress::start_watchdog(std::time::Duration::from_secs_f64(watchdog));
    }
    // The kernel switches (DRPO_CPU_*, DRPO_CUDA_*): read here, once, for every command.
    let kernels = KernelOptions::from_env();
    #[cfg(feature = "cuda-compile-only")]
    drpo_models::cuda::compile_only::keep_kernels_in(kernels.cuda_kernel_dir.clone());
    let code = match run(Cli::parse(), &kernels) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    #[cfg(feature = "cuda-compile-only")]
    let code = compile_only_report(code);
    code
}

/// Prints what the compile-only CUDA device compiled; a failure if any kernel did not compile.
#[cfg(feature = "cuda-compile-only")]
fn compile_only_report(code: ExitCode) -> ExitCode {
    let report = drpo_models::cuda::compile_only::compiled();
    let launches: Vec<String> = report
        .launches
        .iter()
        .map(|(kernel, launched)| format!("{kernel}={}/{}", launched.count, launched.units))
        .collect();
    eprintln!(
        "compile-only CUDA device: {} kernels compiled for sm_90a, {} failed; launches/units: {}",
        report.kernels.len(),
        report.failures.len(),
        launches.join(" ")
    );
    for failure in &report.failures {
        eprintln!("kernel failed: {failure}");
    }
    if report.failures.is_empty() {
        code
    } else {
        ExitCode::FAILURE
    }
}

fn run(cli: Cli, kernels: &KernelOptions) -> Result<ExitCode> {
    match cli.command {
        Command::RandomModel {
            config,
            out,
            seed,
            dtype,
            shard_mib,
            tokenizer,
        } => {
            let config = LlamaConfig::resolve(&config)?;
            let dtype = match dtype.as_str() {
                "f32" => StoreDtype::F32,
                "bf16" => StoreDtype::Bf16,
                other => bail!("unknown --dtype {other:?}: use f32 or bf16"),
            };
            hf::write_random(&config, &out, seed, dtype, shard_mib << 20)?;
            if tokenizer {
                hf::write_small_tokenizer(&out, config.vocab_size)?;
            }
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            config,
            model,
            device,
            batch,
            prompt_len,
            gen_tokens,
            seed,
            no_warm_up,
        } => {
            let source = match (config, model) {
                (Some(config), None) => Source::Random(Box::new(LlamaConfig::resolve(&config)?)),
                (None, Some(path)) => Source::Path(path),
                _ => bail!("give --config (random weights) or --model DIR|FILE.gguf"),
            };
            if gen_tokens < 2 || prompt_len == 0 {
                bail!("--gen-tokens must be at least 2 and --prompt-len at least 1");
            }
            let spec: DeviceSpec = device.parse()?;
            let args = BenchArgs {
                batch,
                prompt_len,
                gen_tokens,
                seed,
                warm_up: !no_warm_up,
            };
            with_backend!(spec, bench(source, &args, spec, kernels))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Matmul {
            config,
            device,
            rows,
            kernels: kernel_names,
            iters,
        } => {
            let config = LlamaConfig::resolve(&config)?;
            let spec: DeviceSpec = device.parse()?;
            if iters == 0 || rows.contains(&0) {
                bail!("--iters and every --rows must be at least 1");
            }
            let args = MatmulArgs {
                rows,
                kernels: kernel_names,
                iters,
            };
            with_backend!(spec, matmul_bench(&config, &args, spec, kernels))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Parity {
            config,
            model,
            device,
            gen_tokens,
            tolerance,
            seed,
        } => {
            let temp;
            let dir = match (config, model) {
                (Some(config), None) => {
                    let config = LlamaConfig::resolve(&config)?;
                    temp = std::env::temp_dir()
                        .join(format!("drpo-parity-{}-{seed}", std::process::id()));
                    hf::write_random(&config, &temp, seed, StoreDtype::F32, usize::MAX)?;
                    temp.clone()
                }
                (None, Some(dir)) => dir,
                _ => bail!("give --config (random weights) or --model DIR"),
            };
            let spec: DeviceSpec = device.parse()?;
            let ok = parity(&dir, spec, gen_tokens, tolerance, seed, kernels)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Generate {
            model,
            device,
            against,
            max_tokens,
            schema,
            prompts,
        } => {
            let devices = std::iter::once(device)
                .chain(against)
                .map(|d| d.parse::<DeviceSpec>())
                .collect::<Result<Vec<_>, _>>()?;
            let ok = generate_on(
                &model,
                &devices,
                max_tokens,
                schema.as_deref(),
                &prompts,
                kernels,
            )?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `generate`: answers `prompts` on each of `devices` (greedy, then under `schema`), prints
/// every answer, and says where the later devices' answers differ from the first's; false when
/// an answer under the schema does not parse.
fn generate_on(
    path: &std::path::Path,
    devices: &[DeviceSpec],
    max_tokens: u32,
    schema: Option<&str>,
    prompts: &[String],
    kernels: &KernelOptions,
) -> Result<bool> {
    let request = |prompt: &String| {
        GenerationRequest::greedy(
            PromptInput::Chat(vec![drpo_models::ChatMessage::new("user", prompt)]),
            max_tokens,
        )
    };
    let mut batches = vec![("greedy", prompts.iter().map(request).collect::<Vec<_>>())];
    if let Some(schema) = schema {
        serde_json::from_str::<serde_json::Value>(schema)
            .with_context(|| format!("--schema is not JSON: {schema}"))?;
        let constrained = prompts
            .iter()
            .map(|p| GenerationRequest {
                json_schema: Some(schema.to_owned()),
                ..request(p)
            })
            .collect();
        batches.push(("schema", constrained));
    }
    let mut ok = true;
    let mut first: Vec<Vec<String>> = Vec::new();
    for (d, &spec) in devices.iter().enumerate() {
        progress::stage(&format!("generate: loading {} on {spec}", path.display()));
        let model = LocalModel::load_on(path, spec, kernels.clone())
            .with_context(|| format!("loading {} on {spec}", path.display()))?;
        for (b, (kind, requests)) in batches.iter().enumerate() {
            let started = Instant::now();
            let outputs = model
                .generate(requests)
                .with_context(|| format!("{kind} answers on {spec}"))?;
            let seconds = started.elapsed().as_secs_f64();
            let tokens: u32 = outputs.iter().map(|o| o.completion_tokens).sum();
            progress::stage(&format!(
                "generate: {} {kind} answers on {spec}, {tokens} tokens in {:.2} s",
                outputs.len(),
                seconds
            ));
            let answers: Vec<String> = outputs.into_iter().map(|o| o.choices[0].clone()).collect();
            for (i, (prompt, answer)) in prompts.iter().zip(&answers).enumerate() {
                let parses = (*kind == "schema")
                    .then(|| serde_json::from_str::<serde_json::Value>(answer).is_ok());
                let same = (d > 0).then(|| first[b][i] == *answer);
                if parses == Some(false) {
                    ok = false;
                    eprintln!(
                        "{spec}: the answer under the schema to {prompt:?} does not parse: {answer:?}"
                    );
                }
                if same == Some(false) {
                    eprintln!(
                        "{spec}: the {kind} answer to {prompt:?} differs from {}'s:\n  {}: {answer:?}\n  {}: {:?}",
                        devices[0], spec, devices[0], first[b][i]
                    );
                }
                println!(
                    "{}",
                    serde_json::json!({
                        "kind": "generate", "device": spec.to_string(), "batch": kind,
                        "prompt": prompt, "answer": answer, "parses": parses,
                        "same_as_first_device": same, "batch_seconds": seconds,
                        "batch_tokens": tokens,
                    })
                );
            }
            if d == 0 {
                first.push(answers.clone());
            }
            if b == 0 {
                let started = Instant::now();
                let joined = joined_answers(&model, requests)?;
                progress::stage(&format!(
                    "generate: {} answers joining a running batch on {spec} in {:.2} s",
                    joined.len(),
                    started.elapsed().as_secs_f64()
                ));
                for ((prompt, answer), batched) in prompts.iter().zip(&joined).zip(&answers) {
                    let same = answer == batched;
                    if !same {
                        ok = false;
                        eprintln!(
                            "{spec}: the answer to {prompt:?} that joined a running batch differs \
                             from the batch's:\n  joined: {answer:?}\n  batch: {batched:?}"
                        );
                    }
                    println!(
                        "{}",
                        serde_json::json!({
                            "kind": "generate", "device": spec.to_string(), "batch": "joined",
                            "prompt": prompt, "answer": answer, "same_as_batch": same,
                        })
                    );
                }
            }
        }
    }
    Ok(ok)
}

/// The answers to `requests` (each with one choice) decoded as `serve` decodes: the first
/// alone, the others joining its batch after its third token (or once it is answered, if it
/// ends sooner).
fn joined_answers(model: &LocalModel, requests: &[GenerationRequest]) -> Result<Vec<String>> {
    use std::sync::{Arc, Mutex, mpsc};
    let answers = Arc::new(Mutex::new(vec![None; requests.len()]));
    let arrival = |i: usize, request: &GenerationRequest| {
        let answers = answers.clone();
        Arrival {
            request: request.clone(),
            observer: None,
            finish: Box::new(move |output| {
                let answer = output
                    .map(|mut o| o.choices.remove(0))
                    .map_err(|e| e.to_string());
                answers.lock().expect("answers")[i] = Some(answer);
            }),
        }
    };
    let (arrivals, receiver) = mpsc::channel();
    let later: Vec<Arrival> = (1..requests.len())
        .map(|i| arrival(i, &requests[i]))
        .collect();
    let later = Arc::new(Mutex::new(Some(later)));
    let send_later = {
        let (later, arrivals) = (later.clone(), arrivals.clone());
        move || {
            for joining in later.lock().expect("later").take().into_iter().flatten() {
                // The loop outlives the requests it is sent.
                let _ = arrivals.send(joining);
            }
        }
    };
    let mut first = arrival(0, &requests[0]);
    let tokens = std::sync::atomic::AtomicUsize::new(0);
    let on_token = send_later.clone();
    first.observer = Some(Arc::new(move |_, _: &str| {
        if tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 3 {
            on_token();
        }
    }));
    let finish_first = first.finish;
    first.finish = Box::new(move |output| {
        finish_first(output);
        send_later();
    });
    arrivals.send(first).expect("the loop has not started");
    drop(arrivals);
    model.decode_arrivals(&receiver, requests.len())?;
    let answers = answers.lock().expect("answers").clone();
    answers
        .into_iter()
        .enumerate()
        .map(|(i, answer)| match answer {
            Some(Ok(text)) => Ok(text),
            Some(Err(e)) => bail!("the joined request {i} failed: {e}"),
            None => bail!("the joined request {i} was never answered"),
        })
        .collect()
}

/// Where a benchmark's weights come from.
enum Source {
    Random(Box<LlamaConfig>),
    /// A model directory or a GGUF file.
    Path(PathBuf),
}

struct BenchArgs {
    batch: Vec<usize>,
    prompt_len: usize,
    gen_tokens: usize,
    seed: u64,
    warm_up: bool,
}

fn bench<B: Backend>(
    device: &B::Device,
    source: Source,
    args: &BenchArgs,
    spec: DeviceSpec,
    kernels: &KernelOptions,
) -> Result<()> {
    progress::stage(&format!("bench: building the model on {spec}"));
    let started = Instant::now();
    let model = match source {
        Source::Random(config) => Llama::<B>::random(*config, device, args.seed, kernels.clone()),
        Source::Path(path) if path.is_file() => {
            let file = GgufFile::open(&path)?;
            let storage = match spec {
                DeviceSpec::Cpu => WeightStorage::Packed,
                _ => WeightStorage::Dequantized,
            };
            let (config, weights) = drpo_models::load::gguf::load::<B>(&file, device, storage)?;
            Llama::new(config, weights, device, kernels.clone())
        }
        Source::Path(dir) => {
            let (config, weights) = hf::load::<B>(&dir, device)?;
            Llama::new(config, weights, device, kernels.clone())
        }
    };
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let load_s = started.elapsed().as_secs_f64();
    progress::note(&format!("model ready on {spec} in {load_s:.1} s"));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let vocab = model.config().vocab_size as u32;
    for &batch in &args.batch {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                (0..args.prompt_len)
                    .map(|_| rng.random_range(3..vocab))
                    .collect()
            })
            .collect();
        // The first pass compiles and autotunes kernels for these shapes; the second is timed.
        let warm = Instant::now();
        if args.warm_up {
            progress::stage(&format!(
                "batch {batch}: warm-up run (compiles and autotunes)"
            ));
            greedy(
                &model,
                &prompts,
                args.gen_tokens,
                &format!("batch {batch} warm-up"),
                false,
            )?;
        }
        let warm_s = warm.elapsed().as_secs_f64();
        progress::stage(&format!(
            "batch {batch}: timed run (warm-up took {warm_s:.1} s)"
        ));
        let run = greedy(
            &model,
            &prompts,
            args.gen_tokens,
            &format!("batch {batch} timed"),
            false,
        )?;
        let prefill = (batch * args.prompt_len) as f64 / run.prefill_s;
        let decode = (batch * (args.gen_tokens - 1)) as f64 / run.decode_s;
        progress::stage(&format!(
            "batch {batch:>3}: prefill {prefill:>9.1} tok/s, decode {decode:>8.1} tok/s \
             ({:.2} ms/step, issued in {:.2} ms), warm-up {warm_s:.1} s",
            1000.0 * run.decode_s / (args.gen_tokens - 1) as f64,
            1000.0 * run.decode_queue_s / (args.gen_tokens - 1) as f64
        ));
        println!(
            "{}",
            serde_json::json!({
                "kind": "bench", "device": spec.to_string(), "batch": batch,
                "prompt_len": args.prompt_len, "gen_tokens": args.gen_tokens,
                "prefill_tok_s": prefill, "decode_tok_s": decode,
                "decode_ms_per_step": 1000.0 * run.decode_s / (args.gen_tokens - 1) as f64,
                "decode_issue_ms_per_step":
                    1000.0 * run.decode_queue_s / (args.gen_tokens - 1) as f64,
                "warmup_s": warm_s, "load_s": load_s, "kernels": format!("{kernels:?}"),
                "peak_host_rss_mib": peak_rss_mib(),
            })
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// `kernels` with the small-row kernel `name` (a `DRPO_CUDA_SMALL_MATMUL` name).
fn with_small_matmul(name: &str, kernels: &KernelOptions) -> Result<KernelOptions> {
    use drpo_models::kernel_options::SmallRowKernel;
    let kernel = SmallRowKernel::from_name(name).with_context(|| {
        let names: Vec<_> = SmallRowKernel::ALL.iter().map(|(n, _)| *n).collect();
        format!("unknown kernel {name:?}: use one of {names:?}")
    })?;
    Ok(KernelOptions {
        cuda_small_matmul: kernel,
        ..kernels.clone()
    })
}

/// `x · wᵀ` with the small-row kernel `kernels` name (CUDA builds; elsewhere burn's matmul).
fn project_by<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    kernels: &KernelOptions,
) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    return drpo_models::cuda::matmul::project(x, w, kernels);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = kernels;
        x.matmul(w.clone().transpose())
    }
}

/// `x · wᵀ` on the host in f64 (rounded to f32), for `x: [m, k]` and `w: [n, k]`.
fn host_product(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let n = w.len() / k;
    let mut out = vec![0f32; x.len() / k * n];
    out.par_chunks_mut(n)
        .zip(x.par_chunks(k))
        .for_each(|(row, xr)| {
            for (o, wr) in row.iter_mut().zip(w.chunks(k)) {
                *o = xr
                    .iter()
                    .zip(wr)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>() as f32;
            }
        });
    out
}

fn matmul_bench<B: Backend>(
    device: &B::Device,
    config: &LlamaConfig,
    args: &MatmulArgs,
    spec: DeviceSpec,
    kernels: &KernelOptions,
) -> Result<()> {
    let c = config;
    let (d, hd) = (c.hidden_size, c.head_dim());
    let (h, kv, i) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size);
    let shapes = [
        ("qkv", (h + 2 * kv) * hd, d),
        ("o", d, h * hd),
        ("gate_up", 2 * i, d),
        ("down", d, i),
        ("lm_head", c.vocab_size, d),
    ];
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("device error: {e:?}"));
    let to_f32 = |t: Tensor<B, 2>| -> Result<Vec<f32>> {
        t.cast(FloatDType::F32)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading back: {e:?}"))
    };
    let distribution = burn::tensor::Distribution::Normal(0.0, 1.0);
    for (name, n, k) in shapes {
        // Dense rows, as the model keeps its weights and activations (burn pads some new ones).
        let w = drpo_models::llama::dense(Tensor::<B, 2>::random([n, k], distribution, device));
        let bytes = (n * k * w.dtype().size()) as f64;
        let w_host = to_f32(w.clone())?;
        for &m in &args.rows {
            let x = drpo_models::llama::dense(Tensor::<B, 2>::random([m, k], distribution, device));
            let reference = host_product(&to_f32(x.clone())?, &w_host, k);
            let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6);
            for kernel in &args.kernels {
                let options = with_small_matmul(kernel, kernels)?;
                let product = project_by(x.clone(), &w, &options);
                let got = to_f32(product)?;
                let relative = reference
                    .iter()
                    .zip(&got)
                    .fold(0f32, |a, (r, g)| a.max((r - g).abs()))
                    / scale;
                sync()?;
                let started = Instant::now();
                for _ in 0..args.iters {
                    let _ = project_by(x.clone(), &w, &options);
                }
                sync()?;
                let us = 1e6 * started.elapsed().as_secs_f64() / args.iters as f64;
                let gb_s = bytes / us / 1e3;
                eprintln!(
                    "{name:>8} {n:>6}x{k:<6} rows {m:>3} {kernel:>10}: {us:>9.1} us                      {gb_s:>7.1} GB/s  max rel diff {relative:.2e}"
                );
                println!(
                    "{}",
                    serde_json::json!({
                        "kind": "matmul", "device": spec.to_string(), "shape": name,
                        "n": n, "k": k, "rows": m, "kernel": kernel, "us": us,
                        "weight_gb_s": gb_s, "max_rel_diff": relative,
                    })
                );
            }
        }
    }
    Ok(())
}

/// What a greedy run produced and how long its phases took.
struct Greedy {
    /// Generated tokens per row (the first comes from the prefill).
    tokens: Vec<Vec<u32>>,
    /// Last-position logits of the prefill, per row, in f32.
    first_logits: Vec<Vec<f32>>,
    prefill_s: f64,
    decode_s: f64,
    /// Of `decode_s`, the time the host spent issuing the steps' work.
    decode_queue_s: f64,
    /// Per row and generated token, the margin of the chosen logit over the runner-up (empty
    /// unless asked for).
    margins: Vec<Vec<f32>>,
}

/// Greedy decoding of left-padded `prompts`; the argmax runs on the device and only the chosen
/// ids come back to the host, once per step, read while the next step runs.
/// `label` names the run in the progress lines: the prefill, then the first decode steps one by
/// one (a step's line covers issuing it and waiting for the ids of the step before), then every
/// 16th.
/// With `with_margins`, every step's logits also come back, for [`Greedy::margins`].
fn greedy<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    gen_tokens: usize,
    label: &str,
    with_margins: bool,
) -> Result<Greedy> {
    let device = model.device();
    let batch = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let ids: Vec<i32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0, longest - p.len()).chain(p.iter().map(|&t| t as i32)))
        .collect();
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("device error: {e:?}"));
    sync()?;
    let started = Instant::now();
    progress::stage(&format!("{label}: prefill of {batch}x{longest} tokens"));
    let mut cache = model.new_cache(&pads, longest + gen_tokens);
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, longest]), device);
    let logits = model
        .forward(input, &mut cache, Logits::Last)
        .reshape([batch, model.config().vocab_size]);
    progress::note(&format!(
        "{label}: prefill queued in {:.1} ms; reading the logits back",
        1000.0 * started.elapsed().as_secs_f64()
    ));
    let first_logits = logits
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    let vocab = model.config().vocab_size;
    let mut margins = vec![Vec::new(); batch];
    let mut record_margins = |values: &[f32]| {
        for (row, logits) in margins.iter_mut().zip(values.chunks(vocab)) {
            row.push(top_two_margin(logits));
        }
    };
    if with_margins {
        record_margins(&first_logits);
    }
    let kernels = model.kernels();
    let mut next = greedy_ids(logits, kernels);
    let mut tokens = vec![Vec::with_capacity(gen_tokens); batch];
    push_tokens(&mut tokens, PendingIds::read(next.clone(), kernels))?;
    let prefill_s = started.elapsed().as_secs_f64();
    progress::stage(&format!(
        "{label}: prefill done in {:.1} ms; decoding {} steps",
        1000.0 * prefill_s,
        gen_tokens - 1
    ));
    let decode_start = Instant::now();
    let mut step_start = Instant::now();
    let mut decode_queue_s = 0.0;
    // The ids of the step before, read while this step runs (as `LocalModel` decodes).
    let mut pending: Option<PendingIds> = None;
    for step in 1..gen_tokens {
        let logits = model
            .forward(next, &mut cache, Logits::Last)
            .reshape([batch, model.config().vocab_size]);
        if with_margins {
            let values = logits
                .clone()
                .cast(FloatDType::F32)
                .into_data()
                .to_vec::<f32>();
            record_margins(&values.map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?);
        }
        next = greedy_ids(logits, kernels);
        // How long the host took to issue the step's kernels: if it is close to the whole
        // step, the step is bound by the host, not the device.
        let queued_s = step_start.elapsed().as_secs_f64();
        decode_queue_s += queued_s;
        if let Some(ids) = pending.replace(PendingIds::read(next.clone(), kernels)) {
            push_tokens(&mut tokens, ids)?;
        }
        if step <= 6 || step % 16 == 0 || step + 1 == gen_tokens {
            progress::stage(&format!(
                "{label}: decode step {step} (kv {}) in {:.1} ms (issued in {:.1} ms), {:.1} ms \
                 since the prefill",
                cache.len(),
                1000.0 * step_start.elapsed().as_secs_f64(),
                1000.0 * queued_s,
                1000.0 * decode_start.elapsed().as_secs_f64()
            ));
        }
        step_start = Instant::now();
    }
    if let Some(ids) = pending {
        push_tokens(&mut tokens, ids)?;
    }
    let decode_s = decode_start.elapsed().as_secs_f64();
    Ok(Greedy {
        tokens,
        first_logits: first_logits
            .chunks(model.config().vocab_size)
            .map(<[f32]>::to_vec)
            .collect(),
        prefill_s,
        decode_s,
        decode_queue_s,
        margins,
    })
}

/// How far the largest logit is above the second largest.
fn top_two_margin(logits: &[f32]) -> f32 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in logits {
        if v > first {
            (first, second) = (v, first);
        } else if v > second {
            second = v;
        }
    }
    first - second
}

/// Waits for a step's chosen ids and appends them to each row.
fn push_tokens(tokens: &mut [Vec<u32>], ids: PendingIds) -> Result<()> {
    for (row, id) in tokens.iter_mut().zip(ids.wait()?) {
        row.push(id as u32);
    }
    Ok(())
}

fn parity(
    dir: &std::path::Path,
    spec: DeviceSpec,
    gen_tokens: usize,
    tolerance: f32,
    seed: u64,
    kernels: &KernelOptions,
) -> Result<bool> {
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    // Different lengths exercise the left padding; lengths past a sliding window exercise it.
    let window = config.sliding_window.unwrap_or(8);
    let lengths = [3, window + 5, 2 * window + 3, 7];
    let prompts: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| rng.random_range(3..config.vocab_size as u32))
                .collect()
        })
        .collect();

    progress::stage("parity: reference on cpu (f32)");
    let reference = run_greedy_on(DeviceSpec::Cpu, dir, &prompts, gen_tokens, true, kernels)?;
    progress::stage(&format!("parity: checked device {spec}"));
    let checked = run_greedy_on(spec, dir, &prompts, gen_tokens, false, kernels)?;

    let scale = reference
        .first_logits
        .iter()
        .flatten()
        .fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = reference
        .first_logits
        .iter()
        .flatten()
        .zip(checked.first_logits.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let relative = max_diff / scale.max(1e-6);
    let tokens_equal = reference.tokens == checked.tokens;
    // Where the tokens part, the reference's choice must have been a near-tie: its margin over
    // the runner-up no more than twice the logit error measured on the prefill (each of the
    // two logits may move by that much). After that the sequences differ, so nothing further
    // is compared.
    let mut near_ties = Vec::new();
    for (n, (a, b)) in reference.tokens.iter().zip(&checked.tokens).enumerate() {
        if let Some(step) = a.iter().zip(b).position(|(x, y)| x != y) {
            let margin = reference.margins[n][step];
            eprintln!(
                "prompt {n}: cpu {a:?}\n          {spec} {b:?}\n          parted at token {step}, \
                 where the cpu's margin over the runner-up was {margin:.4}"
            );
            near_ties.push(margin <= 2.0 * max_diff);
        }
    }
    let tokens_ok = near_ties.iter().all(|&tie| tie);
    let ok = relative <= tolerance && tokens_ok && max_diff.is_finite();
    let tokens = match (tokens_equal, tokens_ok) {
        (true, _) => "equal",
        (false, true) => "equal up to bf16 near-ties",
        (false, false) => "DIFFER",
    };
    eprintln!(
        "parity {}: max |logit diff| {max_diff:.4} (max |logit| {scale:.2}, relative {relative:.4}, \
         tolerance {tolerance}), greedy tokens {tokens}",
        if ok { "PASS" } else { "FAIL" },
    );
    println!(
        "{}",
        serde_json::json!({
            "kind": "parity", "device": spec.to_string(), "ok": ok,
            "model": config.model_type, "kernels": format!("{kernels:?}"),
            "max_abs_diff": max_diff, "max_abs_logit": scale, "relative": relative,
            "tolerance": tolerance, "tokens_equal": tokens_equal, "tokens": tokens,
            "prompt_lengths": lengths, "gen_tokens": gen_tokens,
        })
    );
    Ok(ok)
}

fn run_greedy_on(
    spec: DeviceSpec,
    dir: &std::path::Path,
    prompts: &[Vec<u32>],
    gen_tokens: usize,
    with_margins: bool,
    kernels: &KernelOptions,
) -> Result<Greedy> {
    fn go<B: Backend>(
        device: &B::Device,
        dir: &std::path::Path,
        prompts: &[Vec<u32>],
        gen_tokens: usize,
        with_margins: bool,
        kernels: &KernelOptions,
    ) -> Result<Greedy> {
        progress::stage(&format!("loading {}", dir.display()));
        let (config, weights) =
            hf::load::<B>(dir, device).with_context(|| format!("loading {}", dir.display()))?;
        let model = Llama::new(config, weights, device, kernels.clone());
        greedy(&model, prompts, gen_tokens, "parity", with_margins)
    }
    with_backend!(spec, go(dir, prompts, gen_tokens, with_margins, kernels))
}

/// Brings the device up and runs one tiny kernel, so that a broken setup or a stuck first
/// launch shows in the progress lines before the model is built.
#[allow(dead_code)]
fn probe_device<B: Backend>(device: &B::Device, spec: DeviceSpec) -> Result<()> {
    progress::stage(&format!(
        "{spec}: device init and first kernel (compiled with NVRTC)"
    ));
    let started = Instant::now();
    let x = Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [4]), device);
    B::sync(device).map_err(|e| anyhow::anyhow!("device error: {e:?}"))?;
    progress::note(&format!(
        "{spec}: device up, upload done in {:.1} ms",
        1000.0 * started.elapsed().as_secs_f64()
    ));
    let y = (x * 2.0 + 1.0)
        .cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading back: {e:?}"))?;
    progress::stage(&format!(
        "{spec}: first kernel ran in {:.1} ms total, result {y:?} (expected [3, 5, 7, 9])",
        1000.0 * started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Peak resident memory of this process, from the kernel (Linux only; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Timestamped progress lines on stderr, and a watchdog that says what the process is doing
/// when a stage takes long: on a GPU, kernel compilation and autotuning happen inside the first
/// calls of each shape, and a stuck run must still show where it is.
mod progress {
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    static START: OnceLock<Instant> = OnceLock::new();
    static STAGE: Mutex<Option<(String, Instant)>> = Mutex::new(None);

    fn now() -> f64 {
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    }

    /// Prints one line with the time since the start of the process.
    pub fn note(msg: &str) {
        use std::io::Write;
        let line = format!("[{:>9.3}s] {msg}\n", now());
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }

    /// Enters a stage: prints it, and the watchdog reports on it while it lasts.
    pub fn stage(name: &str) {
        note(name);
        if let Ok(mut s) = STAGE.lock() {
            *s = Some((name.to_string(), Instant::now()));
        }
    }

    /// Starts the watchdog thread: every `period`, while one stage has lasted that long, it
    /// prints the stage and the busiest threads of this process (CPU share since the last
    /// report, kernel wait channel) from /proc: a compiling run shows a busy thread, a
    /// deadlocked one shows none (or one spinning on a lock).
    pub fn start_watchdog(period: Duration) {
        START.get_or_init(Instant::now);
        let _ = std::thread::Builder::new()
            .name("drpo-watchdog".into())
            .spawn(move || {
                let mut last = thread_times();
                loop {
                    std::thread::sleep(period);
                    let current = thread_times();
                    let stage = STAGE.lock().ok().and_then(|s| s.clone());
                    let Some((name, since)) = stage else {
                        last = current;
                        continue;
                    };
                    let in_stage = since.elapsed();
                    if in_stage < period {
                        last = current;
                        continue;
                    }
                    let mut busy: Vec<(f64, String)> = current
                        .iter()
                        .map(|(tid, (comm, ticks, wchan))| {
                            let before = last.get(tid).map_or(0, |t| t.1);
                            let share = (ticks.saturating_sub(before)) as f64
                                / (100.0 * period.as_secs_f64());
                            (
                                share,
                                format!("{comm}#{tid} {:.0}% [{wchan}]", 100.0 * share),
                            )
                        })
                        .collect();
                    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
                    let top: Vec<String> = busy.into_iter().take(4).map(|(_, s)| s).collect();
                    note(&format!(
                        "... still in '{name}' after {:.0} s; {} threads, busiest: {}",
                        in_stage.as_secs_f64(),
                        current.len(),
                        top.join(", ")
                    ));
                    last = current;
                }
            });
    }

    /// Per thread of this process: name, user+system CPU ticks, wait channel.
    fn thread_times() -> std::collections::HashMap<u32, (String, u64, String)> {
        let mut out = std::collections::HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return out;
        };
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ...`: comm may hold spaces; fields after ')' are fixed.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_string();
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // After ')': state is field 3 of stat, utime 14, stime 15 (1-based).
            let ticks = fields
                .get(11)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + fields
                    .get(12)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            let state = fields.first().copied().unwrap_or("?");
            let wchan = std::fs::read_to_string(entry.path().join("wchan")).unwrap_or_default();
            let wchan = if wchan.is_empty() || wchan == "0" {
                "-".into()
            } else {
                wchan
            };
            out.insert(tid, (comm, ticks, format!("{state} {wchan}")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::top_two_margin;

    #[test]
    fn the_margin_is_the_gap_between_the_two_largest_logits() {
        assert_eq!(top_two_margin(&[0.5, 3.0, -1.0, 2.25]), 0.75);
        assert_eq!(top_two_margin(&[2.0, 7.5, 7.5]), 0.0);
        assert_eq!(top_two_margin(&[-4.0, -1.0]), 3.0);
    }
}
