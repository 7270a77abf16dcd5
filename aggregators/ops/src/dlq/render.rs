//! The `dlq` commands' output: tables for people.

use super::entry::DlqEntry;
use super::plan::Outcome;

/// `list` as a table.
pub fn render_list(entries: &[DlqEntry]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "PARTITION",
        "OFFSET",
        "DEAD-LETTERED",
        "KEY",
        "ERROR-CLASS",
        "TENANT",
        "REDRIVES",
        "ORIGIN",
        "ERROR",
    ]);
    for e in entries {
        let mut error = e.header("error.message").unwrap_or_default().to_owned();
        if error.len() > 80 {
            let cut = (0..=80)
                .rev()
                .find(|&i| error.is_char_boundary(i))
                .unwrap_or(0);
            error.truncate(cut);
            error.push('…');
        }
        table.add_row([
            e.partition.to_string(),
            e.offset.to_string(),
            crate::format_ms(e.timestamp_ms),
            e.key_text(),
            e.error_class().to_owned(),
            e.tenant.clone().unwrap_or_else(|| "-".into()),
            e.redrive_count().to_string(),
            e.origin().unwrap_or("-").to_owned(),
            error,
        ]);
    }
    format!("{table}\n{} record(s)\n", entries.len())
}

/// A `redrive`/`purge` outcome as a table.
pub fn render_outcome(outcome: &Outcome, executed: bool) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["ERROR-CLASS", "ACTION", "RECORDS"]);
    for ((class, action), n) in &outcome.by_class {
        table.add_row([class.clone(), action.clone(), n.to_string()]);
    }
    let redriven: u64 = outcome.redriven.values().sum();
    let mut text = format!(
        "{table}\nredrive {redriven}, purge {}, keep {} (appended again to the DLQ)\n",
        outcome.purged, outcome.kept
    );
    if outcome.interrupted {
        text.push_str(&format!(
            "Interrupted after {} transaction(s): what they hold is done; the rest is still pending (run again to continue).\n",
            outcome.transactions
        ));
    } else if executed {
        text.push_str(&format!(
            "Done in {} transaction(s); the cursor is past every record read.\n",
            outcome.transactions
        ));
    } else {
        text.push_str(crate::DRY_RUN_NOTICE);
        text.push('\n');
    }
    text
}

/// `show`: one record in full as pretty JSON, its value as decoded (or why it is not).
pub fn render_show(entry: &DlqEntry, payload: serde_json::Value) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = entry
        .headers
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            (k.clone(), v.into())
        })
        .collect();
    let shown = serde_json::json!({
        "partition": entry.partition,
        "offset": entry.offset,
        "timestamp": crate::format_ms(entry.timestamp_ms),
        "key": entry.key_text(),
        "headers": headers,
        "payload": payload,
    });
    serde_json::to_string_pretty(&shown).unwrap_or_default()
}
