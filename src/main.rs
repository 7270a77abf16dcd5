//! `imgpipe`: one binary, one subcommand per service. Sets up tracing, loads the config, and
//! hands over to the library; nothing else happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chassis::Shutdown;
use clap::{Parser, Subcommand};
use imgpipe::Config;
use imgpipe::host::{self, Service};

/// mimalloc instead of glibc's malloc: the api and resizer allocate per request on several
/// threads, and glibc's arena locking and consolidation took ~14% of the api's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Image resizing as a Kafka streaming pipeline.
///
/// Configuration: defaults, then the TOML file given with --config, then IMGPIPE_* environment
/// variables with `__` between section and field (IMGPIPE_KAFKA__BROKERS=127.0.0.1:9092).
#[derive(Debug, Parser)]
#[command(name = "imgpipe", version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "IMGPIPE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The data-plane HTTP api: authenticates, validates, produces to image.requests and answers
    /// with the reply from image.results.
    Api,
    /// The management plane: tenants, API keys and quotas; the only writer of identity.changes.
    Identity,
    /// A resizer: consumer group `resizers`, image.requests → image.results + usage.events.
    Resizer,
    /// The usage aggregator: consumer group `usage-aggregator`, usage.events → ClickHouse.
    Aggregator,
    /// Every service in one process (development and the demo).
    All,
    /// Applies ClickHouse migrations (versioned, idempotent) to `clickhouse.database`.
    Migrate {
        /// Print every statement (for `clickhouse.database`, `;`-terminated) instead of applying.
        #[arg(long)]
        print: bool,
    },
    /// Settles every due usage window into `usage_rollup` now and exits (the aggregator does
    /// this in the background; for backfills, rebuilds and benchmarks), then drops the
    /// partitions settling no longer needs. Uses `aggregator.rollup_lateness`,
    /// `aggregator.rollup_max_window` and `aggregator.usage_raw_retention`.
    Rollup {
        /// Print the statement settling the window [LO, HI) (epoch seconds) instead of settling.
        #[arg(long, num_args = 2, value_names = ["LO", "HI"])]
        print: Option<Vec<u32>>,
    },
    /// Operators' tools: consumer-group offsets, the dead-letter topic, usage rebuilds, decoded
    /// topic tails, the admin audit trail. Commands that change state print their plan and act
    /// only with --execute.
    Ops(imgpipe_ops::OpsArgs),
    /// Topic and schema management.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Prints the effective configuration (defaults, file, environment merged) as TOML.
    Config,
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Creates missing topics and registers schemas (BACKWARD compatibility); idempotent.
    Ensure,
}

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
        Command::Config => {
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
