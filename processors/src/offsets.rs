//! Ordered completion per partition. Work on one partition finishes out of order on the pool, but
//! a transaction may only carry the outputs of a contiguous run of offsets starting at the
//! committed position: then the offsets it commits cover exactly the outputs it writes, which is
//! what makes consume-transform-produce exactly once.

use std::collections::{BTreeMap, HashMap};

/// The offsets of one partition whose outputs were taken for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenRange {
    /// Partition.
    pub partition: i32,
    /// First offset taken: where to rewind to if the transaction aborts.
    pub first: i64,
    /// Next offset to read: what the transaction commits.
    pub next: i64,
}

/// Tracks the records of every assigned partition from receipt to commit.
#[derive(Debug)]
pub struct OffsetTracker<T> {
    partitions: HashMap<i32, BTreeMap<i64, Option<T>>>,
}

impl<T> Default for OffsetTracker<T> {
    fn default() -> Self {
        Self {
            partitions: HashMap::new(),
        }
    }
}

impl<T> OffsetTracker<T> {
    /// A record was received and its work started.
    pub fn start(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .insert(offset, None);
    }

    /// A record's work finished with `output`. Returns false (and drops the output) if the
    /// record is no longer tracked: its partition was revoked or rewound meanwhile.
    pub fn complete(&mut self, partition: i32, offset: i64, output: T) -> bool {
        match self
            .partitions
            .get_mut(&partition)
            .and_then(|p| p.get_mut(&offset))
        {
            Some(slot @ None) => {
                *slot = Some(output);
                true
            }
            _ => false,
        }
    }

    /// Outputs ready to commit: per partition, the finished records before the first unfinished
    /// one. Nothing is removed until [`take_ready`](Self::take_ready).
    pub fn ready_count(&self) -> usize {
        self.partitions
            .values()
            .map(|records| records.values().take_while(|slot| slot.is_some()).count())
            .sum()
    }

    /// Removes up to `limit` ready outputs and returns them with, per partition, the range of
    /// offsets they cover: the first taken, and the next one to read (the offset to commit).
    pub fn take_ready(&mut self, limit: usize) -> (Vec<T>, Vec<TakenRange>) {
        let mut outputs = Vec::new();
        let mut commits = Vec::new();
        for (&partition, records) in &mut self.partitions {
            let first = records.keys().next().copied();
            let mut next = None;
            while outputs.len() < limit {
                let Some(entry) = records.first_entry() else {
                    break;
                };
                if entry.get().is_none() {
                    break;
                }
                let offset = *entry.key();
                if let Some(output) = entry.remove() {
                    outputs.push(output);
                }
                next = Some(offset + 1);
            }
            if let (Some(first), Some(next)) = (first, next) {
                commits.push(TakenRange {
                    partition,
                    first,
                    next,
                });
            }
        }
        (outputs, commits)
    }

    /// Forgets a partition (revoked, or rewound after an aborted transaction).
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Forgets every partition (after the transactional producer was replaced).
    pub fn forget_all(&mut self) {
        self.partitions.clear();
    }

    /// Records in flight or waiting for commit.
    pub fn len(&self) -> usize {
        self.partitions.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Partitions with tracked records.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(&p, _)| p)
            .collect()
    }

    /// Per partition with tracked records: (partition, first tracked offset, whether that
    /// record is finished, records tracked). What a stalled consumer is waiting for.
    pub fn heads(&self) -> Vec<(i32, i64, bool, usize)> {
        let mut heads: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(&p, records)| {
                let (&offset, slot) = records.iter().next()?;
                Some((p, offset, slot.is_some(), records.len()))
            })
            .collect();
        heads.sort_unstable();
        heads
    }

    /// The first tracked (uncommitted) offset of a partition.
    pub fn first_offset(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .and_then(|r| r.keys().next().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_contiguous_finished_prefix_is_ready() {
        let mut t = OffsetTracker::default();
        for offset in 10..14 {
            t.start(0, offset);
        }
        assert!(t.complete(0, 11, "b"));
        assert!(t.complete(0, 13, "d"));
        assert_eq!(t.ready_count(), 0, "10 is still running");
        assert!(t.complete(0, 10, "a"));
        assert_eq!(t.ready_count(), 2);
        let (outputs, commits) = t.take_ready(100);
        assert_eq!(outputs, vec!["a", "b"]);
        assert_eq!(
            commits,
            vec![TakenRange {
                partition: 0,
                first: 10,
                next: 12
            }]
        );
        assert!(t.complete(0, 12, "c"));
        let (outputs, commits) = t.take_ready(100);
        assert_eq!(outputs, vec!["c", "d"]);
        assert_eq!(
            commits,
            vec![TakenRange {
                partition: 0,
                first: 12,
                next: 14
            }]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn take_ready_respects_the_limit_and_commits_what_it_took() {
        let mut t = OffsetTracker::default();
        for offset in 0..5 {
            t.start(3, offset);
            assert!(t.complete(3, offset, offset));
        }
        let (outputs, commits) = t.take_ready(2);
        assert_eq!(outputs, vec![0, 1]);
        assert_eq!(
            commits,
            vec![TakenRange {
                partition: 3,
                first: 0,
                next: 2
            }]
        );
        assert_eq!(t.ready_count(), 3);
    }

    #[test]
    fn completions_of_forgotten_partitions_are_dropped() {
        let mut t = OffsetTracker::default();
        t.start(1, 5);
        t.forget(1);
        assert!(!t.complete(1, 5, ()));
        assert!(!t.complete(2, 0, ()), "never started");
        assert!(t.is_empty());
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.start(0, 0);
        t.start(1, 0);
        assert!(t.complete(1, 0, "p1"));
        let (outputs, commits) = t.take_ready(10);
        assert_eq!(outputs, vec!["p1"]);
        assert_eq!(
            commits,
            vec![TakenRange {
                partition: 1,
                first: 0,
                next: 1
            }]
        );
        assert_eq!(t.first_offset(0), Some(0));
    }
}
