//! Per-partition batches bounded by size and age, the ownership state of each partition, and
//! the protocol of writing a batch ([`Batcher::next_write`], [`Batcher::sent`],
//! [`Batcher::rechecked`]): after a failed INSERT, whose effect is unknown, the next step is
//! always a recheck of what ClickHouse holds, never a blind re-send.
//!
//! Invariant: a partition is `Active` only after its next offset was read from ClickHouse, and
//! records are taken only at or after that offset, in order. So a record whose offset ClickHouse
//! already holds is never written twice by this process, whatever Kafka delivers (a replay from
//! offset 0, a stale prefetch from before a seek).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::sink::{RejectRow, UsageRow};

/// Records of one partition waiting to be written.
#[derive(Debug, Default)]
pub(crate) struct PartitionBatch {
    /// Decoded records, in offset order.
    rows: Vec<UsageRow>,
    /// Undecodable records, in offset order.
    rejects: Vec<RejectRow>,
    /// When the oldest pending record arrived.
    opened_at: Option<Instant>,
    /// Set after a failed write: what was applied is unknown, so the next attempt first asks
    /// ClickHouse which offsets it holds.
    needs_recheck: bool,
    /// The `query_id` of the last INSERT sent for this batch.
    last_query_id: Option<String>,
}

/// The next step of writing one partition's batch.
#[derive(Debug, PartialEq)]
pub(crate) enum NextWrite<'a> {
    /// A previous INSERT failed and may have been applied: wait until the server no longer runs
    /// `query_id` (when known), read the partition's stored offset and report it with
    /// [`Batcher::rechecked`].
    Recheck { query_id: Option<String> },
    /// INSERT these usage rows (the oldest first), then report with [`Batcher::sent`].
    Rows(&'a [UsageRow]),
    /// INSERT these reject rows, then report with [`Batcher::sent`].
    Rejects(&'a [RejectRow]),
    /// Nothing left to write.
    Done,
}

/// Which kind of rows an INSERT carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKind {
    /// `usage_raw`.
    Usage,
    /// `usage_rejects`.
    Rejects,
}

impl PartitionBatch {
    pub(crate) fn len(&self) -> usize {
        self.rows.len() + self.rejects.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.rejects.is_empty()
    }

    /// The highest offset in the batch.
    pub(crate) fn last_offset(&self) -> Option<i64> {
        let row = self.rows.last().map(|r| r.kafka_offset);
        let reject = self.rejects.last().map(|r| r.kafka_offset);
        row.max(reject)
    }

    /// Drops records at or below `stored` (ClickHouse already holds them); returns how many.
    fn drop_through(&mut self, stored: i64) -> usize {
        let before = self.len();
        self.rows.retain(|r| r.kafka_offset > stored);
        self.rejects.retain(|r| r.kafka_offset > stored);
        before - self.len()
    }

    fn mark_written(&mut self) {
        if self.is_empty() {
            self.opened_at = None;
            self.needs_recheck = false;
            self.last_query_id = None;
        }
    }
}

/// Where a partition stands.
#[derive(Debug)]
pub(crate) enum PartitionState {
    /// Assigned, paused, waiting for ClickHouse to say where to resume.
    AwaitingOffsets,
    /// Consuming from `next_offset` on.
    Active {
        next_offset: i64,
        batch: PartitionBatch,
    },
}

/// What to do with a record that arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// New: decode and add it.
    Take,
    /// ClickHouse (or the pending batch) already holds this offset.
    AlreadyStored,
    /// Not ours, or not yet positioned: drop it, it will be read again from the right offset.
    NotReady,
}

/// Every assigned partition's state and batch.
#[derive(Debug)]
pub(crate) struct Batcher {
    partitions: BTreeMap<i32, PartitionState>,
    max_records: usize,
    max_age: Duration,
    max_pending: usize,
    pending: usize,
}

impl Batcher {
    pub(crate) fn new(max_records: usize, max_age: Duration, max_pending: usize) -> Self {
        Self {
            partitions: BTreeMap::new(),
            max_records,
            max_age,
            max_pending,
            pending: 0,
        }
    }

    /// Records held across all partitions.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// A newly assigned partition: anything held for it before is stale.
    pub(crate) fn assign(&mut self, partition: i32) {
        self.revoke(partition);
        self.partitions
            .insert(partition, PartitionState::AwaitingOffsets);
    }

    /// Forgets a revoked partition and its unwritten batch (the next owner reads those records
    /// again from ClickHouse's offsets); returns how many records were dropped.
    pub(crate) fn revoke(&mut self, partition: i32) -> usize {
        let dropped = match self.partitions.remove(&partition) {
            Some(PartitionState::Active { batch, .. }) => batch.len(),
            _ => 0,
        };
        self.pending -= dropped;
        dropped
    }

    /// Partitions waiting for their stored offsets.
    pub(crate) fn awaiting(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, s)| matches!(s, PartitionState::AwaitingOffsets))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Partitions positioned and consuming.
    pub(crate) fn active(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, s)| matches!(s, PartitionState::Active { .. }))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Positions `partition` after `stored` (the highest offset ClickHouse holds, if any);
    /// returns the next offset to read. Ignored unless the partition awaits its offsets.
    pub(crate) fn activate(&mut self, partition: i32, stored: Option<i64>) -> Option<i64> {
        let state = self.partitions.get_mut(&partition)?;
        if !matches!(state, PartitionState::AwaitingOffsets) {
            return None;
        }
        let next_offset = stored.map_or(0, |s| s + 1);
        *state = PartitionState::Active {
            next_offset,
            batch: PartitionBatch::default(),
        };
        Some(next_offset)
    }

    /// Whether a record at `offset` of `partition` is to be taken.
    pub(crate) fn admit(&self, partition: i32, offset: i64) -> Admission {
        match self.partitions.get(&partition) {
            Some(PartitionState::Active { next_offset, .. }) if offset >= *next_offset => {
                Admission::Take
            }
            Some(PartitionState::Active { .. }) => Admission::AlreadyStored,
            _ => Admission::NotReady,
        }
    }

    fn batch_for(&mut self, partition: i32, offset: i64) -> Option<&mut PartitionBatch> {
        match self.partitions.get_mut(&partition) {
            Some(PartitionState::Active { next_offset, batch }) if offset >= *next_offset => {
                *next_offset = offset + 1;
                batch.opened_at.get_or_insert_with(Instant::now);
                Some(batch)
            }
            _ => None,
        }
    }

    /// Adds a decoded record (admitted just before).
    pub(crate) fn push_row(&mut self, row: UsageRow) {
        if let Some(batch) = self.batch_for(row.kafka_partition, row.kafka_offset) {
            batch.rows.push(row);
            self.pending += 1;
        }
    }

    /// Adds a poison record (admitted just before).
    pub(crate) fn push_reject(&mut self, reject: RejectRow) {
        if let Some(batch) = self.batch_for(reject.kafka_partition, reject.kafka_offset) {
            batch.rejects.push(reject);
            self.pending += 1;
        }
    }

    /// Partitions whose batch is to be written now: full, old, or everything when memory is at
    /// its bound or `all` is asked (shutdown).
    pub(crate) fn due(&self, now: Instant, all: bool) -> Vec<i32> {
        let everything = all || self.pending >= self.max_pending;
        self.partitions
            .iter()
            .filter_map(|(partition, state)| match state {
                PartitionState::Active { batch, .. } if !batch.is_empty() => {
                    let old = batch
                        .opened_at
                        .is_some_and(|at| now.duration_since(at) >= self.max_age);
                    (everything || old || batch.len() >= self.max_records).then_some(*partition)
                }
                _ => None,
            })
            .collect()
    }

    fn batch(&self, partition: i32) -> Option<&PartitionBatch> {
        match self.partitions.get(&partition) {
            Some(PartitionState::Active { batch, .. }) => Some(batch),
            _ => None,
        }
    }

    fn batch_mut(&mut self, partition: i32) -> Option<&mut PartitionBatch> {
        match self.partitions.get_mut(&partition) {
            Some(PartitionState::Active { batch, .. }) => Some(batch),
            _ => None,
        }
    }

    /// One past the last offset of `partition` that is durable, when nothing of it waits to be
    /// written (an empty batch, no INSERT of unknown outcome): every record before it is in
    /// ClickHouse. `None` while something is pending or the partition is not positioned.
    pub(crate) fn durable_until(&self, partition: i32) -> Option<i64> {
        match self.partitions.get(&partition) {
            Some(PartitionState::Active { next_offset, batch })
                if batch.is_empty() && !batch.needs_recheck =>
            {
                Some(*next_offset)
            }
            _ => None,
        }
    }

    /// The highest offset pending in `partition`'s batch.
    pub(crate) fn last_offset(&self, partition: i32) -> Option<i64> {
        self.batch(partition)?.last_offset()
    }

    /// What writing `partition` needs next: a recheck after a failure, else the batch's oldest
    /// records, up to `max`, all usage rows or all rejects, none past an older record of the
    /// other kind. Writes go in offset order because the resume point is the highest offset
    /// stored: usage rows written past a poison record whose reject was not yet written would,
    /// after a kill -9 in between, make the restart skip the poison (its reject lost; the
    /// chaos of `usage_exactness` found it). A revoked partition has nothing to write.
    pub(crate) fn next_write(&self, partition: i32, max: usize) -> NextWrite<'_> {
        let Some(batch) = self.batch(partition) else {
            return NextWrite::Done;
        };
        if batch.needs_recheck {
            return NextWrite::Recheck {
                query_id: batch.last_query_id.clone(),
            };
        }
        let first_row = batch.rows.first().map(|r| r.kafka_offset);
        let first_reject = batch.rejects.first().map(|r| r.kafka_offset);
        match (first_row, first_reject) {
            (None, None) => NextWrite::Done,
            (Some(_), None) => NextWrite::Rows(&batch.rows[..batch.rows.len().min(max)]),
            (None, Some(_)) => NextWrite::Rejects(&batch.rejects[..batch.rejects.len().min(max)]),
            (Some(row), Some(reject)) if row < reject => {
                let before = batch.rows.partition_point(|r| r.kafka_offset < reject);
                NextWrite::Rows(&batch.rows[..before.min(max)])
            }
            (Some(row), Some(_)) => {
                let before = batch.rejects.partition_point(|r| r.kafka_offset < row);
                NextWrite::Rejects(&batch.rejects[..before.min(max)])
            }
        }
    }

    /// Reports an INSERT of the first `count` rows of `kind` sent as `query_id`: on success they
    /// leave the batch; on failure the batch needs a recheck before anything is sent again.
    pub(crate) fn sent(
        &mut self,
        partition: i32,
        kind: RowKind,
        count: usize,
        query_id: &str,
        succeeded: bool,
    ) {
        let Some(batch) = self.batch_mut(partition) else {
            return;
        };
        batch.last_query_id = Some(query_id.to_owned());
        if !succeeded {
            batch.needs_recheck = true;
            return;
        }
        match kind {
            RowKind::Usage => drop(batch.rows.drain(..count)),
            RowKind::Rejects => drop(batch.rejects.drain(..count)),
        }
        self.written(partition, count);
    }

    /// Reports the recheck asked for by [`NextWrite::Recheck`]: `stored` is the partition's
    /// highest offset in ClickHouse. Drops what is already stored; returns how many records.
    pub(crate) fn rechecked(&mut self, partition: i32, stored: Option<i64>) -> usize {
        let Some(batch) = self.batch_mut(partition) else {
            return 0;
        };
        batch.needs_recheck = false;
        let dropped = stored.map_or(0, |stored| batch.drop_through(stored));
        if dropped > 0 {
            self.written(partition, dropped);
        }
        dropped
    }

    /// Accounts for `count` records of `partition` written (or found already stored).
    fn written(&mut self, partition: i32, count: usize) {
        self.pending -= count;
        if let Some(batch) = self.batch_mut(partition) {
            batch.mark_written();
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(partition: i32, offset: i64) -> UsageRow {
        UsageRow {
            kafka_partition: partition,
            kafka_offset: offset,
            request_id: uuid::Uuid::from_u128(u128::from(offset.unsigned_abs())),
            request_id_text: String::new(),
            tenant_id: "t".into(),
            key_id: "k".into(),
            event_time: 0,
            event_ms: 0,
            outcome: "ok".into(),
            status: 200,
            bytes_in: 1,
            bytes_out: 1,
            pixels_in: 1,
            pixels_out: 1,
            cpu_time_us: 1,
            input_format: String::new(),
            output_format: String::new(),
            latency_us: 1,
            source: "RESIZER".into(),
            source_host: String::new(),
        }
    }

    #[test]
    fn nothing_is_taken_before_offsets_are_known() {
        let mut b = Batcher::new(10, Duration::from_secs(1), 100);
        assert_eq!(b.admit(0, 0), Admission::NotReady);
        b.assign(0);
        assert_eq!(b.admit(0, 0), Admission::NotReady);
        assert_eq!(b.activate(0, Some(41)), Some(42));
        assert_eq!(b.admit(0, 41), Admission::AlreadyStored);
        assert_eq!(b.admit(0, 42), Admission::Take);
        assert_eq!(
            b.activate(0, Some(1)),
            None,
            "an active partition is not re-positioned"
        );
    }

    #[test]
    fn a_redelivered_offset_is_not_taken_twice() {
        let mut b = Batcher::new(10, Duration::from_secs(1), 100);
        b.assign(0);
        b.activate(0, None);
        b.push_row(row(0, 0));
        b.push_row(row(0, 1));
        assert_eq!(b.admit(0, 1), Admission::AlreadyStored);
        b.push_row(row(0, 1));
        assert_eq!(b.pending(), 2);
    }

    #[test]
    fn batches_are_due_on_size_age_memory_or_shutdown() {
        let mut b = Batcher::new(2, Duration::from_millis(50), 3);
        b.assign(0);
        b.assign(1);
        b.activate(0, None);
        b.activate(1, None);
        let now = Instant::now();
        b.push_row(row(0, 0));
        assert!(b.due(now, false).is_empty());
        assert_eq!(b.due(now, true), [0]);
        b.push_row(row(0, 1));
        assert_eq!(b.due(now, false), [0], "full");
        b.push_row(row(1, 0));
        assert_eq!(b.due(now, false), [0, 1], "memory bound reached");
        assert_eq!(b.due(now + Duration::from_millis(60), false), [0, 1], "old");
    }

    #[test]
    fn revoking_drops_the_unwritten_batch_and_reassigning_waits_for_offsets() {
        let mut b = Batcher::new(10, Duration::from_secs(1), 100);
        b.assign(3);
        b.activate(3, Some(9));
        b.push_row(row(3, 10));
        b.push_row(row(3, 11));
        assert_eq!(b.revoke(3), 2);
        assert_eq!(b.pending(), 0);
        b.assign(3);
        assert_eq!(b.awaiting(), [3]);
        assert_eq!(b.admit(3, 12), Admission::NotReady);
    }

    #[test]
    fn writes_go_in_offset_order_across_rows_and_rejects() {
        let mut b = Batcher::new(100, Duration::from_secs(1), 1000);
        b.assign(0);
        b.activate(0, None);
        let reject = |offset| RejectRow {
            kafka_partition: 0,
            kafka_offset: offset,
            error: "x".into(),
            payload_size: 1,
        };
        // Offsets 0 1 [2] [3] 4 5 [6] 7 as they arrive: rows, rejects in brackets.
        for offset in 0..8 {
            if [2, 3, 6].contains(&offset) {
                b.push_reject(reject(offset));
            } else {
                b.push_row(row(0, offset));
            }
        }
        let mut written = Vec::new();
        loop {
            let (kind, offsets): (RowKind, Vec<i64>) = match b.next_write(0, 10) {
                NextWrite::Rows(rows) => (
                    RowKind::Usage,
                    rows.iter().map(|r| r.kafka_offset).collect(),
                ),
                NextWrite::Rejects(rejects) => (
                    RowKind::Rejects,
                    rejects.iter().map(|r| r.kafka_offset).collect(),
                ),
                NextWrite::Done => break,
                NextWrite::Recheck { .. } => panic!("nothing failed"),
            };
            b.sent(0, kind, offsets.len(), "q", true);
            written.push(offsets);
        }
        // Each INSERT is an offset-ordered prefix: a kill after any of them leaves no gap
        // below the highest stored offset.
        assert_eq!(
            written,
            [vec![0, 1], vec![2, 3], vec![4, 5], vec![6], vec![7]]
        );
    }

    #[test]
    fn a_recheck_drops_what_clickhouse_already_holds() {
        let mut b = Batcher::new(10, Duration::from_secs(1), 100);
        b.assign(0);
        b.activate(0, None);
        for offset in 0..5 {
            b.push_row(row(0, offset));
        }
        b.push_reject(RejectRow {
            kafka_partition: 0,
            kafka_offset: 5,
            error: "x".into(),
            payload_size: 1,
        });
        assert_eq!(b.last_offset(0), Some(5));
        // An INSERT of the first rows fails: whatever comes next is a recheck, not a re-send.
        let NextWrite::Rows(rows) = b.next_write(0, 4) else {
            panic!("rows first");
        };
        assert_eq!(rows.len(), 4);
        b.sent(0, RowKind::Usage, 4, "q1", false);
        assert_eq!(
            b.next_write(0, 4),
            NextWrite::Recheck {
                query_id: Some("q1".into())
            }
        );
        // ClickHouse holds offsets 0..=2: those leave the batch, the rest is sent again.
        assert_eq!(b.rechecked(0, Some(2)), 3);
        assert_eq!(b.pending(), 3);
        let NextWrite::Rows(rows) = b.next_write(0, 10) else {
            panic!("the rest of the rows");
        };
        assert_eq!(rows.first().map(|r| r.kafka_offset), Some(3));
        b.sent(0, RowKind::Usage, 2, "q2", true);
        assert!(matches!(b.next_write(0, 10), NextWrite::Rejects(r) if r.len() == 1));
        b.sent(0, RowKind::Rejects, 1, "q3", true);
        assert_eq!(b.next_write(0, 10), NextWrite::Done);
        assert_eq!(b.pending(), 0);
    }
}
