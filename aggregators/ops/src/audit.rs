//! `imgpipe ops audit`: the identity service's audit trail (`identity.audit`) for a tenant and a
//! time range: who did what to which tenant or key, from where, and how it ended.

use std::time::{Duration, SystemTime};

use clap::Args;
use schemas::Codec;

use crate::OpsError;
use crate::tail::{Tail, TailArgs};

/// `imgpipe ops audit` options.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Only calls that acted on this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this time (RFC 3339 or Unix ms); default: 24 hours ago.
    #[arg(long, value_parser = crate::parse_datetime)]
    pub since: Option<SystemTime>,
    /// Only refused calls (status 4xx/5xx).
    #[arg(long)]
    pub refused: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Reads the trail from `since` to its current end; the records that match, oldest first per
/// partition.
pub async fn read(
    config: &crate::OpsConfig,
    args: &AuditArgs,
) -> Result<Vec<serde_json::Value>, OpsError> {
    let codec = Codec::new(&config.registry, &config.kafka.namespace);
    let since = args
        .since
        .unwrap_or_else(|| SystemTime::now() - Duration::from_secs(24 * 3600));
    let mut filters = Vec::new();
    if let Some(tenant) = &args.tenant {
        filters.push(("tenant_id".to_owned(), tenant.clone()));
    }
    let tail_args = TailArgs {
        topic: schemas::topics::IDENTITY_AUDIT.to_owned(),
        from_datetime: Some(since),
        from_beginning: false,
        filters: filters.clone(),
        max: None,
        until_end: true,
        read_uncommitted: false,
    };
    let mut tail = Tail::open(&config.kafka, &tail_args)?;
    let mut records = Vec::new();
    while let Some(line) = tail.next(&codec).await? {
        let value = line.get("value").cloned().unwrap_or_default();
        let matches = filters
            .iter()
            .all(|(field, wanted)| crate::tail::field_matches(&line, field, wanted));
        let refused = value
            .get("status")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
            >= 400;
        if matches && (!args.refused || refused) {
            records.push(value);
        }
    }
    records.sort_by_key(|v| {
        v.get("at_ms")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
    });
    Ok(records)
}

/// Runs `ops audit` and prints the records.
pub async fn run(config: &crate::OpsConfig, args: AuditArgs) -> Result<(), OpsError> {
    let records = read(config, &args).await?;
    if args.json {
        for record in &records {
            println!("{record}");
        }
        return Ok(());
    }
    print!("{}", render(&records));
    Ok(())
}

/// Records as a table.
pub fn render(records: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value, name: &str| match v.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "TIME",
        "ACTOR",
        "AUTHENTICATED",
        "ACTION",
        "TENANT",
        "KEY",
        "STATUS",
        "FROM",
        "REQUEST-ID",
    ]);
    for r in records {
        let at = r
            .get("at_ms")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        table.add_row([
            crate::format_ms(at),
            text(r, "actor"),
            text(r, "authenticated"),
            text(r, "action"),
            text(r, "tenant_id"),
            text(r, "key_id"),
            text(r, "status"),
            text(r, "remote_addr"),
            text(r, "request_id"),
        ]);
    }
    format!("{table}\n{} call(s)\n", records.len())
}
