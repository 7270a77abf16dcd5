//! `imgpipe-loadgen`: parses the options and hands over to the library; nothing else happens
//! here.

use std::process::ExitCode;

use clap::Parser;
use imgpipe_loadgen::LoadgenArgs;

/// Drives imgpipe's api with images at a fixed rate or concurrency and reports latency and
/// errors; `--sweep` finds the capacity point, `--report DIR` writes an HTML report.
#[derive(Debug, Parser)]
#[command(name = "imgpipe-loadgen", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| format!("starting the async runtime: {e}"))
        .and_then(|runtime| {
            runtime
                .block_on(imgpipe_loadgen::run(cli.args))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("imgpipe-loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}
