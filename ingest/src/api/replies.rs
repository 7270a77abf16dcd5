//! The correlation side of the api: which reply partitions this instance owns, and routing each
//! reply on them to the request waiting for it.
//!
//! Ownership comes from consumer group `api-replies` (static membership when `api.instance_id` is
//! set, so a restart does not move partitions), learnt from the group's rebalance callbacks
//! ([`ReplyOwnership`]): a revoked partition stops being offered before the consumer gives it up;
//! an assigned one is offered only once its fetch position is set to its end, so no reply can be
//! written there before this instance reads from there.
//! Waiting requests sit in a bounded map keyed by request id; a reply nobody waits for (late, or
//! meant for a request whose client left) is dropped without being decoded, and counted.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chassis::kafka::{KafkaConfig, count_rebalance, log_rebalance};
use chassis::{Readiness, Shutdown};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Message, Offset};
use schemas::Codec;
use schemas::events::ResizeResult;
use schemas::topics::IMAGE_RESULTS;
use tokio::sync::Notify;
use tokio::sync::oneshot;

use super::metrics::ApiMetrics;

/// Consumer group whose members own the reply partitions.
pub const GROUP: &str = "api-replies";
/// Readiness check name.
pub const READINESS: &str = "reply-partitions";

/// Why a request cannot wait for a reply right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// No reply partition is assigned and positioned yet.
    #[error("no reply partition assigned yet")]
    NoPartition,
    /// `max_pending` requests are already waiting.
    #[error("too many requests waiting for replies")]
    Full,
}

/// Routes replies to waiting requests.
#[derive(Debug)]
pub struct ReplyRouter {
    topic: String,
    owned: RwLock<Vec<i32>>,
    next: AtomicUsize,
    waiting: Mutex<HashMap<String, oneshot::Sender<ResizeResult>>>,
    max_pending: usize,
}

/// A request's claim on its reply. Dropping it (the client left, the deadline passed) frees the
/// slot, so an abandoned request holds no memory.
#[derive(Debug)]
pub struct ReplySlot {
    router: Arc<ReplyRouter>,
    request_id: String,
    /// Partition the reply must be written to.
    pub partition: i32,
    receiver: Option<oneshot::Receiver<ResizeResult>>,
}

impl ReplySlot {
    /// Waits for the reply; `None` if the router went away.
    pub async fn wait(&mut self) -> Option<ResizeResult> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.await.ok(),
            None => None,
        }
    }
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        self.router
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.request_id);
    }
}

impl ReplyRouter {
    /// A router for `topic` (namespaced `image.results`) holding at most `max_pending` waiters.
    pub fn new(topic: String, max_pending: usize) -> Arc<Self> {
        Arc::new(Self {
            topic,
            owned: RwLock::default(),
            next: AtomicUsize::new(0),
            waiting: Mutex::default(),
            max_pending,
        })
    }

    /// The reply topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Claims a reply partition and a slot for `request_id`.
    pub fn reserve(self: &Arc<Self>, request_id: &str) -> Result<ReplySlot, ReserveError> {
        let partition = {
            let owned = self.owned.read().unwrap_or_else(PoisonError::into_inner);
            if owned.is_empty() {
                return Err(ReserveError::NoPartition);
            }
            owned[self.next.fetch_add(1, Ordering::Relaxed) % owned.len()]
        };
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.len() >= self.max_pending {
                return Err(ReserveError::Full);
            }
            waiting.insert(request_id.to_owned(), sender);
        }
        Ok(ReplySlot {
            router: Arc::clone(self),
            request_id: request_id.to_owned(),
            partition,
            receiver: Some(receiver),
        })
    }

    /// Whether someone waits for `request_id` (checked before paying for a decode).
    pub fn is_waiting(&self, request_id: &str) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(request_id)
    }

    /// Hands a reply to its waiter; false if nobody waits (late or unknown reply).
    pub fn deliver(&self, result: ResizeResult) -> bool {
        let sender = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&result.request_id);
        sender.is_some_and(|sender| sender.send(result).is_ok())
    }

    /// Requests waiting now.
    pub fn pending(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Replaces the set of partitions new requests may use.
    pub fn set_owned(&self, partitions: Vec<i32>) {
        *self.owned.write().unwrap_or_else(PoisonError::into_inner) = partitions;
    }

    /// Partitions new requests may use.
    pub fn owned(&self) -> Vec<i32> {
        self.owned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Why the reply reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplyReaderError {
    /// No consumer.
    #[error(transparent)]
    Setup(#[from] chassis::kafka::KafkaSetupError),
    /// Subscribing failed.
    #[error("subscribing to reply topic: {0}")]
    Subscribe(rdkafka::error::KafkaError),
}

/// Starts the task that reads this instance's reply partitions until shutdown, supervised by
/// `ctx.tasks` (which the host waits for, so the consumer leaves its group cleanly).
pub fn start_reader(
    kafka: &KafkaConfig,
    instance_id: &str,
    router: Arc<ReplyRouter>,
    codec: Arc<Codec>,
    metrics: ApiMetrics,
    ctx: &chassis::ServiceContext,
) -> Result<(), ReplyReaderError> {
    let (readiness, shutdown) = (ctx.readiness.clone(), ctx.shutdown.clone());
    // Only replies written after we own a partition matter; older ones answer requests that are
    // gone. Nothing is committed: a new owner starts at the end.
    let mut config =
        kafka.group_consumer_config(GROUP, chassis::kafka::ConsumerProfile::LatestNoCommit);
    if !instance_id.is_empty() {
        config.set("group.instance.id", format!("api-{instance_id}"));
    }
    let factory = ReplyConsumerFactory {
        kafka: kafka.clone(),
        config,
        router: router.clone(),
        readiness: readiness.clone(),
    };
    let consumer = factory.create()?;
    readiness.register(READINESS, "waiting for reply partitions");
    ctx.tasks.spawn_until_shutdown(
        "reply-reader",
        read_replies(factory, consumer, codec, metrics, shutdown),
    );
    Ok(())
}

/// Makes the reply consumer, at start and again to replace one that failed fatally.
struct ReplyConsumerFactory {
    kafka: KafkaConfig,
    config: rdkafka::ClientConfig,
    router: Arc<ReplyRouter>,
    readiness: Readiness,
}

impl ReplyConsumerFactory {
    fn create(&self) -> Result<Arc<StreamConsumer<ReplyOwnership>>, ReplyReaderError> {
        let ownership = ReplyOwnership::new(self.router.clone(), self.readiness.clone());
        let consumer: StreamConsumer<ReplyOwnership> =
            self.kafka.consumer(&self.config, ownership)?;
        consumer
            .subscribe(&[self.router.topic()])
            .map_err(ReplyReaderError::Subscribe)?;
        Ok(Arc::new(consumer))
    }
}

/// A consumer that failed fatally never reads again (seen in the chaos suite: a static member
/// whose group coordinator was cut off for 45 s came back `FencedInstanceId`, and the api stayed
/// not ready for good). The replacement (same `group.instance.id`) rejoins the group and gets
/// the partitions back; meanwhile nothing is offered, so new requests get 503 `not_ready` and
/// the ones waiting end at their deadline. The old consumer is closed off the runtime.
async fn replace_consumer(
    factory: &ReplyConsumerFactory,
    old: Arc<StreamConsumer<ReplyOwnership>>,
    fatal: &(rdkafka::types::RDKafkaErrorCode, String),
    shutdown: &Shutdown,
) -> Option<Arc<StreamConsumer<ReplyOwnership>>> {
    tracing::warn!(code = ?fatal.0, reason = %fatal.1, "Reply consumer failed fatally; replacing it");
    factory.router.set_owned(Vec::new());
    factory.readiness.not_ready(
        READINESS,
        "replacing the reply consumer after a fatal error",
    );
    old.context().detached.store(true, Ordering::Release);
    drop(tokio::task::spawn_blocking(move || drop(old)));
    let mut backoff = chassis::RetryPolicy::DEPENDENCY.backoff();
    loop {
        match factory.create() {
            Ok(consumer) => return Some(consumer),
            Err(error) => {
                tracing::warn!(%error, "New reply consumer not ready yet; retrying");
                backoff.wait(shutdown).await.ok()?;
            }
        }
    }
}

async fn read_replies(
    factory: ReplyConsumerFactory,
    mut consumer: Arc<StreamConsumer<ReplyOwnership>>,
    codec: Arc<Codec>,
    metrics: ApiMetrics,
    shutdown: Shutdown,
) {
    let (router, readiness) = (factory.router.clone(), factory.readiness.clone());
    // Partitions whose positioning failed are tried again after this pause.
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let assigned = consumer.context().assigned.notified();
        let retry_due = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.wait() => break,
            () = assigned => {
                retry = position_new_partitions(&consumer, router.topic()).await;
            }
            () = retry_due => {
                retry = position_new_partitions(&consumer, router.topic()).await;
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    let request_id = message.key().map(String::from_utf8_lossy).unwrap_or_default();
                    if !router.is_waiting(&request_id) {
                        metrics.replies.with_label_values(&["unclaimed"]).inc();
                        continue;
                    }
                    match codec.decode::<ResizeResult>(message.payload().unwrap_or_default()).await {
                        Ok(result) => {
                            let outcome = if router.deliver(result) { "delivered" } else { "unclaimed" };
                            metrics.replies.with_label_values(&[outcome]).inc();
                        }
                        Err(error) => {
                            metrics.replies.with_label_values(&["undecodable"]).inc();
                            tracing::warn!(%error, %request_id, "Undecodable reply dropped");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Reply consumer error");
                    if let Some(fatal) = consumer.client().fatal_error() {
                        let old = Arc::clone(&consumer);
                        match replace_consumer(&factory, old, &fatal, &shutdown).await {
                            Some(new) => {
                                consumer = new;
                                retry = None;
                            }
                            None => break,
                        }
                    }
                }
            },
        }
    }
    router.set_owned(Vec::new());
    readiness.not_ready(READINESS, "stopped");
}

/// The reply partitions this instance owns, as the group's rebalance callbacks say (they run on
/// the consumer's poll, inside `recv`): revoked partitions leave the router at once, before the
/// consumer gives them up; assigned ones wait in `unpositioned` until the reader has moved them
/// to their end offset.
pub struct ReplyOwnership {
    router: Arc<ReplyRouter>,
    readiness: Readiness,
    /// Assigned, positioned and offered to new requests.
    offered: Mutex<BTreeSet<i32>>,
    /// Assigned, not yet positioned.
    unpositioned: Mutex<BTreeSet<i32>>,
    /// Woken when `unpositioned` gains partitions.
    assigned: Notify,
    /// Set on a consumer being replaced: its last callbacks (the revoke of its close) must not
    /// touch the router or readiness, which the replacement owns by then.
    detached: std::sync::atomic::AtomicBool,
}

impl ReplyOwnership {
    fn new(router: Arc<ReplyRouter>, readiness: Readiness) -> Self {
        Self {
            router,
            readiness,
            offered: Mutex::new(BTreeSet::new()),
            unpositioned: Mutex::new(BTreeSet::new()),
            assigned: Notify::new(),
            detached: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Offers `partitions` (now positioned) to new requests, if they are still assigned.
    fn offer(&self, partitions: &[i32]) {
        let mut unpositioned = self
            .unpositioned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut offered = self.offered.lock().unwrap_or_else(PoisonError::into_inner);
        for partition in partitions {
            if unpositioned.remove(partition) {
                offered.insert(*partition);
            }
        }
        drop(unpositioned);
        self.publish(&offered);
    }

    fn revoke(&self, partitions: &[i32]) {
        let mut offered = self.offered.lock().unwrap_or_else(PoisonError::into_inner);
        let mut unpositioned = self
            .unpositioned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for partition in partitions {
            offered.remove(partition);
            unpositioned.remove(partition);
        }
        drop(unpositioned);
        self.publish(&offered);
    }

    fn publish(&self, offered: &BTreeSet<i32>) {
        if self.detached.load(Ordering::Acquire) {
            return;
        }
        let owned: Vec<i32> = offered.iter().copied().collect();
        if owned != self.router.owned() {
            tracing::info!(partitions = ?owned, "Reply partitions owned");
            if owned.is_empty() {
                self.readiness
                    .not_ready(READINESS, "no reply partition assigned");
            } else {
                self.readiness.ready(READINESS);
            }
            self.router.set_owned(owned);
        }
    }

    fn unpositioned(&self) -> Vec<i32> {
        let unpositioned = self
            .unpositioned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unpositioned.iter().copied().collect()
    }
}

impl ClientContext for ReplyOwnership {}

impl ConsumerContext for ReplyOwnership {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(GROUP, "Rebalance starting", rebalance);
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            self.revoke(&partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(GROUP, "Rebalance done", rebalance);
        count_rebalance(GROUP, rebalance);
        if let Rebalance::Assign(list) = rebalance {
            let mut unpositioned = self
                .unpositioned
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            unpositioned.extend(list.elements().iter().map(|e| e.partition()));
            drop(unpositioned);
            self.assigned.notify_one();
        }
    }
}

/// Moves each newly assigned partition to its current end offset (explicitly, not through
/// `auto.offset.reset`, whose effect cannot be observed) and then offers it. A partition whose
/// broker calls fail stays unpositioned; the returned instant says when to try again.
async fn position_new_partitions(
    consumer: &Arc<StreamConsumer<ReplyOwnership>>,
    topic: &str,
) -> Option<tokio::time::Instant> {
    let fresh = consumer.context().unpositioned();
    if fresh.is_empty() {
        return None;
    }
    let positioner = Arc::clone(consumer);
    let topic = topic.to_owned();
    // Watermark look-ups and seeks are blocking broker calls: keep them off the runtime.
    let done = tokio::task::spawn_blocking(move || {
        fresh
            .into_iter()
            .filter(|&partition| {
                positioner
                    .fetch_watermarks(&topic, partition, Duration::from_secs(2))
                    .and_then(|(_, end)| {
                        positioner.seek(
                            &topic,
                            partition,
                            Offset::Offset(end),
                            Duration::from_secs(2),
                        )
                    })
                    .is_ok()
            })
            .collect::<Vec<i32>>()
    })
    .await
    .unwrap_or_default();
    let context = consumer.context();
    context.offer(&done);
    (!context.unpositioned().is_empty())
        .then(|| tokio::time::Instant::now() + Duration::from_millis(200))
}

/// The reply topic of a deployment.
pub fn reply_topic(kafka: &KafkaConfig) -> String {
    kafka.name(IMAGE_RESULTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::events::StageTimings;

    fn result(request_id: &str) -> ResizeResult {
        ResizeResult {
            request_id: request_id.into(),
            tenant_id: "t".into(),
            completed_at_ms: 0,
            image: None,
            error: None,
            timings: StageTimings::default(),
            source_validator: None,
        }
    }

    #[tokio::test]
    async fn a_reply_reaches_its_waiter_and_only_it() {
        let router = ReplyRouter::new("replies".into(), 10);
        router.set_owned(vec![4, 5]);
        let mut a = router.reserve("a").expect("slot");
        let b = router.reserve("b").expect("slot");
        assert_ne!(
            a.partition, b.partition,
            "round robin over owned partitions"
        );
        assert!(router.deliver(result("a")));
        assert_eq!(a.wait().await.map(|r| r.request_id), Some("a".into()));
        assert!(!router.deliver(result("zzz")), "unknown reply dropped");
        assert!(
            !router.deliver(result("a")),
            "a second reply for the same request is dropped"
        );
    }

    #[test]
    fn dropping_a_slot_frees_it() {
        let router = ReplyRouter::new("replies".into(), 1);
        router.set_owned(vec![0]);
        let slot = router.reserve("a").expect("slot");
        assert_eq!(router.reserve("b").unwrap_err(), ReserveError::Full);
        drop(slot);
        assert_eq!(router.pending(), 0);
        assert!(router.reserve("b").is_ok());
        assert!(
            !router.deliver(result("a")),
            "the departed client's reply is dropped"
        );
    }

    #[test]
    fn only_assigned_and_positioned_partitions_are_offered_and_revocation_is_immediate() {
        let router = ReplyRouter::new("replies".into(), 10);
        let ownership = ReplyOwnership::new(router.clone(), Readiness::default());
        ownership.unpositioned.lock().unwrap().extend([1, 2]);
        assert!(
            router.owned().is_empty(),
            "nothing offered before positioning"
        );
        ownership.offer(&[1, 7]);
        assert_eq!(router.owned(), vec![1], "7 was never assigned");
        ownership.revoke(&[1, 2]);
        assert!(router.owned().is_empty());
        ownership.offer(&[2]);
        assert!(
            router.owned().is_empty(),
            "2 was revoked before it was positioned"
        );
        assert!(ownership.unpositioned().is_empty());
    }

    #[test]
    fn no_partition_no_slot() {
        let router = ReplyRouter::new("replies".into(), 10);
        assert_eq!(router.reserve("a").unwrap_err(), ReserveError::NoPartition);
    }
}
