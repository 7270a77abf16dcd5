//! One DLQ record as read: its place, bytes, headers and what they say about it.

use super::REDRIVE_COUNT;

/// One DLQ record, read.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// DLQ partition.
    pub partition: i32,
    /// DLQ offset.
    pub offset: i64,
    /// When it was dead-lettered (ms since the epoch).
    pub timestamp_ms: i64,
    /// The original key (request id).
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub payload: Vec<u8>,
    /// Every header, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The tenant, if the value decodes and has a `tenant_id`.
    pub tenant: Option<String>,
}

impl DlqEntry {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Why it was dead-lettered.
    pub fn error_class(&self) -> &str {
        self.header("error.class").unwrap_or("unknown")
    }

    /// How often it has been redriven already.
    pub fn redrive_count(&self) -> u32 {
        self.header(REDRIVE_COUNT)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Where a redrive sends it: the topic an unwritable output was going to, else the topic
    /// the input came from.
    pub fn origin(&self) -> Option<&str> {
        self.header("target.topic")
            .filter(|t| !t.is_empty())
            .or_else(|| self.header("source.topic"))
            .filter(|t| !t.is_empty())
    }

    /// The key as text.
    pub fn key_text(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }
}
