//! The Apache Kafka protocol front-end: a second listener (`kafka_listen`, default
//! `127.0.0.1:9092`) that lets unchanged Kafka clients (librdkafka, kafka-python, kcat, the Java
//! client) produce, consume and manage topics on the same core as the native protocol.
//!
//! A request goes: the connection machinery (`crate::net`) cuts the frame and enforces every
//! limit; [`Kafka::start`] reads the fixed header fields (api key, version, correlation id),
//! checks the API and version against [`versions`], caps the frame by API (only Produce may use
//! `max_frame_bytes`; everything else `max_control_frame_bytes`) before decoding, and decodes the
//! body with the `kafka-protocol` crate (patched so no decoder reserves memory beyond the bytes
//! present; vendor/kafka-protocol/STROM_PATCHES.md). The handler converts to the core's types,
//! calls the core, and encodes the answer at the request's version. Fetch responses are encoded
//! by hand ([`fetch`]) so stored batches go out as the very `Bytes` read from the segment maps.
//!
//! Bad input: a request too short for its header or whose body does not decode closes the
//! connection with a logged reason (as Kafka brokers do); an unknown API or an unsupported
//! version is answered with `UNSUPPORTED_VERSION` (ApiVersions with the version 0 answer that
//! lists what is supported, as KIP-511 asks).

mod admin;
mod cluster;
mod codes;
mod configs;
mod errors;
mod fetch;
mod group_admin;
mod groups;
mod metadata;
mod produce;
mod produce_request;
pub(crate) mod request;
mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use codes::ErrorCodes;
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use request::Parsed;

use crate::core::Core;
use crate::core::session::Session;
use crate::net::{Frontend, Started};

pub(crate) use errors::kafka_code;

/// The Kafka protocol over the core.
#[derive(Debug)]
pub(crate) struct Kafka {
    core: Arc<Core>,
    /// The address Kafka clients reach this listener at (Metadata, FindCoordinator).
    advertised: SocketAddr,
}

impl Kafka {
    pub fn new(core: Arc<Core>, advertised: SocketAddr) -> Self {
        Self { core, advertised }
    }
}

/// An encoded answer: the body's chunks, written after the length prefix and response header.
#[derive(Debug)]
pub(crate) struct KafkaResponse {
    correlation_id: i32,
    /// Response header version 1 (flexible: an empty tagged-field section after the id).
    flexible_header: bool,
    body: Vec<Bytes>,
    /// The API answered (-1: a request whose API is not served), for `/metrics`.
    api: i16,
    /// The error codes the answer carries (none, usually: no allocation then).
    errors: Vec<i16>,
}

/// A request whose API and version are known to be supported, with its body still encoded.
#[derive(Debug)]
pub(crate) struct Req {
    pub key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    /// The client's name for itself (`client.id`).
    pub client_id: String,
    pub body: Bytes,
}

/// One Kafka connection's state.
#[derive(Debug)]
pub(crate) struct Conn {
    session: Arc<Session>,
    peer: SocketAddr,
}

impl Req {
    /// Decodes the body as `M`; a body that does not decode closes the connection.
    pub fn decode<M: Decodable>(&mut self) -> Result<M, String> {
        M::decode(&mut self.body, self.version).map_err(|e| {
            format!(
                "malformed {:?} v{} request (correlation id {}): {e}",
                self.key, self.version, self.correlation_id
            )
        })
    }

    /// Encodes `msg` as this request's answer.
    pub fn respond<M: Encodable + ErrorCodes>(&self, msg: &M) -> Result<KafkaResponse, String> {
        encode_body(self.key, self.version, self.correlation_id, msg)
    }
}

fn encode_body<M: Encodable + ErrorCodes>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    msg: &M,
) -> Result<KafkaResponse, String> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf, version)
        .map_err(|e| format!("could not encode a {key:?} v{version} response: {e}"))?;
    let mut errors = Vec::new();
    msg.error_codes(&mut |code| errors.push(code));
    Ok(KafkaResponse {
        correlation_id,
        flexible_header: key.response_header_version(version) >= 1,
        body: vec![buf.freeze()],
        api: key as i16,
        errors,
    })
}

/// The answer to an API key this listener does not know, or a version it does not speak: the
/// correlation id and the error code, which is how every Kafka response that fails whole starts.
fn unsupported(correlation_id: i32) -> KafkaResponse {
    let code = kafka_protocol::ResponseError::UnsupportedVersion.code();
    KafkaResponse {
        correlation_id,
        flexible_header: false,
        body: vec![Bytes::copy_from_slice(&code.to_be_bytes())],
        api: -1,
        errors: vec![code],
    }
}

type Outcome = Result<Started<KafkaResponse>, String>;

fn ready(r: Result<KafkaResponse, String>) -> Outcome {
    r.map(|r| Started::Ready(Some(r)))
}

impl Frontend for Kafka {
    type Response = KafkaResponse;
    type Connection = Conn;

    fn connect(&self, peer: SocketAddr) -> Conn {
        Conn {
            session: Arc::new(Session::default()),
            peer,
        }
    }

    async fn start(&self, conn: &Arc<Conn>, frame: Bytes) -> Outcome {
        let config = &self.core.config;
        let limits = request::FrameLimits {
            max_frame_bytes: config.max_frame_bytes,
            max_control_frame_bytes: config.max_control_frame_bytes,
        };
        let req = match request::parse(frame, limits)? {
            Parsed::Unsupported { correlation_id } => {
                return ready(Ok(unsupported(correlation_id)));
            }
            Parsed::ApiVersionsFallback { correlation_id } => {
                // KIP-511: answer at version 0 with the supported list, so the client can retry
                // with a version both speak.
                let code = kafka_protocol::ResponseError::UnsupportedVersion.code();
                let list = versions::api_versions(code);
                return ready(encode_body(ApiKey::ApiVersions, 0, correlation_id, &list));
            }
            Parsed::Request {
                key,
                version,
                correlation_id,
                client_id,
                body,
            } => Req {
                key,
                version,
                correlation_id,
                client_id,
                body,
            },
        };
        self.dispatch(conn, req).await
    }

    fn observe(&self, response: &KafkaResponse, elapsed: std::time::Duration) {
        self.core.stats.kafka.answered(
            i32::from(response.api),
            elapsed,
            response.errors.iter().map(|&c| i32::from(c)),
        );
    }

    fn encode(
        &self,
        response: &KafkaResponse,
        scratch: &mut BytesMut,
        chunks: &mut Vec<Bytes>,
    ) -> Result<(), String> {
        let header_len = if response.flexible_header { 5 } else { 4 };
        let body_len: usize = response.body.iter().map(Bytes::len).sum();
        let len = i32::try_from(header_len + body_len)
            .map_err(|_| format!("a {body_len} byte response is too large to frame"))?;
        scratch.reserve(4 + header_len);
        scratch.put_i32(len);
        let header = ResponseHeader::default().with_correlation_id(response.correlation_id);
        header
            .encode(scratch, if response.flexible_header { 1 } else { 0 })
            .map_err(|e| format!("could not encode a response header: {e}"))?;
        chunks.push(scratch.split().freeze());
        chunks.extend(response.body.iter().cloned());
        Ok(())
    }
}

impl Kafka {
    async fn dispatch(&self, conn: &Conn, mut req: Req) -> Outcome {
        let session = &conn.session;
        match req.key {
            ApiKey::ApiVersions => ready(req.respond(&versions::api_versions(0))),
            ApiKey::Metadata => {
                session.wait_for_produces().await;
                let m = req.decode()?;
                ready(self.metadata(&req, m).await)
            }
            ApiKey::FindCoordinator => {
                let m = req.decode()?;
                ready(self.find_coordinator(&req, m).await)
            }
            ApiKey::Produce => self.produce(session, req).await,
            ApiKey::Fetch => {
                session.wait_for_produces().await;
                let m = req.decode()?;
                Ok(self.fetch(req, m))
            }
            ApiKey::ListOffsets => {
                session.wait_for_produces().await;
                let m = req.decode()?;
                ready(self.list_offsets(&req, m))
            }
            ApiKey::InitProducerId => {
                let m = req.decode()?;
                ready(self.init_producer_id(&req, m).await)
            }
            ApiKey::CreateTopics => {
                let m = req.decode()?;
                ready(self.create_topics(&req, m).await)
            }
            ApiKey::DeleteTopics => {
                session.wait_for_produces().await;
                let m = req.decode()?;
                ready(self.delete_topics(&req, m).await)
            }
            ApiKey::JoinGroup => {
                let m = req.decode()?;
                self.join_group(req, m, conn.peer).await
            }
            ApiKey::SyncGroup => {
                let m = req.decode()?;
                self.sync_group(req, m)
            }
            ApiKey::Heartbeat => {
                let m = req.decode()?;
                ready(self.heartbeat(&req, m))
            }
            ApiKey::LeaveGroup => {
                let m = req.decode()?;
                ready(self.leave_group(&req, m))
            }
            ApiKey::OffsetCommit => {
                let m = req.decode()?;
                ready(self.offset_commit(&req, m).await)
            }
            ApiKey::OffsetFetch => {
                let m = req.decode()?;
                ready(self.offset_fetch(&req, m))
            }
            ApiKey::ListGroups => {
                let m = req.decode()?;
                ready(self.list_groups(&req, m))
            }
            ApiKey::DescribeGroups => {
                let m = req.decode()?;
                ready(self.describe_groups(&req, m))
            }
            ApiKey::DeleteGroups => {
                let m = req.decode()?;
                ready(self.delete_groups(&req, m).await)
            }
            ApiKey::DescribeConfigs => {
                let m = req.decode()?;
                ready(self.describe_configs(&req, m))
            }
            ApiKey::AlterConfigs => {
                let m = req.decode()?;
                ready(self.alter_configs(&req, m).await)
            }
            ApiKey::IncrementalAlterConfigs => {
                let m = req.decode()?;
                ready(self.incremental_alter_configs(&req, m).await)
            }
            ApiKey::DescribeCluster => {
                let m = req.decode()?;
                ready(self.describe_cluster(&req, m))
            }
            ApiKey::OffsetForLeaderEpoch => {
                session.wait_for_produces().await;
                let m = req.decode()?;
                ready(self.offset_for_leader_epoch(&req, m).await)
            }
            ApiKey::CreatePartitions => {
                let m = req.decode()?;
                ready(self.create_partitions(&req, m).await)
            }
            ApiKey::ConsumerGroupHeartbeat => {
                let m = req.decode()?;
                ready(self.consumer_group_heartbeat(&req, m).await)
            }
            ApiKey::DeleteRecords => {
                session.wait_for_produces().await;
                let m = req.decode()?;
                ready(self.delete_records(&req, m).await)
            }
            ApiKey::OffsetDelete => {
                let m = req.decode()?;
                ready(self.offset_delete(&req, m).await)
            }
            // `versions::supported` let nothing else through.
            _ => ready(Ok(unsupported(req.correlation_id))),
        }
    }
}
