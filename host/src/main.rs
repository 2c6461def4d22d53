use clap::Parser;
use drpo_host::cli::Cli;
use drpo_host::commands::execute;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "error: {}",
                drpo_host::terminal::error(&format!("{error:#}"))
            );
            let code = error
                .downcast_ref::<drpo_host::verdict::Exit>()
                .map_or(1, |exit| exit.code);
            std::process::ExitCode::from(code)
        }
    }
}
