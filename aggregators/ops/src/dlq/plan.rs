//! What a `redrive`/`purge` run does with each pending record, decided from the record and the
//! options alone (no I/O), and the tally of those decisions.

use std::collections::BTreeMap;

use super::Mode;
use super::args::ActArgs;
use super::entry::DlqEntry;

/// What `redrive`/`purge` does with one pending record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Re-published to this (namespaced) topic.
    Redrive(String),
    /// Dropped.
    Purge,
    /// Appended again to the DLQ: not selected, or over the redrive limit, or of unknown origin.
    Keep(&'static str),
}

/// What a `redrive`/`purge` run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Records per (error class, what happens to them).
    pub by_class: BTreeMap<(String, String), u64>,
    /// Records redriven per destination topic.
    pub redriven: BTreeMap<String, u64>,
    /// Records purged.
    pub purged: u64,
    /// Records appended again to the DLQ.
    pub kept: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Stopped by Ctrl-C after a committed transaction; the rest stays pending.
    pub interrupted: bool,
}

/// What happens to `entry` in a `mode` run with `args`.
pub fn decide(entry: &DlqEntry, args: &ActArgs, mode: Mode, to_topic: Option<&str>) -> Disposition {
    if !args.filter.matches(entry) {
        return Disposition::Keep("not selected");
    }
    match mode {
        Mode::Purge => Disposition::Purge,
        Mode::Redrive if entry.redrive_count() >= args.max_redrives => {
            Disposition::Keep("redrive limit reached")
        }
        Mode::Redrive => match to_topic.or_else(|| entry.origin()) {
            Some(topic) => Disposition::Redrive(topic.to_owned()),
            None => Disposition::Keep("no origin header: use --to-topic"),
        },
    }
}

/// Adds `entry`, and what happens to it, to `outcome`.
pub fn count(outcome: &mut Outcome, entry: &DlqEntry, disposition: &Disposition) {
    let what = match disposition {
        Disposition::Redrive(topic) => {
            *outcome.redriven.entry(topic.clone()).or_default() += 1;
            format!("redrive to {topic}")
        }
        Disposition::Purge => {
            outcome.purged += 1;
            "purge".to_owned()
        }
        Disposition::Keep(why) => {
            outcome.kept += 1;
            format!("keep ({why})")
        }
    };
    *outcome
        .by_class
        .entry((entry.error_class().to_owned(), what))
        .or_default() += 1;
}
