//! Requests and responses to and from frames: the calls a client and a broker make per message.
//!
//! `encode_*` appends one whole frame (length prefix + message) to a caller-owned `BytesMut`;
//! `decode_*` takes one frame's payload, as [`crate::frame::decode_frame`] returns it, and
//! checks the envelope. Decoding from a `Bytes` payload never copies `bytes` fields: a produce
//! request's or fetch response's record batches are slices of the frame.
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
//! # serve(&mut BytesMut::new(), &mut BytesMut::new()).unwrap();
//! ```

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::error::ProtocolError;
use crate::frame::encode_frame;
use crate::messages::{Request, RequestHeader, Response};

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
            }
            .into(),
            CreateTopicsRequest {
                topics: vec![CreatableTopic {
                    name: "orders".into(),
                    num_partitions: Some(6),
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
                        },
                        PartitionProduceData {
                            partition: 3,
                            records: batch(&[b"x"]),
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
                        },
                        ListOffsetsPartition {
                            partition: 1,
                            spec: OffsetSpec::Earliest as i32,
                            timestamp_ms: 0,
                        },
                    ],
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
