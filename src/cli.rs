//! The command line of `imgpipe`: one subcommand per service, and the tools. A module of the
//! binary (not of the library, which the tools' crates build on); `tests/offline/docs.rs` includes this
//! file to check that every `imgpipe` command the docs show parses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Image resizing as a Kafka streaming pipeline.
///
/// Configuration: defaults, then the TOML file given with --config, then IMGPIPE_* environment
/// variables with `__` between section and field (IMGPIPE_KAFKA__BROKERS=127.0.0.1:9092).
#[derive(Debug, Parser)]
#[command(name = "imgpipe", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "IMGPIPE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Writes a static HTML page showing photos through signed GET URLs: `srcset` with 1x and
    /// 2x, fit and fill with centre, smart and focal-point gravity, the format from `Accept`
    /// (the demo's gallery; the browser test opens the same page).
    Gallery(imgpipe::gallery::GalleryArgs),
    /// Topic and schema management.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Prints the effective configuration (defaults, file, environment merged) as TOML.
    Config {
        /// Print the configuration reference instead (every key with its type, default and
        /// meaning, as Markdown: docs/configuration.md).
        #[arg(long)]
        reference: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Creates missing topics and registers schemas (BACKWARD compatibility); idempotent.
    Ensure,
}
