//! Consumer group membership: the heartbeat task, the committer task, and what they share with
//! the [`Consumer`](crate::Consumer).
//!
//! Three parties, one rule: **a partition is reported released only after its last commit**.
//!
//! - The **heartbeat task** owns the conversation with the coordinator (GroupHeartbeat, key 11):
//!   it joins with member epoch 0 and the subscribed topics, heartbeats at the interval the
//!   broker asks for with the member id, the last epoch and `owned_partitions`, and stores each
//!   response's assignment in [`Membership`]. It never touches partitions itself: when the
//!   assignment changes it wakes `poll`. On `UNKNOWN_MEMBER_ID` (session expired, broker
//!   restarted), or when no heartbeat was answered for a whole session timeout, the member is
//!   *fenced*: its partitions are lost, and the task waits until `poll` has dropped them
//!   before it rejoins with epoch 0 and a fresh member id. Connection failures are retried with
//!   backoff, forever. `close` asks it to leave (epoch -1).
//! - **`poll`** (the application's task) applies assignment changes: it stops fetching revoked
//!   partitions and drops their buffered records, runs the application's
//!   [`RebalanceListener`], commits their positions (auto-commit), waits for every commit queued
//!   before, and only then removes them from `owned` and wakes the heartbeat task to report it.
//!   New partitions start at their committed offset (OffsetFetch) or by
//!   `group.auto_offset_reset`. So the coordinator, which gives a partition to its next owner
//!   only after the previous one stopped reporting it, never sees it released before its final
//!   commit.
//! - The **committer task** sends commits one at a time, in the order they were asked for
//!   (auto-commits, `commit_async`, `commit`), so a later commit never lands before an earlier
//!   one. Each commit carries the member id it was made under: a commit made before the member
//!   was fenced is refused locally rather than sent under the next membership. A stale epoch
//!   (`ILLEGAL_GENERATION`) makes it ask the heartbeat task for a fresh epoch and try once
//!   more; retriable failures are retried until `request_timeout`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use strom_protocol::ErrorCode;
use strom_protocol::messages::{
    GroupHeartbeatRequest, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic,
    OffsetFetchRequest, TopicNames, TopicPartitions, response,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff::backoff;
use crate::config::{ClientConfig, ConsumerConfig};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::partitioner::Rng;
use crate::record::TopicPartition;

/// The future a [`RebalanceListener`] callback returns.
pub type ListenerFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Callbacks on partitions assigned to, revoked from, or lost by a group consumer.
///
/// They run inside [`Consumer::poll`](crate::Consumer::poll) (and
/// [`Consumer::close`](crate::Consumer::close)), on the application's task, with the consumer
/// at hand: a callback may `commit`, `commit_offsets`, `seek` or read `position`s. Revoked
/// partitions are no longer fetched when `on_partitions_revoked` runs, but their positions are
/// still there, so committing in the callback commits them; the coordinator gives them to
/// their next owner only after the callback (and, with auto-commit, the consumer's own commit)
/// is done. `poll` called from a callback returns records but applies no assignment change.
///
/// Every method has a default that does nothing, except `on_partitions_lost`, which calls
/// `on_partitions_revoked` (as Kafka does).
///
/// ```no_run
/// use strom_client::{Consumer, ListenerFuture, RebalanceListener, TopicPartition};
///
/// /// Commits what was processed before a partition moves to another member.
/// struct CommitOnRevoke;
///
/// impl RebalanceListener for CommitOnRevoke {
///     fn on_partitions_revoked<'a>(
///         &'a mut self,
///         consumer: &'a mut Consumer,
///         partitions: &'a [TopicPartition],
///     ) -> ListenerFuture<'a> {
///         Box::pin(async move {
///             if let Err(e) = consumer.commit().await {
///                 eprintln!("commit before giving up {partitions:?} failed: {e}");
///             }
///         })
///     }
/// }
///
/// # fn run(consumer: &mut Consumer) {
/// consumer.set_rebalance_listener(CommitOnRevoke);
/// # }
/// ```
pub trait RebalanceListener: Send {
    /// `partitions` were assigned to this consumer; their positions are set (committed offsets,
    /// or `auto_offset_reset` still to find one) and fetching has started.
    fn on_partitions_assigned<'a>(
        &'a mut self,
        consumer: &'a mut crate::Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        let _ = (consumer, partitions);
        Box::pin(async {})
    }

    /// `partitions` are being taken from this consumer (a rebalance, or `close`). They are no
    /// longer fetched; commit what was processed now.
    fn on_partitions_revoked<'a>(
        &'a mut self,
        consumer: &'a mut crate::Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        let _ = (consumer, partitions);
        Box::pin(async {})
    }

    /// The consumer lost `partitions` without giving them up: its session expired or the broker
    /// restarted, so other members may already own them. Commits are refused now; records
    /// returned since the last commit will be read again by the next owner.
    fn on_partitions_lost<'a>(
        &'a mut self,
        consumer: &'a mut crate::Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        self.on_partitions_revoked(consumer, partitions)
    }
}

/// The group identity of a subscribed consumer, from its last heartbeat.
///
/// ```no_run
/// # fn run(consumer: &strom_client::Consumer) {
/// if let Some(m) = consumer.group_metadata() {
///     println!("{} is member {} at epoch {}", m.group_id, m.member_id, m.member_epoch);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// The group.
    pub group_id: String,
    /// The member id the coordinator gave; empty while joining.
    pub member_id: String,
    /// The member epoch commits carry; 0 while joining (or rejoining).
    pub member_epoch: i32,
}

/// What the heartbeat task and the consumer share (behind [`GroupShared::lock`]).
#[derive(Debug, Default)]
pub(crate) struct Membership {
    /// Empty until the first response, and again once fenced (a rejoin gets a fresh id).
    pub(crate) member_id: String,
    /// The epoch of the last response; 0 when joining.
    pub(crate) member_epoch: i32,
    pub(crate) topics: Vec<String>,
    /// `topics` must be sent with the next heartbeat.
    pub(crate) topics_changed: bool,
    /// The coordinator's latest assignment for this member.
    pub(crate) assignment: BTreeSet<TopicPartition>,
    /// Bumped whenever `assignment` changes (and when the member is fenced).
    pub(crate) assignment_seq: u64,
    /// What the consumer still consumes (reported with every heartbeat). Only the consumer
    /// changes it, and it removes a partition only after that partition's last commit.
    pub(crate) owned: BTreeSet<TopicPartition>,
    /// Fenced: the partitions are lost. The consumer drops them and clears this; the heartbeat
    /// task waits for that before it rejoins.
    pub(crate) lost: bool,
    /// Why the membership cannot go on (e.g. a session timeout outside the broker's bounds).
    pub(crate) fatal: Option<Error>,
    /// `close` asked the heartbeat task to leave.
    pub(crate) leaving: bool,
    /// The last offset acknowledged per partition (or found committed when it was assigned).
    pub(crate) committed: HashMap<TopicPartition, i64>,
}

/// State shared by a subscribed consumer, its heartbeat task and its committer task.
#[derive(Debug)]
pub(crate) struct GroupShared {
    pub(crate) group_id: String,
    state: Mutex<Membership>,
    /// Wakes `poll`: the assignment changed, the member was fenced, or a fatal error.
    pub(crate) changed: Notify,
    /// Wakes the heartbeat task: owned partitions shrank, an epoch refresh is wanted, or
    /// `close` wants it to leave.
    pub(crate) wake_heartbeat: Notify,
    /// Heartbeat round trips finished (answered or failed).
    heartbeats: watch::Sender<u64>,
}

impl GroupShared {
    pub(crate) fn new(group_id: String, topics: Vec<String>) -> Self {
        Self {
            group_id,
            state: Mutex::new(Membership {
                topics,
                ..Membership::default()
            }),
            changed: Notify::new(),
            wake_heartbeat: Notify::new(),
            heartbeats: watch::Sender::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Membership> {
        // Every change under this lock leaves the fields consistent: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the heartbeat task for a heartbeat now and waits (at most `timeout`) until the
    /// member epoch moved on from `stale_epoch` or two more heartbeats finished.
    pub(crate) async fn refresh(&self, stale_epoch: i32, timeout: Duration) {
        let mut rx = self.heartbeats.subscribe();
        let seen = *rx.borrow_and_update();
        self.wake_heartbeat.notify_one();
        let _ = tokio::time::timeout(
            timeout,
            rx.wait_for(|n| *n >= seen + 2 || self.lock().member_epoch != stale_epoch),
        )
        .await;
    }
}

/// Partitions grouped by topic, as the wire lists them.
pub(crate) fn to_wire<'a>(
    set: impl IntoIterator<Item = &'a TopicPartition>,
) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in set {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            partitions.dedup();
            TopicPartitions {
                topic: topic.to_string(),
                partitions,
            }
        })
        .collect()
}

pub(crate) fn from_wire(list: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    let mut out = BTreeSet::new();
    for t in list {
        let topic: Arc<str> = Arc::from(t.topic.as_str());
        for &p in &t.partitions {
            out.insert(TopicPartition::new(topic.clone(), p));
        }
    }
    out
}

/// The client error for a group-level wire code.
pub(crate) fn group_error(
    code: ErrorCode,
    message: Option<String>,
    group: &str,
    epoch: i32,
) -> Error {
    match code {
        ErrorCode::GroupIdNotFound => Error::GroupNotFound {
            group: group.to_string(),
        },
        ErrorCode::NonEmptyGroup => Error::NonEmptyGroup {
            group: group.to_string(),
            message,
        },
        ErrorCode::IllegalGeneration => Error::IllegalGeneration {
            group: group.to_string(),
            member_epoch: epoch,
        },
        ErrorCode::UnknownMemberId => Error::UnknownMember {
            group: group.to_string(),
            message,
        },
        code => Error::Broker { code, message },
    }
}

fn unexpected(api: &str) -> Error {
    Error::Protocol {
        addr: String::new(),
        reason: format!("{api} answered with another API's body"),
    }
}

/// OffsetFetch: the committed offsets of `group` for `partitions` (every committed one when
/// empty). Partitions without a commit are left out.
///
/// # Errors
/// The request's failure; a request- or partition-level error code.
pub(crate) async fn fetch_committed(
    control: &Control,
    group: &str,
    partitions: &[TopicPartition],
) -> Result<BTreeMap<TopicPartition, i64>> {
    let req = OffsetFetchRequest {
        group_id: group.to_string(),
        topics: to_wire(partitions),
    };
    let response::Body::OffsetFetch(r) = control.group_request(group, req).await? else {
        return Err(unexpected("OffsetFetch"));
    };
    if let Some(code) = (!r.error_code().is_ok()).then(|| r.error_code()) {
        control.group_answered(group, code);
        return Err(group_error(code, r.error_message, group, -1));
    }
    let mut out = BTreeMap::new();
    for t in r.topics {
        let topic: Arc<str> = Arc::from(t.name.as_str());
        for p in t.partitions {
            if let Some(e) = Error::from_code(
                p.error_code(),
                Some(format!("committed offset of {}-{}", t.name, p.partition)),
            ) {
                return Err(e);
            }
            if p.offset >= 0 {
                out.insert(TopicPartition::new(topic.clone(), p.partition), p.offset);
            }
        }
    }
    Ok(out)
}

/// One OffsetCommit. Returns the partitions the broker accepted; the first partition-level
/// error fails the call (after the accepted ones are known).
///
/// # Errors
/// The request's failure; the request-level code as a group error; a partition's code.
pub(crate) async fn send_commit(
    control: &Control,
    group: &str,
    member_id: &str,
    member_epoch: i32,
    offsets: &[(TopicPartition, i64)],
) -> Result<(Vec<(TopicPartition, i64)>, Option<Error>)> {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for (tp, offset) in offsets {
        let p = OffsetCommitPartition {
            partition: tp.partition,
            offset: *offset,
            metadata: None,
        };
        match topics.iter_mut().find(|t| *t.name == *tp.topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(OffsetCommitTopic {
                name: tp.topic.to_string(),
                partitions: vec![p],
            }),
        }
    }
    let req = OffsetCommitRequest {
        group_id: group.to_string(),
        member_id: member_id.to_string(),
        member_epoch,
        topics,
    };
    let response::Body::OffsetCommit(r) = control.group_request(group, req).await? else {
        return Err(unexpected("OffsetCommit"));
    };
    if !r.error_code().is_ok() {
        control.group_answered(group, r.error_code());
        return Err(group_error(
            r.error_code(),
            r.error_message,
            group,
            member_epoch,
        ));
    }
    let wanted: HashMap<&TopicPartition, i64> = offsets.iter().map(|(tp, o)| (tp, *o)).collect();
    let mut accepted = Vec::with_capacity(offsets.len());
    let mut first_error = None;
    for t in r.topics {
        let topic: Arc<str> = Arc::from(t.name.as_str());
        for p in t.partitions {
            let tp = TopicPartition::new(topic.clone(), p.partition);
            match p.error_code() {
                ErrorCode::None => {
                    if let Some(&o) = wanted.get(&tp) {
                        accepted.push((tp, o));
                    }
                }
                code => {
                    if first_error.is_none() {
                        first_error = Some(Error::Broker {
                            code,
                            message: Some(format!("commit of {tp}")),
                        });
                    }
                }
            }
        }
    }
    Ok((accepted, first_error))
}

// ------------------------------------------------------------------------------------------
// Commits
// ------------------------------------------------------------------------------------------

/// A commit for the committer task. An empty one commits nothing and resolves once every
/// commit queued before it is done.
#[derive(Debug)]
pub(crate) struct CommitJob {
    pub(crate) offsets: Vec<(TopicPartition, i64)>,
    /// The member id when the commit was asked for.
    pub(crate) member_id: String,
    pub(crate) reply: oneshot::Sender<Result<()>>,
    /// Nobody waits (auto-commit): log a failure.
    pub(crate) background: bool,
}

/// The outcome of [`Consumer::commit_async`](crate::Consumer::commit_async): await it for the
/// result, or drop it (a failure is then logged). Dropping it does not cancel the commit.
///
/// ```no_run
/// # async fn run(consumer: &mut strom_client::Consumer) {
/// let handle = consumer.commit_async();
/// // ... keep polling; later, if the outcome matters:
/// if let Err(e) = handle.await {
///     eprintln!("async commit failed: {e}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct CommitHandle {
    rx: Option<oneshot::Receiver<Result<()>>>,
    immediate: Option<Result<()>>,
}

impl CommitHandle {
    pub(crate) fn pending(rx: oneshot::Receiver<Result<()>>) -> Self {
        Self {
            rx: Some(rx),
            immediate: None,
        }
    }

    pub(crate) fn ready(result: Result<()>) -> Self {
        Self {
            rx: None,
            immediate: Some(result),
        }
    }
}

impl Future for CommitHandle {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.immediate.take() {
            return Poll::Ready(r);
        }
        match self.rx.as_mut() {
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(r) => {
                    self.rx = None;
                    Poll::Ready(r.unwrap_or(Err(Error::Closed)))
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Ready(Err(Error::Closed)),
        }
    }
}

/// The committer task: one commit at a time, in order.
pub(crate) async fn run_committer(
    shared: Arc<GroupShared>,
    control: Arc<Control>,
    config: Arc<ConsumerConfig>,
    mut jobs: mpsc::UnboundedReceiver<CommitJob>,
) {
    let mut rng = Rng::new();
    while let Some(job) = jobs.recv().await {
        let result = if job.offsets.is_empty() {
            Ok(())
        } else {
            commit_job(&shared, &control, &config, &job, &mut rng).await
        };
        if let Err(e) = &result {
            if job.background || job.reply.is_closed() {
                tracing::warn!(group = %shared.group_id, error = %e, "offset commit failed");
            } else {
                tracing::debug!(group = %shared.group_id, error = %e, "offset commit failed");
            }
        }
        let _ = job.reply.send(result);
    }
}

async fn commit_job(
    shared: &GroupShared,
    control: &Control,
    config: &ConsumerConfig,
    job: &CommitJob,
    rng: &mut Rng,
) -> Result<()> {
    let group = shared.group_id.as_str();
    let timeout = config.client.request_timeout;
    let deadline = Instant::now() + timeout;
    let mut refreshed = false;
    let mut attempt = 0u32;
    loop {
        let epoch = {
            let st = shared.lock();
            if st.member_id.is_empty() || st.member_epoch <= 0 || st.member_id != job.member_id {
                return Err(Error::UnknownMember {
                    group: group.to_string(),
                    message: Some(
                        "the membership this commit was made under ended (fenced, or left); \
                         its partitions are lost"
                            .into(),
                    ),
                });
            }
            st.member_epoch
        };
        match send_commit(control, group, &job.member_id, epoch, &job.offsets).await {
            Ok((accepted, first_error)) => {
                let mut st = shared.lock();
                for (tp, offset) in accepted {
                    st.committed.insert(tp, offset);
                }
                return first_error.map_or(Ok(()), Err);
            }
            Err(Error::IllegalGeneration { .. }) if !refreshed => {
                tracing::debug!(group, epoch, "commit with a stale member epoch; refreshing");
                refreshed = true;
                shared.refresh(epoch, timeout).await;
            }
            Err(e @ Error::IllegalGeneration { .. }) => return Err(e),
            Err(e @ Error::UnknownMember { .. }) => {
                // The coordinator no longer knows this member (session expired, broker
                // restarted): the partitions are lost. Say so now rather than at the next
                // heartbeat, so the consumer stops reading what it can no longer commit.
                let mut st = shared.lock();
                if !st.lost && st.member_id == job.member_id {
                    fence(shared, &mut st, "a commit found the member unknown");
                    drop(st);
                    shared.wake_heartbeat.notify_one();
                }
                return Err(e);
            }
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                attempt += 1;
                let wait = backoff(
                    config.retry_backoff,
                    config.client.reconnect_backoff_max,
                    attempt,
                    rng,
                );
                tracing::debug!(group, error = %e, ?wait, "commit failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Heartbeats
// ------------------------------------------------------------------------------------------

/// The broker's interval before its first answer: a third of the session, 100 ms to 3 s.
fn default_interval(session: Duration) -> Duration {
    (session / 3).clamp(Duration::from_millis(100), Duration::from_secs(3))
}

/// Marks the member fenced: everything it had is lost; it rejoins (fresh id, epoch 0) once the
/// consumer has dropped its partitions.
fn fence(shared: &GroupShared, st: &mut Membership, why: &str) {
    tracing::warn!(group = %shared.group_id, member = %st.member_id, why, "fenced from the group; partitions lost, rejoining");
    st.member_id.clear();
    st.member_epoch = 0;
    st.lost = true;
    st.topics_changed = false;
    st.assignment.clear();
    st.assignment_seq += 1;
    st.committed.clear();
    shared.changed.notify_one();
}

/// The heartbeat task; see the module docs.
pub(crate) async fn run_heartbeats(shared: Arc<GroupShared>, config: Arc<ConsumerConfig>) {
    let session = config.group.session_timeout;
    let client = ClientConfig {
        request_timeout: config.client.request_timeout.min(session),
        ..config.client.clone()
    };
    let control = Control::new(client);
    let mut rng = Rng::new();
    let mut failures = 0u32;
    let mut interval = default_interval(session);
    let mut last_ok = Instant::now();
    loop {
        // Registered before the state is read, so a change made after the read wakes us.
        let notified = shared.wake_heartbeat.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        enum Next {
            Stop,
            Leave,
            Wait,
            Send(GroupHeartbeatRequest),
        }
        let next = {
            let mut st = shared.lock();
            if st.fatal.is_some() {
                Next::Stop
            } else if st.leaving {
                Next::Leave
            } else if st.lost {
                Next::Wait
            } else {
                let joining = st.member_epoch == 0;
                let send_topics = joining || st.topics_changed;
                st.topics_changed = false;
                Next::Send(GroupHeartbeatRequest {
                    group_id: shared.group_id.clone(),
                    member_id: st.member_id.clone(),
                    member_epoch: st.member_epoch,
                    session_timeout_ms: config.group.session_timeout_ms(),
                    subscribed_topics: send_topics.then(|| TopicNames {
                        names: st.topics.clone(),
                    }),
                    assignor: config.group.assignor.as_str().to_string(),
                    owned_partitions: to_wire(&st.owned),
                })
            }
        };
        let request = match next {
            Next::Stop => return,
            Next::Leave => {
                leave(&shared, &control).await;
                return;
            }
            Next::Wait => {
                // Fenced: wait for the consumer to let its partitions go (or for close).
                notified.await;
                continue;
            }
            Next::Send(request) => request,
        };
        let sent_topics = request.subscribed_topics.is_some();
        let joining = request.member_epoch == 0;
        let result = control.group_request(&shared.group_id, request).await;
        let mut ok = false;
        let wait = match result {
            Ok(response::Body::GroupHeartbeat(r)) => match r.error_code() {
                ErrorCode::None => {
                    ok = true;
                    failures = 0;
                    last_ok = Instant::now();
                    if r.heartbeat_interval_ms > 0 {
                        interval = Duration::from_millis(u64::from(r.heartbeat_interval_ms));
                    }
                    let assignment = from_wire(&r.assignment);
                    let mut st = shared.lock();
                    if joining {
                        tracing::info!(group = %shared.group_id, member = %r.member_id, epoch = r.member_epoch, "joined the group");
                    }
                    st.member_id = r.member_id;
                    st.member_epoch = r.member_epoch;
                    if assignment != st.assignment {
                        tracing::debug!(group = %shared.group_id, epoch = st.member_epoch, ?assignment, "new assignment");
                        st.assignment = assignment;
                        st.assignment_seq += 1;
                        shared.changed.notify_one();
                    }
                    interval
                }
                ErrorCode::UnknownMemberId => {
                    let mut st = shared.lock();
                    let why = r
                        .error_message
                        .unwrap_or_else(|| "the coordinator does not know this member".into());
                    fence(&shared, &mut st, &why);
                    Duration::ZERO
                }
                code if code.is_retriable() => {
                    control.group_answered(&shared.group_id, code);
                    failures += 1;
                    backoff(
                        config.client.reconnect_backoff,
                        config.client.reconnect_backoff_max,
                        failures,
                        &mut rng,
                    )
                }
                code => {
                    let e = Error::Broker {
                        code,
                        message: r.error_message,
                    };
                    tracing::error!(group = %shared.group_id, error = %e, "the coordinator refused the member");
                    shared.lock().fatal = Some(e);
                    shared.changed.notify_one();
                    shared.heartbeats.send_modify(|n| *n += 1);
                    return;
                }
            },
            Ok(_) | Err(Error::Protocol { .. }) => {
                failures += 1;
                backoff(
                    config.client.reconnect_backoff,
                    config.client.reconnect_backoff_max,
                    failures,
                    &mut rng,
                )
            }
            Err(e) if e.is_retriable() => {
                failures += 1;
                tracing::debug!(group = %shared.group_id, error = %e, "heartbeat failed; retrying");
                backoff(
                    config.client.reconnect_backoff,
                    config.client.reconnect_backoff_max,
                    failures,
                    &mut rng,
                )
            }
            Err(e) => {
                tracing::error!(group = %shared.group_id, error = %e, "heartbeats cannot go on");
                shared.lock().fatal = Some(e);
                shared.changed.notify_one();
                shared.heartbeats.send_modify(|n| *n += 1);
                return;
            }
        };
        if !ok {
            let mut st = shared.lock();
            if sent_topics && !st.lost {
                st.topics_changed = true;
            }
            // No answer for a whole session: the coordinator has removed us by now, and other
            // members may own our partitions. Give them up before rejoining.
            if !st.lost && st.member_epoch > 0 && last_ok.elapsed() >= session {
                fence(
                    &shared,
                    &mut st,
                    "no heartbeat answered within the session timeout",
                );
            }
        }
        shared.heartbeats.send_modify(|n| *n += 1);
        if !wait.is_zero() {
            // A broken connection (e.g. the broker restarted) is not waited out: the next
            // heartbeat finds out at once whether the coordinator still knows this member.
            let conn = control
                .coordinator_connection(&shared.group_id)
                .filter(|c| c.is_alive());
            let broken = async {
                match conn {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut notified => {}
                _ = broken => {}
            }
        }
    }
}

/// Leaves the group (member epoch -1), once; the partitions move to the others at once.
async fn leave(shared: &GroupShared, control: &Control) {
    let member_id = {
        let mut st = shared.lock();
        let id = std::mem::take(&mut st.member_id);
        st.member_epoch = -1;
        id
    };
    if member_id.is_empty() {
        return;
    }
    let req = GroupHeartbeatRequest {
        group_id: shared.group_id.clone(),
        member_id: member_id.clone(),
        member_epoch: -1,
        session_timeout_ms: 0,
        subscribed_topics: None,
        assignor: String::new(),
        owned_partitions: Vec::new(),
    };
    match control.group_request(&shared.group_id, req).await {
        Ok(response::Body::GroupHeartbeat(r)) if r.error_code().is_ok() => {
            tracing::info!(group = %shared.group_id, member = %member_id, "left the group");
        }
        Ok(response::Body::GroupHeartbeat(r)) => {
            tracing::warn!(group = %shared.group_id, code = %r.error_code(), "leaving the group failed; the session will expire");
        }
        Ok(_) => {
            tracing::warn!(group = %shared.group_id, "leaving the group got an unexpected answer; the session will expire");
        }
        Err(e) => {
            tracing::warn!(group = %shared.group_id, error = %e, "leaving the group failed; the session will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_groups_by_topic() {
        let set: BTreeSet<TopicPartition> = [("b", 1), ("a", 2), ("a", 0), ("b", 0)]
            .into_iter()
            .map(TopicPartition::from)
            .collect();
        let wire = to_wire(&set);
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[0].topic, "a");
        assert_eq!(wire[0].partitions, vec![0, 2]);
        assert_eq!(from_wire(&wire), set);
    }

    #[test]
    fn group_codes_become_group_errors() {
        assert!(matches!(
            group_error(ErrorCode::NonEmptyGroup, None, "g", -1),
            Error::NonEmptyGroup { .. }
        ));
        assert!(matches!(
            group_error(ErrorCode::IllegalGeneration, None, "g", 4),
            Error::IllegalGeneration {
                member_epoch: 4,
                ..
            }
        ));
        assert!(matches!(
            group_error(ErrorCode::Busy, None, "g", 1),
            Error::Broker {
                code: ErrorCode::Busy,
                ..
            }
        ));
        assert_eq!(
            default_interval(Duration::from_secs(45)),
            Duration::from_secs(3)
        );
        assert_eq!(
            default_interval(Duration::from_millis(150)),
            Duration::from_millis(100)
        );
    }

    #[tokio::test]
    async fn commit_handles_resolve() {
        assert!(CommitHandle::ready(Ok(())).await.is_ok());
        let (tx, rx) = oneshot::channel();
        drop(tx);
        assert!(matches!(
            CommitHandle::pending(rx).await,
            Err(Error::Closed)
        ));
    }
}
