//! strom's own protocol front-end: decodes protobuf envelopes, calls the core, encodes the
//! answers. It holds no broker logic: each arm converts a request into the core's types and the
//! result back (docs/protocol.md is the wire).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::metadata::host_port;
use bytes::{Bytes, BytesMut};
use strom_protocol::ErrorCode;
use strom_protocol::api::{api_versions_response, check_version};
use strom_protocol::messages::*;
use strom_protocol::{decode_request, decode_request_header, encode_response_chunks};

use crate::core::admin::{self, OffsetQuery};
use crate::core::fetch::{self as core_fetch, FetchPartition};
use crate::core::groups::Heartbeat;
use crate::core::groups::offsets::{CommitOffset, Committer};
use crate::core::partition::Durability;
use crate::core::produce;
use crate::core::session::Session;
use crate::core::{Core, Failure};
use crate::net::{Frontend, Started};

mod codes;
mod queues;

/// The native protocol over the core.
#[derive(Debug)]
pub(crate) struct Native {
    core: Arc<Core>,
    /// The address clients reach this listener at (for Metadata and FindCoordinator).
    advertised: SocketAddr,
}

impl Native {
    pub fn new(core: Arc<Core>, advertised: SocketAddr) -> Self {
        Self { core, advertised }
    }
}

impl Frontend for Native {
    type Response = Response;
    type Connection = Session;

    fn connect(&self, _peer: SocketAddr) -> Session {
        Session::default()
    }

    /// Decodes a request and runs its in-order part. A malformed request whose header still
    /// reads gets an error response with its correlation id; one without a readable header
    /// closes the connection (docs/protocol.md, section 3): there is no id to answer with.
    async fn start(
        &self,
        session: &Arc<Session>,
        frame: Bytes,
    ) -> Result<Started<Response>, String> {
        // Decoding multiplies the size of small repeated fields (docs/protocol.md, section 9):
        // only Produce, whose bulk is record bytes that stay slices of the frame, may use the
        // whole frame limit.
        let config = &self.core.config;
        let control_limit = config.max_control_frame_bytes.min(config.max_frame_bytes);
        if frame.len() > control_limit as usize {
            let h = decode_request_header(&frame)
                .map_err(|e| format!("request without a readable header: {e}"))?;
            if h.api_key != ApiKey::Produce as i32 {
                return Ok(Started::Ready(Some(Response::error(
                    h.correlation_id,
                    ErrorCode::InvalidRequest,
                    Some(format!(
                        "a {} byte request is over max_control_frame_bytes = {control_limit} (only Produce may be larger)",
                        frame.len()
                    )),
                ))));
            }
        }
        match decode_request(frame.clone()) {
            Ok(request) => Ok(self.dispatch(session, request).await),
            Err(error) => {
                let h = decode_request_header(&frame)
                    .map_err(|e| format!("request without a readable header: {e}"))?;
                let code = check_version(&h).err().unwrap_or(error.error_code());
                tracing::debug!(correlation_id = h.correlation_id, %error, "malformed request");
                Ok(Started::Ready(Some(Response::error(
                    h.correlation_id,
                    code,
                    Some(error.to_string()),
                ))))
            }
        }
    }

    fn observe(&self, response: &Response, elapsed: std::time::Duration) {
        // A request that fails whole has its code in the header and no body (nor an API).
        let top = response.header.as_ref().map_or(0, |h| h.error_code);
        let key = response.body.as_ref().map_or(-1, |b| b.api_key() as i32);
        let api = self.core.stats.native.answered(key, elapsed, [top]);
        if let Some(body) = &response.body {
            codes::error_codes(body, &mut |code| api.error(code));
        }
    }

    fn encode(
        &self,
        response: &Response,
        scratch: &mut BytesMut,
        chunks: &mut Vec<Bytes>,
    ) -> Result<(), String> {
        encode_response_chunks(response, scratch, chunks).map_err(|e| e.to_string())
    }
}

impl Native {
    /// Starts one request. This part runs in request order on the connection's reader (so
    /// appends from one connection reach each partition in the order they were sent, and admin
    /// changes apply in order); waiting for acknowledgements and long polls is left to the
    /// returned future.
    async fn dispatch(&self, session: &Arc<Session>, request: Request) -> Started<Response> {
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
        let core = &self.core;
        let ready = |body: response::Body| Started::Ready(Some(Response::new(id, body)));
        match body {
            B::ApiVersions(_) => {
                let mut r = api_versions_response(header.api_version);
                r.max_frame_bytes = core.config.max_frame_bytes;
                ready(r.into())
            }
            B::Metadata(r) => {
                session.wait_for_produces().await;
                ready(self.metadata(r).await.into())
            }
            B::CreateTopics(r) => ready(self.create_topics(r).await.into()),
            B::DeleteTopics(r) => {
                session.wait_for_produces().await;
                ready(self.delete_topics(r).await.into())
            }
            B::DescribeConfigs(r) => ready(self.describe_configs(r).into()),
            B::AlterConfigs(r) => ready(self.alter_configs(r).await.into()),
            B::Produce(r) => {
                let no_ack = r.acks() == Acks::None;
                let guard = session.produce_started();
                let pending = core.start_produce(produce_request(r)).await;
                Started::Pending(Box::pin(async move {
                    let resp = produce_response(pending.await);
                    drop(guard);
                    (!no_ack).then(|| Response::new(id, response::Body::from(resp)))
                }))
            }
            B::Fetch(r) => {
                session.wait_for_produces().await;
                let core = core.clone();
                Started::Pending(Box::pin(async move {
                    let result = core.fetch(&fetch_request(r)).await;
                    Some(Response::new(
                        id,
                        response::Body::from(fetch_response(result)),
                    ))
                }))
            }
            B::ListOffsets(r) => {
                session.wait_for_produces().await;
                ready(self.list_offsets(r).into())
            }
            B::OffsetForLeaderEpoch(r) => ready(self.offset_for_leader_epoch(r).await.into()),
            B::InitProducerId(r) => ready(self.init_producer_id(r).await.into()),
            B::FindCoordinator(r) => ready(self.find_coordinator(r).await.into()),
            B::GroupHeartbeat(r) => ready(self.group_heartbeat(r).await.into()),
            B::OffsetCommit(r) => ready(self.offset_commit(r).await.into()),
            B::OffsetFetch(r) => ready(self.offset_fetch(r).into()),
            B::ListGroups(_) => ready(self.list_groups().into()),
            B::DescribeGroups(r) => ready(self.describe_groups(r).into()),
            B::DeleteGroups(r) => ready(self.delete_groups(r).await.into()),
            B::QueueJoin(r) => ready(queues::join(core, r).await.into()),
            B::QueueFetch(r) => {
                session.wait_for_produces().await;
                let core = core.clone();
                Started::Pending(Box::pin(async move {
                    let resp = queues::fetch(&core, r).await;
                    Some(Response::new(id, response::Body::from(resp)))
                }))
            }
            B::QueueAck(r) => ready(queues::ack(core, r).await.into()),
            B::QueueLeave(r) => ready(queues::leave(core, r).await.into()),
            B::DescribeQueueGroups(r) => ready(queues::describe(core, r).await.into()),
            B::ResetQueueGroup(r) => ready(queues::reset(core, r).await.into()),
            B::Redrive(r) => ready(queues::redrive(core, r).await.into()),
            B::DescribeRedrive(r) => ready(queues::describe_redrive(core, r).await.into()),
            B::DescribeCluster(_) => ready(describe_cluster(core).await.into()),
            B::ReplicaFetch(r) => {
                let core = core.clone();
                Started::Pending(Box::pin(async move {
                    let resp = core.replica_fetch(r).await;
                    Some(Response::new(id, response::Body::from(resp)))
                }))
            }
        }
    }

    /// FindCoordinator: the leader of the group's `__consumer_offsets` partition, at its native
    /// address (the topic is created on the first request that needs it).
    async fn find_coordinator(&self, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
        let me = self.core.broker_id();
        let found = match req.key_type() {
            CoordinatorType::Group => self.core.find_coordinator(&req.key).await,
            CoordinatorType::Queue => self.core.find_queue_coordinator(&req.key).await,
        };
        let found = found.and_then(|b| {
            match b.endpoints.native.as_deref().and_then(host_port) {
                Some((host, port)) => Ok((b.id, host.to_string(), u32::from(port))),
                // This broker always knows where it listens.
                None if b.id == me => Ok((
                    me,
                    self.advertised.ip().to_string(),
                    u32::from(self.advertised.port()),
                )),
                None => Err((
                    ErrorCode::CoordinatorNotAvailable,
                    format!(
                        "the coordinator of {}, broker {}, has no native listener",
                        req.key, b.id
                    ),
                )),
            }
        });
        match found {
            Ok((node_id, host, port)) => FindCoordinatorResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                node_id,
                host,
                port,
            },
            Err((code, msg)) => FindCoordinatorResponse {
                error_code: code.into(),
                error_message: Some(msg),
                node_id: -1,
                host: String::new(),
                port: 0,
            },
        }
    }

    async fn group_heartbeat(&self, req: GroupHeartbeatRequest) -> GroupHeartbeatResponse {
        // A join may start the group: `__consumer_offsets` must exist (the heartbeat answers
        // COORDINATOR_NOT_AVAILABLE when it cannot be created).
        if req.member_epoch == 0 {
            let _ = self.core.offsets_topic_ready().await;
            if let Err((code, msg)) = self.core.consumer_group_may_start(&req.group_id).await {
                return GroupHeartbeatResponse {
                    error_code: code.into(),
                    error_message: Some(msg),
                    member_id: req.member_id,
                    member_epoch: -1,
                    ..Default::default()
                };
            }
        }
        let hb = Heartbeat {
            owned: Some(from_wire(&req.owned_partitions)),
            subscribed: req.subscribed_topics.map(|t| t.names.into_iter().collect()),
            group_id: req.group_id,
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            session_timeout_ms: req.session_timeout_ms,
            assignor: req.assignor,
        };
        let r = self.core.groups.heartbeat(&self.core.catalog(), hb);
        let (error_code, error_message) = match r.error {
            None => (ErrorCode::None, None),
            Some((code, msg)) => (code, Some(msg)),
        };
        GroupHeartbeatResponse {
            error_code: error_code.into(),
            error_message,
            member_id: r.member_id,
            member_epoch: r.member_epoch,
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            assignment: to_wire(&r.assignment),
        }
    }

    async fn offset_commit(&self, req: OffsetCommitRequest) -> OffsetCommitResponse {
        let who = if req.member_id.is_empty() && req.member_epoch < 0 {
            Committer::Admin
        } else {
            Committer::Member {
                id: req.member_id,
                epoch: req.member_epoch,
            }
        };
        let offsets = req
            .topics
            .into_iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .into_iter()
                    .map(|p| CommitOffset {
                        partition: p.partition,
                        offset: p.offset,
                        metadata: p.metadata,
                    })
                    .collect();
                (t.name, parts)
            })
            .collect();
        let core = &self.core;
        let committed = match core.offsets_topic_ready().await {
            Ok(()) => {
                core.groups
                    .commit(&core.catalog(), &req.group_id, who, offsets)
                    .await
            }
            Err(failure) => Err(failure),
        };
        match committed {
            Ok(results) => OffsetCommitResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                topics: results
                    .into_iter()
                    .map(|(name, parts)| OffsetCommitTopicResponse {
                        name,
                        partitions: parts
                            .into_iter()
                            .map(|(partition, code)| OffsetCommitPartitionResponse {
                                partition,
                                error_code: code.into(),
                            })
                            .collect(),
                    })
                    .collect(),
            },
            Err((code, msg)) => OffsetCommitResponse {
                error_code: code.into(),
                error_message: Some(msg),
                topics: Vec::new(),
            },
        }
    }

    fn offset_fetch(&self, req: OffsetFetchRequest) -> OffsetFetchResponse {
        let wanted = (!req.topics.is_empty()).then(|| {
            req.topics
                .into_iter()
                .map(|t| (t.topic, t.partitions))
                .collect()
        });
        let fetched = match self.core.groups.fetch(&req.group_id, wanted) {
            Ok(fetched) => fetched,
            Err((code, msg)) => {
                return OffsetFetchResponse {
                    error_code: code.into(),
                    error_message: Some(msg),
                    topics: Vec::new(),
                };
            }
        };
        OffsetFetchResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            topics: fetched
                .into_iter()
                .map(|(name, parts)| OffsetFetchTopicResponse {
                    name,
                    partitions: parts
                        .into_iter()
                        .map(
                            |(partition, offset, metadata)| OffsetFetchPartitionResponse {
                                partition,
                                offset,
                                metadata,
                                error_code: ErrorCode::None.into(),
                            },
                        )
                        .collect(),
                })
                .collect(),
        }
    }

    fn list_groups(&self) -> ListGroupsResponse {
        ListGroupsResponse {
            groups: self
                .core
                .groups
                .list()
                .into_iter()
                .map(|g| ListedGroup {
                    group_id: g.name,
                    state: g.state.name().to_string(),
                    members: u32::try_from(g.members.len()).unwrap_or(u32::MAX),
                })
                .collect(),
        }
    }

    fn describe_groups(&self, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let core = &self.core;
        let groups = req
            .groups
            .into_iter()
            .map(
                |name| match core.groups.describe_group(&core.topics, &name) {
                    // Another broker's group, or one nobody can serve now.
                    Err((code, msg)) => dead_group(name, code, msg),
                    Ok(None) => {
                        let msg = format!("no group {name}");
                        dead_group(name, ErrorCode::GroupIdNotFound, msg)
                    }
                    Ok(Some(g)) => DescribedGroup {
                        group_id: g.name,
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                        state: g.state.name().into(),
                        group_epoch: g.epoch,
                        assignor: g.assignor,
                        members: g
                            .members
                            .into_iter()
                            .map(|m| GroupMember {
                                member_id: m.id,
                                member_epoch: m.epoch,
                                subscribed_topics: m.topics.into_iter().collect(),
                                assignment: to_wire(&m.assigned),
                                session_timeout_ms: m.session_ms,
                            })
                            .collect(),
                        offsets: g
                            .offsets
                            .into_iter()
                            .map(|o| GroupOffset {
                                lag: o.lag(),
                                topic: o.topic,
                                partition: o.partition,
                                committed_offset: o.committed,
                                log_end_offset: o.log_end,
                                metadata: o.metadata,
                            })
                            .collect(),
                    },
                },
            )
            .collect();
        DescribeGroupsResponse { groups }
    }

    async fn delete_groups(&self, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(req.groups.len());
        for group_id in req.groups {
            // A queue group of this id is deleted the same way.
            let deleted = if self.core.queues.contains(&group_id) {
                self.core.queue_delete(&group_id).await
            } else {
                self.core
                    .groups
                    .delete_group(&self.core.topics, &group_id)
                    .await
            };
            let (code, msg) = split(deleted);
            results.push(DeletedGroup {
                group_id,
                error_code: code.into(),
                error_message: msg,
            });
        }
        DeleteGroupsResponse { results }
    }

    async fn init_producer_id(&self, req: InitProducerIdRequest) -> InitProducerIdResponse {
        match self
            .core
            .init_producer_id(
                req.transactional_id.is_some(),
                req.producer_id,
                req.producer_epoch,
            )
            .await
        {
            Ok((producer_id, producer_epoch)) => InitProducerIdResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                producer_id,
                producer_epoch,
            },
            Err((code, msg)) => InitProducerIdResponse {
                error_code: code.into(),
                error_message: Some(msg),
                producer_id: -1,
                producer_epoch: -1,
            },
        }
    }

    async fn metadata(&self, req: MetadataRequest) -> MetadataResponse {
        if req.allow_auto_topic_creation {
            self.core.auto_create(&req.topics).await;
        }
        let names = if req.all_topics {
            self.core.topic_names()
        } else {
            req.topics
        };
        let topics = names.iter().map(|name| self.topic_metadata(name)).collect();
        let brokers = self
            .core
            .brokers()
            .into_iter()
            .filter_map(|b| {
                let (host, port) = host_port(b.endpoints.native.as_deref()?)?;
                Some(BrokerMetadata {
                    node_id: b.id,
                    host: host.to_string(),
                    port: u32::from(port),
                    rack: b.rack,
                })
            })
            .collect();
        MetadataResponse {
            brokers,
            topics,
            cluster_id: None,
        }
    }

    fn topic_metadata(&self, name: &str) -> TopicMetadata {
        let view = match self.core.topic_view(name) {
            Ok(view) => view,
            Err(code) => {
                return TopicMetadata {
                    name: name.to_string(),
                    error_code: code.into(),
                    partitions: Vec::new(),
                    is_internal: false,
                };
            }
        };
        TopicMetadata {
            name: name.to_string(),
            error_code: ErrorCode::None.into(),
            partitions: view
                .partitions
                .into_iter()
                .map(|p| {
                    let code = if p.leader < 0 {
                        ErrorCode::LeaderNotAvailable
                    } else {
                        ErrorCode::None
                    };
                    // Offsets from the leader only: a follower's log end lags (clients ask
                    // the leader for the partitions the asked broker does not lead).
                    let led = p
                        .local
                        .as_ref()
                        .filter(|_| p.leader == self.core.broker_id());
                    let reader = led.map(|local| local.reader());
                    PartitionMetadata {
                        partition: p.index,
                        error_code: code.into(),
                        leader_id: p.leader,
                        leader_epoch: p.leader_epoch,
                        replica_nodes: p.replicas,
                        isr_nodes: p.isr,
                        log_start_offset: reader.as_ref().map_or(-1, |r| r.start_offset()),
                        log_end_offset: led.map_or(-1, |local| local.high_watermark()),
                        size_bytes: reader.as_ref().map_or(0, |r| r.size_bytes()),
                    }
                })
                .collect(),
            is_internal: view.internal,
        }
    }

    async fn create_topics(&self, req: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let overrides: BTreeMap<String, String> = t.configs.into_iter().collect();
            let result = self
                .core
                .create_topic(
                    &t.name,
                    t.num_partitions.map(i64::from),
                    t.replication_factor,
                    overrides,
                    req.validate_only,
                )
                .await;
            let (num_partitions, (error_code, error_message)) = match result {
                Ok(n) => (n, split(Ok(()))),
                Err(e) => (-1, split(Err(e))),
            };
            topics.push(CreatableTopicResult {
                name: t.name,
                error_code: error_code.into(),
                error_message,
                num_partitions,
            });
        }
        CreateTopicsResponse { topics }
    }

    async fn delete_topics(&self, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let mut topics = Vec::with_capacity(req.topics.len());
        for name in req.topics {
            let (error_code, error_message) = split(self.core.delete_topic(&name).await);
            topics.push(DeletableTopicResult {
                name,
                error_code: error_code.into(),
                error_message,
            });
        }
        DeleteTopicsResponse { topics }
    }

    fn describe_configs(&self, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
        let topics = req
            .topics
            .into_iter()
            .map(
                |name| match self.core.describe_configs(&name, &req.config_names) {
                    Err((code, msg)) => DescribeConfigsResult {
                        error_code: code.into(),
                        error_message: Some(msg),
                        name,
                        configs: Vec::new(),
                    },
                    Ok(entries) => DescribeConfigsResult {
                        name,
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                        configs: entries
                            .into_iter()
                            .map(|e| ConfigEntry {
                                name: e.name.to_string(),
                                value: e.value,
                                source: match e.source {
                                    admin::ConfigSource::Topic => ConfigSource::Topic,
                                    admin::ConfigSource::Broker => ConfigSource::Broker,
                                    admin::ConfigSource::Default => ConfigSource::Default,
                                } as i32,
                                read_only: false,
                            })
                            .collect(),
                    },
                },
            )
            .collect();
        DescribeConfigsResponse { topics }
    }

    async fn alter_configs(&self, req: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let set: BTreeMap<String, String> = t.set.into_iter().collect();
            let (error_code, error_message) = split(
                self.core
                    .alter_topic(&t.name, &set, &t.reset, req.validate_only)
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

    async fn offset_for_leader_epoch(
        &self,
        req: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let current = p.current_leader_epoch.unwrap_or(-1);
                let answer = self
                    .core
                    .epoch_end(&t.name, p.partition, current, p.leader_epoch)
                    .await;
                let (error_code, error_message, leader_epoch, end_offset) = match answer {
                    Ok((epoch, end)) => (ErrorCode::None, None, epoch, end),
                    Err((code, msg)) => (code, Some(msg), -1, -1),
                };
                partitions.push(OffsetForLeaderEpochPartitionResponse {
                    partition: p.partition,
                    error_code: error_code.into(),
                    error_message,
                    leader_epoch,
                    end_offset,
                });
            }
            topics.push(OffsetForLeaderEpochTopicResponse {
                name: t.name,
                partitions,
            });
        }
        OffsetForLeaderEpochResponse { topics }
    }

    fn list_offsets(&self, req: ListOffsetsRequest) -> ListOffsetsResponse {
        let topics = req
            .topics
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let query = match p.spec() {
                            OffsetSpec::Earliest => Ok(OffsetQuery::Earliest),
                            OffsetSpec::Latest => Ok(OffsetQuery::Latest),
                            OffsetSpec::Timestamp => Ok(OffsetQuery::Time(p.timestamp_ms)),
                            OffsetSpec::Unspecified => Err((
                                ErrorCode::InvalidRequest,
                                "offset spec is unspecified".to_string(),
                            )),
                        };
                        let epoch_known = self.core.check_leader_epoch(
                            &self.core.image(),
                            &t.name,
                            p.partition,
                            p.current_leader_epoch.unwrap_or(-1),
                        );
                        match query.and_then(|q| {
                            epoch_known?;
                            self.core.list_offset(&t.name, p.partition, q)
                        }) {
                            Ok((offset, timestamp_ms)) => ListOffsetsPartitionResponse {
                                partition: p.partition,
                                error_code: ErrorCode::None.into(),
                                error_message: None,
                                offset,
                                timestamp_ms,
                            },
                            Err((code, msg)) => ListOffsetsPartitionResponse {
                                partition: p.partition,
                                error_code: code.into(),
                                error_message: Some(msg),
                                offset: -1,
                                timestamp_ms: -1,
                            },
                        }
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
}

/// A set of partitions as the wire lists them: per topic, its partitions.
fn to_wire(set: &BTreeSet<(String, i32)>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in set {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn from_wire(list: &[TopicPartitions]) -> BTreeSet<(String, i32)> {
    list.iter()
        .flat_map(|tp| tp.partitions.iter().map(|&p| (tp.topic.clone(), p)))
        .collect()
}

/// A group DescribeGroups cannot describe, with why.
fn dead_group(group_id: String, code: ErrorCode, msg: String) -> DescribedGroup {
    DescribedGroup {
        error_code: code.into(),
        error_message: Some(msg),
        group_id,
        state: "dead".into(),
        group_epoch: -1,
        assignor: String::new(),
        members: Vec::new(),
        offsets: Vec::new(),
    }
}

fn split(r: Result<(), Failure>) -> (ErrorCode, Option<String>) {
    match r {
        Ok(()) => (ErrorCode::None, None),
        Err((code, msg)) => (code, Some(msg)),
    }
}

/// DescribeCluster: the active controller's view of the brokers and the metadata quorum, one
/// entry per node id that registered or is a member. A controller that cannot answer (no
/// quorum) is `REQUEST_TIMED_OUT` in the body, with the reason.
async fn describe_cluster(core: &Core) -> DescribeClusterResponse {
    let status = match core.cluster.status().await {
        Ok(status) => status,
        Err((code, message)) => {
            tracing::debug!(%message, "DescribeCluster: no answer from the controller");
            return DescribeClusterResponse {
                error_code: code.into(),
                error_message: Some(message),
                controller_id: -1,
                term: 0,
                committed_index: -1,
                brokers: Vec::new(),
            };
        }
    };
    // Node ids come from `node_id` (an i32 of at least 0); log indexes fit an i64.
    let node = |id: u64| i32::try_from(id).unwrap_or(-1);
    let index = |i: u64| i64::try_from(i).unwrap_or(i64::MAX);
    let mut brokers: BTreeMap<u64, ClusterBroker> = BTreeMap::new();
    let blank = |id: u64| ClusterBroker {
        node_id: node(id),
        broker_epoch: -1,
        native_address: None,
        kafka_address: None,
        http_address: None,
        alive: false,
        role: QuorumRole::Unspecified as i32,
        controller_address: None,
        metadata_index: -1,
        storage_failed: false,
    };
    for m in status.members {
        let b = brokers.entry(m.id).or_insert_with(|| blank(m.id));
        b.role = if m.voter {
            QuorumRole::Voter
        } else {
            QuorumRole::Learner
        } as i32;
        b.controller_address = Some(m.addr);
        b.metadata_index = m.matched.map_or(-1, index);
    }
    for r in status.brokers {
        let b = brokers.entry(r.id).or_insert_with(|| blank(r.id));
        b.broker_epoch = index(r.epoch);
        b.native_address = r.endpoints.native;
        b.kafka_address = r.endpoints.kafka;
        b.http_address = r.endpoints.http;
        b.alive = r.alive;
        b.storage_failed = r.storage_failed;
    }
    DescribeClusterResponse {
        error_code: ErrorCode::None.into(),
        error_message: None,
        controller_id: node(status.leader),
        term: status.term,
        committed_index: index(status.committed),
        brokers: brokers.into_values().collect(),
    }
}

fn produce_request(r: ProduceRequest) -> produce::ProduceRequest {
    produce::ProduceRequest {
        durability: match r.acks() {
            Acks::Durable => Durability::Fsynced,
            Acks::All => Durability::Replicated,
            Acks::Leader | Acks::None => Durability::Appended,
        },
        timeout_ms: Some(r.timeout_ms),
        topics: r
            .topics
            .into_iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .into_iter()
                    .map(|p| (p.partition, p.records, p.deliver_at_ms))
                    .collect();
                (t.name, parts)
            })
            .collect(),
    }
}

fn produce_response(topics: Vec<(String, Vec<produce::Appended>)>) -> ProduceResponse {
    ProduceResponse {
        topics: topics
            .into_iter()
            .map(|(name, parts)| TopicProduceResponse {
                name,
                partitions: parts
                    .into_iter()
                    .map(|a| match a.result {
                        Ok(base_offset) => PartitionProduceResponse {
                            partition: a.partition,
                            error_code: ErrorCode::None.into(),
                            error_message: None,
                            base_offset,
                            log_start_offset: a.log_start,
                        },
                        Err((code, msg)) => PartitionProduceResponse {
                            partition: a.partition,
                            error_code: code.into(),
                            error_message: Some(msg),
                            base_offset: -1,
                            log_start_offset: a.log_start,
                        },
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn fetch_request(r: FetchRequest) -> core_fetch::FetchRequest {
    core_fetch::FetchRequest {
        max_wait_ms: r.max_wait_ms,
        min_bytes: r.min_bytes,
        max_bytes: r.max_bytes,
        topics: r
            .topics
            .into_iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| FetchPartition {
                        partition: p.partition,
                        offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes,
                        leader_epoch: p.current_leader_epoch.unwrap_or(-1),
                    })
                    .collect();
                (t.name, parts)
            })
            .collect(),
    }
}

fn fetch_response(result: core_fetch::FetchResult) -> FetchResponse {
    FetchResponse {
        topics: result
            .into_iter()
            .map(|(name, parts)| FetchTopicResponse {
                name,
                partitions: parts
                    .into_iter()
                    .map(|f| {
                        let (error_code, error_message, records) = match f.result {
                            Ok(records) => (ErrorCode::None, None, records),
                            Err((code, msg)) => (code, Some(msg), Bytes::new()),
                        };
                        FetchPartitionResponse {
                            partition: f.partition,
                            error_code: error_code.into(),
                            error_message,
                            high_watermark: f.high_watermark,
                            log_start_offset: f.log_start,
                            records,
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}
