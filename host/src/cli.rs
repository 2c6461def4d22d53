//! The `drpo-host` command line: every command's flags, parsed in this one place. The
//! commands themselves are in `commands/`.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::calls::budget::BudgetFlags;
use crate::config::{HostFlags, ModelFlags, SearchFlags};
use crate::endpoints::EndpointFlags;

/// Searches for better system prompts with DRPO (Dynamic Rewarding with Prompt Optimization).
///
/// The search runs as a sandboxed WebAssembly strategy plugin (e.g. beam.wasm); every model
/// call it makes is recorded in the run directory's `run.log`, so any run can be replayed bit
/// for bit (`replay`), finished after a crash (`resume`) and audited (`inspect`).
#[derive(Debug, Parser)]
#[command(name = "drpo-host", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a strategy plugin live, recording every call in LOG_DIR/run.log.
    Run(Box<RunArgs>),
    /// Run the plugin again against its run log, checking every request; nothing is sent to
    /// any model.
    Replay {
        /// The run directory.
        dir: PathBuf,
        /// Replay with this plugin instead of the recorded one (its hash may differ: the
        /// replay then shows whether it behaves the same).
        #[arg(long)]
        strategy: Option<PathBuf>,
    },
    /// Finish an interrupted run: replay its log, then continue live, appending.
    Resume {
        /// The run directory.
        dir: PathBuf,
    },
    /// Summarise a run: its header, calls and tokens per role, and the outcome.
    Inspect {
        /// The run directory.
        dir: PathBuf,
    },
    /// (Re)write a run's tree.html (and trace.txt) from its run log; works for older,
    /// replayed and interrupted runs too.
    View {
        /// The run directory.
        dir: PathBuf,
    },
    /// Write a run in another tool's format: its best path as the published DRPO's output.json
    /// (to stdout or --output), or the whole run into an MLflow file store (--output is the
    /// store's `mlruns` directory; `mlflow ui --backend-store-uri DIR` shows it).
    Export {
        /// The run directory.
        dir: PathBuf,
        /// The format: `published` is the published DRPO's output.json; `mlflow` a run in
        /// MLflow's file-store layout.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write here instead of stdout (`published`); the MLflow store's directory, created if
        /// missing (`mlflow`, required).
        #[arg(long)]
        output: Option<PathBuf>,
        /// The MLflow experiment the run is filed under, created if missing (`mlflow`).
        #[arg(long, default_value = "drpo")]
        experiment: String,
    },
    /// Print every frame of a run log in order: the header, each call's request and answer in
    /// full, the end, and the final chain hash. Reads one frame at a time, checking the chain.
    Log(LogArgs),
    /// Check a run in one step: its hash chain, its signature (when signed, or when
    /// --public-key asks for one), its plugin's hash, and a full replay. Prints one line; exits
    /// 0 when verified, 10 tampered, 11 diverged, 12 unsigned, 13 another plugin, 14 unfinished.
    Verify(VerifyArgs),
    /// Compare two runs: the first recorded difference (header field, or call index, import,
    /// role, field and both values), then calls, tokens, cost and outcome side by side.
    Diff {
        /// The first run directory (A).
        a: PathBuf,
        /// The second run directory (B).
        b: PathBuf,
    },
    /// Write a new ed25519 key pair to sign runs with: FILE (secret) and FILE.pub (public).
    Keygen {
        /// The secret key's file; the public key goes to FILE.pub. Neither may exist.
        file: PathBuf,
    },
    /// Show a strategy's name, version, description and options schema; with no strategy,
    /// list the strategies found by name and where.
    Describe {
        /// The strategy plugin: a `.wasm` file, or a name as for `run --strategy`.
        strategy: Option<PathBuf>,
    },
    /// Answer queries with an optimized prompt and retrieved in-context examples (the published
    /// inference format), or under a system prompt of your choice.
    Generate(Box<GenerateArgs>),
    /// Serve the aligned model: an OpenAI-compatible endpoint (`/v1/chat/completions`, streaming
    /// too, `/v1/models`, `/health`) that answers each request under the optimized prompt with
    /// the in-context examples nearest its last user message, as `generate` answers a query.
    Serve(Box<ServeArgs>),
    /// Judge a JSONL of answers on helpfulness, clarity, factuality, depth and engagement (safety
    /// for harmful queries) with eval.wasm; compare two answer files side by side.
    Eval(Box<EvalArgs>),
    /// Print a shell completion script for drpo-host, e.g.
    /// `drpo-host completions bash > ~/.local/share/bash-completion/completions/drpo-host`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print drpo-host's man page (roff), e.g. `drpo-host man > ~/.local/share/man/man1/drpo-host.1`.
    Man,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The strategy plugin: a `.wasm` file, or a name (`beam`, `beam.wasm`, `greedy`, ...)
    /// looked up in $DRPO_PLUGIN_PATH, then beside the installed binary
    /// (PREFIX/share/drpo/plugins), then in the checkout's target/plugins.
    #[arg(long)]
    pub strategy: PathBuf,
    /// Directory for the run's outputs; created if missing, must not hold a run already.
    #[arg(long, required_unless_present = "estimate_only")]
    pub log_dir: Option<PathBuf>,
    /// TOML file with the same keys as the flags (snake_case) and an [options] table; flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub search: SearchFlags,
    #[command(flatten)]
    pub models: ModelFlags,
    #[command(flatten)]
    pub host: HostFlags,
    #[command(flatten)]
    pub budget: BudgetFlags,
    #[command(flatten)]
    pub endpoints: EndpointFlags,
    /// Print the projected calls, tokens and cost per role (from the strategy's estimate of
    /// its options and the price table), then exit without running.
    #[arg(long)]
    pub estimate_only: bool,
    /// A strategy option as KEY=VALUE (VALUE is JSON, or else a string); repeatable.
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Show neither the progress display nor the plugin's log lines on the terminal.
    #[arg(long, alias = "disable-tqdm")]
    pub quiet: bool,
    /// Strategy options set by the command that makes the run (`generate`, `eval`), under the
    /// `--option` pairs.
    #[arg(skip)]
    pub option_values: serde_json::Map<String, serde_json::Value>,
}

/// The flags of `run` alone, to read those given to `generate` and `eval` after `--`.
#[derive(Debug, Parser)]
#[command(name = "drpo-host run", no_binary_name = true)]
struct RunFlags {
    #[command(flatten)]
    run: RunArgs,
}

impl RunArgs {
    /// A `run` of `strategy` into `log_dir` with the flags of `run` in `flags` (what a user gave
    /// `generate` or `eval` after `--`), parsed as `run` parses them.
    pub fn with_flags(
        strategy: &Path,
        log_dir: &Path,
        flags: &[String],
    ) -> anyhow::Result<RunArgs> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--strategy".into(),
            strategy.into(),
            "--log-dir".into(),
            log_dir.into(),
        ];
        args.extend(flags.iter().map(Into::into));
        let parsed = RunFlags::try_parse_from(args).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(parsed.run)
    }
}

/// The flags of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The run directory.
    pub dir: PathBuf,
    /// The plugin to check the run against (a `.wasm` file, or a name as for `run --strategy`);
    /// default: the one the run's configuration names.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Require a signature made with this public key (`drpo-host keygen` writes FILE.pub).
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

/// The flags of `log`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The run directory.
    pub dir: PathBuf,
    /// One JSON object per line (JSONL): a `header`, a `preflight`, each `call` (index, import,
    /// roles, request, response, usage, elapsed_us, cache_hits), the `end`, and `chain` (the
    /// final chain hash).
    #[arg(long)]
    pub json: bool,
    /// Only the calls with a request of this role (base, metrics, judge, optimizer).
    #[arg(long)]
    pub role: Option<String>,
    /// Only the call with this index.
    #[arg(long)]
    pub call: Option<u64>,
    /// Only the calls whose recorded request or answer contains this text (as JSON writes it).
    #[arg(long)]
    pub grep: Option<String>,
}

/// What the aligned model is and what it answers under: the model, the system prompt and the
/// in-context examples. `generate` and `serve` share these flags.
#[derive(Debug, clap::Args)]
pub struct AlignedFlags {
    /// `local:PATH` (a GGUF file or a Hugging Face directory) or an OpenAI-compatible model
    /// name; default: the built-in SmolLM2 model.
    #[arg(long)]
    pub model: Option<String>,
    /// Base URL of the OpenAI-compatible server, up to `/v1` [env: OPENAI_BASE_URL].
    #[arg(long)]
    pub api_base: Option<String>,
    /// Where a `local:` model runs: `cpu` (the default), or `cuda` / `cuda:N` in a drpo-host
    /// built with `--features cuda`.
    #[arg(long)]
    pub device: Option<String>,
    /// Prompt tokens whose keys and values a `local:` model keeps, so that prompts beginning
    /// the same way (the system prompt and examples) skip them in prefill; 0 keeps none.
    /// Default: what 512 MiB holds for the model.
    #[arg(long, value_name = "TOKENS")]
    pub prefix_cache_tokens: Option<usize>,
    /// System prompt (or the path of a file holding it); overrides --run and --prompt-file.
    #[arg(long, conflicts_with_all = ["run", "prompt_file"])]
    pub system: Option<String>,
    /// A run directory: its result.json's best prompt is the system prompt.
    #[arg(long, conflicts_with = "prompt_file")]
    pub run: Option<PathBuf>,
    /// A file holding the system prompt.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// The baseline: answer under "You are a helpful assistant." instead of the optimized prompt.
    #[arg(long, conflicts_with_all = ["system", "run", "prompt_file"])]
    pub no_optimized_prompt: bool,
    /// In-context examples: `{query: answer}` JSON (what icl.wasm writes) or an array of
    /// `{query, answer}`; default: the built-in demo examples.
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// The baseline: no in-context examples.
    #[arg(long, conflicts_with = "examples")]
    pub no_examples: bool,
    /// How many retrieved examples each query gets (1 to 5).
    #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub k: u8,
    /// The embedding model that retrieves examples: `local:DIR` (a sentence-transformers
    /// directory) or an OpenAI-compatible name (`/v1/embeddings` at --api-base); default:
    /// all-MiniLM-L6-v2 when `scripts/fetch-minilm.sh` has fetched it, else the first k
    /// examples are used.
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Send one raw text (system part, blank line, query part) instead of chat messages: the
    /// published format for a model without a chat template.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub aligned: AlignedFlags,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Sampling seed (also the run's seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A JSONL file of queries (`{"id", "text" or "query", "tags"}` per line) to answer instead
    /// of the arguments.
    #[arg(long, conflicts_with = "queries")]
    pub input: Option<PathBuf>,
    /// Write the answers as JSONL (`{"id", "query", "answer", "tags"}` per line, the input of
    /// `eval`) instead of printing them.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Directory for the generation run (replayable); created if missing, must not hold a run
    /// already. Default: `runs/generate-N`, the first N not taken.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The generation strategy: a `.wasm` file, or a name as for `run --strategy`.
    #[arg(long, default_value = "generate")]
    pub strategy: PathBuf,
    /// The queries; all are answered as one batch.
    #[arg(required_unless_present = "input")]
    pub queries: Vec<String>,
    /// Flags of `run` (budgets, endpoints, --no-cache, --quiet, ...), after `--`.
    #[arg(last = true)]
    pub run_flags: Vec<String>,
}

/// The flags of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub aligned: AlignedFlags,
    /// The address to listen on, HOST:PORT (port 0: any free port; the address is printed).
    /// Anything but a loopback address needs --api-key-env.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The environment variable holding the API key clients must send (`Authorization: Bearer
    /// KEY`); needed to listen on an address other than loopback.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// What to do with a client's own system message: `append` it to the optimized prompt (before
    /// the examples), let it `replace` the optimized prompt (the examples stay), or `reject` the
    /// request.
    #[arg(long, value_enum, default_value_t = ClientSystem::Append)]
    pub client_system: ClientSystem,
    /// The model name `/v1/models` lists and answers carry (requests may name any model).
    #[arg(long, default_value = "drpo-aligned")]
    pub served_model_name: String,
    /// Most tokens a request may ask for (`max_tokens`); also what a request that asks for no
    /// limit gets. A request asking for more is refused (400).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Most requests answered at once: a local model decodes them together, each joining the
    /// batch under way at its next step (a request takes one row per choice); an upstream
    /// endpoint gets at most this many at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_concurrent: u32,
    /// Most requests waiting beyond those being answered; more are refused (429) until some
    /// finish.
    #[arg(long, default_value_t = 64)]
    pub max_queue: u32,
    /// Largest request body accepted, in bytes; a larger one is refused (413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Record every request and answer in DIR/run.log (the run log's format: `inspect` and `log`
    /// read it). Created if missing; must not hold a run already.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// No line per request on stderr (it never shows prompts, answers or keys).
    #[arg(long)]
    pub quiet: bool,
}

/// `serve --client-system`: what happens to a system message sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientSystem {
    /// Appended to the optimized prompt, before the in-context examples.
    Append,
    /// In place of the optimized prompt; the in-context examples stay.
    Replace,
    /// The request is refused (400).
    Reject,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The answers: JSONL, one `{"id", "query", "answer", "tags"}` per line (what `generate
    /// --output` writes); a query tagged `harmful` (or with `"harmful": true`) is judged on
    /// safety.
    pub answers: PathBuf,
    /// A second answers file for the same queries (matched by id): judged the same way and
    /// compared side by side.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Directory for the evaluation run; created if missing, must not hold a run already.
    #[arg(long)]
    pub log_dir: PathBuf,
    /// The evaluation strategy: a `.wasm` file, or a name as for `run --strategy`.
    #[arg(long, default_value = "eval")]
    pub strategy: PathBuf,
    /// Also write the per-query results (scores, rationales, means) here as JSONL; they are
    /// always in LOG_DIR/evaluation.jsonl.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Which judge grades: `evaluation` (the default), the evaluation's own prompt and rubrics,
    /// so that a prompt is not graded by the judge it was optimised against; `training`, the
    /// search's reward judge, on purpose.
    #[arg(long, value_enum, value_name = "RUBRIC")]
    pub rubric: Option<EvalRubric>,
    /// Compare the two sets answer against answer instead of grading each: the judge sees both
    /// answers to a query and says which is better, once in each order; a win needs both
    /// orders, and a flip counts as a tie. Needs --compare.
    #[arg(long, requires = "compare")]
    pub pairwise: bool,
    /// The search run whose prompt produced the answers: its judge is compared with this
    /// evaluation's, and a note above the report says when they are the same model (a gain
    /// graded by the judge a search optimised against may be the search fitting its judge).
    #[arg(long, value_name = "DIR")]
    pub training_run: Option<PathBuf>,
    /// Flags of `run` (the judge's model, endpoints, budgets, --no-cache, ...), after `--`.
    #[arg(last = true)]
    pub run_flags: Vec<String>,
}

/// `eval --rubric`: which judge grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalRubric {
    /// The evaluation's own prompt and rubrics.
    Evaluation,
    /// The training reward's judge prompt and rubrics.
    Training,
}

impl EvalRubric {
    /// The value of eval.wasm's `rubric` option.
    pub fn option(self) -> &'static str {
        match self {
            EvalRubric::Evaluation => "evaluation",
            EvalRubric::Training => "training",
        }
    }
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The published implementation's `output.json`: `{"level i": {"Prompt": ...,
    /// "Evaluation of the prompt": ...}}` along the best path.
    Published,
    /// A run in MLflow's file-store layout: the options and models as parameters, each level's
    /// best and mean reward and the result as metrics (with a validation split, the held-out
    /// means beside the search scores), the best prompt, the report and the options as
    /// artefacts. The run id comes from the run log's chain hash, so exporting again replaces
    /// the run.
    Mlflow,
}
