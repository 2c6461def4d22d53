//! The commands: each in its own module, given its flags as [`crate::cli`] parsed them.
//!
//! | module | commands |
//! |---|---|
//! | [`run`] | `run` (a live run: projection, preflight, run log, outputs), `describe` |
//! | [`recorded`] | what reads a run directory: `replay`, `resume`, `inspect`, `view`, `export` |
//! | [`generate`] | `generate`: a recorded run of generate.wasm that answers queries |
//! | [`eval`] | `eval`: a recorded run of eval.wasm that judges answer files |
//! | [`aligned`] | what `generate` and `serve` answer with: the model, the prompt, the examples |
//! | [`made_run`] | what `generate` and `eval` share: a `run` they make and read back |
//! | [`serve`] | `serve`: the aligned model behind an OpenAI-compatible endpoint |
//! | [`audit`] | what an auditor runs on run directories: `log`, `verify`, `diff`, `keygen` |

pub mod aligned;
pub mod audit;
pub mod eval;
pub mod generate;
pub mod made_run;
pub mod recorded;
pub mod run;
pub mod serve;

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, Command};
use crate::runtime::{Compiled, Plugin, Runtime};

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Replay { dir, strategy } => recorded::replay(&dir, strategy.as_deref()).await,
        Command::Resume { dir } => recorded::resume(&dir).await,
        Command::Inspect { dir } => recorded::inspect(&dir),
        Command::Log(args) => audit::log(&args),
        Command::Verify(args) => audit::verify(&args).await,
        Command::Diff { a, b } => audit::diff(&a, &b),
        Command::Keygen { file } => audit::keygen(&file),
        Command::View { dir } => recorded::view(&dir),
        Command::Export {
            dir,
            format,
            output,
            experiment,
        } => recorded::export(&dir, format, output.as_ref(), &experiment),
        Command::Describe {
            strategy: Some(strategy),
        } => run::describe(&strategy).await,
        Command::Describe { strategy: None } => {
            run::list_strategies();
            Ok(())
        }
        Command::Generate(args) => generate::generate(*args).await,
        Command::Eval(args) => eval::eval(*args).await,
        Command::Serve(args) => serve::serve(*args).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "drpo-host", &mut script);
            print_all(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_all(&page)
        }
    }
}

/// Writes `bytes` to stdout; a reader that stops early (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

pub(crate) fn runtime() -> anyhow::Result<Runtime> {
    Runtime::new(Runtime::default_cache_dir())
}

/// Loads a plugin, and says so when its compiled copy in the cache was damaged and compiled
/// again (else a cache that is never read would go unnoticed).
pub(crate) fn load(runtime: &Runtime, path: &Path) -> anyhow::Result<Plugin> {
    let plugin = runtime.load(path)?;
    if let Compiled::Again(_) = plugin.compiled() {
        eprintln!("warning: {}: {}", path.display(), plugin.compiled());
    }
    Ok(plugin)
}

pub(crate) fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
