//! [`Admin`]: topic administration and offset lookups (CreateTopics, DeleteTopics, Metadata,
//! DescribeConfigs, AlterConfigs, ListOffsets), and consumer group administration (ListGroups,
//! DescribeGroups, DeleteGroups, OffsetFetch, and offset resets with ListOffsets and an admin
//! OffsetCommit), queue group administration (DescribeQueueGroups, ResetQueueGroup), and the
//! cluster's state (DescribeCluster), over the control connection.
//!
//! Batch calls return one result per item (each topic succeeds or fails on its own, as on the
//! wire); the single-item helpers turn that into a plain `Result`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use strom_protocol::ErrorCode;
use strom_protocol::messages::{
    AlterConfigsRequest, AlterableTopic, CreatableTopic, CreateTopicsRequest, DeleteGroupsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, DescribeGroupsRequest, DescribeQueueGroupsRequest,
    ListGroupsRequest, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic, MetadataRequest,
    OffsetSpec as WireSpec, ResetQueueGroupRequest, request, reset_queue_group_request, response,
};

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::consumer::group::{fetch_committed, from_wire, group_error, send_commit};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::record::TopicPartition;

/// A topic to create.
///
/// ```
/// use strom_client::NewTopic;
///
/// let topic = NewTopic::new("orders").partitions(12).config("retention.ms", "604800000");
/// assert_eq!(topic.partitions, Some(12));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Name (1 to 249 of `a-z A-Z 0-9 . _ -`).
    pub name: String,
    /// Partition count; `None` takes the broker's default.
    pub partitions: Option<i32>,
    /// Replicas per partition; `None` takes the broker's default (1). Until partition data is
    /// replicated, brokers accept only 1.
    pub replication_factor: Option<i32>,
    /// Topic configs that differ from the broker's defaults (Kafka names, string values).
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with the broker's default partition count and configs.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: None,
            replication_factor: None,
            configs: BTreeMap::new(),
        }
    }

    /// Sets the replication factor.
    #[must_use]
    pub fn replication_factor(mut self, replication_factor: i32) -> Self {
        self.replication_factor = Some(replication_factor);
        self
    }

    /// Sets the partition count.
    #[must_use]
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Sets one config.
    #[must_use]
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(name.into(), value.into());
        self
    }
}

/// A topic as Metadata describes it.
///
/// ```no_run
/// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
/// for topic in admin.describe_topics(&["orders"]).await? {
///     for p in &topic.partitions {
///         println!("{}-{}: {}..{}", topic.name, p.partition, p.log_start_offset, p.log_end_offset);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// One of the broker's own topics.
    pub internal: bool,
    /// Partitions, by index.
    pub partitions: Vec<PartitionDescription>,
}

/// One partition of a [`TopicDescription`].
///
/// ```
/// # let p = strom_client::PartitionDescription { partition: 0, leader: 0, leader_epoch: 0, replicas: vec![0], isr: vec![0], log_start_offset: 0, log_end_offset: 10, size_bytes: 0, error: None };
/// let stored = p.log_end_offset - p.log_start_offset;
/// # assert_eq!(stored, 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Index.
    pub partition: i32,
    /// Node id of the leader; -1 when none.
    pub leader: i32,
    /// The leader's epoch.
    pub leader_epoch: i32,
    /// Node ids of every replica, preferred leader first.
    pub replicas: Vec<i32>,
    /// Node ids of the in-sync replicas.
    pub isr: Vec<i32>,
    /// First offset still stored (-1 from a broker that does not hold the partition).
    pub log_start_offset: i64,
    /// Offset the next record gets.
    pub log_end_offset: i64,
    /// Bytes the partition's log takes on disk (0 from a broker that does not report it).
    pub size_bytes: u64,
    /// Why the partition is unavailable, if it is.
    pub error: Option<ErrorCode>,
}

/// Where a config value comes from.
///
/// ```
/// assert_ne!(strom_client::ConfigSource::Topic, strom_client::ConfigSource::Default);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigSource {
    /// Set on the topic.
    Topic,
    /// The broker's configured default.
    Broker,
    /// strom's built-in default.
    Default,
    /// The broker did not say.
    Unknown,
}

/// One topic config, as DescribeConfigs returns it.
///
/// ```no_run
/// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
/// for c in admin.describe_configs("orders").await? {
///     println!("{} = {} ({:?})", c.name, c.value, c.source);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Name, e.g. `retention.ms`.
    pub name: String,
    /// Effective value.
    pub value: String,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// AlterConfigs cannot change it.
    pub read_only: bool,
}

/// Which offset to look up.
///
/// ```
/// use strom_client::OffsetSpec;
/// let specs = [OffsetSpec::Earliest, OffsetSpec::Latest, OffsetSpec::Timestamp(1_700_000_000_000)];
/// # assert_eq!(specs.len(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset (oldest stored record).
    Earliest,
    /// The log end offset (the offset the next record gets).
    Latest,
    /// The first offset whose record timestamp is at or after this (ms since the epoch).
    Timestamp(i64),
}

/// An offset found by [`Admin::list_offsets`].
///
/// ```no_run
/// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
/// use strom_client::{OffsetSpec, TopicPartition};
/// let found = admin.list_offsets(&[(TopicPartition::new("orders", 0), OffsetSpec::Latest)]).await?;
/// println!("end of orders-0: {}", found[0].offset);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedOffset {
    /// The partition.
    pub topic_partition: TopicPartition,
    /// The offset; -1 when no record has a timestamp at or after the one asked for.
    pub offset: i64,
    /// With [`OffsetSpec::Timestamp`], the timestamp of the record at `offset`; -1 otherwise.
    pub timestamp: i64,
}

/// The state of a consumer group, as the coordinator reports it.
///
/// ```
/// use strom_client::GroupState;
/// assert_eq!(GroupState::parse("stable"), GroupState::Stable);
/// assert_eq!(GroupState::Reconciling.to_string(), "reconciling");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupState {
    /// No members (it may still have committed offsets).
    Empty,
    /// Members are being walked towards a new assignment: some still have partitions to give
    /// up or to receive.
    Reconciling,
    /// Every member has its target assignment.
    Stable,
    /// A state this client does not know.
    Unknown,
}

impl GroupState {
    /// Parses the wire name (`empty`, `reconciling`, `stable`).
    pub fn parse(s: &str) -> Self {
        match s {
            "empty" => GroupState::Empty,
            "reconciling" => GroupState::Reconciling,
            "stable" => GroupState::Stable,
            _ => GroupState::Unknown,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Reconciling => "reconciling",
            GroupState::Stable => "stable",
            GroupState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One group of [`Admin::list_groups`].
///
/// ```no_run
/// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
/// for g in admin.list_groups().await? {
///     println!("{} {} ({} members)", g.group_id, g.state, g.members);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group_id: String,
    /// Its state.
    pub state: GroupState,
    /// How many members it has.
    pub members: u32,
}

/// A group as [`Admin::describe_group`] describes it.
///
/// ```no_run
/// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
/// let g = admin.describe_group("billing").await?;
/// println!("{} epoch {} ({}), {} members", g.state, g.epoch, g.assignor, g.members.len());
/// for o in &g.offsets {
///     println!("{}: committed {} of {}, lag {}", o.topic_partition, o.committed_offset, o.log_end_offset, o.lag);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// Its state.
    pub state: GroupState,
    /// The group epoch (bumped by every membership, subscription or partition change).
    pub epoch: i32,
    /// The assignment strategy (`range` or `roundrobin`).
    pub assignor: String,
    /// The members, with their assignments.
    pub members: Vec<MemberDescription>,
    /// Every committed offset of the group, with the partition's log end and the lag.
    pub offsets: Vec<GroupOffset>,
}

/// A member of a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The id the coordinator gave it.
    pub member_id: String,
    /// Its epoch (behind the group's while it still has partitions to give up).
    pub member_epoch: i32,
    /// The topics it subscribes to.
    pub subscribed_topics: Vec<String>,
    /// The partitions assigned to it, sorted.
    pub assignment: Vec<TopicPartition>,
    /// Its session timeout.
    pub session_timeout: Duration,
}

/// A committed offset of a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    /// The partition.
    pub topic_partition: TopicPartition,
    /// The committed offset: the next record the group reads.
    pub committed_offset: i64,
    /// The partition's log end offset; -1 when the partition no longer exists.
    pub log_end_offset: i64,
    /// `log_end_offset - committed_offset` (-1 when the partition no longer exists).
    pub lag: i64,
    /// The metadata stored with the commit.
    pub metadata: Option<String>,
}

/// Where [`Admin::reset_offsets`] moves a group's committed offsets.
///
/// ```
/// use strom_client::ResetTo;
/// let replay_last_hour = ResetTo::Timestamp(1_700_000_000_000 - 3_600_000);
/// # let _ = (replay_last_hour, ResetTo::Earliest, ResetTo::Latest, ResetTo::Offset(0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The oldest stored record: the group replays everything.
    Earliest,
    /// The log end: the group skips everything stored.
    Latest,
    /// This offset in every partition, clamped to the partition's stored range.
    Offset(i64),
    /// The first record at or after this time (ms since the epoch); the log end for a
    /// partition with no such record.
    Timestamp(i64),
}

/// A queue group as [`Admin::describe_queue_groups`] describes it.
///
/// ```no_run
/// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
/// for g in admin.describe_queue_groups(&["mailer"]).await? {
///     println!("{}: {} members, max.attempts {}", g.group_id, g.members.len(), g.settings["max.attempts"]);
///     for p in &g.partitions {
///         println!("{}-{}: {} ready, {} in flight", p.topic, p.partition, p.ready, p.in_flight);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGroupDescription {
    /// The group id.
    pub group_id: String,
    /// Every setting of the group (`lease.ms`, `max.attempts`, `backoff`, ...), by name.
    pub settings: BTreeMap<String, String>,
    /// Its members, sorted by id.
    pub members: Vec<QueueMemberDescription>,
    /// Its queue-partitions, sorted by topic and partition.
    pub partitions: Vec<QueuePartitionDescription>,
}

/// A member of a [`QueueGroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMemberDescription {
    /// The id the member made up.
    pub member_id: String,
    /// The topics it takes records from.
    pub topics: Vec<String>,
    /// Records it holds.
    pub in_flight: u64,
}

/// One queue-partition of a [`QueueGroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePartitionDescription {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// First offset not finished (acknowledged or dead-lettered).
    pub start_offset: i64,
    /// First offset never handed out.
    pub next_offset: i64,
    /// The partition's log end offset (-1 when the partition no longer exists).
    pub log_end_offset: i64,
    /// Records that may be handed out now (including those never handed out).
    pub ready: u64,
    /// Records waiting for a time: failed ones for their backoff, and records produced with a
    /// delivery time still ahead.
    pub delayed: u64,
    /// Records held by members.
    pub in_flight: u64,
    /// Records being written to the dead-letter topic.
    pub dead_lettering: u64,
    /// Age of the oldest unfinished record (by its timestamp), in ms; `None` when there is none.
    pub oldest_unacked_ms: Option<i64>,
    /// Records acked since the group began taking this partition.
    pub acked: u64,
    /// Records dead-lettered since then.
    pub dead_lettered: u64,
}

/// Where [`Admin::reset_queue_group`] moves a queue group's partitions of a topic.
///
/// ```
/// use strom_client::QueueResetTo;
/// let skip_the_backlog = QueueResetTo::Latest;
/// # let _ = (skip_the_backlog, QueueResetTo::Earliest, QueueResetTo::Time(1_700_000_000_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueResetTo {
    /// The oldest stored record: every record is handed out again, as new.
    Earliest,
    /// The log end: everything stored counts as done.
    Latest,
    /// The first record at or after this time (ms since the epoch); the log end for a
    /// partition with no such record.
    Time(i64),
}

/// One partition's ListOffsets answer (internal: per-partition errors kept apart).
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) tp: TopicPartition,
    pub(crate) result: Result<(i64, i64)>,
}

/// Looks offsets up at each partition's leader (one request per leader); the answers follow
/// `queries`' order. A partition whose leader is unknown or cannot be reached gets that error
/// in its [`Listed`]; a leader that answers `NOT_LEADER_OR_FOLLOWER` makes the client forget
/// the topic's leaders, so the next call asks again.
///
/// # Errors
/// A failure that concerns every partition (e.g. no broker reachable for metadata).
pub(crate) async fn list_offsets_routed(
    control: &Control,
    queries: &[(TopicPartition, OffsetSpec)],
) -> Result<Vec<Listed>> {
    let mut by_leader: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let mut out: Vec<Option<Listed>> = (0..queries.len()).map(|_| None).collect();
    for (i, (tp, _)) in queries.iter().enumerate() {
        match control.leader(&tp.topic, tp.partition).await {
            Ok((_, addr)) => by_leader.entry(addr).or_default().push(i),
            Err(e @ Error::Broker { .. }) => {
                out[i] = Some(Listed {
                    tp: tp.clone(),
                    result: Err(e),
                })
            }
            Err(e) => return Err(e),
        }
    }
    for (addr, indexes) in by_leader {
        let subset: Vec<(TopicPartition, OffsetSpec)> =
            indexes.iter().map(|&i| queries[i].clone()).collect();
        let listed = match control.connection_at(&addr).await {
            Ok(conn) => list_offsets_on(&conn, &subset).await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(listed) => {
                for (i, l) in indexes.into_iter().zip(listed) {
                    if let Err(Error::Broker { code, .. }) = &l.result
                        && matches!(
                            code,
                            ErrorCode::NotLeaderOrFollower | ErrorCode::LeaderNotAvailable
                        )
                    {
                        control.routes().forget(&l.tp.topic);
                    }
                    out[i] = Some(l);
                }
            }
            Err(e) => {
                for i in indexes {
                    control.routes().forget(&queries[i].0.topic);
                    out[i] = Some(Listed {
                        tp: queries[i].0.clone(),
                        result: Err(e.clone()),
                    });
                }
            }
        }
    }
    out.into_iter()
        .zip(queries)
        .map(|(l, (tp, _))| {
            l.ok_or_else(|| Error::Protocol {
                addr: String::new(),
                reason: format!("no ListOffsets answer for {tp}"),
            })
        })
        .collect()
}

/// Runs one ListOffsets request on `conn`; the answers follow `queries`' order.
///
/// # Errors
/// The request's failure; per-partition errors are in each [`Listed`].
pub(crate) async fn list_offsets_on(
    conn: &Connection,
    queries: &[(TopicPartition, OffsetSpec)],
) -> Result<Vec<Listed>> {
    let mut topics: Vec<ListOffsetsTopic> = Vec::new();
    for (tp, spec) in queries {
        let (spec, timestamp_ms) = match spec {
            OffsetSpec::Earliest => (WireSpec::Earliest, 0),
            OffsetSpec::Latest => (WireSpec::Latest, 0),
            OffsetSpec::Timestamp(t) => (WireSpec::Timestamp, *t),
        };
        let p = ListOffsetsPartition {
            partition: tp.partition,
            spec: spec as i32,
            timestamp_ms,
            current_leader_epoch: None,
        };
        match topics.iter_mut().find(|t| *t.name == *tp.topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(ListOffsetsTopic {
                name: tp.topic.to_string(),
                partitions: vec![p],
            }),
        }
    }
    let body = conn.request(ListOffsetsRequest { topics }).await?;
    let response::Body::ListOffsets(r) = body else {
        return Err(Error::Protocol {
            addr: conn.addr().to_string(),
            reason: "ListOffsets answered with another API's body".into(),
        });
    };
    // A partition may be asked for more than once (e.g. earliest and latest): answers are kept
    // in order per partition.
    let mut answers: BTreeMap<TopicPartition, std::collections::VecDeque<Result<(i64, i64)>>> =
        BTreeMap::new();
    for t in r.topics {
        let topic: Arc<str> = Arc::from(t.name.as_str());
        for p in t.partitions {
            let result = match Error::from_code(p.error_code(), p.error_message.clone()) {
                Some(e) => Err(e),
                None => Ok((p.offset, p.timestamp_ms)),
            };
            answers
                .entry(TopicPartition::new(topic.clone(), p.partition))
                .or_default()
                .push_back(result);
        }
    }
    Ok(queries
        .iter()
        .map(|(tp, _)| Listed {
            tp: tp.clone(),
            result: answers
                .get_mut(tp)
                .and_then(|a| a.pop_front())
                .unwrap_or_else(|| {
                    Err(Error::Protocol {
                        addr: conn.addr().to_string(),
                        reason: format!("ListOffsets did not answer for {tp}"),
                    })
                }),
        })
        .collect())
}

/// Administers topics.
///
/// ```no_run
/// use strom_client::{Admin, ClientConfig, NewTopic};
///
/// # async fn run() -> Result<(), strom_client::Error> {
/// let admin = Admin::connect(ClientConfig::new("127.0.0.1:9494")).await?;
/// admin.create_topic(NewTopic::new("orders").partitions(12)).await?;
/// admin.alter_configs("orders", &[("retention.ms", "86400000")], &[]).await?;
/// let topics = admin.list_topics().await?;
/// admin.delete_topic("orders").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Admin {
    control: Control,
}

fn unexpected(what: &str) -> Error {
    Error::Protocol {
        addr: String::new(),
        reason: format!("{what} answered with another API's body"),
    }
}

impl Admin {
    /// Checks `config` and connects.
    ///
    /// # Errors
    /// [`Error::Config`]; the connection's failure.
    pub async fn connect(config: ClientConfig) -> Result<Admin> {
        config.validate()?;
        let control = Control::new(config);
        control.connection().await?;
        Ok(Admin { control })
    }

    fn timeout_ms(&self) -> u32 {
        u32::try_from(self.control.config().request_timeout.as_millis()).unwrap_or(u32::MAX)
    }

    /// Creates topics (or, with `validate_only`, only checks them). One result per topic, in
    /// order: the partition count it has, or why it failed.
    ///
    /// # Errors
    /// The request's failure.
    pub async fn create_topics(
        &self,
        topics: &[NewTopic],
        validate_only: bool,
    ) -> Result<Vec<(String, Result<i32>)>> {
        let req = CreateTopicsRequest {
            topics: topics
                .iter()
                .map(|t| CreatableTopic {
                    name: t.name.clone(),
                    num_partitions: t.partitions,
                    replication_factor: t.replication_factor,
                    configs: t.configs.clone().into_iter().collect(),
                })
                .collect(),
            timeout_ms: self.timeout_ms(),
            validate_only,
        };
        let response::Body::CreateTopics(r) = self.control.request(req).await? else {
            return Err(unexpected("CreateTopics"));
        };
        Ok(r.topics
            .into_iter()
            .map(|t| {
                let result = match Error::from_code(t.error_code(), t.error_message.clone()) {
                    Some(e) => Err(e),
                    None => Ok(t.num_partitions),
                };
                (t.name, result)
            })
            .collect())
    }

    /// Creates one topic; returns its partition count.
    ///
    /// # Errors
    /// The topic's error (e.g. `TOPIC_ALREADY_EXISTS`), or the request's failure.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<i32> {
        let name = topic.name.clone();
        self.create_topics(&[topic], false)
            .await?
            .into_iter()
            .next()
            .map_or_else(|| Err(missing(&name)), |(_, r)| r)
    }

    /// Deletes topics; one result per topic, in order.
    ///
    /// # Errors
    /// The request's failure.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<Vec<(String, Result<()>)>> {
        let req = DeleteTopicsRequest {
            topics: names.iter().map(|n| n.to_string()).collect(),
            timeout_ms: self.timeout_ms(),
        };
        let response::Body::DeleteTopics(r) = self.control.request(req).await? else {
            return Err(unexpected("DeleteTopics"));
        };
        Ok(r.topics
            .into_iter()
            .map(|t| {
                let result = match Error::from_code(t.error_code(), t.error_message.clone()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                (t.name, result)
            })
            .collect())
    }

    /// Deletes one topic.
    ///
    /// # Errors
    /// The topic's error (e.g. `UNKNOWN_TOPIC_OR_PARTITION`), or the request's failure.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.delete_topics(&[name])
            .await?
            .into_iter()
            .next()
            .map_or_else(|| Err(missing(name)), |(_, r)| r)
    }

    /// Every topic, with partitions and their offsets.
    ///
    /// # Errors
    /// The request's failure.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>> {
        self.describe(&[]).await
    }

    /// The named topics, with partitions and their offsets, in order.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] for a topic that does not exist; other topic errors; the
    /// request's failure.
    pub async fn describe_topics(&self, names: &[&str]) -> Result<Vec<TopicDescription>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.describe(names).await
    }

    async fn describe(&self, names: &[&str]) -> Result<Vec<TopicDescription>> {
        let m = self.control.metadata(names, false).await?;
        let mut out = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            match t.error_code() {
                ErrorCode::None => {}
                ErrorCode::UnknownTopicOrPartition => {
                    return Err(Error::UnknownTopic {
                        topic: t.name,
                        reason: None,
                    });
                }
                code => {
                    return Err(Error::Broker {
                        code,
                        message: Some(format!("topic {}", t.name)),
                    });
                }
            }
            let mut partitions: Vec<PartitionDescription> = t
                .partitions
                .iter()
                .map(|p| PartitionDescription {
                    partition: p.partition,
                    leader: p.leader_id,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.clone(),
                    isr: p.isr_nodes.clone(),
                    log_start_offset: p.log_start_offset,
                    log_end_offset: p.log_end_offset,
                    size_bytes: p.size_bytes,
                    error: (!p.error_code().is_ok()).then(|| p.error_code()),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            out.push(TopicDescription {
                name: t.name,
                internal: t.is_internal,
                partitions,
            });
        }
        self.fill_offsets_from_leaders(&mut out).await;
        Ok(out)
    }

    /// A broker knows the offsets of the partitions it holds only: asks each leader for the
    /// ones the first answer left unknown (-1). A leader that cannot be reached leaves them so.
    async fn fill_offsets_from_leaders(&self, topics: &mut [TopicDescription]) {
        let mut leaders: Vec<i32> = topics
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.log_start_offset < 0 && p.leader >= 0)
            .map(|p| p.leader)
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        for leader in leaders {
            let Some(addr) = self.control.routes().broker(leader) else {
                continue;
            };
            let names: Vec<String> = topics
                .iter()
                .filter(|t| {
                    t.partitions
                        .iter()
                        .any(|p| p.leader == leader && p.log_start_offset < 0)
                })
                .map(|t| t.name.clone())
                .collect();
            let req = MetadataRequest {
                topics: names,
                all_topics: false,
                allow_auto_topic_creation: false,
            };
            let Ok(response::Body::Metadata(m)) = self.control.request_at(&addr, req).await else {
                continue;
            };
            for answered in m.topics {
                let Some(t) = topics.iter_mut().find(|t| t.name == answered.name) else {
                    continue;
                };
                for ap in answered.partitions {
                    if let Some(p) = t.partitions.iter_mut().find(|p| {
                        p.partition == ap.partition && p.leader == leader && p.log_start_offset < 0
                    }) && ap.log_start_offset >= 0
                    {
                        p.log_start_offset = ap.log_start_offset;
                        p.log_end_offset = ap.log_end_offset;
                        p.size_bytes = ap.size_bytes;
                    }
                }
            }
        }
    }

    /// The effective configs of `topic`, sorted by name.
    ///
    /// # Errors
    /// The topic's error, or the request's failure.
    pub async fn describe_configs(&self, topic: &str) -> Result<Vec<ConfigEntry>> {
        let req = DescribeConfigsRequest {
            topics: vec![topic.to_string()],
            config_names: Vec::new(),
        };
        let response::Body::DescribeConfigs(r) = self.control.request(req).await? else {
            return Err(unexpected("DescribeConfigs"));
        };
        let t = r.topics.into_iter().next().ok_or_else(|| missing(topic))?;
        if let Some(e) = Error::from_code(t.error_code(), t.error_message.clone()) {
            return Err(e);
        }
        Ok(t.configs
            .into_iter()
            .map(|c| ConfigEntry {
                source: match c.source() {
                    strom_protocol::messages::ConfigSource::Topic => ConfigSource::Topic,
                    strom_protocol::messages::ConfigSource::Broker => ConfigSource::Broker,
                    strom_protocol::messages::ConfigSource::Default => ConfigSource::Default,
                    strom_protocol::messages::ConfigSource::Unspecified => ConfigSource::Unknown,
                },
                name: c.name,
                value: c.value,
                read_only: c.read_only,
            })
            .collect())
    }

    /// Sets configs on `topic` and resets others to the broker default, as one change.
    ///
    /// # Errors
    /// The topic's error (e.g. `INVALID_CONFIG`), or the request's failure.
    pub async fn alter_configs(
        &self,
        topic: &str,
        set: &[(&str, &str)],
        reset: &[&str],
    ) -> Result<()> {
        let req = AlterConfigsRequest {
            topics: vec![AlterableTopic {
                name: topic.to_string(),
                set: set
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                reset: reset.iter().map(|r| r.to_string()).collect(),
            }],
            validate_only: false,
        };
        let response::Body::AlterConfigs(r) = self.control.request(req).await? else {
            return Err(unexpected("AlterConfigs"));
        };
        let t = r.topics.into_iter().next().ok_or_else(|| missing(topic))?;
        match Error::from_code(t.error_code(), t.error_message) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Looks offsets up: earliest, latest, or by time.
    ///
    /// # Errors
    /// The first partition's error, or the request's failure.
    pub async fn list_offsets(
        &self,
        queries: &[(TopicPartition, OffsetSpec)],
    ) -> Result<Vec<ListedOffset>> {
        list_offsets_routed(&self.control, queries)
            .await?
            .into_iter()
            .map(|l| {
                let (offset, timestamp) = l.result?;
                Ok(ListedOffset {
                    topic_partition: l.tp,
                    offset,
                    timestamp,
                })
            })
            .collect()
    }
}

/// Consumer groups.
impl Admin {
    /// Every group with members or committed offsets, sorted by id.
    ///
    /// # Errors
    /// The request's failure.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        // Each broker lists the groups it coordinates: ask them all.
        let brokers = self.control.metadata(&[], false).await?.brokers;
        let mut found: std::collections::BTreeMap<String, GroupListing> = Default::default();
        for b in brokers {
            let Some(addr) = self.control.routes().broker(b.node_id) else {
                continue;
            };
            let response::Body::ListGroups(r) =
                self.control.request_at(&addr, ListGroupsRequest {}).await?
            else {
                return Err(unexpected("ListGroups"));
            };
            for g in r.groups {
                found.entry(g.group_id.clone()).or_insert(GroupListing {
                    state: GroupState::parse(&g.state),
                    group_id: g.group_id,
                    members: g.members,
                });
            }
        }
        Ok(found.into_values().collect())
    }

    /// A group's state, epoch, assignor, members with their assignments, and per partition
    /// the committed offset, log end offset and lag.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; the request's failure.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let req = DescribeGroupsRequest {
            groups: vec![group.to_string()],
        };
        let response::Body::DescribeGroups(r) = self.control.group_request(group, req).await?
        else {
            return Err(unexpected("DescribeGroups"));
        };
        let g = r
            .groups
            .into_iter()
            .find(|g| g.group_id == group)
            .ok_or_else(|| Error::Protocol {
                addr: String::new(),
                reason: format!("DescribeGroups did not answer for group {group}"),
            })?;
        if !g.error_code().is_ok() {
            self.control.group_answered(group, g.error_code());
            return Err(group_error(g.error_code(), g.error_message, group, -1));
        }
        let mut offsets: Vec<GroupOffset> = g
            .offsets
            .into_iter()
            .map(|o| GroupOffset {
                topic_partition: TopicPartition::new(o.topic, o.partition),
                committed_offset: o.committed_offset,
                log_end_offset: o.log_end_offset,
                lag: o.lag,
                metadata: o.metadata,
            })
            .collect();
        offsets.sort_by(|a, b| a.topic_partition.cmp(&b.topic_partition));
        // The coordinator knows the log ends of the partitions it holds: ask the leaders of
        // the others (a partition that does not exist, or whose leader is down, stays -1).
        let unknown: Vec<(TopicPartition, OffsetSpec)> = offsets
            .iter()
            .filter(|o| o.log_end_offset < 0)
            .map(|o| (o.topic_partition.clone(), OffsetSpec::Latest))
            .collect();
        if !unknown.is_empty()
            && let Ok(listed) = list_offsets_routed(&self.control, &unknown).await
        {
            for l in listed {
                if let Ok((end, _)) = l.result
                    && end >= 0
                    && let Some(o) = offsets.iter_mut().find(|o| o.topic_partition == l.tp)
                {
                    o.log_end_offset = end;
                    o.lag = (end - o.committed_offset).max(0);
                }
            }
        }
        Ok(GroupDescription {
            group_id: g.group_id,
            state: GroupState::parse(&g.state),
            epoch: g.group_epoch,
            assignor: g.assignor,
            members: g
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    assignment: from_wire(&m.assignment).into_iter().collect(),
                    member_id: m.member_id,
                    member_epoch: m.member_epoch,
                    subscribed_topics: m.subscribed_topics,
                    session_timeout: Duration::from_millis(u64::from(m.session_timeout_ms)),
                })
                .collect(),
            offsets,
        })
    }

    /// Deletes a group without members, with its committed offsets (durably); a queue group
    /// of that id (which its own coordinator holds) the same way.
    ///
    /// ```no_run
    /// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
    /// admin.delete_group("old-billing").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; [`Error::NonEmptyGroup`]; the request's failure.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let req = DeleteGroupsRequest {
            groups: vec![group.to_string()],
        };
        let response::Body::DeleteGroups(r) =
            self.control.group_request(group, req.clone()).await?
        else {
            return Err(unexpected("DeleteGroups"));
        };
        let answer = |r: strom_protocol::messages::DeleteGroupsResponse| {
            r.results
                .into_iter()
                .find(|d| d.group_id == group)
                .ok_or_else(|| Error::Protocol {
                    addr: String::new(),
                    reason: format!("DeleteGroups did not answer for group {group}"),
                })
        };
        let mut d = answer(r)?;
        if d.error_code() == ErrorCode::GroupIdNotFound {
            // Not a consumer group: maybe a queue group, on its own coordinator.
            let body = self
                .queue_call(group, req, |b| match b {
                    response::Body::DeleteGroups(r) => r.results.first().map(|d| d.error_code()),
                    _ => None,
                })
                .await?;
            let response::Body::DeleteGroups(r) = body else {
                return Err(unexpected("DeleteGroups"));
            };
            d = answer(r)?;
        }
        if d.error_code().is_ok() {
            Ok(())
        } else {
            Err(group_error(d.error_code(), d.error_message, group, -1))
        }
    }

    /// The committed offsets of a group (OffsetFetch), by partition. Empty for a group that
    /// does not exist.
    ///
    /// ```no_run
    /// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
    /// for (tp, offset) in admin.committed_offsets("billing").await? {
    ///     println!("{tp}: {offset}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The request's failure.
    pub async fn committed_offsets(&self, group: &str) -> Result<BTreeMap<TopicPartition, i64>> {
        fetch_committed(&self.control, group, &[]).await
    }

    /// Moves the committed offsets of `group` for every partition of `topic` to `to` (looked
    /// up with ListOffsets), with an admin commit. The group must have no members: stop (close)
    /// its consumers first, and they resume from the new offsets. Returns the offsets committed.
    ///
    /// ```no_run
    /// use strom_client::ResetTo;
    /// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
    /// // Replay everything billing has read of orders.
    /// admin.reset_offsets("billing", "orders", ResetTo::Earliest).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NonEmptyGroup`] while the group has members; [`Error::UnknownTopic`]; a
    /// partition's ListOffsets or commit error; the requests' failures.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let partitions = self
            .control
            .partition_count(topic, false)
            .await?
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.to_string(),
                reason: None,
            })?;
        let tps: Vec<TopicPartition> = (0..partitions)
            .map(|p| TopicPartition::new(topic, p))
            .collect();
        let lookup = |spec: OffsetSpec| -> Vec<(TopicPartition, OffsetSpec)> {
            tps.iter().map(|tp| (tp.clone(), spec)).collect()
        };
        let found = |listed: Vec<Listed>| -> Result<Vec<i64>> {
            listed
                .into_iter()
                .map(|l| l.result.map(|(offset, _)| offset))
                .collect()
        };
        let ends = found(list_offsets_routed(&self.control, &lookup(OffsetSpec::Latest)).await?)?;
        let targets: Vec<i64> = match to {
            ResetTo::Latest => ends.clone(),
            ResetTo::Earliest => {
                found(list_offsets_routed(&self.control, &lookup(OffsetSpec::Earliest)).await?)?
            }
            ResetTo::Offset(offset) => {
                let starts = found(
                    list_offsets_routed(&self.control, &lookup(OffsetSpec::Earliest)).await?,
                )?;
                starts
                    .iter()
                    .zip(&ends)
                    .map(|(&start, &end)| offset.clamp(start, end.max(start)))
                    .collect()
            }
            ResetTo::Timestamp(ts) => {
                let at = found(
                    list_offsets_routed(&self.control, &lookup(OffsetSpec::Timestamp(ts))).await?,
                )?;
                // -1: no record at or after the time: everything stored is before it.
                at.iter()
                    .zip(&ends)
                    .map(|(&o, &end)| if o < 0 { end } else { o })
                    .collect()
            }
        };
        let offsets: Vec<(TopicPartition, i64)> = tps.into_iter().zip(targets).collect();
        // An admin commit: no member id, epoch -1; refused while the group has members.
        let (accepted, first_error) = send_commit(&self.control, group, "", -1, &offsets).await?;
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(accepted.into_iter().collect())
    }
}

/// Queue groups.
impl Admin {
    /// Describes queue groups (every queue group when `groups` is empty): settings, members
    /// with the records they hold, and per partition the records ready, delayed, in flight
    /// and being dead-lettered, the offsets and the age of the oldest unfinished record. In
    /// the order asked for (by id when `groups` is empty).
    ///
    /// # Errors
    /// [`Error::GroupNotFound`] for the first of `groups` that is not a queue group; the
    /// request's failure.
    pub async fn describe_queue_groups(
        &self,
        groups: &[&str],
    ) -> Result<Vec<QueueGroupDescription>> {
        let mut described = Vec::with_capacity(groups.len());
        if groups.is_empty() {
            // Each broker describes the queue groups it coordinates: ask them all.
            let brokers = self.control.metadata(&[], false).await?.brokers;
            let mut found = std::collections::BTreeMap::new();
            for b in brokers {
                let Some(addr) = self.control.routes().broker(b.node_id) else {
                    continue;
                };
                let req = DescribeQueueGroupsRequest { groups: vec![] };
                let response::Body::DescribeQueueGroups(r) =
                    self.control.request_at(&addr, req).await?
                else {
                    return Err(unexpected("DescribeQueueGroups"));
                };
                for g in r.groups {
                    found.entry(g.group_id.clone()).or_insert(g);
                }
            }
            described.extend(found.into_values());
        }
        for group in groups {
            let req = DescribeQueueGroupsRequest {
                groups: vec![group.to_string()],
            };
            let body = self
                .queue_call(group, req, |b| match b {
                    response::Body::DescribeQueueGroups(r) => {
                        r.groups.first().map(|g| g.error_code())
                    }
                    _ => None,
                })
                .await?;
            let response::Body::DescribeQueueGroups(r) = body else {
                return Err(unexpected("DescribeQueueGroups"));
            };
            let g = r.groups.into_iter().next().ok_or_else(|| Error::Protocol {
                addr: String::new(),
                reason: format!("DescribeQueueGroups did not answer for group {group}"),
            })?;
            described.push(g);
        }
        let mut out = Vec::with_capacity(described.len());
        for g in described {
            if !g.error_code().is_ok() {
                return Err(group_error(
                    g.error_code(),
                    g.error_message,
                    &g.group_id,
                    -1,
                ));
            }
            let mut partitions: Vec<QueuePartitionDescription> = g
                .partitions
                .into_iter()
                .map(|p| QueuePartitionDescription {
                    topic: p.topic,
                    partition: p.partition,
                    start_offset: p.start_offset,
                    next_offset: p.next_offset,
                    log_end_offset: p.log_end_offset,
                    ready: p.ready,
                    delayed: p.delayed,
                    in_flight: p.in_flight,
                    dead_lettering: p.dead_lettering,
                    oldest_unacked_ms: (p.oldest_unacked_ms >= 0).then_some(p.oldest_unacked_ms),
                    acked: p.acked,
                    dead_lettered: p.dead_lettered,
                })
                .collect();
            partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            let mut members: Vec<QueueMemberDescription> = g
                .members
                .into_iter()
                .map(|m| QueueMemberDescription {
                    member_id: m.member_id,
                    topics: m.topics,
                    in_flight: m.in_flight,
                })
                .collect();
            members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
            out.push(QueueGroupDescription {
                group_id: g.group_id,
                settings: g.settings,
                members,
                partitions,
            });
        }
        Ok(out)
    }

    /// Moves the queue group's partitions of `topic` to `to`: records from there on are
    /// handed out as new (attempts start over), those before count as done. The group must
    /// have no members: stop its workers first. Returns where each partition now starts, by
    /// partition.
    ///
    /// ```no_run
    /// use strom_client::QueueResetTo;
    /// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
    /// // Skip the backlog of jobs the mailer group has not finished.
    /// admin.reset_queue_group("mailer", "jobs", QueueResetTo::Latest).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; [`Error::NonEmptyGroup`] while the group has members;
    /// [`Error::UnknownTopic`]; [`Error::Broker`] with `BUSY` (retriable) while records of the
    /// topic are being written to the dead-letter topic; the request's failure.
    pub async fn reset_queue_group(
        &self,
        group: &str,
        topic: &str,
        to: QueueResetTo,
    ) -> Result<Vec<(i32, i64)>> {
        use reset_queue_group_request::To;
        let req = ResetQueueGroupRequest {
            group_id: group.to_string(),
            topic: topic.to_string(),
            to: Some(match to {
                QueueResetTo::Earliest => To::Earliest(true),
                QueueResetTo::Latest => To::Latest(true),
                QueueResetTo::Time(ms) => To::TimestampMs(ms),
            }),
        };
        let body = self
            .queue_call(group, req, |b| match b {
                response::Body::ResetQueueGroup(r) => Some(r.error_code()),
                _ => None,
            })
            .await?;
        let response::Body::ResetQueueGroup(r) = body else {
            return Err(unexpected("ResetQueueGroup"));
        };
        match r.error_code() {
            ErrorCode::None => {}
            ErrorCode::UnknownTopicOrPartition => {
                return Err(Error::UnknownTopic {
                    topic: topic.to_string(),
                    reason: r.error_message,
                });
            }
            code => return Err(group_error(code, r.error_message, group, -1)),
        }
        let mut moved: Vec<(i32, i64)> = r
            .partitions
            .into_iter()
            .map(|p| (p.partition, p.offset))
            .collect();
        moved.sort_unstable();
        Ok(moved)
    }
}

/// A redrive task's progress ([`Admin::redrive`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveStatus {
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Where the records go; empty: each record's origin topic.
    pub target_topic: String,
    /// Records per second at most.
    pub rate: u32,
    /// Records copied so far.
    pub moved: u64,
    /// Records passed over (not dead-letter copies, or their origin topic is gone).
    pub skipped: u64,
    /// Records still to look at.
    pub remaining: u64,
    /// Whether the task reached its end.
    pub done: bool,
}

impl From<strom_protocol::messages::RedriveStatus> for RedriveStatus {
    fn from(s: strom_protocol::messages::RedriveStatus) -> Self {
        Self {
            dlq_topic: s.dlq_topic,
            target_topic: s.target_topic,
            rate: s.rate,
            moved: s.moved,
            skipped: s.skipped,
            remaining: s.remaining,
            done: s.done,
        }
    }
}

impl Admin {
    /// Sends a request to the queue coordinator of `key` (a queue group, or a redrive's
    /// dead-letter topic), looking it up again and retrying (a few times, with the client's
    /// reconnect backoff) while the answer's error code (`code`) says the coordinator moved or is not
    /// ready.
    async fn queue_call(
        &self,
        key: &str,
        req: impl Into<request::Body>,
        code: impl Fn(&response::Body) -> Option<ErrorCode>,
    ) -> Result<response::Body> {
        let req = req.into();
        let mut tries: u32 = 0;
        loop {
            let body = self.control.queue_request(key, req.clone()).await?;
            let moved = code(&body).is_some_and(crate::control::is_coordinator_error);
            tries += 1;
            if !moved || tries >= 5 {
                return Ok(body);
            }
            self.control.forget_queue_coordinator(key);
            let config = self.control.config();
            let wait = (config.reconnect_backoff * tries).min(config.reconnect_backoff_max);
            tokio::time::sleep(wait).await;
        }
    }

    /// Starts moving the records of dead-letter topic `dlq` back to their origin topics (or to
    /// `target`), at most `rate` records/s (0: the broker's 1000). The broker runs the task
    /// (it resumes after a restart); follow it with [`Admin::redrive_status`].
    ///
    /// # Errors
    /// [`Error::UnknownTopic`]; [`Error::Broker`] with `BUSY` while a redrive of `dlq` runs, or
    /// `INVALID_REQUEST` for a rate above 1,000,000.
    pub async fn redrive(
        &self,
        dlq: &str,
        target: Option<&str>,
        rate: u32,
    ) -> Result<RedriveStatus> {
        let req = strom_protocol::messages::RedriveRequest {
            dlq_topic: dlq.to_string(),
            target_topic: target.unwrap_or_default().to_string(),
            rate,
            from_offset: None,
            to_offset: None,
        };
        let body = self
            .queue_call(dlq, req, |b| match b {
                response::Body::Redrive(r) => Some(r.error_code()),
                _ => None,
            })
            .await?;
        let response::Body::Redrive(r) = body else {
            return Err(unexpected("Redrive"));
        };
        match r.error_code() {
            ErrorCode::None => r
                .status
                .map(RedriveStatus::from)
                .ok_or_else(|| unexpected("Redrive without a status")),
            ErrorCode::UnknownTopicOrPartition => Err(Error::UnknownTopic {
                topic: target.unwrap_or(dlq).to_string(),
                reason: r.error_message,
            }),
            code => Err(Error::Broker {
                code,
                message: r.error_message,
            }),
        }
    }

    /// The progress of the redrive of `dlq` (`None`: none was started).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn redrive_status(&self, dlq: &str) -> Result<Option<RedriveStatus>> {
        let req = strom_protocol::messages::DescribeRedriveRequest {
            dlq_topic: dlq.to_string(),
        };
        let body = self
            .queue_call(dlq, req, |b| match b {
                response::Body::DescribeRedrive(r) => Some(r.error_code()),
                _ => None,
            })
            .await?;
        let response::Body::DescribeRedrive(r) = body else {
            return Err(unexpected("DescribeRedrive"));
        };
        match r.error_code() {
            ErrorCode::None => Ok(r.status.map(RedriveStatus::from)),
            ErrorCode::GroupIdNotFound => Ok(None),
            code => Err(Error::Broker {
                code,
                message: r.error_message,
            }),
        }
    }
}

/// The cluster as its active controller sees it ([`Admin::describe_cluster`]).
///
/// ```no_run
/// # async fn run(admin: strom_client::Admin) -> Result<(), strom_client::Error> {
/// let cluster = admin.describe_cluster().await?;
/// println!("controller {} (term {}), committed {}", cluster.controller_id, cluster.term, cluster.committed_index);
/// for b in &cluster.brokers {
///     let state = if b.alive { "alive" } else { "fenced" };
///     println!("{} {:?} {state} {:?}", b.node_id, b.native_address, b.role);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// The node id of the active controller of the metadata quorum.
    pub controller_id: i32,
    /// The active controller's Raft term.
    pub term: u64,
    /// The metadata log's committed index (as the active controller applied it).
    pub committed_index: u64,
    /// Every broker that registered and every member of the quorum, sorted by node id.
    pub brokers: Vec<BrokerDescription>,
}

impl ClusterDescription {
    /// The active controller's entry, if it is listed.
    pub fn controller(&self) -> Option<&BrokerDescription> {
        self.brokers
            .iter()
            .find(|b| b.node_id == self.controller_id)
    }
}

/// One broker of a [`ClusterDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDescription {
    /// Its node id.
    pub node_id: i32,
    /// Its broker epoch: the log index of its newest registration (larger after every
    /// restart); `None` for a member of the quorum that has not registered.
    pub broker_epoch: Option<u64>,
    /// `HOST:PORT` of its native listener (strom's protocol).
    pub native_address: Option<String>,
    /// `HOST:PORT` of its Kafka listener; `None` when it is off.
    pub kafka_address: Option<String>,
    /// `HOST:PORT` of its HTTP listener; `None` when it is off.
    pub http_address: Option<String>,
    /// Heartbeating to the active controller within its session; `false`: fenced (or not
    /// registered).
    pub alive: bool,
    /// Its part in the metadata quorum.
    pub role: QuorumRole,
    /// `HOST:PORT` of its controller listener; `None` when it is not a member of the quorum.
    pub controller_address: Option<String>,
    /// The last metadata log index the active controller knows it holds; `None` when unknown.
    pub metadata_index: Option<u64>,
    /// Its storage failed (a full disk, an I/O error): it leads nothing and is in no ISR
    /// until a probe write succeeds.
    pub storage_failed: bool,
}

/// A broker's part in the metadata quorum ([`BrokerDescription::role`]).
///
/// ```
/// assert_eq!(strom_client::QuorumRole::Voter.as_str(), "voter");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuorumRole {
    /// Votes in elections and counts towards commits.
    Voter,
    /// Receives the metadata log without voting.
    Learner,
    /// Not a member of the quorum (or a role this client does not know).
    None,
}

impl QuorumRole {
    /// `voter`, `learner` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumRole::Voter => "voter",
            QuorumRole::Learner => "learner",
            QuorumRole::None => "none",
        }
    }
}

impl fmt::Display for QuorumRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Admin {
    /// The cluster's brokers (endpoints, alive or fenced, role in the metadata quorum, how far
    /// each holds the metadata log) and its active controller, from whichever broker the
    /// client is connected to: that broker asks the active controller.
    ///
    /// # Errors
    /// [`Error::Broker`] with `REQUEST_TIMED_OUT` (retriable) when no active controller answered
    /// (no quorum of voters, an election going on); [`Error::UnsupportedApi`] from a broker
    /// older than DescribeCluster; connection errors.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        use strom_protocol::messages::{DescribeClusterRequest, QuorumRole as WireRole};
        let response::Body::DescribeCluster(r) =
            self.control.request(DescribeClusterRequest {}).await?
        else {
            return Err(unexpected("DescribeCluster"));
        };
        if let Some(e) = Error::from_code(r.error_code(), r.error_message.clone()) {
            return Err(e);
        }
        let mut brokers: Vec<BrokerDescription> = r
            .brokers
            .into_iter()
            .map(|b| BrokerDescription {
                node_id: b.node_id,
                broker_epoch: u64::try_from(b.broker_epoch).ok(),
                role: match b.role() {
                    WireRole::Voter => QuorumRole::Voter,
                    WireRole::Learner => QuorumRole::Learner,
                    WireRole::Unspecified => QuorumRole::None,
                },
                native_address: b.native_address,
                kafka_address: b.kafka_address,
                http_address: b.http_address,
                alive: b.alive,
                controller_address: b.controller_address,
                metadata_index: u64::try_from(b.metadata_index).ok(),
                storage_failed: b.storage_failed,
            })
            .collect();
        brokers.sort_by_key(|b| b.node_id);
        Ok(ClusterDescription {
            controller_id: r.controller_id,
            term: r.term,
            committed_index: u64::try_from(r.committed_index).unwrap_or(0),
            brokers,
        })
    }
}

fn missing(topic: &str) -> Error {
    Error::Protocol {
        addr: String::new(),
        reason: format!("the response has no entry for topic {topic}"),
    }
}
