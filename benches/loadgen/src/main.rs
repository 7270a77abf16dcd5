//! `imgpipe-loadgen`: parses the options and hands over to the library; nothing else happens
//! here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imgpipe_loadgen::LoadgenArgs;
use imgpipe_loadgen::origin::{self, OriginArgs};

/// Drives imgpipe's api with images (POST) or a list of URLs (GET) at a fixed rate or
/// concurrency and reports latency and errors; `--sweep` finds the capacity point, `--report DIR`
/// writes an HTML report. `imgpipe-loadgen origin` serves a folder as the source of GET URLs.
#[derive(Debug, Parser)]
#[command(
    name = "imgpipe-loadgen",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: LoadgenArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a folder's files over HTTP on loopback (the origin of GET benchmarks) until
    /// ctrl-c or SIGTERM.
    Origin(OriginArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| format!("starting the async runtime: {e}"))
        .and_then(|runtime| {
            runtime
                .block_on(async {
                    match cli.command {
                        Some(Command::Origin(args)) => origin::serve(args, shutdown()).await,
                        None => imgpipe_loadgen::run(cli.args).await,
                    }
                })
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

/// Completes on ctrl-c or SIGTERM.
async fn shutdown() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
