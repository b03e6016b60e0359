//! Queue groups from the client side: [`QueueConsumer`] takes records from a queue group, each
//! record its own, and answers for each: [`QueueConsumer::ack`], [`QueueConsumer::nack`],
//! [`QueueConsumer::reject`], [`QueueConsumer::release`], [`QueueConsumer::extend`]
//! (docs/queues.md has the model).
//!
//! Answers are queued and go to the broker with the next [`QueueConsumer::poll`] (or
//! [`QueueConsumer::flush`]), consecutive offsets with the same answer as one range, so acking
//! records one by one costs one small request per poll, not one per record. An answer the broker
//! refuses (the lease had run out and the record went to another member, for one) is reported by
//! [`QueueConsumer::take_refused`]; the record is then someone else's to finish: delivery is
//! at least once.
//!
//! A member makes up its id (here from the time, the process id and a counter) and keeps it
//! across reconnects and broker restarts, so leases it holds stay its own. Every request goes
//! to the group's coordinator (the leader of the group's `__queue_state` partition, found with
//! FindCoordinator and looked up again when it moves). If the coordinator does not know the
//! member (it removed it after no request for its session timeout, or it has just taken the
//! group over from a broker that died: leases survive that, memberships do not), the member
//! joins again with the same id and sends its unanswered answers once more: leases it still
//! holds are its own; what was failed meanwhile is refused and will be handed out again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::batch::{self, BatchIter, Records};
use strom_protocol::messages::{
    QueueAck, QueueAckKind, QueueAckRequest, QueueFetchRequest, QueueJoinRequest,
    QueueLeaveRequest, response,
};

use crate::batches::{MAX_DECOMPRESSED_BATCH, decompress};
use crate::config::ClientConfig;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::record::{ConsumerRecord, TopicPartition};

/// How a [`QueueConsumer`] joins its group.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// The queue group.
    pub group: String,
    /// Topics to take records from.
    pub topics: Vec<String>,
    /// Removed by the broker after this long without a request (0: the broker's 30000).
    pub session_timeout_ms: u32,
    /// Settings for the group if this member creates it (`max.attempts`, `backoff`,
    /// `lease.ms`, `ordering`, `dead.letter.topic`, ...; docs/queues.md).
    pub settings: BTreeMap<String, String>,
    /// Longest a [`QueueConsumer::poll`] waits on the broker for records.
    pub max_wait: Duration,
    /// The member id; `None` makes one up.
    pub member_id: Option<String>,
}

impl QueueConfig {
    /// A member of `group` taking records of `topics` from the broker at `bootstrap`.
    pub fn new(bootstrap: impl Into<String>, group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            client: ClientConfig::new(bootstrap),
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout_ms: 0,
            settings: BTreeMap::new(),
            max_wait: Duration::from_millis(500),
            member_id: None,
        }
    }

    /// Sets one group setting (used if this member creates the group).
    #[must_use]
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(name.into(), value.into());
        self
    }
}

/// A record handed to this member: the record, which attempt this is, and until when it is
/// this member's.
#[derive(Debug, Clone)]
pub struct QueueRecord {
    record: ConsumerRecord,
    attempt: u32,
    lease_until_ms: i64,
}

impl QueueRecord {
    /// The record.
    pub fn record(&self) -> &ConsumerRecord {
        &self.record
    }

    /// 1 for the first delivery, 2 for the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the lease runs out (ms since the Unix epoch) unless extended.
    pub fn lease_until_ms(&self) -> i64 {
        self.lease_until_ms
    }
}

impl std::ops::Deref for QueueRecord {
    type Target = ConsumerRecord;
    fn deref(&self) -> &ConsumerRecord {
        &self.record
    }
}

/// An answer the broker refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The partition.
    pub tp: TopicPartition,
    /// The offsets.
    pub first_offset: i64,
    /// Last offset of the range.
    pub last_offset: i64,
    /// The attempt the answer was for (a record handed out again has a new attempt).
    pub attempt: u32,
    /// Whether it was an ack (a nack, reject, extend or release otherwise).
    pub was_ack: bool,
    /// Why (`INVALID_RECORD_STATE`: not held by this member at that attempt any more, e.g.
    /// because the member's session had ended and what it held was failed; a member the
    /// coordinator no longer knows joins again and sends its answers once more, for the
    /// broker to judge).
    pub code: ErrorCode,
    /// The broker's explanation.
    pub message: Option<String>,
}

/// A member of a queue group; see the module docs.
#[derive(Debug)]
pub struct QueueConsumer {
    control: Control,
    config: QueueConfig,
    member_id: String,
    settings: BTreeMap<String, String>,
    pending: Vec<QueueAck>,
    refused: Vec<Refused>,
}

static MEMBER_SEQ: AtomicU64 = AtomicU64::new(0);

fn make_member_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "member-{:x}-{:x}-{:x}",
        now,
        std::process::id(),
        MEMBER_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn broker_error(code: ErrorCode, message: Option<String>) -> Error {
    Error::Broker { code, message }
}

fn unexpected(api: &str) -> Error {
    Error::Protocol {
        addr: String::new(),
        reason: format!("{api} answered with another API's body"),
    }
}

impl QueueConsumer {
    /// Joins the group (creating it with `config.settings` if it does not exist).
    ///
    /// # Errors
    /// Connection errors; [`Error::Broker`] with `INVALID_CONFIG` (a bad setting),
    /// `INCONSISTENT_GROUP_PROTOCOL` (a consumer group has this id), `UNKNOWN_TOPIC_OR_PARTITION`.
    pub async fn join(config: QueueConfig) -> Result<Self> {
        let member_id = config.member_id.clone().unwrap_or_else(make_member_id);
        let mut c = Self {
            control: Control::new(config.client.clone()),
            config,
            member_id,
            settings: BTreeMap::new(),
            pending: Vec::new(),
            refused: Vec::new(),
        };
        c.rejoin().await?;
        Ok(c)
    }

    async fn rejoin(&mut self) -> Result<()> {
        let req = QueueJoinRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
            topics: self.config.topics.clone(),
            session_timeout_ms: self.config.session_timeout_ms,
            settings: self.config.settings.clone(),
        };
        let group = self.config.group.clone();
        let response::Body::QueueJoin(r) = self.control.queue_request(&group, req).await? else {
            return Err(unexpected("QueueJoin"));
        };
        match r.error_code() {
            ErrorCode::None => {
                self.settings = r.settings;
                Ok(())
            }
            code => {
                self.coordinator_answered(code);
                Err(broker_error(code, r.error_message))
            }
        }
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The group's settings, as the broker reported them when this member joined.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }

    /// Answers queued and not yet sent.
    pub fn pending_answers(&self) -> usize {
        self.pending.len()
    }

    /// Answers the broker refused since the last call.
    pub fn take_refused(&mut self) -> Vec<Refused> {
        std::mem::take(&mut self.refused)
    }

    fn queue(
        &mut self,
        r: &QueueRecord,
        kind: QueueAckKind,
        delay_ms: Option<u64>,
        error: Option<&str>,
        extend_ms: u64,
    ) {
        self.queue_range(
            r.topic(),
            r.partition(),
            r.offset(),
            r.attempt,
            kind,
            delay_ms,
            error,
            extend_ms,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_range(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        attempt: u32,
        kind: QueueAckKind,
        delay_ms: Option<u64>,
        error: Option<&str>,
        extend_ms: u64,
    ) {
        if let Some(last) = self.pending.last_mut()
            && last.topic == topic
            && last.partition == partition
            && last.attempt == attempt
            && last.kind == kind as i32
            && last.delay_ms == delay_ms
            && last.error.as_deref() == error
            && last.extend_ms == extend_ms
            && last.last_offset + 1 == offset
        {
            last.last_offset = offset;
            return;
        }
        self.pending.push(QueueAck {
            topic: topic.to_string(),
            partition,
            first_offset: offset,
            last_offset: offset,
            attempt,
            kind: kind as i32,
            delay_ms,
            error: error.map(str::to_string),
            extend_ms,
        });
    }

    fn queue_gap(&mut self, topic: &str, partition: i32, offset: i64, attempt: u32) {
        self.queue_range(
            topic,
            partition,
            offset,
            attempt,
            QueueAckKind::Ack,
            None,
            None,
            0,
        );
    }

    /// Done with `record`.
    pub fn ack(&mut self, record: &QueueRecord) {
        self.queue(record, QueueAckKind::Ack, None, None, 0);
    }

    /// `record` failed: it is tried again after `delay` (`None`: the group's backoff), or goes
    /// to the dead-letter topic if this was its last allowed attempt. `error` (up to 1 KiB) is
    /// kept for the dead-letter record.
    pub fn nack(&mut self, record: &QueueRecord, delay: Option<Duration>, error: Option<&str>) {
        let delay_ms = delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.queue(record, QueueAckKind::Nack, delay_ms, error, 0);
    }

    /// `record` must never be tried again: it goes to the dead-letter topic now.
    pub fn reject(&mut self, record: &QueueRecord, error: Option<&str>) {
        self.queue(record, QueueAckKind::Reject, None, error, 0);
    }

    /// Gives `record` back untried (e.g. when shutting down); its attempt stays counted.
    pub fn release(&mut self, record: &QueueRecord) {
        self.queue(record, QueueAckKind::Release, None, None, 0);
    }

    /// Keeps `record` for `lease` more from now (`None`: the group's `lease.ms`), at once.
    ///
    /// # Errors
    /// As [`QueueConsumer::flush`]; a refusal (the lease had already run out) is in
    /// [`QueueConsumer::take_refused`].
    pub async fn extend(&mut self, record: &QueueRecord, lease: Option<Duration>) -> Result<()> {
        let ms = lease.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.queue(record, QueueAckKind::Extend, None, None, ms);
        self.flush().await
    }

    fn note_results(
        &mut self,
        sent: &[QueueAck],
        results: Vec<strom_protocol::messages::QueueAckResult>,
    ) {
        for (a, r) in sent.iter().zip(results) {
            let code = r.error_code();
            if code != ErrorCode::None {
                tracing::debug!(topic = %a.topic, partition = a.partition, first = a.first_offset, last = a.last_offset, %code, "answer refused");
                self.refused.push(Refused {
                    tp: TopicPartition::new(a.topic.as_str(), a.partition),
                    first_offset: a.first_offset,
                    last_offset: a.last_offset,
                    attempt: a.attempt,
                    was_ack: a.kind == QueueAckKind::Ack as i32,
                    code,
                    message: r.error_message,
                });
            }
        }
    }

    /// Sends a request carrying `acks` (taken from the queue) once, to the group's
    /// coordinator: a request repeated after a lost connection could reach a restarted broker
    /// after the first was applied, and its refusal would then say the opposite of what
    /// happened. On failure the answers go back to the front of the queue; the caller knows
    /// they may have landed.
    async fn send_once(
        &mut self,
        req: impl Into<strom_protocol::messages::request::Body>,
        acks: &[QueueAck],
        timeout: Duration,
    ) -> Result<response::Body> {
        let group = self.config.group.clone();
        let sent = async {
            let conn = self.control.queue_connection(&group).await?;
            conn.request_with_timeout(req, timeout).await
        }
        .await;
        if sent.is_err() {
            self.control.forget_queue_coordinator(&group);
            self.pending.splice(0..0, acks.iter().cloned());
        }
        sent
    }

    /// Notes an answer's error code: one that says the coordinator is elsewhere (or not
    /// ready) makes the next request look it up again.
    fn coordinator_answered(&self, code: ErrorCode) {
        if crate::control::is_coordinator_error(code) {
            self.control.forget_queue_coordinator(&self.config.group);
        }
    }

    /// A request carrying `acks` was answered with `code` for the whole request: the answers
    /// go back to the front of the queue when the request was not applied (the coordinator
    /// moved, or the member is unknown to it: after a failover the new coordinator has the
    /// leases but not the membership, so the member joins again and the answers are sent
    /// again, for the broker to judge); whether to join again first.
    fn requeue_after(&mut self, code: ErrorCode, acks: &[QueueAck]) -> bool {
        self.coordinator_answered(code);
        let rejoin = code == ErrorCode::UnknownMemberId;
        if rejoin || crate::control::is_coordinator_error(code) {
            self.pending.splice(0..0, acks.iter().cloned());
        }
        rejoin
    }

    /// Sends the queued answers now (an empty flush keeps the membership alive).
    ///
    /// # Errors
    /// Connection errors (the answers stay queued for the next try); [`Error::Broker`].
    pub async fn flush(&mut self) -> Result<()> {
        // A member unknown to the coordinator joins again and sends its answers once more.
        for _ in 0..2 {
            match self.flush_once().await? {
                None => return Ok(()),
                Some(_) => self.rejoin().await?,
            }
        }
        match self.flush_once().await? {
            None => Ok(()),
            Some(message) => Err(broker_error(ErrorCode::UnknownMemberId, message)),
        }
    }

    /// One QueueAck; `Some(message)` when the member was unknown (the answers are queued
    /// again).
    async fn flush_once(&mut self) -> Result<Option<Option<String>>> {
        let acks = std::mem::take(&mut self.pending);
        let req = QueueAckRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
            acks: acks.clone(),
        };
        let timeout = self.config.client.request_timeout;
        let body = self.send_once(req, &acks, timeout).await?;
        let response::Body::QueueAck(r) = body else {
            return Err(unexpected("QueueAck"));
        };
        match r.error_code() {
            ErrorCode::None => {
                self.note_results(&acks, r.results);
                Ok(None)
            }
            code if self.requeue_after(code, &acks) => Ok(Some(r.error_message)),
            code => Err(broker_error(code, r.error_message)),
        }
    }

    /// Sends the queued answers and takes up to `max_records` records, waiting up to the
    /// configured `max_wait` for some.
    ///
    /// # Errors
    /// Connection errors (the answers stay queued), [`Error::Broker`], [`Error::Corrupt`] for a
    /// batch that fails its checks.
    pub async fn poll(&mut self, max_records: u32) -> Result<Vec<QueueRecord>> {
        let acks = std::mem::take(&mut self.pending);
        let max_wait = self.config.max_wait;
        let req = QueueFetchRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
            max_records: max_records.max(1),
            max_bytes: 0,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            acks: acks.clone(),
        };
        let timeout = max_wait + self.config.client.request_timeout;
        let body = self.send_once(req, &acks, timeout).await?;
        let response::Body::QueueFetch(r) = body else {
            return Err(unexpected("QueueFetch"));
        };
        match r.error_code() {
            ErrorCode::None => {}
            code => {
                if self.requeue_after(code, &acks) {
                    // Unknown to the coordinator: join again; the answers go with the next
                    // poll.
                    self.rejoin().await?;
                    return Ok(Vec::new());
                }
                return Err(broker_error(code, r.error_message));
            }
        }
        self.note_results(&acks, r.ack_results);
        let mut out = Vec::new();
        for mut p in r.partitions {
            let topic: Arc<str> = Arc::from(p.topic.as_str());
            let mut records = decode(&topic, p.partition, &p.records)?
                .into_iter()
                .peekable();
            p.acquired.sort_by_key(|run| run.first_offset);
            for run in &p.acquired {
                let mut at = run.first_offset;
                while let Some(rec) = records.next_if(|r| r.offset <= run.last_offset) {
                    if rec.offset < run.first_offset {
                        continue;
                    }
                    // Offsets of the run with no record (compacted away, control records):
                    // nothing to process, answered at once.
                    for gap in at..rec.offset {
                        self.queue_gap(&topic, p.partition, gap, run.attempt);
                    }
                    at = rec.offset + 1;
                    out.push(QueueRecord {
                        record: ConsumerRecord::new(topic.clone(), p.partition, rec),
                        attempt: run.attempt,
                        lease_until_ms: p.lease_until_ms,
                    });
                }
                for gap in at..=run.last_offset {
                    self.queue_gap(&topic, p.partition, gap, run.attempt);
                }
            }
        }
        Ok(out)
    }

    /// Sends the queued answers and leaves the group: what this member still holds is released
    /// (handed to others at once; the attempts stay counted).
    ///
    /// # Errors
    /// As [`QueueConsumer::flush`].
    pub async fn close(mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        let req = QueueLeaveRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
        };
        let group = self.config.group.clone();
        let response::Body::QueueLeave(r) = self.control.queue_request(&group, req).await? else {
            return Err(unexpected("QueueLeave"));
        };
        match r.error_code() {
            ErrorCode::None | ErrorCode::UnknownMemberId => Ok(()),
            code => Err(broker_error(code, r.error_message)),
        }
    }
}

/// The records of a chunk's batches, checked and decompressed.
fn decode(topic: &Arc<str>, partition: i32, data: &Bytes) -> Result<Vec<batch::Record>> {
    let corrupt = |offset: i64, source| Error::Corrupt {
        topic: topic.to_string(),
        partition,
        offset,
        source,
    };
    let mut out = Vec::new();
    for item in BatchIter::new(data) {
        let (range, header) = item.map_err(|e| corrupt(-1, e))?;
        let raw = data.slice(range);
        batch::validate(&raw).map_err(|e| corrupt(header.base_offset, e))?;
        if header.is_control() || header.record_count <= 0 {
            continue;
        }
        let plain = decompress(&raw, &header, MAX_DECOMPRESSED_BATCH)?;
        for rec in Records::new(plain).map_err(|e| corrupt(header.base_offset, e))? {
            out.push(rec.map_err(|e| corrupt(header.base_offset, e))?);
        }
    }
    Ok(out)
}
