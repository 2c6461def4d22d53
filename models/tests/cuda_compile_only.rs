//! The CUDA decoder on the compile-only device (feature `cuda-compile-only`, see
//! `drpo_models::cuda::compile_only`): every kernel that decoding at Mistral-7B's shapes
//! launches, under each kernel switch, and every kernel of `LocalModel`'s generation, must
//! expand and compile for an H100 with NVRTC, on a machine without a GPU.
//!
//! The bench under each switch runs `drpo-model-tool` in a process of its own, with the switch's
//! variable in that process's environment (which the tool reads into its `KernelOptions`): the
//! compile-only report counts a process's launches, and each run must be counted alone. It
//! checks the variables' names and meaning too, which scripts/gpu-check.sh relies on. The
//! generation test sets its `KernelOptions` directly.
//!
//! Needs NVRTC and the CUDA headers: `scripts/fetch-nvrtc.sh DIR`, then
//! `LD_LIBRARY_PATH=DIR/lib CUDA_PATH=DIR` (as `scripts/test` runs these tests).
#![cfg(feature = "cuda-compile-only")]

use std::path::Path;
use std::process::Command;

use drpo_models::cuda::compile_only::{compiled, launch_probe, nvrtc_version};
use drpo_models::load::hf;
use drpo_models::{
    Arrival, ChatMessage, DeviceSpec, GenerationRequest, KernelOptions, LlamaConfig,
};
use drpo_models::{LocalModel, PromptInput};

/// Asserts that the report holds a failure that mentions every one of `parts`.
fn assert_failed_with(parts: &[&str]) {
    let report = compiled();
    assert!(
        report
            .failures
            .iter()
            .any(|f| parts.iter().all(|p| f.contains(p))),
        "no failure mentions {parts:?}: {report:?}"
    );
}

#[test]
fn a_kernel_cubecl_cannot_expand_is_reported_with_why() {
    launch_probe(7, 32);
    assert_failed_with(&["cubecl could not expand it", "takes values up to 4, not 7"]);
}

#[test]
fn a_cube_larger_than_an_h100_takes_is_reported() {
    launch_probe(3, 2048);
    assert_failed_with(&["ProbeKernel", "2048"]);
}

#[test]
fn a_valid_kernel_compiles_to_ptx_with_nvrtc() {
    nvrtc_version().unwrap();
    launch_probe(2, 64);
    let report = compiled();
    assert!(
        report.kernels.iter().any(|k| k.starts_with("probe_kernel")),
        "{report:?}"
    );
}

/// What `drpo-model-tool` reported of the compile-only device.
#[derive(Debug)]
struct Compiled {
    /// Launches and their units (threads) in all, per kernel entry point.
    launches: Vec<(String, usize, u64)>,
    compiled: usize,
    failed: usize,
}

impl Compiled {
    /// The kernels whose entry point starts with `name` (cubecl adds the types).
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a (String, usize, u64)> {
        self.launches
            .iter()
            .filter(move |(k, ..)| k.starts_with(name))
    }

    /// Launches of the kernels `name`.
    fn launched(&self, name: &str) -> usize {
        self.named(name).map(|(_, n, _)| n).sum()
    }

    /// Units of all the launches of the kernels `name`.
    fn units(&self, name: &str) -> u64 {
        self.named(name).map(|(.., units)| units).sum()
    }

    fn has(&self, name: &str) -> bool {
        self.launched(name) > 0
    }
}

/// Runs `drpo-model-tool` with `args` and the environment `env`; its compile-only report,
/// which must show kernels compiled and none failed.
fn tool(env: &[(&str, &str)], args: &[&str]) -> Compiled {
    nvrtc_version().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drpo-model-tool"))
        .args(args)
        .envs(env.iter().copied())
        .env("DRPO_WATCHDOG_S", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{env:?} {args:?} failed:\n{stderr}");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("compile-only CUDA device: "))
        .unwrap_or_else(|| panic!("no compile-only report in:\n{stderr}"));
    let (counts, launches) = line
        .split_once("; launches/units: ")
        .unwrap_or_else(|| unreadable(line));
    let (compiled, failed) = counts.split_once(", ").unwrap_or_else(|| unreadable(line));
    let number = |text: &str, suffix: &str| -> usize {
        text.strip_suffix(suffix)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| unreadable(line))
    };
    let report = Compiled {
        launches: launches
            .split_whitespace()
            .map(|entry| {
                let (kernel, counts) = entry.rsplit_once('=').unwrap_or_else(|| unreadable(line));
                let (count, units) = counts.split_once('/').unwrap_or_else(|| unreadable(line));
                (
                    kernel.to_owned(),
                    count.parse().unwrap_or_else(|_| unreadable(line)),
                    units.parse().unwrap_or_else(|_| unreadable(line)),
                )
            })
            .collect(),
        compiled: number(compiled, " kernels compiled for sm_90a"),
        failed: number(failed, " failed"),
    };
    assert!(
        report.compiled > 0 && report.failed == 0,
        "{env:?}: {report:?}"
    );
    report
}

fn unreadable<T>(line: &str) -> T {
    panic!("unreadable compile-only report: {line}")
}

/// Mistral-7B-Instruct-v0.1's shapes with one layer: the kernels of all 32 are the same.
fn one_mistral_layer(dir: &Path) -> String {
    let mut config = LlamaConfig::preset("mistral-7b").unwrap();
    config.num_hidden_layers = 1;
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path.display().to_string()
}

/// Prefill of 80 tokens (more than the rows the small-row kernels take) and decode steps at
/// batch 1, 4, 8 and 32: every path of the projections, attention with and without a sliding
/// window's mask, every switch that `scripts/gpu-check.sh` measures; and with the defaults, no
/// kernel that spills registers (needs ptxas from `scripts/fetch-nvrtc.sh` too).
#[test]
fn a_mistral_7b_decode_compiles_for_an_h100_under_every_kernel_switch() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_mistral_layer(dir.path());
    let bench = |env: &[(&str, &str)]| {
        let args = [
            "bench",
            "--config",
            &config,
            "--device",
            "cuda",
            "--batch",
            "1,4,8,32",
            "--prompt-len",
            "80",
            "--gen-tokens",
            "3",
        ];
        tool(env, &args)
    };
    let ours = [
        "rows_kernel",
        "mma_kernel",
        "attention_kernel",
        "rope_kernel",
        "add_rms_norm_kernel",
        "swiglu_kernel",
    ];
    let written = dir.path().join("kernels");
    let default = bench(&[("DRPO_CUDA_KERNEL_DIR", written.to_str().unwrap())]);
    for kernel in ours {
        assert!(
            default.has(kernel),
            "{kernel} was not launched: {default:?}"
        );
    }
    assert_no_spills(&written, &ours);

    // RoPE in its own launch at every step, not only for the prefills.
    let rope_apart = bench(&[("DRPO_CUDA_ROPE_ATTENTION", "0")]);
    assert_eq!(
        rope_apart.launched("attention_kernel"),
        default.launched("attention_kernel")
    );
    assert!(
        default.has("rope_kernel")
            && rope_apart.launched("rope_kernel") > default.launched("rope_kernel"),
        "{rope_apart:?}"
    );

    // Each step's greedy choice: a cube of 8 planes (256 units) a row, where burn's argmax
    // gives a row one unit, in planes of 32 (cubek's cube and unit routines): at least 8 times
    // the units at one row, more at more rows.
    let burn_argmax = bench(&[("DRPO_CUDA_ARGMAX", "0")]);
    assert_eq!(
        burn_argmax.launched("reduce_kernel"),
        default.launched("reduce_kernel")
    );
    assert!(
        default.has("reduce_kernel")
            && default.units("reduce_kernel") >= 8 * burn_argmax.units("reduce_kernel"),
        "reduce_kernel's units: {} a cube a row, {} with burn's argmax",
        default.units("reduce_kernel"),
        burn_argmax.units("reduce_kernel")
    );

    // `rows` up to 32 rows, in several chunks.
    let rows_only = bench(&[
        ("DRPO_CUDA_SMALL_MATMUL", "rows"),
        ("DRPO_CUDA_ROWS_MAX", "32"),
    ]);
    assert!(rows_only.has("rows_kernel") && !rows_only.has("mma_kernel"));

    let cmma = bench(&[("DRPO_CUDA_SMALL_MATMUL", "cmma")]);
    assert!(!cmma.has("rows_kernel") && !cmma.has("mma_kernel"));
    assert!(cmma.launched("matmul_entry") > default.launched("matmul_entry"));

    let burn_attention = bench(&[("DRPO_CUDA_ATTENTION", "0"), ("DRPO_CUDA_GATED", "0")]);
    assert!(!burn_attention.has("attention_kernel"));
    assert!(burn_attention.launched("swiglu_kernel") > default.launched("swiglu_kernel"));

    let burn_ops = bench(&[("DRPO_CUDA_FUSED", "0")]);
    assert!(!burn_ops.has("add_rms_norm_kernel") && !burn_ops.has("attention_kernel"));
}

/// Asserts that no kernel the compile-only device wrote to `dir` spills registers to local
/// memory, as ptxas compiles it for the H100, and that `kernels` are among them.
fn assert_no_spills(dir: &Path, kernels: &[&str]) {
    let resources = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/kernel-resources.sh"
    ))
    .arg(dir)
    .output()
    .unwrap();
    let table = String::from_utf8_lossy(&resources.stdout);
    assert!(
        resources.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&resources.stderr)
    );
    for kernel in kernels {
        assert!(table.contains(kernel), "{kernel} is not in:\n{table}");
    }
}

/// `LocalModel`'s generation, as drpo-host runs it with `--device cuda`: greedy answers of
/// different lengths (the device argmax, token ids read while the next step runs), sampled
/// ones (logits to the host) and, with `structured`, answers under a JSON schema.
#[test]
fn local_model_generation_compiles_for_an_h100() {
    nvrtc_version().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = LlamaConfig::preset("tiny-mistral").unwrap();
    hf::write_random(&config, dir.path(), 3, hf::StoreDtype::F32, 1 << 30).unwrap();
    hf::write_small_tokenizer(dir.path(), config.vocab_size).unwrap();
    let load = |kernels| LocalModel::load_on(dir.path(), DeviceSpec::Cuda(0), kernels).unwrap();
    let model = load(KernelOptions::default());
    let ask = |text: &str, max_tokens| {
        GenerationRequest::greedy(
            PromptInput::Chat(vec![ChatMessage::new("user", text)]),
            max_tokens,
        )
    };
    let mut requests = vec![
        ask("hello world", 4),
        ask("hello", 9),
        GenerationRequest {
            temperature: 0.8,
            n: 2,
            seed: 5,
            ..ask("world", 3)
        },
    ];
    if cfg!(feature = "structured") {
        requests.push(GenerationRequest {
            json_schema: Some(r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#.into()),
            ..ask("json", 6)
        });
    }
    let outputs = model.generate(&requests).unwrap();
    assert_eq!(outputs.len(), requests.len());
    for (output, request) in outputs.iter().zip(&requests) {
        assert_eq!(output.choices.len(), request.n as usize);
        assert!(output.completion_tokens <= request.max_tokens * request.n);
    }
    let report = compiled();
    // The probes of the tests above fail on purpose, in this process too.
    let failures: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !f.contains("ProbeKernel"))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    for kernel in ["rows_kernel", "attention_kernel", "rope_kernel"] {
        assert!(
            report.launches.keys().any(|k| k.starts_with(kernel)),
            "{kernel} was not launched: {report:?}"
        );
    }

    // The same greedy requests with each step's ids read before the next step is issued.
    let waited = load(KernelOptions {
        cuda_queued_reads: false,
        ..KernelOptions::default()
    });
    let greedy: Vec<_> = requests
        .iter()
        .filter(|r| r.temperature == 0.0 && r.json_schema.is_none())
        .cloned()
        .collect();
    waited.generate(&greedy).unwrap();
    let failures = compiled().failures;
    assert!(
        failures.iter().all(|f| f.contains("ProbeKernel")),
        "{failures:#?}"
    );

    // The requests as `serve` decodes them: the others join the first's batch once it has
    // been answered (the compile-only device computes nothing, so its answers may end at
    // once), their cache prefilled, moved right for the longer prompts and merged on the device.
    let (arrivals, receiver) = std::sync::mpsc::channel::<Arrival>();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let arrival = |request: &GenerationRequest| {
        let answered = answered.clone();
        Arrival {
            request: request.clone(),
            observer: None,
            finish: Box::new(move |output| {
                output.unwrap();
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        }
    };
    let mut first = arrival(&ask("hi", 4));
    let later: Vec<Arrival> = requests.iter().map(arrival).collect();
    let (sender, finish) = (arrivals.clone(), first.finish);
    first.finish = Box::new(move |output| {
        finish(output);
        for joining in later {
            sender.send(joining).unwrap();
        }
    });
    arrivals.send(first).unwrap();
    drop(arrivals);
    model.decode_arrivals(&receiver, 8).unwrap();
    assert_eq!(
        answered.load(std::sync::atomic::Ordering::SeqCst),
        requests.len() + 1
    );
    let failures = compiled().failures;
    assert!(
        failures.iter().all(|f| f.contains("ProbeKernel")),
        "{failures:#?}"
    );
}
