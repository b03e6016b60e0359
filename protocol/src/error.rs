//! [`ProtocolError`]: why bytes could not be framed, encoded or decoded as a request or response.
//!
//! These are local failures of this codec. What travels to the peer is an
//! [`ErrorCode`]; [`ProtocolError::error_code`] picks the code a broker answers
//! with when it can still answer at all.

use crate::error_code::ErrorCode;
use crate::messages::ApiKey;

/// Why a frame, request or response could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's length is above the limit. On decode nothing was read or allocated; the
    /// connection cannot be resynchronised and should be closed.
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    FrameTooLarge {
        /// Length of the frame payload (the prefix's value, or the encoded message's length).
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The payload is not a valid protobuf encoding of the expected message.
    #[error("malformed protobuf message")]
    Decode(#[from] prost::DecodeError),
    /// prost could not encode into the buffer (cannot happen with a growable `BytesMut`).
    #[error("cannot encode protobuf message")]
    Encode(#[from] prost::EncodeError),
    /// A request or response without its header.
    #[error("message has no header")]
    MissingHeader,
    /// A request without a body this build knows (absent, or an API added after this build), or
    /// a successful response without a body.
    #[error("message has no known body")]
    MissingBody,
    /// The header's api key and the body disagree.
    #[error("header says api key {header}, body is a {body:?} message")]
    ApiKeyMismatch {
        /// The raw api key of the header.
        header: i32,
        /// The API of the body.
        body: ApiKey,
    },
}

impl ProtocolError {
    /// The error code a broker answers with when a request failed to decode this way and its
    /// header could still be read (see [`crate::codec::decode_request_header`]). A request for an
    /// API this build does not know also fails with [`ProtocolError::MissingBody`]; check its
    /// header with [`crate::api::check_version`] first, which answers `UNSUPPORTED_VERSION`.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::MessageTooLarge,
            _ => ErrorCode::InvalidRequest,
        }
    }
}
