//! Request handlers: one function per API, turning a decoded request body into a response body.
//!
//! Handlers run on the connection's side (one tokio task per request) and only reach a partition's
//! log through its writer queue (appends) or its reader (fetches, offsets), never holding a lock
//! across an await.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use strom_protocol::ErrorCode;
use strom_protocol::api::{api_versions_response, check_version};
use strom_protocol::batch::BatchIter;
use strom_protocol::messages::*;
use strom_protocol::topic::is_internal_topic;
use strom_storage::{StorageError, ValidBatch};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{batch_code, storage_code};
use crate::partition::{AppendReply, Durability};
use crate::server::Context;
use crate::topics::TopicError;

/// The part of a request left after its in-order start: either its response, or a future that
/// completes it (an acknowledgement or a long poll to wait for).
pub(crate) enum Started {
    /// Answered (`None`: a produce with `ACKS_NONE`, which gets no response).
    Ready(Option<Response>),
    /// Still running; the connection runs it concurrently with later requests.
    Pending(Pin<Box<dyn Future<Output = Option<Response>> + Send>>),
}

/// Per-connection ordering state: produces started but not yet acknowledged. A request that
/// reads the logs (fetch, list offsets, metadata) first waits for them, so a client reading after
/// writing on one connection sees its own writes.
#[derive(Debug, Default)]
pub(crate) struct Ordering {
    produces: AtomicUsize,
    idle: Notify,
}

impl Ordering {
    async fn wait_for_produces(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.produces.load(AtomicOrdering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Decrements the connection's produce count when a produce completes (or is dropped).
struct ProduceGuard(Arc<Ordering>);

impl Drop for ProduceGuard {
    fn drop(&mut self) {
        if self.0.produces.fetch_sub(1, AtomicOrdering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Starts one request. This part runs in request order on the connection's reader (so appends
/// from one connection reach each partition in the order they were sent, and admin changes apply
/// in order); waiting for acknowledgements and long polls is left to the returned future.
pub(crate) async fn start(ctx: &Arc<Context>, order: &Arc<Ordering>, request: Request) -> Started {
    let (header, body) = match request.into_parts() {
        Ok(parts) => parts,
        Err(e) => {
            return Started::Ready(Some(Response::error(
                0,
                e.error_code(),
                Some(e.to_string()),
            )));
        }
    };
    let id = header.correlation_id;
    if let Err(code) = check_version(&header) {
        return Started::Ready(Some(Response::error(
            id,
            code,
            Some(format!(
                "api key {} version {} is not supported",
                header.api_key, header.api_version
            )),
        )));
    }
    use request::Body as B;
    let ready = |body: response::Body| Started::Ready(Some(Response::new(id, body)));
    match body {
        B::ApiVersions(_) => {
            let mut r = api_versions_response(header.api_version);
            r.max_frame_bytes = ctx.config.max_frame_bytes;
            ready(r.into())
        }
        B::Metadata(r) => {
            order.wait_for_produces().await;
            ready(metadata(ctx, r).await.into())
        }
        B::CreateTopics(r) => ready(create_topics(ctx, r).await.into()),
        B::DeleteTopics(r) => {
            order.wait_for_produces().await;
            ready(delete_topics(ctx, r).await.into())
        }
        B::DescribeConfigs(r) => ready(describe_configs(ctx, r).into()),
        B::AlterConfigs(r) => ready(alter_configs(ctx, r).await.into()),
        B::Produce(r) => {
            let no_ack = r.acks() == Acks::None;
            order.produces.fetch_add(1, AtomicOrdering::AcqRel);
            let guard = ProduceGuard(order.clone());
            let pending = start_produce(ctx, r).await;
            Started::Pending(Box::pin(async move {
                let resp: ProduceResponse = pending.await;
                drop(guard);
                (!no_ack).then(|| Response::new(id, response::Body::from(resp)))
            }))
        }
        B::Fetch(r) => {
            order.wait_for_produces().await;
            let ctx = ctx.clone();
            Started::Pending(Box::pin(async move {
                let resp: FetchResponse = fetch(&ctx, r).await;
                Some(Response::new(id, response::Body::from(resp)))
            }))
        }
        B::ListOffsets(r) => {
            order.wait_for_produces().await;
            ready(list_offsets(ctx, r).into())
        }
        B::InitProducerId(r) => ready(init_producer_id(ctx, r).into()),
        B::FindCoordinator(_) => ready(
            FindCoordinatorResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                node_id: ctx.config.node_id,
                host: ctx.advertised.ip().to_string(),
                port: u32::from(ctx.advertised.port()),
            }
            .into(),
        ),
        B::GroupHeartbeat(r) => ready(ctx.groups.heartbeat(&ctx.topics, r).into()),
        B::OffsetCommit(r) => ready(ctx.groups.commit(&ctx.topics, r).await.into()),
        B::OffsetFetch(r) => ready(ctx.groups.fetch(&r).into()),
        B::ListGroups(_) => ready(ctx.groups.list().into()),
        B::DescribeGroups(r) => ready(ctx.groups.describe(&ctx.topics, &r.groups).into()),
        B::DeleteGroups(r) => ready(ctx.groups.delete(&ctx.topics, &r.groups).await.into()),
    }
}

fn init_producer_id(ctx: &Context, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let fail = |code: ErrorCode, msg: String| InitProducerIdResponse {
        error_code: code.into(),
        error_message: Some(msg),
        producer_id: -1,
        producer_epoch: -1,
    };
    if req.transactional_id.is_some() {
        return fail(
            ErrorCode::InvalidRequest,
            "transactions are not supported yet".into(),
        );
    }
    // A producer that has an id asks for the next epoch (fencing its older self); one that has
    // none, or whose epoch cannot grow, gets a new id.
    let bump = req.producer_id >= 0 && (0..i32::from(i16::MAX)).contains(&req.producer_epoch);
    if bump {
        return InitProducerIdResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            producer_id: req.producer_id,
            producer_epoch: req.producer_epoch + 1,
        };
    }
    match ctx.producer_ids.next() {
        Ok(id) => InitProducerIdResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            producer_id: id,
            producer_epoch: 0,
        },
        Err(e) => fail(ErrorCode::StorageError, e.to_string()),
    }
}

async fn metadata(ctx: &Context, req: MetadataRequest) -> MetadataResponse {
    if req.allow_auto_topic_creation && ctx.config.auto_create_topics {
        for name in &req.topics {
            if ctx.topics.get(name).is_none()
                && strom_protocol::topic::validate_topic_name(name).is_ok()
                && let Err((code, msg)) = ctx
                    .topics
                    .get_or_create(name, ctx.config.default_partitions)
                    .await
            {
                tracing::warn!(topic = %name, ?code, %msg, "auto-creation from metadata failed");
            }
        }
    }
    let topics = if req.all_topics {
        ctx.topics.all()
    } else {
        Vec::new()
    };
    let mut out: Vec<TopicMetadata> = topics
        .iter()
        .map(|t| topic_metadata(ctx, &t.name, Some(t)))
        .collect();
    for name in &req.topics {
        if req.all_topics {
            continue;
        }
        let t = ctx.topics.get(name);
        out.push(topic_metadata(ctx, name, t.as_ref()));
    }
    MetadataResponse {
        brokers: vec![BrokerMetadata {
            node_id: ctx.config.node_id,
            host: ctx.advertised.ip().to_string(),
            port: u32::from(ctx.advertised.port()),
            rack: None,
        }],
        topics: out,
        cluster_id: None,
    }
}

fn topic_metadata(
    ctx: &Context,
    name: &str,
    topic: Option<&Arc<crate::topics::Topic>>,
) -> TopicMetadata {
    let Some(t) = topic else {
        let code = if strom_protocol::topic::validate_topic_name(name).is_err() {
            ErrorCode::InvalidTopicName
        } else {
            ErrorCode::UnknownTopicOrPartition
        };
        return TopicMetadata {
            name: name.to_string(),
            error_code: code.into(),
            partitions: Vec::new(),
            is_internal: false,
        };
    };
    TopicMetadata {
        name: name.to_string(),
        error_code: ErrorCode::None.into(),
        partitions: t
            .partitions
            .iter()
            .map(|p| PartitionMetadata {
                partition: p.index,
                error_code: ErrorCode::None.into(),
                leader_id: ctx.config.node_id,
                leader_epoch: 0,
                replica_nodes: vec![ctx.config.node_id],
                isr_nodes: vec![ctx.config.node_id],
                log_start_offset: p.reader().start_offset(),
                log_end_offset: p.reader().end_offset(),
                size_bytes: p.reader().size_bytes(),
            })
            .collect(),
        is_internal: is_internal_topic(name),
    }
}

async fn create_topics(ctx: &Context, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let partitions = t
            .num_partitions
            .map_or(i64::from(ctx.config.default_partitions), i64::from);
        let overrides: BTreeMap<String, String> = t.configs.into_iter().collect();
        let result = if req.validate_only {
            ctx.topics
                .check_create(&t.name, partitions, &overrides)
                .map(|_| ())
        } else {
            ctx.topics
                .create(&t.name, partitions, overrides)
                .await
                .map(|_| ())
        };
        let (error_code, error_message) = split(result);
        topics.push(CreatableTopicResult {
            name: t.name,
            error_code: error_code.into(),
            error_message,
            num_partitions: if error_code == ErrorCode::None {
                partitions as i32
            } else {
                -1
            },
        });
    }
    CreateTopicsResponse { topics }
}

fn split(r: Result<(), TopicError>) -> (ErrorCode, Option<String>) {
    match r {
        Ok(()) => (ErrorCode::None, None),
        Err((code, msg)) => (code, Some(msg)),
    }
}

async fn delete_topics(ctx: &Context, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for name in req.topics {
        let (error_code, error_message) = split(ctx.topics.delete(&name).await);
        topics.push(DeletableTopicResult {
            name,
            error_code: error_code.into(),
            error_message,
        });
    }
    DeleteTopicsResponse { topics }
}

fn describe_configs(ctx: &Context, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let defaults = strom_storage::LogConfig::default().pairs();
    let broker = ctx.topics.defaults().pairs();
    let topics = req
        .topics
        .into_iter()
        .map(|name| match ctx.topics.get(&name) {
            None => DescribeConfigsResult {
                error_code: ErrorCode::UnknownTopicOrPartition.into(),
                error_message: Some(format!("no topic {name}")),
                name,
                configs: Vec::new(),
            },
            Some(t) => {
                let overrides = t.overrides();
                let configs = t
                    .config()
                    .pairs()
                    .into_iter()
                    .zip(defaults.iter().zip(&broker))
                    .filter(|((k, _), _)| {
                        req.config_names.is_empty() || req.config_names.iter().any(|n| n == k)
                    })
                    .map(|((k, v), ((_, dv), (_, bv)))| {
                        let source = if overrides.contains_key(k) {
                            ConfigSource::Topic
                        } else if bv != dv {
                            ConfigSource::Broker
                        } else {
                            ConfigSource::Default
                        };
                        ConfigEntry {
                            name: k.to_string(),
                            value: v,
                            source: source as i32,
                            read_only: false,
                        }
                    })
                    .collect();
                DescribeConfigsResult {
                    name,
                    error_code: ErrorCode::None.into(),
                    error_message: None,
                    configs,
                }
            }
        })
        .collect();
    DescribeConfigsResponse { topics }
}

async fn alter_configs(ctx: &Context, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let set: BTreeMap<String, String> = t.set.into_iter().collect();
        let (error_code, error_message) = split(
            ctx.topics
                .alter(&t.name, &set, &t.reset, req.validate_only)
                .await,
        );
        topics.push(AlterConfigsResult {
            name: t.name,
            error_code: error_code.into(),
            error_message,
        });
    }
    AlterConfigsResponse { topics }
}

/// Splits a partition's records into batches and validates each (length, magic, CRC, record
/// count, the topic's max.message.bytes). All or nothing: any bad batch rejects the partition.
fn validate_records(
    records: &bytes::Bytes,
    max_message_bytes: u64,
) -> Result<Vec<ValidBatch>, TopicError> {
    let mut batches = Vec::new();
    let mut iter = BatchIter::new(records);
    for item in iter.by_ref() {
        let (range, header) = item.map_err(|e| (batch_code(&e), e.to_string()))?;
        if header.total_len() as u64 > max_message_bytes {
            return Err((
                ErrorCode::MessageTooLarge,
                format!(
                    "batch of {} bytes exceeds max.message.bytes = {max_message_bytes}",
                    header.total_len()
                ),
            ));
        }
        if header.is_control() {
            return Err((
                ErrorCode::InvalidRecord,
                "control batches are written by the broker, not by producers".into(),
            ));
        }
        if let strom_protocol::batch::Compression::Unknown(codec) = header.compression() {
            return Err((
                ErrorCode::InvalidRecord,
                format!("unknown compression codec {codec}"),
            ));
        }
        let b =
            ValidBatch::new(records.slice(range)).map_err(|e| (batch_code(&e), e.to_string()))?;
        batches.push(b);
    }
    if iter.position() != records.len() {
        // A batch whose declared length runs past the records: too large if its header says
        // so, otherwise truncated.
        let rest = &records[iter.position()..];
        return Err(match strom_protocol::batch::peek_total_len(rest) {
            Ok(Some(n)) if n as u64 > max_message_bytes => (
                ErrorCode::MessageTooLarge,
                format!("batch of {n} bytes exceeds max.message.bytes = {max_message_bytes}"),
            ),
            _ => (
                ErrorCode::CorruptMessage,
                format!("{} trailing bytes are not a whole batch", rest.len()),
            ),
        });
    }
    if batches.is_empty() {
        return Err((
            ErrorCode::InvalidRecord,
            "no record batch in the request".into(),
        ));
    }
    Ok(batches)
}

/// A produce's in-order part: find (or create) the topics, validate every batch, and queue the
/// batches on their partitions' writers. The returned future waits for the acknowledgements.
async fn start_produce(
    ctx: &Arc<Context>,
    req: ProduceRequest,
) -> impl Future<Output = ProduceResponse> + Send + use<> {
    let durability = if req.acks() == Acks::Durable {
        Durability::Fsynced
    } else {
        Durability::Appended
    };
    let timeout_ms = if req.timeout_ms == 0 {
        ctx.config.produce_timeout_ms
    } else {
        req.timeout_ms
    };
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    // Queue every partition's batches before waiting for any, so partitions append in parallel.
    let mut pending: Vec<(String, Vec<(i32, Pending)>)> = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = if is_internal_topic(&t.name) {
            Err((
                ErrorCode::InvalidTopicName,
                format!("{} is internal: only the broker writes to it", t.name),
            ))
        } else if ctx.config.auto_create_topics {
            ctx.topics
                .get_or_create(&t.name, ctx.config.default_partitions)
                .await
        } else {
            ctx.topics.get(&t.name).ok_or_else(|| {
                (
                    ErrorCode::UnknownTopicOrPartition,
                    format!("no topic {}", t.name),
                )
            })
        };
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let state = match &topic {
                Err(e) => Pending::Done(e.clone()),
                Ok(topic) => match topic.partition(p.partition) {
                    None => Pending::Done((
                        ErrorCode::UnknownTopicOrPartition,
                        format!("topic {} has no partition {}", t.name, p.partition),
                    )),
                    Some(part) => {
                        match validate_records(&p.records, topic.config().max_message_bytes) {
                            Err(e) => Pending::Done(e),
                            Ok(batches) => Pending::Waiting(
                                part.append(batches, durability).await,
                                part.clone(),
                            ),
                        }
                    }
                },
            };
            parts.push((p.partition, state));
        }
        pending.push((t.name, parts));
    }
    async move {
        let mut topics = Vec::with_capacity(pending.len());
        for (name, parts) in pending {
            let mut partitions = Vec::with_capacity(parts.len());
            for (partition, state) in parts {
                let (result, log_start) = match state {
                    Pending::Done(e) => (Err(e), -1),
                    Pending::Waiting(rx, part) => {
                        let r = match tokio::time::timeout_at(deadline, rx).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(_)) => Err((
                                ErrorCode::StorageError,
                                "the partition writer stopped".to_string(),
                            )),
                            Err(_) => Err((
                                ErrorCode::RequestTimedOut,
                                format!(
                                    "not acknowledged within {timeout_ms} ms; the batches may still be appended"
                                ),
                            )),
                        };
                        (r, part.reader().start_offset())
                    }
                };
                partitions.push(match result {
                    Ok(base_offset) => PartitionProduceResponse {
                        partition,
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                        base_offset,
                        log_start_offset: log_start,
                    },
                    Err((code, msg)) => PartitionProduceResponse {
                        partition,
                        error_code: code.into(),
                        error_message: Some(msg),
                        base_offset: -1,
                        log_start_offset: log_start,
                    },
                });
            }
            topics.push(TopicProduceResponse { name, partitions });
        }
        ProduceResponse { topics }
    }
}

enum Pending {
    Done(TopicError),
    Waiting(
        tokio::sync::oneshot::Receiver<AppendReply>,
        Arc<crate::partition::Partition>,
    ),
}

async fn fetch(ctx: &Arc<Context>, req: FetchRequest) -> FetchResponse {
    let max_wait =
        Duration::from_millis(u64::from(req.max_wait_ms.min(ctx.config.fetch_max_wait_ms)));
    let deadline = Instant::now() + max_wait;
    loop {
        // Take the current end offsets before reading, so an append between the read and the
        // wait is not missed.
        let mut watchers = Vec::new();
        for t in &req.topics {
            if let Some(topic) = ctx.topics.get(&t.name) {
                for p in &t.partitions {
                    if let Some(part) = topic.partition(p.partition) {
                        let mut w = part.watch_end();
                        w.borrow_and_update();
                        watchers.push(w);
                    }
                }
            }
        }
        let (resp, bytes, errors) = read_fetch(ctx, &req);
        if errors
            || bytes >= u64::from(req.min_bytes)
            || watchers.is_empty()
            || Instant::now() >= deadline
        {
            return resp;
        }
        let mut changed: FuturesUnordered<_> = watchers.iter_mut().map(|w| w.changed()).collect();
        tokio::select! {
            _ = changed.next() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = ctx.shutdown.cancelled() => return resp,
        }
    }
}

/// One pass over the partitions of a fetch: (response, record bytes, whether any partition failed).
fn read_fetch(ctx: &Context, req: &FetchRequest) -> (FetchResponse, u64, bool) {
    let mut budget = if req.max_bytes == 0 {
        ctx.config.fetch_max_bytes
    } else {
        req.max_bytes.min(ctx.config.fetch_max_bytes)
    } as usize;
    let mut total = 0u64;
    let mut errors = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let topic = ctx.topics.get(&t.name);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let part = topic
                .as_ref()
                .and_then(|topic| topic.partition(p.partition));
            let Some(part) = part else {
                errors = true;
                partitions.push(FetchPartitionResponse {
                    partition: p.partition,
                    error_code: ErrorCode::UnknownTopicOrPartition.into(),
                    error_message: Some(format!(
                        "no partition {} of topic {}",
                        p.partition, t.name
                    )),
                    high_watermark: -1,
                    log_start_offset: -1,
                    records: bytes::Bytes::new(),
                });
                continue;
            };
            let reader = part.reader();
            let limit = if p.partition_max_bytes == 0 {
                ctx.config.fetch_partition_max_bytes
            } else {
                p.partition_max_bytes
            } as usize;
            // Once something is in the response, stay within the budget; the first batch of the
            // response may exceed it so a consumer always makes progress.
            let limit = if total > 0 { limit.min(budget) } else { limit };
            let result = if total > 0 && limit == 0 {
                Ok(None)
            } else {
                reader.read(p.fetch_offset, limit).map(Some)
            };
            let mut resp = FetchPartitionResponse {
                partition: p.partition,
                error_code: ErrorCode::None.into(),
                error_message: None,
                high_watermark: reader.end_offset(),
                log_start_offset: reader.start_offset(),
                records: bytes::Bytes::new(),
            };
            match result {
                Ok(Some(r)) => {
                    total += r.data.len() as u64;
                    budget = budget.saturating_sub(r.data.len());
                    resp.high_watermark = r.log_end;
                    resp.log_start_offset = r.log_start;
                    resp.records = r.data;
                }
                Ok(None) => {}
                Err(e) => {
                    errors = true;
                    if let StorageError::OffsetOutOfRange { start, end, .. } = &e {
                        resp.log_start_offset = *start;
                        resp.high_watermark = *end;
                    } else {
                        tracing::error!(topic = %t.name, partition = p.partition, error = %e, "fetch failed");
                    }
                    resp.error_code = storage_code(&e).into();
                    resp.error_message = Some(e.to_string());
                }
            }
            partitions.push(resp);
        }
        topics.push(FetchTopicResponse {
            name: t.name.clone(),
            partitions,
        });
    }
    (FetchResponse { topics }, total, errors)
}

fn list_offsets(ctx: &Context, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.topics.get(&t.name);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut out = ListOffsetsPartitionResponse {
                        partition: p.partition,
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                        offset: -1,
                        timestamp_ms: -1,
                    };
                    let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                        out.error_code = ErrorCode::UnknownTopicOrPartition.into();
                        out.error_message =
                            Some(format!("no partition {} of topic {}", p.partition, t.name));
                        return out;
                    };
                    let r = part.reader();
                    match p.spec() {
                        OffsetSpec::Earliest => out.offset = r.start_offset(),
                        OffsetSpec::Latest => out.offset = r.end_offset(),
                        OffsetSpec::Timestamp => match r.offset_for_time(p.timestamp_ms) {
                            Ok(Some(o)) => {
                                out.offset = o;
                                out.timestamp_ms = p.timestamp_ms;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                out.error_code = storage_code(&e).into();
                                out.error_message = Some(e.to_string());
                            }
                        },
                        OffsetSpec::Unspecified => {
                            out.error_code = ErrorCode::InvalidRequest.into();
                            out.error_message = Some("offset spec is unspecified".into());
                        }
                    }
                    out
                })
                .collect();
            ListOffsetsTopicResponse {
                name: t.name,
                partitions,
            }
        })
        .collect();
    ListOffsetsResponse { topics }
}
