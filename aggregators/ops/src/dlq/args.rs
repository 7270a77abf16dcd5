//! What the `dlq` commands take: the action, the filter selecting records, and each command's
//! options.

use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::entry::DlqEntry;
use crate::OpsError;

/// `imgpipe ops dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Pending records (after the cursor), one line each; --all from the oldest kept.
    List(ListArgs),
    /// One record in full: headers and its value decoded (images as sizes).
    Show {
        /// Partition of the DLQ.
        #[arg(long)]
        partition: i32,
        /// Offset in that partition.
        #[arg(long)]
        offset: i64,
    },
    /// Re-publishes selected pending records to where they came from (or --to-topic), with
    /// their original key, bytes and headers plus redrive.count/redrive.from.
    Redrive(ActArgs),
    /// Drops selected pending records for good (moves the cursor past them).
    Purge(PurgeArgs),
}

/// Which records a command applies to; all given conditions must hold.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilter {
    /// Only records dead-lettered with this error class (e.g. `undecodable_request`).
    #[arg(long)]
    pub error_class: Option<String>,
    /// Only records dead-lettered at or after this time (RFC 3339 or Unix ms).
    #[arg(long, value_parser = crate::parse_datetime)]
    pub since: Option<SystemTime>,
    /// Only records dead-lettered before this time.
    #[arg(long, value_parser = crate::parse_datetime)]
    pub until: Option<SystemTime>,
    /// Only records of this tenant (read from the decoded value; undecodable records have none).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only the record with this key (the request id).
    #[arg(long)]
    pub key: Option<String>,
}

/// `list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Every record still in the topic, settled ones included.
    #[arg(long)]
    pub all: bool,
}

/// `redrive`/`purge` options.
#[derive(Debug, Clone, Args)]
pub struct ActArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Redrive to this topic (base name) instead of each record's origin.
    #[arg(long)]
    pub to_topic: Option<String>,
    /// Records redriven this often already stay in the DLQ (a poison record must not loop).
    #[arg(long, default_value_t = 3)]
    pub max_redrives: u32,
    /// Records per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Carry out the plan; without it nothing changes.
    #[arg(long)]
    pub execute: bool,
}

/// `purge` options.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Purge every pending record (required when no filter is given).
    #[arg(long)]
    pub all: bool,
    /// Records per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Carry out the plan; without it nothing changes.
    #[arg(long)]
    pub execute: bool,
}

impl DlqFilter {
    /// Whether no condition is given (every record is selected).
    pub fn is_empty(&self) -> bool {
        self.error_class.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.tenant.is_none()
            && self.key.is_none()
    }

    /// Refuses a time range that selects nothing by construction.
    pub fn check(&self) -> Result<(), OpsError> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since >= until => Err(OpsError::BadArgument(
                "--since must be before --until".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `entry` is selected.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        let at = |t: SystemTime| crate::unix_ms(t);
        self.error_class
            .as_deref()
            .is_none_or(|class| entry.error_class() == class)
            && self.since.is_none_or(|t| entry.timestamp_ms >= at(t))
            && self.until.is_none_or(|t| entry.timestamp_ms < at(t))
            && self
                .tenant
                .as_deref()
                .is_none_or(|tenant| entry.tenant.as_deref() == Some(tenant))
            && self
                .key
                .as_deref()
                .is_none_or(|key| entry.key.as_deref() == Some(key.as_bytes()))
    }
}
