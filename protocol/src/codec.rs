//! Requests and responses to and from frames: the calls a client and a broker make per message.
//!
//! `encode_*` appends one whole frame (length prefix + message) to a caller-owned `BytesMut`;
//! `decode_*` takes one frame's payload, as [`crate::frame::decode_frame`] returns it, and
//! checks the envelope. Decoding from a `Bytes` payload never copies `bytes` fields: a produce
//! request's or fetch response's record batches are slices of the frame. The broker's writing
//! side is [`encode_response_chunks`]: the same frame as [`encode_response`], as a list of
//! `Bytes` for a vectored write, in which a fetch (or queue fetch) response's record batches are
//! the stored bytes themselves rather than a copy.
//!
//! A broker's read path, in outline:
//!
//! ```
//! use bytes::BytesMut;
//! use strom_protocol::api::check_version;
//! use strom_protocol::frame::decode_frame;
//! use strom_protocol::messages::Response;
//! use strom_protocol::{ErrorCode, decode_request, decode_request_header, encode_response};
//!
//! /// Answers every whole request in `read_buf`; `Err` means: close the connection.
//! fn serve(read_buf: &mut BytesMut, out: &mut BytesMut) -> Result<(), String> {
//!     let max_frame_bytes = 1 << 20;
//!     let next = |buf: &mut BytesMut| decode_frame(buf, max_frame_bytes);
//!     while let Some(frame) = next(read_buf).map_err(|e| e.to_string())? {
//!         // Cloning a `Bytes` is a reference count, not a copy.
//!         let response = match decode_request(frame.clone()).and_then(|r| r.into_parts()) {
//!             Ok((header, body)) => match check_version(&header) {
//!                 Err(code) => Response::error(header.correlation_id, code, None),
//!                 Ok(_api) => match body {
//!                     // ... one arm per API, answering with Response::new(id, ...) ...
//!                     _ => Response::error(header.correlation_id, ErrorCode::Busy, None),
//!                 },
//!             },
//!             // A malformed body, or an API this build does not know: answer if the header reads.
//!             Err(error) => {
//!                 let header = decode_request_header(&frame).map_err(|e| e.to_string())?;
//!                 let code = check_version(&header).err().unwrap_or(error.error_code());
//!                 Response::error(header.correlation_id, code, Some(error.to_string()))
//!             }
//!         };
//!         encode_response(&response, out).map_err(|e| e.to_string())?;
//!     }
//!     Ok(())
//! }
//! # serve(&mut BytesMut::new(), &mut BytesMut::new())?;
//! # Ok::<(), String>(())
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::error::ProtocolError;
use crate::error_code::ErrorCode;
use crate::frame::{LENGTH_PREFIX_LEN, MAX_ENCODABLE_FRAME_BYTES, encode_frame};
use crate::messages::{
    ApiKey, FetchPartitionResponse, FetchResponse, FetchTopicResponse, QueueFetchPartition,
    QueueFetchResponse, ReplicaFetchPartitionResponse, ReplicaFetchResponse,
    ReplicaFetchTopicResponse, Request, RequestHeader, Response, response,
};

/// Appends `request` to `dst` as one frame, after checking its envelope.
///
/// # Errors
/// As [`Request::validate`], or [`ProtocolError::FrameTooLarge`].
pub fn encode_request(request: &Request, dst: &mut BytesMut) -> Result<(), ProtocolError> {
    request.validate()?;
    encode_frame(request, dst)
}

/// Decodes one frame's payload as a [`Request`] and checks its envelope (header present, body
/// present and of the header's API). The `bytes` fields of the result share `payload`'s memory.
///
/// # Errors
/// [`ProtocolError::Decode`] for bytes that are not a Request, otherwise as
/// [`Request::validate`]. A body of an API this build does not know decodes as absent:
/// [`ProtocolError::MissingBody`].
pub fn decode_request(payload: Bytes) -> Result<Request, ProtocolError> {
    let request = Request::decode(payload)?;
    request.validate()?;
    Ok(request)
}

/// Decodes only the header of a request payload, skipping the body without looking into it. For
/// answering a request whose body [`decode_request`] refused.
///
/// # Errors
/// [`ProtocolError::Decode`] when the payload is not a protobuf message (or the header field is
/// malformed); [`ProtocolError::MissingHeader`] when it has no header.
pub fn decode_request_header(payload: &[u8]) -> Result<RequestHeader, ProtocolError> {
    HeaderOnly::decode(payload)?
        .header
        .ok_or(ProtocolError::MissingHeader)
}

/// Appends `response` to `dst` as one frame, after checking its envelope.
///
/// # Errors
/// As [`Response::validate`], or [`ProtocolError::FrameTooLarge`].
pub fn encode_response(response: &Response, dst: &mut BytesMut) -> Result<(), ProtocolError> {
    response.validate()?;
    encode_frame(response, dst)
}

/// Appends `response` as one frame to `chunks`, as a sequence of `Bytes` whose concatenation is
/// byte-for-byte what [`encode_response`] would write; record batches of Fetch and QueueFetch
/// responses are pushed as the very `Bytes` they are held in (a reference count, never a copy), everything
/// else is encoded into `scratch` and split off.
///
/// This is how the broker answers without copying stored data in user space: the `records` of
/// a [`FetchPartitionResponse`] are slices of memory-mapped segment files, and writing `chunks`
/// to the socket with vectored writes (`std::io::Write::write_vectored`, or tokio's
/// `AsyncWriteExt::write_vectored`, looping until all is written) sends those pages as they are. The layout is ordinary protobuf, so the client decodes the
/// frame as any other; it works because prost writes fields in field-number order and `records`
/// is field 6, the last field of `FetchPartitionResponse`: everything in front of a partition's
/// records (the frame prefix, the envelope, the keys and lengths of the enclosing messages, the
/// partition's fields 1 to 5, and the key and length of `records`) is encoded into `scratch`,
/// split off as one chunk, and followed by the records themselves. Lengths come from
/// [`Message::encoded_len`], which counts bytes without copying them. Empty `records` are left
/// out, as proto3 does, and no pushed chunk is ever empty. A QueueFetch response is written the
/// same way (`records` is field 5, the last of `QueueFetchPartition`). Any other response is
/// one chunk.
///
/// `scratch` is only a reusable buffer: this call reserves it once, encodes into it and splits
/// what it wrote off with [`BytesMut::split`], so it is left empty and keeps its spare capacity
/// for the next call. It should be empty on entry: anything it already holds is split off with
/// the frame's first bytes, i.e. goes out in front of the frame. `chunks` is appended to; the
/// allocations are per response (the reservation of `scratch` and the growth of `chunks`),
/// never per record batch.
///
/// ```
/// use std::io::{IoSlice, Write};
///
/// use bytes::{Bytes, BytesMut};
/// use strom_protocol::encode_response_chunks;
/// use strom_protocol::messages::{
///     FetchPartitionResponse, FetchResponse, FetchTopicResponse, Response,
/// };
///
/// /// Writes all of `chunks` with vectored writes, however many bytes each call takes.
/// fn write_chunks(out: &mut impl Write, chunks: &[Bytes]) -> std::io::Result<()> {
///     let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
///     let mut slices = &mut slices[..];
///     while !slices.is_empty() {
///         let written = out.write_vectored(slices)?;
///         if written == 0 {
///             return Err(std::io::ErrorKind::WriteZero.into());
///         }
///         IoSlice::advance_slices(&mut slices, written);
///     }
///     Ok(())
/// }
///
/// // In the broker these records are a slice of a memory-mapped segment.
/// let stored = Bytes::from(vec![0xAB; 64 * 1024]);
/// let response = Response::new(
///     7,
///     FetchResponse {
///         topics: vec![FetchTopicResponse {
///             name: "orders".into(),
///             partitions: vec![FetchPartitionResponse {
///                 high_watermark: 100,
///                 records: stored.clone(),
///                 ..Default::default()
///             }],
///         }],
///     },
/// );
/// let (mut scratch, mut chunks) = (BytesMut::new(), Vec::new());
/// encode_response_chunks(&response, &mut scratch, &mut chunks)?;
/// assert_eq!(chunks.len(), 2); // everything in front of the records, then the records
/// assert_eq!(chunks[1].as_ptr(), stored.as_ptr()); // not a copy
///
/// let mut socket = Vec::new();
/// write_chunks(&mut socket, &chunks)?;
/// let mut expected = BytesMut::new();
/// strom_protocol::encode_response(&response, &mut expected)?;
/// assert_eq!(socket, expected);
/// chunks.clear(); // scratch is ready for the next response
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`Response::validate`], or [`ProtocolError::FrameTooLarge`]. Both are checked before
/// anything is written: `scratch` and `chunks` are unchanged then.
pub fn encode_response_chunks(
    response: &Response,
    scratch: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
) -> Result<(), ProtocolError> {
    response.validate()?;
    let (body_tag, body_len, records_len, records_count) = match &response.body {
        Some(response::Body::Fetch(fetch)) => {
            let (bytes, count) = fetch
                .topics
                .iter()
                .flat_map(|topic| &topic.partitions)
                .filter(|partition| !partition.records.is_empty())
                .fold((0, 0), |(bytes, count), partition| {
                    (bytes + partition.records.len(), count + 1)
                });
            (FETCH_BODY_TAG, fetch.encoded_len(), bytes, count)
        }
        Some(response::Body::QueueFetch(fetch)) => {
            let (bytes, count) = fetch
                .partitions
                .iter()
                .filter(|partition| !partition.records.is_empty())
                .fold((0, 0), |(bytes, count), partition| {
                    (bytes + partition.records.len(), count + 1)
                });
            (QUEUE_FETCH_BODY_TAG, fetch.encoded_len(), bytes, count)
        }
        Some(response::Body::ReplicaFetch(fetch)) => {
            let (bytes, count) = fetch
                .topics
                .iter()
                .flat_map(|topic| &topic.partitions)
                .filter(|partition| !partition.records.is_empty())
                .fold((0, 0), |(bytes, count), partition| {
                    (bytes + partition.records.len(), count + 1)
                });
            (REPLICA_FETCH_BODY_TAG, fetch.encoded_len(), bytes, count)
        }
        _ => {
            encode_frame(response, scratch)?;
            chunks.push(scratch.split().freeze());
            return Ok(());
        }
    };
    let len = response.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
        len,
        max: MAX_ENCODABLE_FRAME_BYTES,
    })?;
    let first_chunk = chunks.len();
    let scratch_before = scratch.len();
    scratch.reserve(LENGTH_PREFIX_LEN + len - records_len);
    chunks.reserve(2 * records_count + 1);

    // Response: header (1), then the body's oneof field, as prost's derived `encode_raw` writes
    // them. The destructuring patterns below are exhaustive on purpose: a field added to one of
    // these messages fails to compile here until this encoder writes it too.
    scratch.put_u32(prefix);
    let Response { header, body } = response;
    if let Some(header) = header {
        prost::encoding::message::encode(RESPONSE_HEADER_TAG, header, scratch);
    }
    encode_length_delimited_key(body_tag, body_len, scratch);
    match body {
        Some(response::Body::Fetch(fetch)) => encode_fetch_body(fetch, scratch, chunks),
        Some(response::Body::QueueFetch(fetch)) => encode_queue_fetch_body(fetch, scratch, chunks),
        Some(response::Body::ReplicaFetch(fetch)) => {
            encode_replica_fetch_body(fetch, scratch, chunks);
        }
        _ => {}
    }
    if !scratch.is_empty() {
        chunks.push(scratch.split().freeze());
    }
    debug_assert_eq!(
        chunks[first_chunk..].iter().map(Bytes::len).sum::<usize>(),
        scratch_before + LENGTH_PREFIX_LEN + len,
        "the chunks must add up to the frame encode_response writes"
    );
    Ok(())
}

/// Writes `records` as bytes field `tag`: the key and length into `scratch`, which is then cut
/// off as a chunk, and the records as a chunk of their own (not copied).
fn put_records(tag: u32, records: &Bytes, scratch: &mut BytesMut, chunks: &mut Vec<Bytes>) {
    if !records.is_empty() {
        encode_length_delimited_key(tag, records.len(), scratch);
        chunks.push(scratch.split().freeze());
        chunks.push(records.clone());
    }
}

fn encode_fetch_body(fetch: &FetchResponse, scratch: &mut BytesMut, chunks: &mut Vec<Bytes>) {
    let FetchResponse { topics } = fetch;
    for topic in topics {
        encode_length_delimited_key(1, topic.encoded_len(), scratch);
        let FetchTopicResponse { name, partitions } = topic;
        if !name.is_empty() {
            prost::encoding::string::encode(1, name, scratch);
        }
        for partition_response in partitions {
            encode_length_delimited_key(2, partition_response.encoded_len(), scratch);
            let FetchPartitionResponse {
                partition,
                error_code,
                error_message,
                high_watermark,
                log_start_offset,
                records,
            } = partition_response;
            // proto3: a plain scalar equal to its default is left out, an `optional` one is
            // written whenever it is set.
            if *partition != 0 {
                prost::encoding::int32::encode(1, partition, scratch);
            }
            if *error_code != i32::from(ErrorCode::default()) {
                prost::encoding::int32::encode(2, error_code, scratch);
            }
            if let Some(error_message) = error_message {
                prost::encoding::string::encode(3, error_message, scratch);
            }
            if *high_watermark != 0 {
                prost::encoding::int64::encode(4, high_watermark, scratch);
            }
            if *log_start_offset != 0 {
                prost::encoding::int64::encode(5, log_start_offset, scratch);
            }
            put_records(6, records, scratch, chunks);
        }
    }
}

fn encode_queue_fetch_body(
    fetch: &QueueFetchResponse,
    scratch: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
) {
    let QueueFetchResponse {
        error_code,
        error_message,
        ack_results,
        partitions,
    } = fetch;
    if *error_code != i32::from(ErrorCode::default()) {
        prost::encoding::int32::encode(1, error_code, scratch);
    }
    if let Some(error_message) = error_message {
        prost::encoding::string::encode(2, error_message, scratch);
    }
    prost::encoding::message::encode_repeated(3, ack_results, scratch);
    for p in partitions {
        encode_length_delimited_key(4, p.encoded_len(), scratch);
        let QueueFetchPartition {
            topic,
            partition,
            acquired,
            lease_until_ms,
            records,
        } = p;
        if !topic.is_empty() {
            prost::encoding::string::encode(1, topic, scratch);
        }
        if *partition != 0 {
            prost::encoding::int32::encode(2, partition, scratch);
        }
        prost::encoding::message::encode_repeated(3, acquired, scratch);
        if *lease_until_ms != 0 {
            prost::encoding::int64::encode(4, lease_until_ms, scratch);
        }
        put_records(5, records, scratch, chunks);
    }
}

fn encode_replica_fetch_body(
    fetch: &ReplicaFetchResponse,
    scratch: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
) {
    let ReplicaFetchResponse { topics } = fetch;
    for topic in topics {
        encode_length_delimited_key(1, topic.encoded_len(), scratch);
        let ReplicaFetchTopicResponse { name, partitions } = topic;
        if !name.is_empty() {
            prost::encoding::string::encode(1, name, scratch);
        }
        for partition_response in partitions {
            encode_length_delimited_key(2, partition_response.encoded_len(), scratch);
            let ReplicaFetchPartitionResponse {
                partition,
                error_code,
                error_message,
                high_watermark,
                log_start_offset,
                log_end_offset,
                diverging_epoch,
                durable_wanted,
                delayed,
                records,
            } = partition_response;
            if *partition != 0 {
                prost::encoding::int32::encode(1, partition, scratch);
            }
            if *error_code != i32::from(ErrorCode::default()) {
                prost::encoding::int32::encode(2, error_code, scratch);
            }
            if let Some(error_message) = error_message {
                prost::encoding::string::encode(3, error_message, scratch);
            }
            if *high_watermark != 0 {
                prost::encoding::int64::encode(4, high_watermark, scratch);
            }
            if *log_start_offset != 0 {
                prost::encoding::int64::encode(5, log_start_offset, scratch);
            }
            if *log_end_offset != 0 {
                prost::encoding::int64::encode(6, log_end_offset, scratch);
            }
            if let Some(diverging_epoch) = diverging_epoch {
                prost::encoding::message::encode(7, diverging_epoch, scratch);
            }
            if *durable_wanted != 0 {
                prost::encoding::int64::encode(8, durable_wanted, scratch);
            }
            prost::encoding::message::encode_repeated(9, delayed, scratch);
            put_records(15, records, scratch, chunks);
        }
    }
}

/// Field number of `Response.header`.
const RESPONSE_HEADER_TAG: u32 = 1;

/// Field number of `Response.fetch`: 100 + the api key, as for every body.
const FETCH_BODY_TAG: u32 = 100 + ApiKey::Fetch as u32;
/// Field number of `Response.queue_fetch`.
const QUEUE_FETCH_BODY_TAG: u32 = 100 + ApiKey::QueueFetch as u32;
/// Field number of `Response.replica_fetch`.
const REPLICA_FETCH_BODY_TAG: u32 = 100 + ApiKey::ReplicaFetch as u32;

/// The key of a length-delimited field (message, string or bytes) and the varint length of its
/// `len` bytes of content, which the caller writes (or sends) next.
fn encode_length_delimited_key(tag: u32, len: usize, dst: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, dst);
    encode_varint(len as u64, dst);
}

/// Decodes one frame's payload as a [`Response`] and checks its envelope (header present, body
/// present when the header's error code is NONE). The `bytes` fields of the result share
/// `payload`'s memory.
///
/// # Errors
/// [`ProtocolError::Decode`] for bytes that are not a Response, otherwise as
/// [`Response::validate`].
pub fn decode_response(payload: Bytes) -> Result<Response, ProtocolError> {
    let response = Response::decode(payload)?;
    response.validate()?;
    Ok(response)
}

/// A Request seen through field 1 only: prost skips the body's field without decoding it.
#[derive(Clone, PartialEq, Message)]
struct HeaderOnly {
    #[prost(message, optional, tag = "1")]
    header: Option<RequestHeader>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::BufMut;
    use proptest::prelude::*;

    use super::*;
    use crate::api::check_version;
    use crate::batch::{BatchBuilder, RecordRef};
    use crate::error_code::ErrorCode;
    use crate::frame::decode_frame;
    use crate::messages::*;

    const MAX: usize = 8 << 20;

    fn batch(values: &[&[u8]]) -> Bytes {
        let mut builder = BatchBuilder::default();
        for (i, value) in values.iter().enumerate() {
            let record = RecordRef {
                timestamp: 1_700_000_000_000 + i64::try_from(i).unwrap(),
                key: Some(b"key"),
                value: Some(value),
                headers: &[],
            };
            builder.push(&record).unwrap();
        }
        builder.finish().unwrap()
    }

    fn two_batches() -> Bytes {
        let mut both = BytesMut::new();
        both.put(batch(&[b"a", b"bb"]));
        both.put(batch(&[b"ccc"]));
        both.freeze()
    }

    fn configs() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("retention.ms".to_string(), "604800000".to_string()),
            ("cleanup.policy".to_string(), "compact".to_string()),
        ])
    }

    /// One request of every API, with every field set to something other than its default.
    fn sample_requests() -> Vec<Request> {
        let bodies: Vec<request::Body> = vec![
            ApiVersionsRequest {
                client_software_name: Some("strom-client".into()),
                client_software_version: Some("0.1.0".into()),
            }
            .into(),
            MetadataRequest {
                topics: vec!["orders".into(), "payments".into()],
                all_topics: true,
                allow_auto_topic_creation: false,
            }
            .into(),
            CreateTopicsRequest {
                topics: vec![CreatableTopic {
                    name: "orders".into(),
                    num_partitions: Some(6),
                    replication_factor: Some(1),
                    configs: configs(),
                }],
                timeout_ms: 30_000,
                validate_only: true,
            }
            .into(),
            DeleteTopicsRequest {
                topics: vec!["orders".into()],
                timeout_ms: 5_000,
            }
            .into(),
            DescribeConfigsRequest {
                topics: vec!["orders".into()],
                config_names: vec!["retention.ms".into()],
            }
            .into(),
            AlterConfigsRequest {
                topics: vec![AlterableTopic {
                    name: "orders".into(),
                    set: configs(),
                    reset: vec!["segment.ms".into()],
                }],
                validate_only: true,
            }
            .into(),
            ProduceRequest {
                acks: Acks::Durable as i32,
                timeout_ms: 1_500,
                topics: vec![TopicProduceData {
                    name: "orders".into(),
                    partitions: vec![
                        PartitionProduceData {
                            partition: 0,
                            records: two_batches(),
                            deliver_at_ms: Vec::new(),
                        },
                        PartitionProduceData {
                            partition: 3,
                            records: batch(&[b"x"]),
                            deliver_at_ms: Vec::new(),
                        },
                    ],
                }],
            }
            .into(),
            FetchRequest {
                max_wait_ms: 500,
                min_bytes: 1,
                max_bytes: 50 << 20,
                topics: vec![FetchTopic {
                    name: "orders".into(),
                    partitions: vec![FetchPartition {
                        partition: 2,
                        fetch_offset: 42,
                        partition_max_bytes: 1 << 20,
                        current_leader_epoch: Some(3),
                    }],
                }],
            }
            .into(),
            ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: "orders".into(),
                    partitions: vec![
                        ListOffsetsPartition {
                            partition: 0,
                            spec: OffsetSpec::Timestamp as i32,
                            timestamp_ms: 1_700_000_000_000,
                            current_leader_epoch: None,
                        },
                        ListOffsetsPartition {
                            partition: 1,
                            spec: OffsetSpec::Earliest as i32,
                            timestamp_ms: 0,
                            current_leader_epoch: Some(7),
                        },
                    ],
                }],
            }
            .into(),
            FindCoordinatorRequest {
                key: "g".into(),
                key_type: 0,
            }
            .into(),
            GroupHeartbeatRequest {
                group_id: "payments".into(),
                member_id: String::new(),
                member_epoch: 0,
                session_timeout_ms: 10_000,
                subscribed_topics: Some(TopicNames {
                    names: vec!["orders".into()],
                }),
                assignor: "range".into(),
                owned_partitions: vec![TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![0, 2],
                }],
            }
            .into(),
            OffsetCommitRequest {
                group_id: "payments".into(),
                member_id: "m-1".into(),
                member_epoch: 3,
                topics: vec![OffsetCommitTopic {
                    name: "orders".into(),
                    partitions: vec![OffsetCommitPartition {
                        partition: 0,
                        offset: 42,
                        metadata: Some("m".into()),
                    }],
                }],
            }
            .into(),
            OffsetFetchRequest {
                group_id: "payments".into(),
                topics: vec![TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![1],
                }],
            }
            .into(),
            InitProducerIdRequest {
                transactional_id: None,
                transaction_timeout_ms: 60_000,
                producer_id: -1,
                producer_epoch: -1,
            }
            .into(),
            ListGroupsRequest {}.into(),
            DescribeGroupsRequest {
                groups: vec!["payments".into()],
            }
            .into(),
            DeleteGroupsRequest {
                groups: vec!["old".into()],
            }
            .into(),
            QueueJoinRequest {
                group_id: "mailers".into(),
                member_id: "m-1".into(),
                topics: vec!["mail".into()],
                session_timeout_ms: 30_000,
                settings: [("max.attempts".to_string(), "3".to_string())].into(),
            }
            .into(),
            QueueFetchRequest {
                group_id: "mailers".into(),
                member_id: "m-1".into(),
                max_records: 100,
                max_bytes: 1 << 20,
                max_wait_ms: 500,
                acks: vec![QueueAck {
                    topic: "mail".into(),
                    partition: 2,
                    first_offset: 10,
                    last_offset: 19,
                    attempt: 1,
                    kind: QueueAckKind::Nack as i32,
                    delay_ms: Some(5_000),
                    error: Some("smtp 451".into()),
                    extend_ms: 0,
                }],
            }
            .into(),
            QueueAckRequest {
                group_id: "mailers".into(),
                member_id: "m-1".into(),
                acks: vec![QueueAck {
                    topic: "mail".into(),
                    partition: 0,
                    first_offset: 3,
                    last_offset: 3,
                    attempt: 2,
                    kind: QueueAckKind::Extend as i32,
                    delay_ms: None,
                    error: None,
                    extend_ms: 60_000,
                }],
            }
            .into(),
            QueueLeaveRequest {
                group_id: "mailers".into(),
                member_id: "m-1".into(),
            }
            .into(),
            DescribeQueueGroupsRequest {
                groups: vec!["mailers".into()],
            }
            .into(),
            ResetQueueGroupRequest {
                group_id: "mailers".into(),
                topic: "mail".into(),
                to: Some(reset_queue_group_request::To::TimestampMs(
                    1_700_000_000_000,
                )),
            }
            .into(),
            RedriveRequest {
                dlq_topic: "mail.dlq".into(),
                target_topic: String::new(),
                rate: 500,
                from_offset: Some(10),
                to_offset: None,
            }
            .into(),
            DescribeRedriveRequest {
                dlq_topic: "mail.dlq".into(),
            }
            .into(),
            DescribeClusterRequest {}.into(),
            ReplicaFetchRequest {
                replica_id: 2,
                broker_epoch: 40,
                max_wait_ms: 500,
                min_bytes: 1,
                max_bytes: 8 << 20,
                topics: vec![ReplicaFetchTopic {
                    name: "orders".into(),
                    topic_id: Bytes::from_static(&[7; 16]),
                    partitions: vec![ReplicaFetchPartition {
                        partition: 1,
                        current_leader_epoch: 3,
                        fetch_offset: 120,
                        last_fetched_epoch: Some(0),
                        durable_offset: 100,
                        partition_max_bytes: 1 << 20,
                        held_offset: Some(110),
                    }],
                }],
            }
            .into(),
            OffsetForLeaderEpochRequest {
                topics: vec![OffsetForLeaderEpochTopic {
                    name: "orders".into(),
                    partitions: vec![OffsetForLeaderEpochPartition {
                        partition: 1,
                        current_leader_epoch: Some(4),
                        leader_epoch: 2,
                    }],
                }],
            }
            .into(),
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                Request::new(u32::try_from(i).unwrap() + 1000, 0, body)
                    .with_client_id("test-client")
            })
            .collect()
    }

    /// One response of every API, with every field set, plus a request-level error response.
    fn sample_responses() -> Vec<Response> {
        let bodies: Vec<response::Body> = vec![
            {
                let mut versions = crate::api::api_versions_response(0);
                versions.max_frame_bytes = 100 << 20;
                versions.broker_software_version = "strom 0.1.0".into();
                versions.into()
            },
            MetadataResponse {
                brokers: vec![BrokerMetadata {
                    node_id: 1,
                    host: "127.0.0.1".into(),
                    port: 9092,
                    rack: Some("a".into()),
                }],
                topics: vec![
                    TopicMetadata {
                        name: "orders".into(),
                        error_code: ErrorCode::None.into(),
                        partitions: vec![PartitionMetadata {
                            partition: 0,
                            error_code: ErrorCode::None.into(),
                            leader_id: 1,
                            leader_epoch: 3,
                            replica_nodes: vec![1],
                            isr_nodes: vec![1],
                            log_start_offset: 10,
                            log_end_offset: 99,
                            size_bytes: 4096,
                        }],
                        is_internal: false,
                    },
                    TopicMetadata {
                        name: "missing".into(),
                        error_code: ErrorCode::UnknownTopicOrPartition.into(),
                        partitions: vec![],
                        is_internal: true,
                    },
                ],
                cluster_id: Some("cluster-1".into()),
            }
            .into(),
            CreateTopicsResponse {
                topics: vec![CreatableTopicResult {
                    name: "orders".into(),
                    error_code: ErrorCode::TopicAlreadyExists.into(),
                    error_message: Some("exists".into()),
                    num_partitions: 6,
                }],
            }
            .into(),
            DeleteTopicsResponse {
                topics: vec![DeletableTopicResult {
                    name: "orders".into(),
                    error_code: ErrorCode::PolicyViolation.into(),
                    error_message: Some("internal".into()),
                }],
            }
            .into(),
            DescribeConfigsResponse {
                topics: vec![DescribeConfigsResult {
                    name: "orders".into(),
                    error_code: ErrorCode::None.into(),
                    error_message: None,
                    configs: vec![ConfigEntry {
                        name: "retention.ms".into(),
                        value: "-1".into(),
                        source: ConfigSource::Topic as i32,
                        read_only: true,
                    }],
                }],
            }
            .into(),
            AlterConfigsResponse {
                topics: vec![AlterConfigsResult {
                    name: "orders".into(),
                    error_code: ErrorCode::InvalidConfig.into(),
                    error_message: Some("segment.bytes: not a number".into()),
                }],
            }
            .into(),
            ProduceResponse {
                topics: vec![TopicProduceResponse {
                    name: "orders".into(),
                    partitions: vec![PartitionProduceResponse {
                        partition: 0,
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                        base_offset: 1234,
                        log_start_offset: 7,
                    }],
                }],
            }
            .into(),
            FetchResponse {
                topics: vec![FetchTopicResponse {
                    name: "orders".into(),
                    partitions: vec![FetchPartitionResponse {
                        partition: 2,
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                        high_watermark: 100,
                        log_start_offset: 0,
                        records: two_batches(),
                    }],
                }],
            }
            .into(),
            ListOffsetsResponse {
                topics: vec![ListOffsetsTopicResponse {
                    name: "orders".into(),
                    partitions: vec![ListOffsetsPartitionResponse {
                        partition: 0,
                        error_code: ErrorCode::None.into(),
                        error_message: None,
                        offset: 17,
                        timestamp_ms: 1_700_000_000_000,
                    }],
                }],
            }
            .into(),
            FindCoordinatorResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                node_id: 0,
                host: "127.0.0.1".into(),
                port: 9494,
            }
            .into(),
            GroupHeartbeatResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                member_id: "m-1".into(),
                member_epoch: 4,
                heartbeat_interval_ms: 3000,
                assignment: vec![TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![0, 1],
                }],
            }
            .into(),
            OffsetCommitResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                topics: vec![OffsetCommitTopicResponse {
                    name: "orders".into(),
                    partitions: vec![OffsetCommitPartitionResponse {
                        partition: 0,
                        error_code: ErrorCode::None.into(),
                    }],
                }],
            }
            .into(),
            OffsetFetchResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                topics: vec![OffsetFetchTopicResponse {
                    name: "orders".into(),
                    partitions: vec![OffsetFetchPartitionResponse {
                        partition: 1,
                        offset: 42,
                        metadata: None,
                        error_code: ErrorCode::None.into(),
                    }],
                }],
            }
            .into(),
            InitProducerIdResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                producer_id: 4711,
                producer_epoch: 3,
            }
            .into(),
            ListGroupsResponse {
                groups: vec![ListedGroup {
                    group_id: "payments".into(),
                    state: "stable".into(),
                    members: 3,
                }],
            }
            .into(),
            DescribeGroupsResponse {
                groups: vec![DescribedGroup {
                    group_id: "payments".into(),
                    error_code: ErrorCode::None.into(),
                    error_message: None,
                    state: "stable".into(),
                    group_epoch: 7,
                    assignor: "range".into(),
                    members: vec![GroupMember {
                        member_id: "m-1".into(),
                        member_epoch: 7,
                        subscribed_topics: vec!["orders".into()],
                        assignment: vec![],
                        session_timeout_ms: 45_000,
                    }],
                    offsets: vec![GroupOffset {
                        topic: "orders".into(),
                        partition: 0,
                        committed_offset: 5,
                        log_end_offset: 9,
                        lag: 4,
                        metadata: None,
                    }],
                }],
            }
            .into(),
            DeleteGroupsResponse {
                results: vec![DeletedGroup {
                    group_id: "old".into(),
                    error_code: ErrorCode::GroupIdNotFound.into(),
                    error_message: None,
                }],
            }
            .into(),
            QueueJoinResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                settings: [("lease.ms".to_string(), "30000".to_string())].into(),
            }
            .into(),
            QueueFetchResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                ack_results: vec![QueueAckResult {
                    error_code: ErrorCode::InvalidRecordState.into(),
                    error_message: Some("not held".into()),
                }],
                partitions: vec![QueueFetchPartition {
                    topic: "mail".into(),
                    partition: 1,
                    acquired: vec![QueueAcquired {
                        first_offset: 40,
                        last_offset: 49,
                        attempt: 1,
                    }],
                    lease_until_ms: 1_700_000_030_000,
                    records: Bytes::from_static(b"batches"),
                }],
            }
            .into(),
            QueueAckResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                results: vec![QueueAckResult::default()],
            }
            .into(),
            QueueLeaveResponse {
                error_code: ErrorCode::UnknownMemberId.into(),
                error_message: Some("not a member".into()),
            }
            .into(),
            DescribeQueueGroupsResponse {
                groups: vec![DescribedQueueGroup {
                    group_id: "mailers".into(),
                    error_code: ErrorCode::None.into(),
                    error_message: None,
                    settings: [("ordering".to_string(), "none".to_string())].into(),
                    members: vec![QueueMember {
                        member_id: "m-1".into(),
                        topics: vec!["mail".into()],
                        in_flight: 10,
                    }],
                    partitions: vec![QueuePartitionState {
                        topic: "mail".into(),
                        partition: 0,
                        start_offset: 5,
                        next_offset: 50,
                        log_end_offset: 80,
                        ready: 30,
                        delayed: 2,
                        in_flight: 10,
                        dead_lettering: 1,
                        oldest_unacked_ms: 1_500,
                        acked: 40,
                        dead_lettered: 3,
                    }],
                }],
            }
            .into(),
            ResetQueueGroupResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                partitions: vec![QueueResetPartition {
                    partition: 0,
                    offset: 7,
                }],
            }
            .into(),
            RedriveResponse {
                error_code: ErrorCode::Busy.into(),
                error_message: Some("running".into()),
                status: Some(RedriveStatus {
                    dlq_topic: "mail.dlq".into(),
                    target_topic: "mail".into(),
                    rate: 1000,
                    moved: 3,
                    skipped: 1,
                    remaining: 10,
                    done: false,
                }),
            }
            .into(),
            DescribeRedriveResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                status: None,
            }
            .into(),
            DescribeClusterResponse {
                error_code: ErrorCode::None.into(),
                error_message: None,
                controller_id: 2,
                term: 7,
                committed_index: 120,
                brokers: vec![
                    ClusterBroker {
                        node_id: 1,
                        broker_epoch: 12,
                        native_address: Some("127.0.0.1:9494".into()),
                        kafka_address: Some("127.0.0.1:9092".into()),
                        http_address: None,
                        alive: true,
                        role: QuorumRole::Voter as i32,
                        controller_address: Some("127.0.0.1:9301".into()),
                        metadata_index: 118,
                        storage_failed: true,
                    },
                    ClusterBroker {
                        node_id: 4,
                        broker_epoch: -1,
                        native_address: None,
                        kafka_address: None,
                        http_address: None,
                        alive: false,
                        role: QuorumRole::Learner as i32,
                        controller_address: Some("127.0.0.1:9304".into()),
                        metadata_index: -1,
                        storage_failed: false,
                    },
                ],
            }
            .into(),
            ReplicaFetchResponse {
                topics: vec![ReplicaFetchTopicResponse {
                    name: "orders".into(),
                    partitions: vec![
                        ReplicaFetchPartitionResponse {
                            partition: 1,
                            high_watermark: 118,
                            log_start_offset: 4,
                            log_end_offset: 130,
                            durable_wanted: 125,
                            delayed: vec![DelayedRun {
                                first_offset: 120,
                                last_offset: 124,
                                deliver_at_ms: 1_700_000_000_000,
                            }],
                            records: Bytes::from_static(b"batches"),
                            ..Default::default()
                        },
                        ReplicaFetchPartitionResponse {
                            partition: 2,
                            error_code: ErrorCode::FencedLeaderEpoch.into(),
                            error_message: Some("epoch 3 is older than 4".into()),
                            diverging_epoch: Some(EpochEndOffset {
                                epoch: 0,
                                end_offset: 0,
                            }),
                            ..Default::default()
                        },
                    ],
                }],
            }
            .into(),
            OffsetForLeaderEpochResponse {
                topics: vec![OffsetForLeaderEpochTopicResponse {
                    name: "orders".into(),
                    partitions: vec![
                        OffsetForLeaderEpochPartitionResponse {
                            partition: 1,
                            error_code: 0,
                            error_message: None,
                            leader_epoch: 2,
                            end_offset: 77,
                        },
                        OffsetForLeaderEpochPartitionResponse {
                            partition: 2,
                            error_code: ErrorCode::FencedLeaderEpoch.into(),
                            error_message: Some("leader epoch 3 is older than 4".into()),
                            leader_epoch: -1,
                            end_offset: -1,
                        },
                    ],
                }],
            }
            .into(),
        ];
        let mut responses: Vec<Response> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Response::new(u32::try_from(i).unwrap() + 1000, body))
            .collect();
        responses.push(Response::error(
            7,
            ErrorCode::UnsupportedVersion,
            Some("Fetch v9".into()),
        ));
        responses
    }

    #[test]
    fn samples_cover_every_api() {
        let keys: Vec<ApiKey> = sample_requests()
            .iter()
            .map(|r| r.body.as_ref().unwrap().api_key())
            .collect();
        let supported: Vec<ApiKey> = crate::api::SUPPORTED_APIS
            .iter()
            .map(|r| r.api_key)
            .collect();
        assert_eq!(keys, supported);
        let keys: Vec<ApiKey> = sample_responses()
            .iter()
            .filter_map(|r| r.body.as_ref().map(response::Body::api_key))
            .collect();
        assert_eq!(keys, supported);
    }

    #[test]
    fn every_request_round_trips_through_a_frame() {
        let requests = sample_requests();
        let mut wire = BytesMut::new();
        for request in &requests {
            encode_request(request, &mut wire).unwrap();
        }
        for expected in &requests {
            let payload = decode_frame(&mut wire, MAX).unwrap().unwrap();
            let header = decode_request_header(&payload).unwrap();
            assert_eq!(Some(&header), expected.header.as_ref());
            assert_eq!(check_version(&header), Ok(header.api_key()));
            let decoded = decode_request(payload).unwrap();
            assert_eq!(&decoded, expected);
        }
        assert!(wire.is_empty());
        assert!(decode_frame(&mut wire, MAX).unwrap().is_none());
    }

    #[test]
    fn every_response_round_trips_through_a_frame() {
        let responses = sample_responses();
        let mut wire = BytesMut::new();
        for response in &responses {
            encode_response(response, &mut wire).unwrap();
        }
        for expected in &responses {
            let payload = decode_frame(&mut wire, MAX).unwrap().unwrap();
            let decoded = decode_response(payload).unwrap();
            assert_eq!(&decoded, expected);
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn records_survive_as_valid_batches() {
        let mut wire = BytesMut::new();
        encode_request(&sample_requests()[6], &mut wire).unwrap();
        let payload = decode_frame(&mut wire, MAX).unwrap().unwrap();
        let (_, body) = decode_request(payload).unwrap().into_parts().unwrap();
        let request::Body::Produce(produce) = body else {
            panic!("not a produce request")
        };
        let records = &produce.topics[0].partitions[0].records;
        let mut count = 0;
        for item in crate::batch::BatchIter::new(records) {
            let (range, _) = item.unwrap();
            crate::batch::validate(&records[range]).unwrap();
            count += 1;
        }
        assert_eq!(count, 2);
    }

    #[test]
    fn body_field_number_is_100_plus_api_key() {
        for request in sample_requests() {
            let api_key = request.body.as_ref().unwrap().api_key() as u64;
            let body_only = Request {
                header: None,
                body: request.body,
            }
            .encode_to_vec();
            let (tag, wire_type) = first_key(&body_only);
            assert_eq!((tag, wire_type), (100 + api_key, 2));
        }
        for response in sample_responses() {
            let Some(body) = response.body else { continue };
            let api_key = body.api_key() as u64;
            let body_only = Response {
                header: None,
                body: Some(body),
            }
            .encode_to_vec();
            assert_eq!(first_key(&body_only), (100 + api_key, 2));
        }
    }

    /// (field number, wire type) of the first field of an encoded message.
    fn first_key(encoded: &[u8]) -> (u64, u64) {
        let mut key = 0u64;
        for (i, byte) in encoded.iter().enumerate() {
            key |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                break;
            }
        }
        (key >> 3, key & 7)
    }

    #[test]
    fn one_mib_of_records_is_not_copied() {
        let value = vec![0xAB; 1 << 20];
        let records = batch(&[&value]);
        let request = Request::new(
            1,
            0,
            ProduceRequest {
                acks: Acks::Leader as i32,
                timeout_ms: 1000,
                topics: vec![TopicProduceData {
                    name: "big".into(),
                    partitions: vec![PartitionProduceData {
                        partition: 0,
                        records: records.clone(),
                        deliver_at_ms: Vec::new(),
                    }],
                }],
            },
        );
        let mut read_buf = BytesMut::new();
        encode_request(&request, &mut read_buf).unwrap();
        let frame = decode_frame(&mut read_buf, 2 << 20).unwrap().unwrap();
        let frame_range = frame.as_ptr_range();
        let (_, body) = decode_request(frame.clone()).unwrap().into_parts().unwrap();
        let request::Body::Produce(produce) = body else {
            panic!("not a produce request")
        };
        let decoded = &produce.topics[0].partitions[0].records;
        assert_eq!(decoded, &records);
        assert!(decoded.len() > 1 << 20);
        let range = decoded.as_ptr_range();
        assert!(
            frame_range.start <= range.start && range.end <= frame_range.end,
            "records must point into the frame buffer"
        );
    }

    #[test]
    fn envelope_errors() {
        // No header.
        let headless = Request {
            header: None,
            body: Some(MetadataRequest::default().into()),
        };
        assert!(matches!(
            encode_request(&headless, &mut BytesMut::new()),
            Err(ProtocolError::MissingHeader)
        ));
        let payload = Bytes::from(headless.encode_to_vec());
        assert!(matches!(
            decode_request(payload.clone()),
            Err(ProtocolError::MissingHeader)
        ));
        assert!(matches!(
            decode_request_header(&payload),
            Err(ProtocolError::MissingHeader)
        ));

        // Header and body disagree.
        let mut mismatch = Request::new(5, 0, MetadataRequest::default());
        mismatch.header.as_mut().unwrap().api_key = ApiKey::Fetch as i32;
        let payload = Bytes::from(mismatch.encode_to_vec());
        let err = decode_request(payload).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::ApiKeyMismatch {
                header: 8,
                body: ApiKey::Metadata
            }
        ));
        assert_eq!(err.error_code(), ErrorCode::InvalidRequest);

        // A successful response must have a body; an error response need not.
        let mut bodyless = Response::new(1, MetadataResponse::default());
        bodyless.body = None;
        let payload = Bytes::from(bodyless.encode_to_vec());
        assert!(matches!(
            decode_response(payload),
            Err(ProtocolError::MissingBody)
        ));
        let error = Response::error(1, ErrorCode::Busy, None);
        let (header, body) = error.into_parts().unwrap();
        assert_eq!(header.correlation_id, 1);
        assert_eq!(body.unwrap_err(), ErrorCode::Busy);
    }

    #[test]
    fn a_request_for_an_unknown_api_gets_unsupported_version() {
        // What a newer client sends for API 12 (field 112): header plus an unknown body field.
        let mut payload = Request {
            header: Some(RequestHeader {
                correlation_id: 99,
                api_key: 12,
                api_version: 0,
                client_id: None,
            }),
            body: None,
        }
        .encode_to_vec();
        payload.extend_from_slice(&[0x82, 0x07, 0x03, 0x08, 0x01, 0x10]); // field 112, 3 bytes
        let payload = Bytes::from(payload);
        let err = decode_request(payload.clone()).unwrap_err();
        assert!(matches!(err, ProtocolError::MissingBody));
        let header = decode_request_header(&payload).unwrap();
        assert_eq!(header.correlation_id, 99);
        assert_eq!(check_version(&header), Err(ErrorCode::UnsupportedVersion));
    }

    #[test]
    fn unknown_error_code_reads_as_an_error() {
        let mut partition = PartitionProduceResponse {
            error_code: 4242,
            ..Default::default()
        };
        assert_eq!(partition.error_code(), ErrorCode::UnknownServerError);
        partition.set_error_code(ErrorCode::StorageError);
        assert_eq!(partition.error_code, 13);
        let decoded = PartitionProduceResponse::decode(&partition.encode_to_vec()[..]).unwrap();
        assert_eq!(decoded.error_code(), ErrorCode::StorageError);
        assert!(format!("{decoded:?}").contains("StorageError"));
    }

    /// The exact bytes of two small frames, as docs/protocol.md shows them: an implementation
    /// in another language can test against these.
    #[test]
    fn golden_bytes() {
        let mut wire = BytesMut::new();
        encode_request(
            &Request::new(1, 0, ApiVersionsRequest::default()),
            &mut wire,
        )
        .unwrap();
        assert_eq!(
            &wire[..],
            &[
                0, 0, 0, 9, 0x0A, 0x04, 0x08, 0x01, 0x10, 0x01, 0xAA, 0x06, 0x00
            ]
        );
        wire.clear();
        encode_response(
            &Response::error(1, ErrorCode::UnsupportedVersion, None),
            &mut wire,
        )
        .unwrap();
        assert_eq!(&wire[..], &[0, 0, 0, 6, 0x0A, 0x04, 0x08, 0x01, 0x10, 0x07]);
    }

    /// Decoding allocates more than the frame: an empty element of a repeated message field is
    /// 2 bytes on the wire and a whole struct in memory. This pins the worst case (documented in
    /// docs/protocol.md) so that a change which makes it worse is noticed.
    #[test]
    fn decoded_size_stays_within_the_documented_factor() {
        // CreateTopics with n empty topics: the largest struct per 2 wire bytes.
        let n = 100_000;
        let mut payload = Request {
            header: Request::new(1, 0, CreateTopicsRequest::default()).header,
            body: None,
        }
        .encode_to_vec();
        payload.extend_from_slice(&[0xBA, 0x06]); // field 103 (create_topics), length-delimited
        prost::encoding::encode_varint(2 * n as u64, &mut payload);
        for _ in 0..n {
            payload.extend_from_slice(&[0x0A, 0x00]); // field 1 (topics), empty message
        }
        let frame_len = payload.len();
        let (_, body) = decode_request(Bytes::from(payload))
            .unwrap()
            .into_parts()
            .unwrap();
        let request::Body::CreateTopics(create) = body else {
            panic!("not create topics")
        };
        assert_eq!(create.topics.len(), n);
        let heap = create.topics.capacity() * std::mem::size_of::<CreatableTopic>();
        let factor = heap / frame_len;
        assert!(
            factor <= 64,
            "decoded {heap} bytes from {frame_len}: {factor}x"
        );
    }

    /// The chunks `encode_response_chunks` appends for `response`, checked against
    /// `encode_response`: same bytes, no empty chunk, and the frame decodes back to `response`.
    fn chunks_of(response: &Response) -> Vec<Bytes> {
        let mut scratch = BytesMut::new();
        let mut chunks = Vec::new();
        encode_response_chunks(response, &mut scratch, &mut chunks).unwrap();
        assert!(scratch.is_empty(), "everything written is split off");
        assert!(
            chunks.iter().all(|chunk| !chunk.is_empty()),
            "no empty chunk"
        );

        let mut expected = BytesMut::new();
        encode_response(response, &mut expected).unwrap();
        let mut wire = BytesMut::new();
        for chunk in &chunks {
            wire.extend_from_slice(chunk);
        }
        assert_eq!(wire, expected, "chunks differ from encode_response");

        let payload = decode_frame(&mut wire, MAX).unwrap().unwrap();
        assert!(wire.is_empty());
        assert_eq!(&decode_response(payload).unwrap(), response);
        chunks
    }

    /// The non-empty records of a Fetch or QueueFetch response, in wire order.
    fn fetch_records(response: &Response) -> Vec<Bytes> {
        match &response.body {
            Some(response::Body::Fetch(fetch)) => fetch
                .topics
                .iter()
                .flat_map(|topic| &topic.partitions)
                .map(|partition| partition.records.clone())
                .filter(|records| !records.is_empty())
                .collect(),
            Some(response::Body::QueueFetch(fetch)) => fetch
                .partitions
                .iter()
                .map(|partition| partition.records.clone())
                .filter(|records| !records.is_empty())
                .collect(),
            Some(response::Body::ReplicaFetch(fetch)) => fetch
                .topics
                .iter()
                .flat_map(|topic| &topic.partitions)
                .map(|partition| partition.records.clone())
                .filter(|records| !records.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every record batch is its own chunk, right after the bytes in front of it, and shares the
    /// memory of the `Bytes` the response holds.
    fn assert_records_not_copied(response: &Response, chunks: &[Bytes]) {
        let records = fetch_records(response);
        let trailing = chunks.len() - 2 * records.len();
        assert!(
            trailing <= 1,
            "{} chunks for {} records",
            chunks.len(),
            records.len()
        );
        for (i, records) in records.iter().enumerate() {
            let chunk = &chunks[2 * i + 1];
            assert_eq!(chunk.as_ptr(), records.as_ptr(), "records {i} were copied");
            assert_eq!(chunk.len(), records.len());
        }
    }

    #[test]
    fn every_response_kind_encodes_to_the_same_chunks() {
        for response in sample_responses() {
            let chunks = chunks_of(&response);
            match &response.body {
                Some(
                    response::Body::Fetch(_)
                    | response::Body::QueueFetch(_)
                    | response::Body::ReplicaFetch(_),
                ) => assert_records_not_copied(&response, &chunks),
                _ => assert_eq!(chunks.len(), 1, "one chunk for {response:?}"),
            }
        }
    }

    #[test]
    fn fetch_records_are_sent_as_the_stored_bytes() {
        // A stand-in for a memory-mapped segment: the records are slices of one larger buffer.
        let segment = Bytes::from(vec![0x5A; 300_000]);
        let partition = |partition, records: Bytes| FetchPartitionResponse {
            partition,
            error_code: ErrorCode::None.into(),
            error_message: None,
            high_watermark: 1_000,
            log_start_offset: 0,
            records,
        };
        let response = Response::new(
            9,
            FetchResponse {
                topics: vec![
                    FetchTopicResponse {
                        name: "orders".into(),
                        partitions: vec![
                            partition(0, segment.slice(10..100_010)),
                            partition(1, Bytes::new()),
                            partition(2, segment.slice(200_000..)),
                        ],
                    },
                    FetchTopicResponse {
                        name: "payments".into(),
                        partitions: vec![FetchPartitionResponse {
                            error_code: ErrorCode::OffsetOutOfRange.into(),
                            error_message: Some("below log start".into()),
                            ..partition(0, Bytes::new())
                        }],
                    },
                ],
            },
        );
        let chunks = chunks_of(&response);
        // head, records, head, records, the second topic.
        assert_eq!(chunks.len(), 5);
        assert_records_not_copied(&response, &chunks);
        assert_eq!(chunks[1].as_ptr(), segment[10..].as_ptr());
        assert_eq!(chunks[3].as_ptr(), segment[200_000..].as_ptr());
        let copied: usize = [0, 2, 4].iter().map(|&i| chunks[i].len()).sum();
        assert!(copied < 100, "{copied} bytes encoded besides the records");
    }

    #[test]
    fn scratch_is_reused_across_calls() {
        let responses = sample_responses();
        let mut scratch = BytesMut::with_capacity(1 << 16);
        let allocation = scratch.spare_capacity_mut().as_ptr_range();
        let allocation = allocation.start as usize..allocation.end as usize;
        let mut chunks = Vec::new();
        let mut expected = BytesMut::new();
        for response in responses.iter().chain(&responses) {
            encode_response_chunks(response, &mut scratch, &mut chunks).unwrap();
            encode_response(response, &mut expected).unwrap();
            assert!(scratch.is_empty());
        }
        // Everything was encoded into the one allocation made up front.
        let records: Vec<Bytes> = responses.iter().flat_map(fetch_records).collect();
        for chunk in &chunks {
            if !records.contains(chunk) {
                assert!(allocation.contains(&(chunk.as_ptr() as usize)));
            }
        }
        let wire: Vec<u8> = chunks
            .iter()
            .flat_map(|chunk| chunk.iter().copied())
            .collect();
        assert_eq!(wire, expected);
        let mut wire = BytesMut::from(&wire[..]);
        for expected in responses.iter().chain(&responses) {
            let payload = decode_frame(&mut wire, MAX).unwrap().unwrap();
            assert_eq!(&decode_response(payload).unwrap(), expected);
        }
        assert!(wire.is_empty());

        // Once the chunks are sent and dropped, scratch keeps working (and may take its memory
        // back); bytes left in it go out in front of the next frame.
        drop(chunks);
        let mut chunks = Vec::new();
        scratch.put_slice(b"left");
        encode_response_chunks(&responses[7], &mut scratch, &mut chunks).unwrap();
        assert_eq!(&chunks[0][..4], b"left");
        let mut expected = BytesMut::from(&b"left"[..]);
        encode_response(&responses[7], &mut expected).unwrap();
        let wire: Vec<u8> = chunks
            .iter()
            .flat_map(|chunk| chunk.iter().copied())
            .collect();
        assert_eq!(wire, expected);
    }

    #[test]
    fn chunk_encoding_checks_the_envelope_and_the_frame_limit() {
        let mut scratch = BytesMut::new();
        let mut chunks = Vec::new();
        let mut headless = Response::new(1, FetchResponse::default());
        headless.header = None;
        assert!(matches!(
            encode_response_chunks(&headless, &mut scratch, &mut chunks),
            Err(ProtocolError::MissingHeader)
        ));
        let mut bodyless = Response::new(1, FetchResponse::default());
        bodyless.body = None;
        assert!(matches!(
            encode_response_chunks(&bodyless, &mut scratch, &mut chunks),
            Err(ProtocolError::MissingBody)
        ));

        // Over 4 GiB of records without allocating them: one MiB, referenced 4097 times.
        let mib = Bytes::from(vec![0; 1 << 20]);
        let huge = Response::new(
            2,
            FetchResponse {
                topics: vec![FetchTopicResponse {
                    name: "huge".into(),
                    partitions: (0..4097)
                        .map(|partition| FetchPartitionResponse {
                            partition,
                            records: mib.clone(),
                            ..Default::default()
                        })
                        .collect(),
                }],
            },
        );
        let err = encode_response_chunks(&huge, &mut scratch, &mut chunks).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { len, max }
                if len == huge.encoded_len() && max == u32::MAX as usize
        ));
        assert!(matches!(
            encode_response(&huge, &mut BytesMut::new()),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(
            scratch.is_empty() && scratch.capacity() == 0,
            "nothing was reserved"
        );
        assert!(chunks.is_empty(), "nothing was pushed");
    }

    /// Records of `len` bytes, sliced out of a larger buffer at `offset` as a segment's are.
    fn records_strategy() -> impl Strategy<Value = Bytes> {
        let len = prop_oneof![Just(0usize), 1usize..200, 0usize..=100_000];
        (len, 0usize..16, any::<u8>()).prop_map(|(len, offset, fill)| {
            let mut segment = vec![fill; offset + len];
            for (i, byte) in segment.iter_mut().enumerate().step_by(997) {
                *byte = byte.wrapping_add(u8::try_from(i % 251).unwrap());
            }
            Bytes::from(segment).slice(offset..)
        })
    }

    fn fetch_response_strategy() -> impl Strategy<Value = Response> {
        let partition = (
            any::<i32>(),
            prop_oneof![Just(0), Just(3), any::<i32>()],
            proptest::option::of(".{0,20}"),
            prop_oneof![Just(0i64), any::<i64>()],
            prop_oneof![Just(0i64), any::<i64>()],
            records_strategy(),
        )
            .prop_map(
                |(
                    partition,
                    error_code,
                    error_message,
                    high_watermark,
                    log_start_offset,
                    records,
                )| FetchPartitionResponse {
                    partition,
                    error_code,
                    error_message,
                    high_watermark,
                    log_start_offset,
                    records,
                },
            );
        let topic = (
            prop_oneof![Just(String::new()), "[a-z0-9._-]{1,40}"],
            proptest::collection::vec(partition, 0..5),
        )
            .prop_map(|(name, partitions)| FetchTopicResponse { name, partitions });
        (
            any::<u32>(),
            prop_oneof![Just(0), any::<i32>()],
            proptest::option::of(".{0,20}"),
            proptest::collection::vec(topic, 0..4),
        )
            .prop_map(
                |(correlation_id, error_code, error_message, topics)| Response {
                    header: Some(ResponseHeader {
                        correlation_id,
                        error_code,
                        error_message,
                    }),
                    body: Some(FetchResponse { topics }.into()),
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_fetch_responses_encode_to_the_same_chunks(response in fetch_response_strategy()) {
            let chunks = chunks_of(&response);
            assert_records_not_copied(&response, &chunks);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = decode_frame(&mut buf, 256) {
                let _ = decode_request(frame.clone());
                let _ = decode_request_header(&frame);
                let _ = decode_response(frame);
            }
            let payload = Bytes::from(data);
            let _ = decode_request(payload.clone());
            let _ = decode_request_header(&payload);
            let _ = decode_response(payload);
        }

        #[test]
        fn mutated_requests_never_panic(
            which in 0usize..9,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut wire = BytesMut::new();
            encode_request(&sample_requests()[which], &mut wire).unwrap();
            let mut bytes = wire.to_vec();
            for (at, value) in flips {
                let at = 4 + at % (bytes.len() - 4);
                bytes[at] = value;
            }
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(frame)) = decode_frame(&mut buf, MAX) {
                let _ = decode_request(frame.clone());
                let _ = decode_request_header(&frame);
            }
        }
    }
}
