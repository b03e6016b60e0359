//! Consumer groups end to end, through the client library: `Consumer::subscribe` members on a
//! real `strom serve` child process, against the delivery guarantees of issue 5: a group
//! splits the partitions and reads every record once while nobody fails; a member that dies
//! without leaving hands its partitions over after its session timeout, with duplicates only
//! after its last commit; a joining member does not stop the others; groups are independent;
//! committed offsets survive broker restarts (clean and `kill -9`); offsets can be reset; a
//! stale member epoch cannot commit.
//!
//! Each member runs in its own task, polling in a loop and recording what it receives (and
//! its rebalance callbacks) in a shared [`View`]. Waits are loops on a condition with a
//! deadline; nothing sleeps to synchronise.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strom_client::protocol::ErrorCode;
use strom_client::protocol::messages::{
    OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic, response,
};
use strom_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, Error, GroupConfig, GroupState,
    ListenerFuture, NewTopic, Producer, ProducerConfig, ProducerRecord, RebalanceListener, ResetTo,
    TopicPartition,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use support::{Broker, TestDir};

/// Longest wait for any condition.
const DEADLINE: Duration = Duration::from_secs(30);

type Tp = (String, i32);

fn tp_of(tp: &TopicPartition) -> Tp {
    (tp.topic.to_string(), tp.partition)
}

/// One record as a member received it.
#[derive(Debug, Clone)]
struct Got {
    tp: Tp,
    offset: i64,
    at: Instant,
}

/// What a member task has seen so far.
#[derive(Debug, Default)]
struct View {
    assignment: BTreeSet<Tp>,
    records: Vec<Got>,
    assigned: Vec<Tp>,
    revoked: Vec<Tp>,
    lost: Vec<Tp>,
    /// Committed offsets right after each manual commit (OffsetFetch).
    commits: Vec<BTreeMap<Tp, i64>>,
    errors: Vec<String>,
    member_epoch: i32,
}

type Shared = Arc<Mutex<View>>;

fn view(v: &Shared) -> std::sync::MutexGuard<'_, View> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the rebalance callbacks.
struct Recorder(Shared);

impl RebalanceListener for Recorder {
    fn on_partitions_assigned<'a>(
        &'a mut self,
        _: &'a mut Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        view(&self.0).assigned.extend(partitions.iter().map(tp_of));
        Box::pin(async {})
    }

    fn on_partitions_revoked<'a>(
        &'a mut self,
        _: &'a mut Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        view(&self.0).revoked.extend(partitions.iter().map(tp_of));
        Box::pin(async {})
    }

    fn on_partitions_lost<'a>(
        &'a mut self,
        _: &'a mut Consumer,
        partitions: &'a [TopicPartition],
    ) -> ListenerFuture<'a> {
        view(&self.0).lost.extend(partitions.iter().map(tp_of));
        Box::pin(async {})
    }
}

/// How a member is configured.
#[derive(Debug, Clone)]
struct Spec {
    group: String,
    topics: Vec<String>,
    session: Duration,
    auto_commit: bool,
    auto_commit_interval: Duration,
    max_poll_records: usize,
    /// Manual mode: one `commit()` once this many records were received.
    commit_after: Option<usize>,
}

impl Spec {
    fn new(group: &str, topic: &str) -> Spec {
        Spec {
            group: group.into(),
            topics: vec![topic.into()],
            session: Duration::from_secs(4),
            auto_commit: true,
            auto_commit_interval: Duration::from_millis(200),
            max_poll_records: 500,
            commit_after: None,
        }
    }
}

fn consumer_config(addr: &str, spec: &Spec) -> ConsumerConfig {
    ConsumerConfig {
        max_poll_records: spec.max_poll_records,
        fetch_max_wait: Duration::from_millis(100),
        group: GroupConfig {
            session_timeout: spec.session,
            enable_auto_commit: spec.auto_commit,
            auto_commit_interval: spec.auto_commit_interval,
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..GroupConfig::default()
        },
        ..ConsumerConfig::new(addr)
    }
}

/// A group member polling in its own task.
struct Member {
    view: Shared,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<(), Error>>,
}

impl Member {
    async fn start(addr: &str, spec: Spec) -> Member {
        let view: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut consumer = Consumer::connect(consumer_config(addr, &spec))
            .await
            .expect("connect a consumer");
        consumer.set_rebalance_listener(Recorder(view.clone()));
        let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&spec.group, &topics).expect("subscribe");
        let task = tokio::spawn(member_loop(consumer, spec, view.clone(), stop.clone()));
        Member { view, stop, task }
    }

    fn assignment(&self) -> BTreeSet<Tp> {
        view(&self.view).assignment.clone()
    }

    fn received(&self) -> usize {
        view(&self.view).records.len()
    }

    /// Stops polling and closes the consumer (commit, leave).
    async fn close(self) {
        self.stop.store(true, Ordering::Release);
        self.task
            .await
            .expect("member task")
            .expect("close the consumer");
    }

    /// Dies without leaving: the task (and with it the consumer) is dropped mid-flight.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn member_loop(
    mut consumer: Consumer,
    spec: Spec,
    view_: Shared,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    let mut committed_once = false;
    while !stop.load(Ordering::Acquire) {
        let polled = consumer.poll(Duration::from_millis(100)).await;
        let now = Instant::now();
        let assignment: BTreeSet<Tp> = consumer.assignment().iter().map(tp_of).collect();
        let epoch = consumer.group_metadata().map_or(0, |m| m.member_epoch);
        let total = {
            let mut v = view(&view_);
            v.assignment = assignment;
            v.member_epoch = epoch;
            match polled {
                Ok(records) => v.records.extend(records.iter().map(|r| Got {
                    tp: (r.topic().to_string(), r.partition()),
                    offset: r.offset(),
                    at: now,
                })),
                Err(e) => v.errors.push(e.to_string()),
            }
            v.records.len()
        };
        if let Some(n) = spec.commit_after
            && !committed_once
            && total >= n
        {
            committed_once = true;
            consumer.commit().await?;
            let committed = consumer.committed(&[]).await?;
            view(&view_)
                .commits
                .push(committed.iter().map(|(tp, o)| (tp_of(tp), *o)).collect());
        }
    }
    consumer.close().await
}

/// Waits (at most [`DEADLINE`]) for `cond`, checking every 20 ms.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the members' assignments are disjoint, cover `partitions` and have these
/// sizes (sorted).
async fn wait_for_split(members: &[&Member], partitions: usize, sizes: &[usize]) {
    wait_for("the group to settle", || {
        let sets: Vec<BTreeSet<Tp>> = members.iter().map(|m| m.assignment()).collect();
        let mut got: Vec<usize> = sets.iter().map(BTreeSet::len).collect();
        got.sort_unstable();
        let union: BTreeSet<&Tp> = sets.iter().flatten().collect();
        got == sizes && union.len() == partitions
    })
    .await;
}

async fn create_topic(admin: &Admin, name: &str, partitions: i32) {
    admin
        .create_topic(NewTopic::new(name).partitions(partitions))
        .await
        .expect("create the topic");
}

/// Produces `n` records round-robin over `partitions` partitions, waiting for every
/// acknowledgement. Returns (partition, offset) of each.
async fn produce(addr: &str, topic: &str, partitions: i32, n: usize) -> Vec<Tp> {
    produce_at(addr, topic, partitions, n, None).await
}

async fn produce_at(
    addr: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    timestamp: Option<i64>,
) -> Vec<Tp> {
    let producer = Producer::connect(ProducerConfig::new(addr))
        .await
        .expect("connect a producer");
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let value = format!("record-{i}");
        let partition = (i % partitions as usize) as i32;
        let mut record = ProducerRecord::new(topic)
            .partition(partition)
            .value(value.as_bytes());
        if let Some(ts) = timestamp {
            record = record.timestamp(ts + i as i64);
        }
        pending.push(producer.send_record(record).await.expect("send"));
    }
    let mut out = Vec::with_capacity(n);
    for d in pending {
        let meta = d.await.expect("delivered");
        out.push((topic.to_string(), meta.partition));
    }
    producer.close().await.expect("close the producer");
    out
}

/// Every (partition, offset) a topic holds: `0..end` per partition.
async fn stored(admin: &Admin, topic: &str) -> BTreeSet<(Tp, i64)> {
    let d = admin
        .describe_topics(&[topic])
        .await
        .expect("describe the topic");
    let mut out = BTreeSet::new();
    for p in &d[0].partitions {
        for o in p.log_start_offset..p.log_end_offset {
            out.insert(((topic.to_string(), p.partition), o));
        }
    }
    out
}

/// How often each (partition, offset) was received, over `members`.
fn counts(members: &[&Shared]) -> BTreeMap<(Tp, i64), usize> {
    let mut out = BTreeMap::new();
    for m in members {
        for g in &view(m).records {
            *out.entry((g.tp.clone(), g.offset)).or_default() += 1;
        }
    }
    out
}

fn total(members: &[&Shared]) -> usize {
    members.iter().map(|m| view(m).records.len()).sum()
}

fn no_errors(members: &[&Shared]) {
    for m in members {
        let v = view(m);
        assert!(v.errors.is_empty(), "poll errors: {:?}", v.errors);
    }
}

fn start_broker(dir: &TestDir) -> Broker {
    Broker::start(&dir.data(), &["--group-min-session-timeout-ms", "1000"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_split_six_partitions_and_read_every_record_once() {
    let dir = TestDir::new();
    let broker = start_broker(&dir);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr)).await.unwrap();
    create_topic(&admin, "orders", 6).await;
    // Records before the group exists: the first member reads some of them and gives part of
    // its partitions up as the others join (committing before it does).
    produce(&addr, "orders", 6, 300).await;

    let a = Member::start(&addr, Spec::new("billing", "orders")).await;
    let b = Member::start(&addr, Spec::new("billing", "orders")).await;
    let c = Member::start(&addr, Spec::new("billing", "orders")).await;
    wait_for_split(&[&a, &b, &c], 6, &[2, 2, 2]).await;
    let g = admin.describe_group("billing").await.unwrap();
    assert_eq!(g.members.len(), 3);
    assert_eq!(g.assignor, "range");
    for m in &g.members {
        assert_eq!(m.assignment.len(), 2, "{m:?}");
    }

    produce(&addr, "orders", 6, 300).await;
    let all = stored(&admin, "orders").await;
    assert_eq!(all.len(), 600);
    let views = [&a.view, &b.view, &c.view];
    wait_for("every record to arrive", || total(&views) >= 600).await;
    let got = counts(&views);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), all);
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records read twice: {twice:?}");
    no_errors(&views);
    // Each member read only what it was assigned at the end (nobody fails, so after the
    // initial split nothing moved) plus what it read before giving partitions up.
    for m in [&a, &b, &c] {
        let v = view(&m.view);
        for r in v.records.iter().filter(|r| !v.assignment.contains(&r.tp)) {
            assert!(
                v.revoked.contains(&r.tp),
                "{r:?} of a partition never assigned"
            );
        }
    }

    // close() leaves at once: c's partitions move long before its 30 s session could expire.
    let d = Member::start(
        &addr,
        Spec {
            session: Duration::from_secs(30),
            ..Spec::new("billing", "orders")
        },
    )
    .await;
    wait_for_split(&[&a, &b, &c, &d], 6, &[1, 1, 2, 2]).await;
    let closing = Instant::now();
    d.close().await;
    wait_for_split(&[&a, &b, &c], 6, &[2, 2, 2]).await;
    assert!(
        closing.elapsed() < Duration::from_secs(15),
        "partitions moved only after {:?}",
        closing.elapsed()
    );
    for m in [a, b, c] {
        m.close().await;
    }
    let listed = admin.list_groups().await.unwrap();
    let billing = listed.iter().find(|g| g.group_id == "billing").unwrap();
    assert_eq!((billing.state, billing.members), (GroupState::Empty, 0));
    // Everything read was committed by the closes.
    let committed = admin.committed_offsets("billing").await.unwrap();
    assert_eq!(committed.len(), 6);
    assert!(committed.values().all(|&o| o == 100), "{committed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_hands_over_after_its_session_with_duplicates_only_after_its_last_commit() {
    let dir = TestDir::new();
    let broker = start_broker(&dir);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr)).await.unwrap();
    create_topic(&admin, "orders", 6).await;
    // Survivors with a longer session than the victim's, so that a slow machine does not
    // expire them too.
    let a = Member::start(&addr, Spec::new("g", "orders")).await;
    let b = Member::start(&addr, Spec::new("g", "orders")).await;
    let victim = Member::start(
        &addr,
        Spec {
            session: Duration::from_millis(1500),
            auto_commit: false,
            max_poll_records: 10,
            commit_after: Some(40),
            ..Spec::new("g", "orders")
        },
    )
    .await;
    wait_for_split(&[&a, &b, &victim], 6, &[2, 2, 2]).await;
    let victims_partitions = victim.assignment();

    produce(&addr, "orders", 6, 300).await;
    let views = [&a.view, &b.view, &victim.view];
    wait_for("every record to arrive", || total(&views) >= 300).await;
    wait_for("the victim's commit", || {
        !view(&victim.view).commits.is_empty()
    })
    .await;
    // The victim read all of its 100 records but committed only once, after 40.
    assert_eq!(victim.received(), 100);
    let last_commit: BTreeMap<Tp, i64> = {
        let v = view(&victim.view);
        victims_partitions
            .iter()
            .map(|tp| (tp.clone(), v.commits[0].get(tp).copied().unwrap_or(0)))
            .collect()
    };
    let victim_records: Vec<Got> = view(&victim.view).records.clone();
    let killed = Instant::now();
    victim.kill().await;
    // Until its session expires, the dead member is still one.
    assert_eq!(admin.describe_group("g").await.unwrap().members.len(), 3);

    // After its session the survivors take its partitions and re-read from its commit.
    wait_for_split(&[&a, &b], 6, &[3, 3]).await;
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "the partitions moved after {:?}, before the session could expire",
        killed.elapsed()
    );
    produce(&addr, "orders", 6, 60).await;
    let survivors = [&a.view, &b.view];
    let redo: usize = last_commit.values().map(|o| 50 - *o as usize).sum();
    wait_for("the takeover to read everything", || {
        total(&survivors) >= 200 + redo + 60
    })
    .await;

    let all = stored(&admin, "orders").await;
    let mut got = counts(&survivors);
    for r in &victim_records {
        *got.entry((r.tp.clone(), r.offset)).or_default() += 1;
    }
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "every record was processed at least once"
    );
    let duplicates: BTreeSet<(Tp, i64)> = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k.clone())
        .collect();
    let after_commit: BTreeSet<(Tp, i64)> = victim_records
        .iter()
        .filter(|r| r.offset >= last_commit[&r.tp])
        .map(|r| (r.tp.clone(), r.offset))
        .collect();
    assert_eq!(
        duplicates, after_commit,
        "exactly the victim's records after its last commit are read twice"
    );
    assert!(got.values().all(|&n| n <= 2));
    assert!(!duplicates.is_empty(), "the victim read past its commit");
    no_errors(&survivors);
    // The survivors resumed exactly at the victim's committed offsets.
    for (tp, commit) in &last_commit {
        let first = survivors
            .iter()
            .flat_map(|v| view(v).records.clone())
            .filter(|r| &r.tp == tp)
            .map(|r| r.offset)
            .min();
        assert_eq!(first, Some(*commit), "{tp:?}");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_member_joins_under_load_and_the_others_keep_receiving() {
    let dir = TestDir::new();
    let broker = start_broker(&dir);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr)).await.unwrap();
    create_topic(&admin, "orders", 6).await;
    let a = Member::start(&addr, Spec::new("g", "orders")).await;
    let b = Member::start(&addr, Spec::new("g", "orders")).await;
    let c = Member::start(&addr, Spec::new("g", "orders")).await;
    wait_for_split(&[&a, &b, &c], 6, &[2, 2, 2]).await;
    let before: Vec<BTreeSet<Tp>> = [&a, &b, &c].iter().map(|m| m.assignment()).collect();
    // Callbacks of the initial split are not part of what is checked below.
    let revoked_before: Vec<usize> = [&a, &b, &c]
        .iter()
        .map(|m| view(&m.view).revoked.len())
        .collect();

    // Load: one record per partition every few ms, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let producer = Producer::connect(ProducerConfig::new(&addr)).await.unwrap();
            let mut sent = 0usize;
            while !stop.load(Ordering::Acquire) {
                let mut pending = Vec::new();
                for p in 0..6 {
                    let record = ProducerRecord::new("orders").partition(p).value(b"load");
                    pending.push(producer.send_record(record).await.unwrap());
                }
                for d in pending {
                    d.await.unwrap();
                }
                sent += 6;
                // Pacing, not synchronisation.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            producer.close().await.unwrap();
            sent
        })
    };
    let views = [&a.view, &b.view, &c.view];
    wait_for("records to flow", || total(&views) >= 300).await;

    let joined = Instant::now();
    let d = Member::start(&addr, Spec::new("g", "orders")).await;
    wait_for_split(&[&a, &b, &c, &d], 6, &[1, 1, 2, 2]).await;
    let settled = loop {
        let g = admin.describe_group("g").await.unwrap();
        if g.state == GroupState::Stable {
            break Instant::now();
        }
        assert!(joined.elapsed() < DEADLINE, "the group never became stable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_for("the new member to receive", || d.received() > 0).await;
    stop.store(true, Ordering::Release);
    let sent = load.await.unwrap();
    let all_views = [&a.view, &b.view, &c.view, &d.view];
    wait_for("every record to arrive", || total(&all_views) >= sent).await;

    for ((m, had), skip) in [&a, &b, &c].iter().zip(&before).zip(revoked_before) {
        let now = m.assignment();
        assert!(now.is_subset(had), "{now:?} is not a subset of {had:?}");
        assert!(!now.is_empty(), "every old member keeps a partition");
        let v = view(&m.view);
        let revoked = &v.revoked[skip..];
        // Kept partitions were never revoked, and were read during the rebalance.
        for tp in &now {
            assert!(!revoked.contains(tp), "{tp:?} was revoked but kept");
            let during = v
                .records
                .iter()
                .filter(|r| &r.tp == tp && r.at >= joined && r.at <= settled)
                .count();
            assert!(
                during > 0,
                "no record of kept {tp:?} arrived while the group rebalanced ({:?})",
                settled - joined
            );
        }
        // Only what moved to the new member was revoked.
        let moved: BTreeSet<Tp> = had.difference(&now).cloned().collect();
        assert_eq!(revoked.iter().cloned().collect::<BTreeSet<_>>(), moved);
    }
    // Nobody failed: every record exactly once, handovers included.
    let got = counts(&all_views);
    let all = stored(&admin, "orders").await;
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), all);
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records read twice: {twice:?}");
    no_errors(&all_views);
    for m in [a, b, c, d] {
        m.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_read_every_record() {
    let dir = TestDir::new();
    let broker = start_broker(&dir);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr)).await.unwrap();
    create_topic(&admin, "orders", 4).await;
    let billing = [
        Member::start(&addr, Spec::new("billing", "orders")).await,
        Member::start(&addr, Spec::new("billing", "orders")).await,
    ];
    let email = Member::start(&addr, Spec::new("email", "orders")).await;
    wait_for_split(&[&billing[0], &billing[1]], 4, &[2, 2]).await;
    wait_for_split(&[&email], 4, &[4]).await;
    produce(&addr, "orders", 4, 200).await;
    let all = stored(&admin, "orders").await;
    for views in [vec![&billing[0].view, &billing[1].view], vec![&email.view]] {
        wait_for("a group to read everything", || total(&views) >= 200).await;
        let got = counts(&views);
        assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), all);
        assert!(got.values().all(|&n| n == 1));
        no_errors(&views);
    }
    let [b0, b1] = billing;
    for m in [b0, b1, email] {
        m.close().await;
    }
    for g in ["billing", "email"] {
        let committed = admin.committed_offsets(g).await.unwrap();
        assert_eq!(committed.values().sum::<i64>(), 200, "{g}: {committed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_broker_restarts_and_consumers_resume_without_gaps() {
    let dir = TestDir::new();
    let mut broker = start_broker(&dir);
    let addr = broker.addr;
    let a = addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&a)).await.unwrap();
    create_topic(&admin, "orders", 3).await;
    let member = Member::start(
        &a,
        Spec {
            auto_commit_interval: Duration::from_millis(100),
            ..Spec::new("g", "orders")
        },
    )
    .await;
    let mut expected = 0;
    for (restarts, crash) in [false, true].into_iter().enumerate() {
        produce(&a, "orders", 3, 60).await;
        expected += 60;
        wait_for("the member to read everything", || {
            member.received() >= expected
        })
        .await;
        let per_partition = (expected / 3) as i64;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let c = admin.committed_offsets("g").await.unwrap();
            if c.len() == 3 && c.values().all(|&o| o == per_partition) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "auto-commit never caught up: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if crash {
            broker.kill9();
        } else {
            broker.stop();
        }
        drop(broker);
        broker = Broker::start_at(
            &dir.data(),
            addr,
            &["--group-min-session-timeout-ms", "1000"],
        );
        let admin = Admin::connect(ClientConfig::new(&a)).await.unwrap();
        let c = admin.committed_offsets("g").await.unwrap();
        assert_eq!(c.len(), 3, "crash={crash}: {c:?}");
        assert!(
            c.values().all(|&o| o == per_partition),
            "crash={crash}: {c:?}"
        );
        // Membership is not persisted: the member finds itself unknown, drops its partitions
        // and rejoins by itself, getting them back at the committed offsets. (Records it read
        // between the restart and finding out would be read again: none here, since nothing
        // is produced until it is back.)
        let rounds = restarts + 2;
        wait_for("the member to rejoin", || {
            let v = view(&member.view);
            v.lost.len() >= 3 * (rounds - 1) && v.assigned.len() >= 3 * rounds
        })
        .await;
    }
    // It resumed at the committed offsets: no gap, and no record read twice (everything read
    // had been committed before each restart).
    produce(&a, "orders", 3, 60).await;
    expected += 60;
    wait_for("the member to read after the restarts", || {
        member.received() >= expected
    })
    .await;
    let admin = Admin::connect(ClientConfig::new(&a)).await.unwrap();
    let all = stored(&admin, "orders").await;
    assert_eq!(all.len(), expected);
    let got = counts(&[&member.view]);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), all);
    assert!(got.values().all(|&n| n == 1), "records read twice");
    {
        let v = view(&member.view);
        assert!(!v.lost.is_empty(), "the restarts fenced the member");
        for tp in v.records.iter().map(|r| &r.tp).collect::<BTreeSet<_>>() {
            let offsets: Vec<i64> = v
                .records
                .iter()
                .filter(|r| &r.tp == tp)
                .map(|r| r.offset)
                .collect();
            let in_order: Vec<i64> = (0..offsets.len() as i64).collect();
            assert_eq!(offsets, in_order, "{tp:?} in offset order, without gaps");
        }
    }
    member.close().await;
    // A new member of the group starts where the group is: nothing to read again.
    let again = Member::start(&a, Spec::new("g", "orders")).await;
    wait_for_split(&[&again], 3, &[3]).await;
    produce(&a, "orders", 3, 3).await;
    wait_for("the new member to read the new records", || {
        again.received() >= 3
    })
    .await;
    let got: BTreeSet<i64> = view(&again.view).records.iter().map(|r| r.offset).collect();
    assert_eq!(got, BTreeSet::from([(expected / 3) as i64]));
    again.close().await;
}

/// Polls every consumer in turn until `cond` holds, collecting what each returns.
async fn drive(
    consumers: &mut [&mut Consumer],
    got: &mut [Vec<(Tp, i64)>],
    what: &str,
    mut cond: impl FnMut(&[&mut Consumer], &[Vec<(Tp, i64)>]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !cond(consumers, got) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        for (c, out) in consumers.iter_mut().zip(got.iter_mut()) {
            let records = c.poll(Duration::from_millis(20)).await.expect("poll");
            out.extend(
                records
                    .iter()
                    .map(|r| ((r.topic().to_string(), r.partition()), r.offset())),
            );
        }
    }
}

async fn group_consumer(addr: &str, group: &str) -> Consumer {
    let mut c = Consumer::connect(consumer_config(addr, &Spec::new(group, "events")))
        .await
        .unwrap();
    c.subscribe(group, &["events"]).unwrap();
    c
}

/// Reads with a fresh member of `group` until `n` records arrived; closes it.
async fn read_group(addr: &str, group: &str, n: usize) -> Vec<(Tp, i64)> {
    let mut c = group_consumer(addr, group).await;
    let mut got = vec![Vec::new()];
    drive(&mut [&mut c], &mut got, "a replay", |_, g| g[0].len() >= n).await;
    c.close().await.unwrap();
    got.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_offsets_replays_from_earliest_or_a_timestamp() {
    let dir = TestDir::new();
    let broker = start_broker(&dir);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr)).await.unwrap();
    create_topic(&admin, "events", 2).await;
    let now = support::now_ms();
    let (old, new) = (now - 600_000, now - 300_000);
    produce_at(&addr, "events", 2, 20, Some(old)).await;
    produce_at(&addr, "events", 2, 20, Some(new)).await;

    let mut c = group_consumer(&addr, "replay").await;
    let mut got = vec![Vec::new()];
    drive(&mut [&mut c], &mut got, "the first read", |_, g| {
        g[0].len() >= 40
    })
    .await;
    c.commit().await.unwrap();
    let g = admin.describe_group("replay").await.unwrap();
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].assignment.len(), 2);
    assert!(
        g.offsets
            .iter()
            .all(|o| o.committed_offset == 20 && o.lag == 0)
    );

    // A group with members cannot be reset or deleted.
    let busy = admin
        .reset_offsets("replay", "events", ResetTo::Earliest)
        .await;
    assert!(matches!(busy, Err(Error::NonEmptyGroup { .. })), "{busy:?}");
    let busy = admin.delete_group("replay").await;
    assert!(matches!(busy, Err(Error::NonEmptyGroup { .. })), "{busy:?}");
    c.close().await.unwrap();

    // Earliest: everything again.
    let reset = admin
        .reset_offsets("replay", "events", ResetTo::Earliest)
        .await
        .unwrap();
    assert!(reset.values().all(|&o| o == 0), "{reset:?}");
    let replay = read_group(&addr, "replay", 40).await;
    assert_eq!(replay.len(), 40);
    assert_eq!(replay.iter().collect::<BTreeSet<_>>().len(), 40);

    // A timestamp: from the first record at or after it (the second half).
    let reset = admin
        .reset_offsets("replay", "events", ResetTo::Timestamp(new))
        .await
        .unwrap();
    assert!(reset.values().all(|&o| o == 10), "{reset:?}");
    assert_eq!(admin.committed_offsets("replay").await.unwrap(), reset);
    let replay = read_group(&addr, "replay", 20).await;
    let offsets: BTreeSet<i64> = replay.iter().map(|(_, o)| *o).collect();
    assert_eq!(replay.len(), 20);
    assert_eq!(offsets, (10..20).collect());

    // Offsets are clamped to the stored range; a time after every record is the end.
    let reset = admin
        .reset_offsets("replay", "events", ResetTo::Offset(1000))
        .await
        .unwrap();
    assert!(reset.values().all(|&o| o == 20), "{reset:?}");
    admin
        .reset_offsets("replay", "events", ResetTo::Offset(5))
        .await
        .unwrap();
    let g = admin.describe_group("replay").await.unwrap();
    assert_eq!(g.state, GroupState::Empty);
    assert!(
        g.offsets
            .iter()
            .all(|o| o.committed_offset == 5 && o.lag == 15)
    );
    let reset = admin
        .reset_offsets("replay", "events", ResetTo::Timestamp(now + 600_000))
        .await
        .unwrap();
    assert!(reset.values().all(|&o| o == 20), "{reset:?}");
    let reset = admin
        .reset_offsets("replay", "events", ResetTo::Latest)
        .await
        .unwrap();
    assert!(reset.values().all(|&o| o == 20), "{reset:?}");

    admin.delete_group("replay").await.unwrap();
    assert!(matches!(
        admin.describe_group("replay").await,
        Err(Error::GroupNotFound { .. })
    ));
    assert!(matches!(
        admin.delete_group("replay").await,
        Err(Error::GroupNotFound { .. })
    ));
    assert!(admin.committed_offsets("replay").await.unwrap().is_empty());
}

fn raw_commit(
    c: &mut support::Client,
    member: &str,
    epoch: i32,
    partition: i32,
    offset: i64,
) -> ErrorCode {
    match c
        .call(OffsetCommitRequest {
            group_id: "fence".into(),
            member_id: member.into(),
            member_epoch: epoch,
            topics: vec![OffsetCommitTopic {
                name: "events".into(),
                partitions: vec![OffsetCommitPartition {
                    partition,
                    offset,
                    metadata: None,
                }],
            }],
        })
        .body
    {
        Some(response::Body::OffsetCommit(r)) => r.error_code(),
        other => panic!("expected a commit response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_a_stale_member_epoch_is_refused() {
    let dir = TestDir::new();
    let broker = start_broker(&dir);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr)).await.unwrap();
    create_topic(&admin, "events", 2).await;
    produce(&addr, "events", 2, 10).await;

    let mut first = group_consumer(&addr, "fence").await;
    let mut got = vec![Vec::new()];
    drive(
        &mut [&mut first],
        &mut got,
        "the first member's partitions",
        |c, _| c[0].assignment().len() == 2,
    )
    .await;
    let before = first.group_metadata().unwrap();
    assert!(before.member_epoch > 0 && !before.member_id.is_empty());

    // A second member: the first gives a partition up and moves to a newer epoch.
    let mut second = group_consumer(&addr, "fence").await;
    let mut got = vec![Vec::new(), Vec::new()];
    drive(
        &mut [&mut first, &mut second],
        &mut got,
        "the split",
        |c, _| {
            c[0].assignment().len() == 1
                && c[1].assignment().len() == 1
                && c[0].group_metadata().unwrap().member_epoch > before.member_epoch
        },
    )
    .await;
    let after = first.group_metadata().unwrap();
    assert_eq!(after.member_id, before.member_id);
    let kept = first.assignment()[0].partition;

    let mut raw = broker.client();
    assert_eq!(
        raw_commit(&mut raw, &before.member_id, before.member_epoch, kept, 3),
        ErrorCode::IllegalGeneration,
        "the old epoch is refused"
    );
    assert_eq!(
        raw_commit(&mut raw, "not-a-member", after.member_epoch, kept, 3),
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        raw_commit(&mut raw, &after.member_id, after.member_epoch, kept, 3),
        ErrorCode::None
    );
    // The library commits with the current epoch; only assigned partitions may be committed.
    let mine = first.assignment()[0].clone();
    first.commit_offsets(&[(mine.clone(), 4)]).await.unwrap();
    assert_eq!(admin.committed_offsets("fence").await.unwrap()[&mine], 4);
    let theirs = second.assignment()[0].clone();
    assert!(matches!(
        first.commit_offsets(&[(theirs, 4)]).await,
        Err(Error::NotAssigned { .. })
    ));
    first.close().await.unwrap();
    second.close().await.unwrap();
    // Not subscribed: no group to commit to.
    let plain = Consumer::connect(ConsumerConfig::new(&addr)).await.unwrap();
    assert!(matches!(plain.commit().await, Err(Error::NotSubscribed)));
}
