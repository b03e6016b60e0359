//! Reading a Kafka request frame: the fixed header fields, the API and version check, the
//! per-API size cap, the request header, and (for fuzzing) the body. Pure functions of the
//! bytes: no I/O, no broker state.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use super::versions;

/// What the first bytes of a frame say, before anything is decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A supported API at a supported version, with its header read; `body` is what follows.
    Request {
        key: ApiKey,
        version: i16,
        correlation_id: i32,
        client_id: String,
        body: Bytes,
    },
    /// ApiVersions at a version this broker does not speak (answered with the v0 list).
    ApiVersionsFallback { correlation_id: i32 },
    /// An API key this broker does not know or a version it does not speak.
    Unsupported { correlation_id: i32 },
}

/// Limits a frame is checked against before its body is decoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameLimits {
    /// Produce requests.
    pub max_frame_bytes: u32,
    /// Every other API.
    pub max_control_frame_bytes: u32,
}

/// Reads `frame` (the bytes after the length prefix). `Err` is the reason to close the
/// connection: a frame too short for a header, over its API's cap, or with an unreadable
/// request header.
pub(crate) fn parse(frame: Bytes, limits: FrameLimits) -> Result<Parsed, String> {
    if frame.len() < 8 {
        return Err(format!(
            "a {} byte request is shorter than a Kafka request header",
            frame.len()
        ));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(key) = ApiKey::try_from(api_key) else {
        tracing::debug!(api_key, version, "unknown Kafka api key");
        return Ok(Parsed::Unsupported { correlation_id });
    };
    let in_range = versions::supported(key).is_some_and(|(lo, hi)| (lo..=hi).contains(&version));
    if !in_range {
        tracing::debug!(?key, version, "unsupported Kafka api version");
        return Ok(if key == ApiKey::ApiVersions {
            Parsed::ApiVersionsFallback { correlation_id }
        } else {
            Parsed::Unsupported { correlation_id }
        });
    }
    let limit = if key == ApiKey::Produce {
        limits.max_frame_bytes
    } else {
        limits.max_control_frame_bytes.min(limits.max_frame_bytes)
    };
    if frame.len() > limit as usize {
        return Err(format!(
            "a {} byte {key:?} request is over its limit of {limit} bytes (max_control_frame_bytes; only Produce may use max_frame_bytes)",
            frame.len()
        ));
    }
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, key.request_header_version(version))
        .map_err(|e| format!("unreadable {key:?} v{version} request header: {e}"))?;
    Ok(Parsed::Request {
        key,
        version,
        correlation_id,
        client_id: header.client_id.map(|c| c.to_string()).unwrap_or_default(),
        body,
    })
}

/// Decodes a body as the message of `key`, discarding it: what the fuzz target runs on every
/// supported API, to show no input makes the decoders panic or allocate without bound.
pub(crate) fn decode_body(key: ApiKey, version: i16, body: Bytes) -> Result<(), String> {
    fn d<M: Decodable>(mut b: Bytes, v: i16) -> Result<(), String> {
        M::decode(&mut b, v).map(drop).map_err(|e| e.to_string())
    }
    match key {
        ApiKey::Produce => super::produce_request::parse(body, version).map(drop),
        ApiKey::Fetch => d::<FetchRequest>(body, version),
        ApiKey::ListOffsets => d::<ListOffsetsRequest>(body, version),
        ApiKey::Metadata => d::<MetadataRequest>(body, version),
        ApiKey::OffsetCommit => d::<OffsetCommitRequest>(body, version),
        ApiKey::OffsetFetch => d::<OffsetFetchRequest>(body, version),
        ApiKey::FindCoordinator => d::<FindCoordinatorRequest>(body, version),
        ApiKey::JoinGroup => d::<JoinGroupRequest>(body, version),
        ApiKey::Heartbeat => d::<HeartbeatRequest>(body, version),
        ApiKey::LeaveGroup => d::<LeaveGroupRequest>(body, version),
        ApiKey::SyncGroup => d::<SyncGroupRequest>(body, version),
        ApiKey::DescribeGroups => d::<DescribeGroupsRequest>(body, version),
        ApiKey::ListGroups => d::<ListGroupsRequest>(body, version),
        ApiKey::ApiVersions => d::<ApiVersionsRequest>(body, version),
        ApiKey::CreateTopics => d::<CreateTopicsRequest>(body, version),
        ApiKey::DeleteTopics => d::<DeleteTopicsRequest>(body, version),
        ApiKey::InitProducerId => d::<InitProducerIdRequest>(body, version),
        ApiKey::DeleteGroups => d::<DeleteGroupsRequest>(body, version),
        ApiKey::DescribeConfigs => d::<DescribeConfigsRequest>(body, version),
        ApiKey::AlterConfigs => d::<AlterConfigsRequest>(body, version),
        ApiKey::IncrementalAlterConfigs => d::<IncrementalAlterConfigsRequest>(body, version),
        ApiKey::CreatePartitions => d::<CreatePartitionsRequest>(body, version),
        ApiKey::OffsetDelete => d::<OffsetDeleteRequest>(body, version),
        ApiKey::DeleteRecords => d::<DeleteRecordsRequest>(body, version),
        ApiKey::DescribeCluster => d::<DescribeClusterRequest>(body, version),
        ApiKey::OffsetForLeaderEpoch => d::<OffsetForLeaderEpochRequest>(body, version),
        ApiKey::ConsumerGroupHeartbeat => d::<ConsumerGroupHeartbeatRequest>(body, version),
        other => Err(format!("{other:?} is not served")),
    }
}

/// The fuzz target's whole check: parse a frame with the broker's default limits and, when it
/// is a supported request, decode its body. Never panics, whatever `data` is.
pub fn fuzz_one(data: &[u8]) {
    let limits = FrameLimits {
        max_frame_bytes: 8 << 20,
        max_control_frame_bytes: 1 << 20,
    };
    if let Ok(Parsed::Request {
        key, version, body, ..
    }) = parse(Bytes::copy_from_slice(data), limits)
    {
        let _ = decode_body(key, version, body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(key: i16, version: i16, rest: &[u8]) -> Bytes {
        let mut f = Vec::new();
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&7i32.to_be_bytes());
        f.extend_from_slice(rest);
        Bytes::from(f)
    }

    const LIMITS: FrameLimits = FrameLimits {
        max_frame_bytes: 1 << 20,
        max_control_frame_bytes: 64 << 10,
    };

    #[test]
    fn unknown_keys_and_versions_are_answered_not_dropped() {
        assert_eq!(
            parse(frame(999, 0, &[0, 0]), LIMITS),
            Ok(Parsed::Unsupported { correlation_id: 7 })
        );
        assert_eq!(
            parse(frame(3, 99, &[0, 0]), LIMITS),
            Ok(Parsed::Unsupported { correlation_id: 7 })
        );
        assert_eq!(
            parse(frame(18, 99, &[]), LIMITS),
            Ok(Parsed::ApiVersionsFallback { correlation_id: 7 })
        );
        assert!(parse(Bytes::from_static(&[0, 3, 0]), LIMITS).is_err());
    }

    /// The hazard the patched codec closes: a 16-byte Metadata request whose topic count is
    /// 2^31 - 1 must fail to decode at once, not reserve ~154 GB and abort.
    #[test]
    fn absurd_array_counts_fail_without_allocating() {
        // Metadata v1: client id (null), then the topics array count.
        let f = frame(3, 1, &[0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        let Ok(Parsed::Request {
            key, version, body, ..
        }) = parse(f, LIMITS)
        else {
            panic!("a Metadata v1 header")
        };
        let e = decode_body(key, version, body).expect_err("no topics follow");
        assert!(e.contains("exceeds"), "{e}");
        // The same through a flexible version's compact array (Metadata v9).
        let f = frame(3, 9, &[0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let Ok(Parsed::Request {
            key, version, body, ..
        }) = parse(f, LIMITS)
        else {
            panic!("a Metadata v9 header")
        };
        assert!(decode_body(key, version, body).is_err());
    }

    #[test]
    fn frames_over_their_api_s_cap_are_refused_before_decoding() {
        let big = vec![0u8; 100 << 10];
        assert!(
            parse(frame(3, 1, &big), LIMITS).is_err(),
            "Metadata over the control cap"
        );
        assert!(
            parse(frame(0, 3, &big), LIMITS).is_ok(),
            "Produce may use the whole frame limit"
        );
    }

    #[test]
    fn the_fuzz_check_survives_garbage() {
        for len in 0..64usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            fuzz_one(&data);
        }
    }
}
