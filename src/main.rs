//! `imgpipe`: one binary, one subcommand per service. Sets up tracing, loads the config, and
//! hands over to the library; nothing else happens here.

use std::process::ExitCode;

use anyhow::Context;
use chassis::Shutdown;
use clap::Parser;
use imgpipe::Config;
use imgpipe::host::{self, Service};

mod cli;

use cli::{Cli, Command, TopicsAction};

/// mimalloc instead of glibc's malloc: the api and resizer allocate per request on several
/// threads, and glibc's arena locking and consolidation took ~14% of the api's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match start(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Our errors already name their cause in their message; print each cause only once,
            // and no backtrace: it helps nobody fix a config typo.
            let mut message = error.to_string();
            for cause in error.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("imgpipe: {message}");
            ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> anyhow::Result<()> {
    // Fault points named in FAILPOINTS take effect (only in `failpoints` builds, for tests).
    let _faults = fail::FailScenario::setup();
    if let Command::Config { reference: true } = cli.command {
        // From the types and their defaults alone: no file or environment needed.
        print!("{}", imgpipe::config::reference::markdown());
        return Ok(());
    }
    if let Command::Gallery(args) = &cli.command {
        // A page of signed URLs: no configuration, no runtime.
        return gallery(args);
    }
    let config: Config = chassis::load_config(cli.config.as_deref())?;
    chassis::telemetry::init(&config.telemetry);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(dispatch(cli.command, config));
    chassis::telemetry::shutdown();
    result
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    let services: &[Service] = match command {
        Command::Api => &[Service::Api],
        Command::Identity => &[Service::Identity],
        Command::Resizer => &[Service::Resizer],
        Command::Aggregator => &[Service::Aggregator],
        Command::All => &Service::ALL,
        Command::Topics {
            action: TopicsAction::Ensure,
        } => {
            let report = imgpipe::provision::ensure_all(&config.kafka, &config.registry).await?;
            for topic in &report.created {
                println!(
                    "created  {topic} (replication factor {})",
                    report.replication_factor
                );
            }
            for topic in &report.existing {
                println!("exists   {topic}");
            }
            for (subject, id) in &report.schemas {
                println!("schema   {subject} id={id}");
            }
            return Ok(());
        }
        Command::Migrate { print: true } => {
            for (version, modern_only, statement) in
                aggregators::migrations::statements(&config.clickhouse.database)
            {
                let only = if modern_only {
                    " (current servers only)"
                } else {
                    ""
                };
                println!("-- migration {version}{only}\n{statement};\n");
            }
            return Ok(());
        }
        Command::Migrate { print: false } => {
            let report = aggregators::migrate(&config.clickhouse).await?;
            println!("server   ClickHouse {}", report.server_version);
            for (version, name) in &report.applied {
                println!("applied  {version} {name}");
            }
            for version in &report.already_applied {
                println!("present  {version}");
            }
            for (version, name) in &report.skipped {
                println!("skipped  {version} {name} (needs a newer server)");
            }
            return Ok(());
        }
        Command::Ops(args) => {
            imgpipe_ops::run(&config.ops(), args).await?;
            return Ok(());
        }
        Command::Rollup { print } => {
            let (client, _server) = chassis::clickhouse::connect(&config.clickhouse).await?;
            let rollup = aggregators::rollup::Rollup::new(
                client,
                &config.clickhouse.database,
                aggregators::usage_partitions(),
                config.aggregator.rollup_lateness,
                config.aggregator.rollup_max_window,
            )
            .with_raw_retention(config.aggregator.usage_raw_retention);
            if let Some(&[lo, hi]) = print.as_deref() {
                let window = aggregators::rollup::Window { lo, hi };
                println!("{};", rollup.settle_sql(window));
                return Ok(());
            }
            let started = std::time::Instant::now();
            let mut windows = 0_u32;
            while let Some(window) = rollup.step().await? {
                windows += 1;
                println!(
                    "settled  [{}, {}) after {:.1} s",
                    window.lo,
                    window.hi,
                    started.elapsed().as_secs_f64()
                );
            }
            println!(
                "settled  {windows} windows in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let dropped = rollup.prune().await?;
            println!(
                "dropped  {} settled partitions ({})",
                dropped.len(),
                dropped.join(" ")
            );
            return Ok(());
        }
        Command::Gallery(args) => return gallery(&args),
        Command::Config { .. } => {
            println!(
                "{}",
                toml::to_string_pretty(&config).context("rendering config")?
            );
            return Ok(());
        }
    };
    host::run(config, services, Shutdown::on_signals()).await?;
    Ok(())
}

/// `imgpipe gallery`: writes the page and says where it is and what it shows.
fn gallery(args: &imgpipe::gallery::GalleryArgs) -> anyhow::Result<()> {
    let pictures = imgpipe::gallery::write(args)?;
    let photos = pictures
        .iter()
        .map(|p| p.photo.as_str())
        .collect::<std::collections::BTreeSet<_>>();
    println!(
        "wrote {} ({} pictures of {} photos, each a signed 1x and 2x URL)",
        args.out.display(),
        pictures.len(),
        photos.len()
    );
    Ok(())
}
