//! Framing: how one message is cut out of a byte stream, without I/O and without copying.
//!
//! ```text
//! offset  size  field
//!      0     4  length N    unsigned 32-bit big-endian; counts the payload only, not itself
//!      4     N  payload     one protobuf message: a Request (client to broker) or a Response
//!                           (broker to client), see crate::messages
//! ```
//!
//! The reader checks N against its `max_frame_bytes` before it reserves or allocates anything:
//! a peer cannot make it allocate more than the limit by sending a large prefix. A frame over
//! the limit leaves the stream unsynchronised, so the connection is closed. The same layout is
//! what `tokio_util::codec::LengthDelimitedCodec` reads and writes with its defaults (4-byte
//! big-endian length, payload only) and `max_frame_length` set.
//!
//! [`decode_frame`] takes the payload out of the caller's read buffer with
//! `split_to(len).freeze()`: the returned [`Bytes`] shares the buffer's memory, and decoding a
//! message from it keeps the `bytes` fields (record batches) as slices of that same memory.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::error::ProtocolError;

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// The largest payload the 4-byte prefix can describe.
pub const MAX_ENCODABLE_FRAME_BYTES: usize = u32::MAX as usize;

/// Appends `message` to `dst` as one frame: the 4-byte big-endian length, then the encoded
/// message. `dst` grows by exactly [`frame_len`]`(message)` bytes and is reserved once.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`] when the encoded message is longer than the prefix can say
/// ([`MAX_ENCODABLE_FRAME_BYTES`]); `dst` is unchanged then.
pub fn encode_frame<M: Message>(message: &M, dst: &mut BytesMut) -> Result<(), ProtocolError> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
        len,
        max: MAX_ENCODABLE_FRAME_BYTES,
    })?;
    dst.reserve(LENGTH_PREFIX_LEN + len);
    dst.put_u32(prefix);
    message.encode(dst)?;
    Ok(())
}

/// Bytes [`encode_frame`] writes for `message`: the prefix plus the encoded message.
pub fn frame_len<M: Message>(message: &M) -> usize {
    LENGTH_PREFIX_LEN + message.encoded_len()
}

/// Reads the length prefix at the start of `src`, if four bytes are there. Nothing is consumed.
pub fn peek_frame_len(src: &[u8]) -> Option<u32> {
    let prefix: [u8; LENGTH_PREFIX_LEN] = src.get(..LENGTH_PREFIX_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix))
}

/// Takes the next whole frame's payload off the front of `src`.
///
/// Returns `Ok(None)` while `src` holds less than a whole frame; read more into `src` and call
/// again. Once the prefix is there and within `max_frame_bytes`, `src` is reserved up to the
/// whole frame so the following reads need not reallocate; what this allocates is never more
/// than that frame (prefix included). When a frame is complete its prefix is dropped and the
/// payload is split off with `split_to(len).freeze()`: no byte is copied.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`] when the prefix is above `max_frame_bytes`. This is checked
/// before anything is reserved or consumed: `src` is left exactly as it was, and the caller
/// should close the connection.
pub fn decode_frame(
    src: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, ProtocolError> {
    let Some(prefix) = peek_frame_len(src) else {
        return Ok(None);
    };
    // Saturate where usize is narrower than u32: such a length is over any limit anyway.
    let len = usize::try_from(prefix).unwrap_or(usize::MAX);
    if len > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let total = LENGTH_PREFIX_LEN + len;
    if src.len() < total {
        reserve_frame(src, total);
        return Ok(None);
    }
    src.advance(LENGTH_PREFIX_LEN);
    Ok(Some(src.split_to(len).freeze()))
}

/// Makes room in `src` for a whole frame of `total` bytes without allocating more than that.
/// `BytesMut::reserve` may double the existing allocation instead, which can be well above the
/// frame limit; here the buffer's own free space is reclaimed when that is enough, and otherwise
/// the part of the frame already read moves to an allocation of exactly `total` bytes.
fn reserve_frame(src: &mut BytesMut, total: usize) {
    if src.capacity() >= total || src.try_reclaim(total - src.len()) {
        return;
    }
    let mut frame = BytesMut::with_capacity(total);
    frame.extend_from_slice(src);
    *src = frame;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ApiVersionsRequest, RequestHeader};

    fn header() -> RequestHeader {
        RequestHeader {
            correlation_id: 7,
            api_key: 1,
            api_version: 0,
            client_id: Some("test".into()),
        }
    }

    #[test]
    fn encode_then_decode_one_frame() {
        let mut buf = BytesMut::new();
        encode_frame(&header(), &mut buf).unwrap();
        assert_eq!(buf.len(), frame_len(&header()));
        assert_eq!(
            peek_frame_len(&buf),
            Some(u32::try_from(header().encoded_len()).unwrap())
        );
        let payload = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(RequestHeader::decode(payload).unwrap(), header());
    }

    #[test]
    fn frames_back_to_back_and_in_pieces() {
        let mut wire = BytesMut::new();
        encode_frame(&header(), &mut wire).unwrap();
        encode_frame(&ApiVersionsRequest::default(), &mut wire).unwrap(); // empty payload
        encode_frame(&header(), &mut wire).unwrap();
        let wire = wire.freeze();

        // Feed one byte at a time: every prefix of a frame is Ok(None), never an error.
        let mut buf = BytesMut::new();
        let mut payloads = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(payload) = decode_frame(&mut buf, 1024).unwrap() {
                payloads.push(payload);
            }
        }
        assert_eq!(payloads.len(), 3);
        assert_eq!(
            RequestHeader::decode(payloads[0].clone()).unwrap(),
            header()
        );
        assert!(payloads[1].is_empty());
        assert_eq!(
            RequestHeader::decode(payloads[2].clone()).unwrap(),
            header()
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_frame_is_incomplete_not_an_error() {
        let mut full = BytesMut::new();
        encode_frame(&header(), &mut full).unwrap();
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(
                decode_frame(&mut buf, 1024).unwrap().is_none(),
                "cut at {cut}"
            );
            assert_eq!(
                &buf[..],
                &full[..cut],
                "an incomplete frame is not consumed"
            );
        }
    }

    #[test]
    fn huge_prefix_is_rejected_before_allocating() {
        // A prefix announcing 4 GiB - 1, followed by a few bytes.
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u32(u32::MAX);
        buf.put_slice(b"abc");
        let capacity = buf.capacity();
        let before = buf.clone();
        let err = decode_frame(&mut buf, 64 * 1024 * 1024).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { len, max }
                if len == u32::MAX as usize && max == 64 * 1024 * 1024
        ));
        assert_eq!(buf.capacity(), capacity, "nothing was reserved");
        assert_eq!(buf, before, "nothing was consumed");
    }

    #[test]
    fn waiting_for_a_frame_reserves_no_more_than_the_frame() {
        // One read brought a whole 16-byte frame and 159 bytes of a 164-byte one. Found by the
        // frame_decode fuzz target: `BytesMut::reserve` doubled the 175-byte buffer instead.
        let mut buf = BytesMut::with_capacity(175);
        buf.put_u32(12);
        buf.put_bytes(1, 12);
        buf.put_u32(160);
        buf.put_bytes(2, 155);
        assert_eq!(decode_frame(&mut buf, 160).unwrap().unwrap().len(), 12);
        assert!(decode_frame(&mut buf, 160).unwrap().is_none());
        assert!(buf.capacity() >= 164, "room for the whole frame");
        assert!(buf.capacity() <= 164, "no more: {}", buf.capacity());
        buf.put_bytes(2, 5);
        assert_eq!(
            decode_frame(&mut buf, 160).unwrap().unwrap(),
            vec![2u8; 160]
        );
    }

    #[test]
    fn limit_is_inclusive() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(b"xyz");
        assert!(decode_frame(&mut buf.clone(), 2).is_err());
        assert_eq!(&decode_frame(&mut buf, 3).unwrap().unwrap()[..], b"xyz");
    }

    #[test]
    fn payload_shares_the_read_buffer() {
        let mut buf = BytesMut::new();
        buf.put_u32(5);
        buf.put_slice(b"hello");
        let start = buf.as_ptr() as usize;
        let payload = decode_frame(&mut buf, 5).unwrap().unwrap();
        assert_eq!(payload.as_ptr() as usize, start + LENGTH_PREFIX_LEN);
    }
}
