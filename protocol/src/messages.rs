//! The messages of the wire protocol: the Rust types prost generates from `proto/*.proto` (at
//! build time, see `build.rs`), plus constructors and the body-to-[`ApiKey`] mapping.
//!
//! The `.proto` files are the source of truth; their comments become the docs of the types here.
//! Two things differ from plain prost output:
//! - every `bytes` field is a [`bytes::Bytes`], so decoding from a `Bytes` frame slices it
//!   instead of copying (record batches stay in the read buffer);
//! - the `ErrorCode` enum is [`crate::ErrorCode`] (`error_code` module), not a generated type:
//!   fields hold the raw `i32`, and getters like `error_code()` return [`crate::ErrorCode`]
//!   (an unknown number reads as `UNKNOWN_SERVER_ERROR`, never as `NONE`).
//!
//! Enum-typed fields are `i32` on the struct, as prost does: write them with `Acks::Durable as i32`
//! or the generated `set_*` methods, read them with the generated getters.

use crate::error::ProtocolError;
use crate::error_code::ErrorCode;

#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations,
    rustdoc::all
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/strom.rs"));
}

pub use generated::*;

/// For every API: its [`ApiKey`], the `Body` variant, and the request and response messages.
macro_rules! apis {
    ($($variant:ident => $request:ident, $response:ident;)*) => {
        impl request::Body {
            /// The API this body calls.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $(request::Body::$variant(_) => ApiKey::$variant,)*
                }
            }
        }

        impl response::Body {
            /// The API this body answers.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $(response::Body::$variant(_) => ApiKey::$variant,)*
                }
            }
        }

        $(
            impl From<$request> for request::Body {
                fn from(body: $request) -> Self {
                    request::Body::$variant(body)
                }
            }

            impl From<$response> for response::Body {
                fn from(body: $response) -> Self {
                    response::Body::$variant(body)
                }
            }
        )*
    };
}

apis! {
    ApiVersions => ApiVersionsRequest, ApiVersionsResponse;
    Metadata => MetadataRequest, MetadataResponse;
    CreateTopics => CreateTopicsRequest, CreateTopicsResponse;
    DeleteTopics => DeleteTopicsRequest, DeleteTopicsResponse;
    DescribeConfigs => DescribeConfigsRequest, DescribeConfigsResponse;
    AlterConfigs => AlterConfigsRequest, AlterConfigsResponse;
    Produce => ProduceRequest, ProduceResponse;
    Fetch => FetchRequest, FetchResponse;
    ListOffsets => ListOffsetsRequest, ListOffsetsResponse;
    FindCoordinator => FindCoordinatorRequest, FindCoordinatorResponse;
    GroupHeartbeat => GroupHeartbeatRequest, GroupHeartbeatResponse;
    OffsetCommit => OffsetCommitRequest, OffsetCommitResponse;
    OffsetFetch => OffsetFetchRequest, OffsetFetchResponse;
    InitProducerId => InitProducerIdRequest, InitProducerIdResponse;
    ListGroups => ListGroupsRequest, ListGroupsResponse;
    DescribeGroups => DescribeGroupsRequest, DescribeGroupsResponse;
    DeleteGroups => DeleteGroupsRequest, DeleteGroupsResponse;
    QueueJoin => QueueJoinRequest, QueueJoinResponse;
    QueueFetch => QueueFetchRequest, QueueFetchResponse;
    QueueAck => QueueAckRequest, QueueAckResponse;
    QueueLeave => QueueLeaveRequest, QueueLeaveResponse;
    DescribeQueueGroups => DescribeQueueGroupsRequest, DescribeQueueGroupsResponse;
    ResetQueueGroup => ResetQueueGroupRequest, ResetQueueGroupResponse;
    Redrive => RedriveRequest, RedriveResponse;
    DescribeRedrive => DescribeRedriveRequest, DescribeRedriveResponse;
    DescribeCluster => DescribeClusterRequest, DescribeClusterResponse;
    ReplicaFetch => ReplicaFetchRequest, ReplicaFetchResponse;
    OffsetForLeaderEpoch => OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse;
}

impl Request {
    /// A request whose header names the body's API, at `api_version`, without a client id.
    pub fn new(correlation_id: u32, api_version: u32, body: impl Into<request::Body>) -> Self {
        let body = body.into();
        Request {
            header: Some(RequestHeader {
                correlation_id,
                api_key: body.api_key() as i32,
                api_version,
                client_id: None,
            }),
            body: Some(body),
        }
    }

    /// Sets the header's client id.
    #[must_use]
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        if let Some(header) = self.header.as_mut() {
            header.client_id = Some(client_id.into());
        }
        self
    }

    /// Checks that the request has a header and a body, and that they name the same API.
    ///
    /// # Errors
    /// [`ProtocolError::MissingHeader`], [`ProtocolError::MissingBody`] or
    /// [`ProtocolError::ApiKeyMismatch`].
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let header = self.header.as_ref().ok_or(ProtocolError::MissingHeader)?;
        let body = self.body.as_ref().ok_or(ProtocolError::MissingBody)?;
        if header.api_key != body.api_key() as i32 {
            return Err(ProtocolError::ApiKeyMismatch {
                header: header.api_key,
                body: body.api_key(),
            });
        }
        Ok(())
    }

    /// The header and the body, once [`Request::validate`] holds.
    ///
    /// # Errors
    /// As [`Request::validate`].
    pub fn into_parts(self) -> Result<(RequestHeader, request::Body), ProtocolError> {
        self.validate()?;
        match (self.header, self.body) {
            (Some(header), Some(body)) => Ok((header, body)),
            (None, _) => Err(ProtocolError::MissingHeader),
            (_, None) => Err(ProtocolError::MissingBody),
        }
    }
}

impl Response {
    /// A successful response carrying `body`.
    pub fn new(correlation_id: u32, body: impl Into<response::Body>) -> Self {
        Response {
            header: Some(ResponseHeader {
                correlation_id,
                error_code: ErrorCode::None.into(),
                error_message: None,
            }),
            body: Some(body.into()),
        }
    }

    /// A request-level failure: no body, `code` and an optional explanation in the header.
    pub fn error(correlation_id: u32, code: ErrorCode, message: Option<String>) -> Self {
        Response {
            header: Some(ResponseHeader {
                correlation_id,
                error_code: code.into(),
                error_message: message,
            }),
            body: None,
        }
    }

    /// Checks that the response has a header, and a body exactly when its error code is NONE.
    ///
    /// # Errors
    /// [`ProtocolError::MissingHeader`] or [`ProtocolError::MissingBody`].
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let header = self.header.as_ref().ok_or(ProtocolError::MissingHeader)?;
        if header.error_code().is_ok() && self.body.is_none() {
            return Err(ProtocolError::MissingBody);
        }
        Ok(())
    }

    /// The header and the body: `Err` with the header's error code for a request-level failure.
    ///
    /// # Errors
    /// The outer `Err` is a malformed response (as [`Response::validate`]); the inner one is the
    /// broker's request-level error code with its message.
    pub fn into_parts(
        self,
    ) -> Result<(ResponseHeader, Result<response::Body, ErrorCode>), ProtocolError> {
        let header = self.header.ok_or(ProtocolError::MissingHeader)?;
        let code = header.error_code();
        match (code.is_ok(), self.body) {
            (true, Some(body)) => Ok((header, Ok(body))),
            (true, None) => Err(ProtocolError::MissingBody),
            (false, _) => Ok((header, Err(code))),
        }
    }
}
