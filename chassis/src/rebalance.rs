//! The rebalance inbox: how a consumer's rebalance callbacks tell the loop that owns the consumer
//! which partitions moved.
//!
//! librdkafka runs the callbacks inside the consumer's poll (`recv`), while the loop is waiting
//! on it: they cannot reach the loop's state (its batches, its offset tracker). So they write the
//! partitions they move into a [`RebalanceInbox`], and the loop drains it after each poll and acts
//! (drops a revoked partition's work, positions an assigned one). Sets, not queues: the inbox is
//! bounded by the topic's partition count however many rebalances happen between two drains.
//!
//! A consumer that needs nothing else from its callbacks uses [`InboxContext`]; one that does
//! (the aggregator pauses new partitions and reads statistics) writes its own context and calls
//! [`RebalanceInbox::revoke`] and [`RebalanceInbox::assign`] from it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};

use crate::kafka::{count_rebalance, log_rebalance};

/// Partitions of one topic moved by rebalances since the loop last looked. Clones share one
/// inbox: the consumer's context writes, the loop drains.
#[derive(Debug, Clone)]
pub struct RebalanceInbox {
    topic: String,
    moves: Arc<Mutex<PartitionMoves>>,
}

/// What [`RebalanceInbox::take`] hands the loop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionMoves {
    /// Assigned and not revoked since.
    pub assigned: BTreeSet<i32>,
    /// Revoked. A partition revoked and then assigned again before the loop looked is in both:
    /// the loop drops the old assignment's work first, then takes the new one.
    pub revoked: BTreeSet<i32>,
}

impl RebalanceInbox {
    /// An empty inbox for the partitions of `topic` (others in a rebalance are ignored).
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            moves: Arc::default(),
        }
    }

    /// The topic whose partitions are recorded.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions of [`Self::topic`] in `list`.
    pub fn partitions_of(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }

    /// Records a revocation (call it before the rebalance, while the partitions are still ours):
    /// a revoked partition is no longer assigned, whatever an earlier assignment said.
    pub fn revoke(&self, list: &TopicPartitionList) {
        let partitions = self.partitions_of(list);
        let mut moves = self.lock();
        for partition in partitions {
            moves.assigned.remove(&partition);
            moves.revoked.insert(partition);
        }
    }

    /// Records an assignment (call it after the rebalance).
    pub fn assign(&self, list: &TopicPartitionList) {
        let partitions = self.partitions_of(list);
        self.lock().assigned.extend(partitions);
    }

    /// Everything recorded since the last call, leaving the inbox empty.
    pub fn take(&self) -> PartitionMoves {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartitionMoves> {
        // The callbacks and the loop never panic while holding it; if one did, the sets are
        // still whole (each update is a single insert or remove).
        self.moves.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A consumer context that logs and counts rebalances (as `consumer`) and fills an inbox.
pub struct InboxContext {
    consumer: &'static str,
    inbox: RebalanceInbox,
}

impl InboxContext {
    /// A context reporting rebalances as `consumer` into `inbox`.
    pub fn new(consumer: &'static str, inbox: RebalanceInbox) -> Self {
        Self { consumer, inbox }
    }
}

impl rdkafka::ClientContext for InboxContext {}

impl ConsumerContext for InboxContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(self.consumer, "Rebalance starting", rebalance);
        if let Rebalance::Revoke(list) = rebalance {
            self.inbox.revoke(list);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(self.consumer, "Rebalance done", rebalance);
        count_rebalance(self.consumer, rebalance);
        if let Rebalance::Assign(list) = rebalance {
            self.inbox.assign(list);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn list(topic: &str, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(topic, partition);
        }
        list
    }

    fn set(partitions: &[i32]) -> BTreeSet<i32> {
        partitions.iter().copied().collect()
    }

    #[test]
    fn the_loop_sees_each_move_once() {
        let inbox = RebalanceInbox::new("t");
        let context_side = inbox.clone();
        context_side.assign(&list("t", &[0, 1]));
        assert_eq!(
            inbox.take(),
            PartitionMoves {
                assigned: set(&[0, 1]),
                revoked: set(&[]),
            }
        );
        assert_eq!(inbox.take(), PartitionMoves::default(), "drained");
    }

    #[test]
    fn a_revocation_cancels_an_assignment_not_yet_seen() {
        let inbox = RebalanceInbox::new("t");
        inbox.assign(&list("t", &[0, 1]));
        inbox.revoke(&list("t", &[1]));
        let moves = inbox.take();
        assert_eq!(moves.assigned, set(&[0]));
        assert_eq!(moves.revoked, set(&[1]));
    }

    #[test]
    fn revoked_then_assigned_again_is_in_both() {
        let inbox = RebalanceInbox::new("t");
        inbox.revoke(&list("t", &[2]));
        inbox.assign(&list("t", &[2]));
        let moves = inbox.take();
        assert_eq!(moves.assigned, set(&[2]));
        assert_eq!(moves.revoked, set(&[2]));
    }

    #[test]
    fn other_topics_are_ignored() {
        let inbox = RebalanceInbox::new("t");
        inbox.assign(&list("other", &[0]));
        inbox.revoke(&list("other", &[1]));
        assert_eq!(inbox.take(), PartitionMoves::default());
    }
}
