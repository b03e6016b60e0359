//! The APIs this build speaks and their versions: the table behind ApiVersions, and the check a
//! broker runs on every request header before dispatching.
//!
//! Every API has a version, starting at 0. A request carries the version it speaks in its header;
//! the broker answers `UNSUPPORTED_VERSION` for a version outside its range (and for an api key it
//! does not know). Protobuf makes most evolution free: a field added to a message is ignored by
//! older peers and absent (its default) for newer ones, so adding an optional field needs no new
//! version. A version is bumped only when an old peer would misread the new behaviour, e.g. a
//! field whose absence must now mean something else, or a changed rule.
//!
//! ApiVersions is special: the broker answers it at any version, so a client can always learn the
//! ranges, and then uses per API the highest version both sides support.

use crate::error_code::ErrorCode;
use crate::messages::{ApiKey, ApiVersionRange, ApiVersionsResponse, RequestHeader};

/// The versions of one API this build supports, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// The API.
    pub api_key: ApiKey,
    /// Oldest supported version.
    pub min: u32,
    /// Newest supported version.
    pub max: u32,
}

impl VersionRange {
    /// Whether `version` is in the range.
    pub const fn contains(&self, version: u32) -> bool {
        self.min <= version && version <= self.max
    }
}

const fn v0(api_key: ApiKey) -> VersionRange {
    VersionRange {
        api_key,
        min: 0,
        max: 0,
    }
}

/// Every API this build implements, in api key order, with its versions.
pub const SUPPORTED_APIS: &[VersionRange] = &[
    v0(ApiKey::ApiVersions),
    v0(ApiKey::Metadata),
    v0(ApiKey::CreateTopics),
    v0(ApiKey::DeleteTopics),
    v0(ApiKey::DescribeConfigs),
    v0(ApiKey::AlterConfigs),
    v0(ApiKey::Produce),
    v0(ApiKey::Fetch),
    v0(ApiKey::ListOffsets),
    v0(ApiKey::FindCoordinator),
    v0(ApiKey::GroupHeartbeat),
    v0(ApiKey::OffsetCommit),
    v0(ApiKey::OffsetFetch),
    v0(ApiKey::InitProducerId),
    v0(ApiKey::ListGroups),
    v0(ApiKey::DescribeGroups),
    v0(ApiKey::DeleteGroups),
    v0(ApiKey::QueueJoin),
    v0(ApiKey::QueueFetch),
    v0(ApiKey::QueueAck),
    v0(ApiKey::QueueLeave),
    v0(ApiKey::DescribeQueueGroups),
    v0(ApiKey::ResetQueueGroup),
    v0(ApiKey::Redrive),
    v0(ApiKey::DescribeRedrive),
    v0(ApiKey::DescribeCluster),
    v0(ApiKey::ReplicaFetch),
    v0(ApiKey::OffsetForLeaderEpoch),
];

/// The supported versions of the API with raw key `api_key`, if this build implements it.
pub fn supported_versions(api_key: i32) -> Option<VersionRange> {
    SUPPORTED_APIS
        .iter()
        .find(|range| range.api_key as i32 == api_key)
        .copied()
}

/// Checks a request header against [`SUPPORTED_APIS`]; the broker answers with the error code
/// (in the response header, no body) when this fails.
///
/// ApiVersions passes at any version: the broker must answer it, at worst with
/// `UNSUPPORTED_VERSION` inside an [`ApiVersionsResponse`] (see [`api_versions_response`]).
///
/// # Errors
/// - [`ErrorCode::InvalidRequest`] for `API_KEY_UNSPECIFIED` (no api key set);
/// - [`ErrorCode::UnsupportedVersion`] for an api key this build does not implement, or a version
///   outside its range.
pub fn check_version(header: &RequestHeader) -> Result<ApiKey, ErrorCode> {
    if header.api_key == ApiKey::Unspecified as i32 {
        return Err(ErrorCode::InvalidRequest);
    }
    let range = supported_versions(header.api_key).ok_or(ErrorCode::UnsupportedVersion)?;
    if range.api_key == ApiKey::ApiVersions || range.contains(header.api_version) {
        Ok(range.api_key)
    } else {
        Err(ErrorCode::UnsupportedVersion)
    }
}

/// The ApiVersions answer to a request at `request_version`: every range of
/// [`SUPPORTED_APIS`], with `UNSUPPORTED_VERSION` when ApiVersions itself is asked at a version
/// outside its range. The caller fills in `max_frame_bytes` and `broker_software_version`.
pub fn api_versions_response(request_version: u32) -> ApiVersionsResponse {
    let supported = supported_versions(ApiKey::ApiVersions as i32)
        .is_some_and(|own| own.contains(request_version));
    let error_code = if supported {
        ErrorCode::None
    } else {
        ErrorCode::UnsupportedVersion
    };
    ApiVersionsResponse {
        error_code: error_code.into(),
        api_versions: SUPPORTED_APIS
            .iter()
            .map(|range| ApiVersionRange {
                api_key: range.api_key as i32,
                min_version: range.min,
                max_version: range.max,
            })
            .collect(),
        max_frame_bytes: 0,
        broker_software_version: String::new(),
    }
}

/// The version a client should speak for `api_key`, given the broker's ranges: the highest
/// version both support, or `None` when the ranges do not overlap (or the broker lacks the API).
pub fn negotiate(api_key: ApiKey, broker: &[ApiVersionRange]) -> Option<u32> {
    let ours = supported_versions(api_key as i32)?;
    let theirs = broker
        .iter()
        .find(|range| range.api_key == api_key as i32)?;
    let max = ours.max.min(theirs.max_version);
    let min = ours.min.max(theirs.min_version);
    (min <= max).then_some(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(api_key: i32, api_version: u32) -> RequestHeader {
        RequestHeader {
            correlation_id: 1,
            api_key,
            api_version,
            client_id: None,
        }
    }

    #[test]
    fn every_known_api_is_supported_once_in_key_order() {
        let keys: Vec<i32> = SUPPORTED_APIS.iter().map(|r| r.api_key as i32).collect();
        let expected: Vec<i32> = (1..=11).chain(15..=31).collect();
        assert_eq!(keys, expected);
        for range in SUPPORTED_APIS {
            assert!(range.min <= range.max);
        }
    }

    #[test]
    fn version_check() {
        assert_eq!(check_version(&header(7, 0)), Ok(ApiKey::Produce));
        assert_eq!(
            check_version(&header(7, 1)),
            Err(ErrorCode::UnsupportedVersion)
        );
        assert_eq!(
            check_version(&header(12, 0)),
            Err(ErrorCode::UnsupportedVersion),
            "an api key this build does not implement"
        );
        assert_eq!(check_version(&header(0, 0)), Err(ErrorCode::InvalidRequest));
        assert_eq!(
            check_version(&header(1, 42)),
            Ok(ApiKey::ApiVersions),
            "ApiVersions is answered at any version"
        );
    }

    #[test]
    fn api_versions_answer() {
        let ok = api_versions_response(0);
        assert_eq!(ok.error_code(), ErrorCode::None);
        assert_eq!(ok.api_versions.len(), SUPPORTED_APIS.len());
        let newer = api_versions_response(3);
        assert_eq!(newer.error_code(), ErrorCode::UnsupportedVersion);
        assert_eq!(newer.api_versions, ok.api_versions);
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let broker = |min, max| {
            vec![ApiVersionRange {
                api_key: ApiKey::Fetch as i32,
                min_version: min,
                max_version: max,
            }]
        };
        assert_eq!(negotiate(ApiKey::Fetch, &broker(0, 5)), Some(0));
        assert_eq!(negotiate(ApiKey::Fetch, &broker(1, 5)), None);
        assert_eq!(negotiate(ApiKey::Produce, &broker(0, 5)), None);
    }
}
