//! The checks behind the `frame_decode` and `batch_parse` fuzz targets, shared by the targets
//! themselves (`fuzz/fuzz_targets/*.rs`, which pull this file in with `#[path]`) and by the fast
//! corpus replay in `tests/fuzz_corpus.rs`: one source, so the replay in the normal test suite
//! asserts exactly what the fuzzer asserted. See `docs/fuzzing.md`.
//!
//! Each check takes arbitrary bytes and panics (fails) when a property does not hold; any
//! panic inside the crate under test counts as a failure too.

// Each fuzz target uses only its own check.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use strom_protocol::batch::{
    self, BatchError, BatchHeader, BatchIter, HEADER_LEN, LOG_OVERHEAD, Records, Retained,
};
use strom_protocol::frame::{LENGTH_PREFIX_LEN, decode_frame};
use strom_protocol::messages::{request, response};
use strom_protocol::{
    ProtocolError, api, decode_request, decode_request_header, decode_response, encode_request,
    encode_response, encode_response_chunks,
};

/// Largest read the simulated connection makes into its buffer at once.
pub const MAX_READ: usize = 256;

/// Fuzz target `frame_decode`. Input: `limit` (u16, little-endian), one byte `r` (reads are
/// `r + 1` bytes), then the byte stream a peer sends.
///
/// The stream is fed to [`decode_frame`] the way a connection reads it: a read of at most `r + 1`
/// bytes into the buffer whenever no whole frame is buffered, then every whole frame taken off.
/// The reader itself never over-allocates (it grows the buffer to exactly what it holds), so any
/// capacity beyond that is `decode_frame`'s. Asserts:
/// - no panic, and `decode_frame` fails only with `FrameTooLarge`, for a prefix above the limit,
///   leaving the buffer exactly as it was (bytes and capacity);
/// - every payload is at most `limit` bytes;
/// - after every call the buffer's capacity is at most `limit + LENGTH_PREFIX_LEN + MAX_READ`:
///   a length prefix cannot make the reader allocate beyond the frame limit;
/// - each payload goes through [`decode_request`], [`decode_request_header`] and
///   [`decode_response`] without panicking, and whatever decodes re-encodes to an equal message
///   (see [`check_payload`]).
pub fn frame_decode(data: &[u8]) {
    let Some(([lo, hi, read], mut wire)) = data.split_first_chunk::<3>() else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes([*lo, *hi]));
    let read = usize::from(*read) + 1;
    let bound = limit + LENGTH_PREFIX_LEN + MAX_READ;
    let mut buf = BytesMut::new();
    loop {
        let before = buf.clone();
        let capacity_before = buf.capacity();
        match decode_frame(&mut buf, limit) {
            Ok(Some(payload)) => {
                assert!(payload.len() <= limit, "payload of {} bytes", payload.len());
                assert!(
                    buf.capacity() <= bound,
                    "capacity {} after a frame, limit {limit}",
                    buf.capacity()
                );
                check_payload(payload);
            }
            Ok(None) => {
                assert!(
                    buf.capacity() <= bound,
                    "capacity {} (was {capacity_before}) after an incomplete frame, limit {limit}",
                    buf.capacity()
                );
                assert_eq!(buf, before, "an incomplete frame is not consumed");
                if wire.is_empty() {
                    return;
                }
                let (chunk, rest) = wire.split_at(read.min(wire.len()));
                wire = rest;
                receive(&mut buf, chunk);
            }
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert_eq!(max, limit);
                assert!(
                    len > limit,
                    "refused a frame of {len} bytes under the limit"
                );
                assert_eq!(buf, before, "a refused frame is not consumed");
                assert_eq!(
                    buf.capacity(),
                    capacity_before,
                    "nothing reserved on refusal"
                );
                return; // the connection is closed
            }
            Err(other) => panic!("decode_frame failed with {other:?}"),
        }
    }
}

/// Appends `chunk` as a socket read would: into spare capacity if there is room, otherwise into
/// a buffer of exactly the needed size (so the reader's own growth never doubles).
fn receive(buf: &mut BytesMut, chunk: &[u8]) {
    if buf.capacity() - buf.len() >= chunk.len() {
        buf.extend_from_slice(chunk);
    } else {
        let mut grown = BytesMut::with_capacity(buf.len() + chunk.len());
        grown.extend_from_slice(buf);
        grown.extend_from_slice(chunk);
        *buf = grown;
    }
}

/// One frame's payload through every decoder the broker and the client use. Whatever decodes
/// must also encode, and decode again to the same message; a decoded response must encode to
/// the same bytes through [`encode_response_chunks`] as through [`encode_response`]. Record
/// bytes inside produce requests and fetch responses go through [`batch_parse`].
pub fn check_payload(payload: Bytes) {
    let header = decode_request_header(&payload);
    if let Ok(header) = &header {
        let _ = api::check_version(header);
    }
    match decode_request(payload.clone()) {
        Ok(request) => {
            assert_eq!(
                header.ok(),
                request.header,
                "decode_request_header disagrees with decode_request"
            );
            let mut out = BytesMut::new();
            encode_request(&request, &mut out).expect("a decoded request encodes");
            assert_eq!(decode_request(unframe(out)).ok(), Some(request.clone()));
            if let Some(request::Body::Produce(produce)) = &request.body {
                for partition in produce.topics.iter().flat_map(|t| &t.partitions) {
                    batch_parse(&partition.records);
                }
            }
            request
                .into_parts()
                .expect("a decoded request has both parts");
        }
        Err(e) => {
            let _ = e.error_code();
        }
    }
    if let Ok(response) = decode_response(payload) {
        let mut out = BytesMut::new();
        encode_response(&response, &mut out).expect("a decoded response encodes");
        let (mut scratch, mut chunks) = (BytesMut::new(), Vec::new());
        encode_response_chunks(&response, &mut scratch, &mut chunks)
            .expect("a decoded response encodes in chunks");
        assert!(chunks.iter().all(|c| !c.is_empty()), "an empty chunk");
        assert_eq!(
            chunks.concat(),
            out[..],
            "chunks differ from encode_response"
        );
        assert_eq!(decode_response(unframe(out)).ok(), Some(response.clone()));
        if let Some(response::Body::Fetch(fetch)) = &response.body {
            for partition in fetch.topics.iter().flat_map(|t| &t.partitions) {
                batch_parse(&partition.records);
            }
        }
        let (_header, _body_or_code) = response
            .into_parts()
            .expect("a decoded response has a header");
    }
}

/// The payload of the one frame `framed` holds.
fn unframe(mut framed: BytesMut) -> Bytes {
    let payload = decode_frame(&mut framed, usize::MAX)
        .expect("own frame")
        .expect("whole frame");
    assert!(framed.is_empty(), "one frame, nothing after it");
    payload
}

/// Fuzz target `batch_parse`. Input: bytes claimed to be record batches, as a producer sends them
/// or a fetch returns them. Runs every parser of `strom_protocol::batch` over them: the input as
/// one batch ([`check_one_batch`]), then the batches [`BatchIter`] walks out of it. Asserts no
/// panic and that the parsers agree with each other (see the called functions).
pub fn batch_parse(data: &[u8]) {
    check_one_batch(data);
    let mut iter = BatchIter::new(data);
    let mut expected_start = 0;
    while let Some(item) = iter.next() {
        match item {
            Ok((range, header)) => {
                assert_eq!(range.start, expected_start, "batches are back to back");
                assert_eq!(range.len(), header.total_len());
                assert!(range.end <= data.len());
                assert_eq!(iter.position(), range.end);
                assert_eq!(
                    batch::peek_total_len(&data[range.clone()]),
                    Ok(Some(range.len()))
                );
                expected_start = range.end;
                check_one_batch(&data[range]);
            }
            Err(_) => {
                assert_eq!(iter.position(), data.len(), "an error ends the walk");
                assert!(iter.next().is_none(), "nothing after an error");
                return;
            }
        }
    }
    // The walk stops at an incomplete batch: what is left is shorter than a header or than the
    // batch its header announces.
    let rest = &data[iter.position()..];
    if rest.len() >= HEADER_LEN {
        let header = BatchHeader::parse(rest).expect("a walk that stopped cleanly left a header");
        assert!(header.total_len() > rest.len());
    }
}

/// Every parser on `data` taken as exactly one batch.
pub fn check_one_batch(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let parsed = BatchHeader::parse(data);
    let valid = batch::validate(data);
    let produced = batch::validate_produced(data);
    match batch::peek_total_len(data) {
        Ok(Some(total)) => {
            assert!(total >= HEADER_LEN);
            if valid.is_ok() {
                assert_eq!(total, data.len());
            }
        }
        Ok(None) => assert!(data.len() < LOG_OVERHEAD),
        Err(BatchError::InvalidLength(_)) => assert!(parsed.is_err()),
        Err(e) => panic!("peek_total_len failed with {e:?}"),
    }
    if let Ok(header) = &produced {
        assert_eq!(
            valid.as_ref().ok(),
            Some(header),
            "validate_produced implies validate"
        );
        assert!(header.record_count >= 1);
    }
    if let Ok(header) = &valid {
        assert_eq!(parsed.as_ref().ok(), Some(header));
        assert_eq!(header.total_len(), data.len());
        assert_eq!(batch::compute_crc(data), header.crc);
        // The accessors a broker and a client call on a checked header.
        let _ = (header.compression(), header.timestamp_type());
        let _ = (header.is_transactional(), header.is_control());
        let _ = (header.last_offset(), header.next_offset());
    }
    check_records(&bytes, parsed.ok());
}

/// Decodes the records of `bytes` and filters them with [`batch::retain_records`]: both must
/// agree on the records, and a filtered batch must be valid and hold exactly the kept ones.
fn check_records(bytes: &Bytes, header: Option<BatchHeader>) {
    let records = match Records::new(bytes.clone()) {
        Ok(records) => records,
        Err(_) => {
            assert!(batch::retain_records(bytes, |_| true).is_err());
            return;
        }
    };
    let header = header.expect("Records::new parsed a header");
    let mut decoded = Vec::new();
    let mut failed = false;
    for record in records {
        match record {
            Ok(record) => {
                assert!(record.raw.end <= header.total_len());
                assert!(record.raw.start >= HEADER_LEN);
                // Headers were checked when the record was decoded: all of them come out.
                assert_eq!(record.headers().count(), record.header_count());
                decoded.push(record);
            }
            Err(_) => failed = true,
        }
    }
    // Keep a pattern of records chosen by the batch's last byte.
    let pattern = bytes.last().copied().unwrap_or(0);
    let keep = |i: usize| pattern >> (i % 8) & 1 == 1;
    let mut index = 0;
    let retained = batch::retain_records(bytes, |_| {
        index += 1;
        keep(index - 1)
    });
    if failed {
        assert!(
            retained.is_err(),
            "retain_records accepted a malformed record"
        );
        return;
    }
    assert_eq!(
        decoded.len(),
        usize::try_from(header.record_count).expect("non-negative count"),
        "a clean decode yields record count records"
    );
    let kept: Vec<_> = decoded
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, r)| r)
        .collect();
    match retained.expect("every record decoded, so the filter works") {
        Retained::All => assert_eq!(kept.len(), decoded.len()),
        Retained::Nothing => assert!(kept.is_empty()),
        Retained::Some(filtered) => {
            assert!(!kept.is_empty() && kept.len() < decoded.len());
            let filtered_header = BatchHeader::parse(&filtered).expect("a filtered batch parses");
            assert_eq!(filtered_header.total_len(), filtered.len());
            assert_eq!(batch::compute_crc(&filtered), filtered_header.crc);
            assert_eq!(filtered_header.base_offset, header.base_offset);
            if header.last_offset_delta >= 0 {
                // Only a header that was valid to begin with makes a valid filtered batch.
                batch::validate(&filtered).expect("a filtered batch is valid");
            }
            let again: Vec<_> = Records::new(filtered)
                .expect("a filtered batch decodes")
                .collect::<Result<_, _>>()
                .expect("its records decode");
            assert_eq!(again.len(), kept.len());
            for (a, b) in again.iter().zip(&kept) {
                assert_eq!(
                    (a.offset, a.timestamp, &a.key, &a.value),
                    (b.offset, b.timestamp, &b.key, &b.value)
                );
                assert!(a.headers().eq(b.headers()));
            }
        }
    }
}
