//! Kafka's RecordBatch v2 (magic 2), byte for byte: the unit strom sends, stores and serves.
//!
//! One layout for the wire, the disk and the client. All integers are big-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  base offset              assigned by the broker (not covered by the CRC)
//!      8     4  batch length             bytes after this field (total length - 12)
//!     12     4  partition leader epoch   (not covered by the CRC)
//!     16     1  magic                    always 2
//!     17     4  CRC-32C                  Castagnoli, over bytes 21..end
//!     21     2  attributes               bits 0-2 compression, 3 timestamp type,
//!                                        4 transactional, 5 control, 6 delete horizon
//!     23     4  last offset delta        record count - 1 for a freshly produced batch
//!     27     8  base timestamp           ms since the epoch, first record's timestamp
//!     35     8  max timestamp            largest record timestamp in the batch
//!     43     8  producer id              -1 when not idempotent
//!     51     2  producer epoch
//!     53     4  base sequence            -1 when not idempotent
//!     57     4  record count
//!     61     .  records
//! ```
//!
//! Each record is `length: varint` followed by that many bytes: `attributes: i8`,
//! `timestamp delta: varlong`, `offset delta: varint`, `key length: varint` (-1 = null), key,
//! `value length: varint` (-1 = null), value, `header count: varint`, then per header
//! `key length: varint`, key (UTF-8), `value length: varint` (-1 = null), value. All varints are
//! zigzag encoded (see [`crate::varint`]).
//!
//! Because the CRC starts at the attributes, the broker assigns offsets by overwriting the first
//! eight bytes, and it validates a batch (length, magic, CRC) without looking at its records.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::varint::{self, VarintError};

/// Length of the fixed batch header, up to the first record.
pub const HEADER_LEN: usize = 61;
/// Bytes in front of the batch length field's coverage: base offset (8) + batch length (4).
pub const LOG_OVERHEAD: usize = 12;
/// The only magic value strom accepts.
pub const MAGIC: i8 = 2;
/// Where the CRC-covered region starts (the attributes field).
pub const CRC_START: usize = 21;

const BASE_OFFSET_AT: usize = 0;
const LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why bytes are not a valid RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than the structure being read needs.
    #[error("batch truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The batch length field is negative or smaller than a header.
    #[error("invalid batch length field {0}")]
    InvalidLength(i32),
    /// The batch length field disagrees with the bytes given.
    #[error("batch length field says {declared} bytes in total, buffer holds {actual}")]
    LengthMismatch {
        /// Total length the header declares (length field + 12).
        declared: usize,
        /// Bytes actually present.
        actual: usize,
    },
    /// Not magic 2.
    #[error("unsupported batch magic {0}; only RecordBatch v2 (magic 2) is accepted")]
    UnsupportedMagic(i8),
    /// The stored CRC-32C does not match the bytes.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Record count or last offset delta is negative or inconsistent.
    #[error("invalid record count {count} with last offset delta {last_offset_delta}")]
    InvalidRecordCount {
        /// Record count field.
        count: i32,
        /// Last offset delta field.
        last_offset_delta: i32,
    },
    /// A record inside the batch is malformed.
    #[error("malformed record {index} at byte {position}: {reason}")]
    MalformedRecord {
        /// Record index in the batch.
        index: usize,
        /// Byte position in the batch.
        position: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A varint inside a record is malformed.
    #[error("malformed varint in record {index}: {source}")]
    Varint {
        /// Record index in the batch.
        index: usize,
        /// The varint error.
        #[source]
        source: VarintError,
    },
    /// The records are compressed with a codec this build cannot read.
    #[error("records are compressed with {0:?}, which this operation cannot decode")]
    Compressed(Compression),
    /// A batch would be larger than the 2 GiB a length field can describe.
    #[error("batch of {0} bytes is too large to encode")]
    TooLarge(usize),
}

/// Compression codec from the low three attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Records are stored as they are.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4 (frame format).
    Lz4,
    /// zstd.
    Zstd,
    /// A code Kafka does not define.
    Unknown(u8),
}

impl Compression {
    fn from_attributes(attributes: i16) -> Self {
        match (attributes & COMPRESSION_MASK) as u8 {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            other => Self::Unknown(other),
        }
    }
}

/// How the batch's timestamps were set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
}

/// The fixed-size header of a RecordBatch v2, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the length field (total length - [`LOG_OVERHEAD`]).
    pub batch_length: i32,
    /// Leader epoch of the partition when the batch was appended.
    pub partition_leader_epoch: i32,
    /// Always [`MAGIC`] once parsed.
    pub magic: i8,
    /// CRC-32C over bytes [`CRC_START`]..end.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (ms).
    pub base_timestamp: i64,
    /// Largest record timestamp (ms).
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

#[inline]
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
#[inline]
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
#[inline]
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Decodes the header at the start of `buf` and checks the magic and length field.
    /// It does not check the CRC or that `buf` holds the whole batch: see [`validate`].
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                need: HEADER_LEN,
                have: buf.len(),
            });
        }
        let magic = buf[MAGIC_AT] as i8;
        if magic != MAGIC {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let batch_length = be_i32(buf, LENGTH_AT);
        if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::InvalidLength(batch_length));
        }
        Ok(Self {
            base_offset: be_i64(buf, BASE_OFFSET_AT),
            batch_length,
            partition_leader_epoch: be_i32(buf, LEADER_EPOCH_AT),
            magic,
            crc: u32::from_be_bytes([
                buf[CRC_AT],
                buf[CRC_AT + 1],
                buf[CRC_AT + 2],
                buf[CRC_AT + 3],
            ]),
            attributes: be_i16(buf, ATTRIBUTES_AT),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_AT),
            producer_id: be_i64(buf, PRODUCER_ID_AT),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(buf, BASE_SEQUENCE_AT),
            record_count: be_i32(buf, RECORD_COUNT_AT),
        })
    }

    /// Total bytes of the batch, header included.
    #[inline]
    pub fn total_len(&self) -> usize {
        // batch_length was checked to be >= 49 in `parse`, so this never wraps.
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record in the batch. The base offset is not covered by the CRC: for a
    /// damaged or hostile one this saturates at `i64::MIN`/`i64::MAX` rather than overflow, and
    /// callers' range checks refuse it.
    #[inline]
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Offset after the last record: where the next batch starts (saturating, as
    /// [`BatchHeader::last_offset`]).
    #[inline]
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Compression codec of the records.
    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes)
    }

    /// Who set the timestamps.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// A control batch (transaction markers), not user data.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// Reads the total length (header included) of the batch starting at `buf`, from its first 12
/// bytes, without checking anything else. `None` if fewer than 12 bytes are present; an error if
/// the length field is impossible.
pub fn peek_total_len(buf: &[u8]) -> Result<Option<usize>, BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Ok(None);
    }
    let len = be_i32(buf, LENGTH_AT);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::InvalidLength(len));
    }
    Ok(Some(len as usize + LOG_OVERHEAD))
}

/// CRC-32C of a batch's covered region (attributes to end).
#[inline]
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(CRC_START..).unwrap_or_default())
}

/// Checks that `buf` is exactly one well-formed batch: header, magic, length field equal to the
/// buffer, CRC, and record count consistent with the last offset delta. Records are not parsed.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    if header.total_len() != buf.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.total_len(),
            actual: buf.len(),
        });
    }
    if header.record_count < 0 || header.last_offset_delta < 0 {
        return Err(BatchError::InvalidRecordCount {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let computed = compute_crc(buf);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Like [`validate`], and also requires what a freshly produced batch must hold: at least one
/// record, and one offset per record (`last offset delta == record count - 1`).
pub fn validate_produced(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate(buf)?;
    if header.record_count < 1 || header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::InvalidRecordCount {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// A batch of no records holding offsets `base_offset..=base_offset + last_offset_delta`, with
/// `leader_epoch` and both timestamps `timestamp`: what compaction leaves of a batch whose every
/// record it removed, in the form Kafka's compaction keeps such batches. A follower writes one
/// where its leader's compaction removed whole batches, so its own log has no gaps (readers,
/// Kafka clients too, step over it by its last offset delta). `None` for a negative delta.
pub fn empty_batch(
    base_offset: i64,
    last_offset_delta: i32,
    leader_epoch: i32,
    timestamp: i64,
) -> Option<Bytes> {
    if last_offset_delta < 0 {
        return None;
    }
    let mut buf = BytesMut::with_capacity(HEADER_LEN);
    buf.put_i64(base_offset);
    buf.put_i32((HEADER_LEN - LOG_OVERHEAD) as i32);
    buf.put_i32(leader_epoch);
    buf.put_i8(MAGIC);
    buf.put_u32(0); // CRC, filled below
    buf.put_i16(0);
    buf.put_i32(last_offset_delta);
    buf.put_i64(timestamp);
    buf.put_i64(timestamp);
    buf.put_i64(-1); // no producer
    buf.put_i16(-1);
    buf.put_i32(-1);
    buf.put_i32(0); // no records
    let crc = compute_crc(&buf);
    buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Some(buf.freeze())
}

/// Overwrites the base offset of the batch at the start of `buf` (not covered by the CRC).
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) -> Result<(), BatchError> {
    let have = buf.len();
    let field = buf
        .get_mut(BASE_OFFSET_AT..BASE_OFFSET_AT + 8)
        .ok_or(BatchError::Truncated { need: 8, have })?;
    field.copy_from_slice(&base_offset.to_be_bytes());
    Ok(())
}

/// One header of a record: a UTF-8 key and an optional value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    /// Header key.
    pub key: &'a str,
    /// Header value; `None` is Kafka's null.
    pub value: Option<&'a [u8]>,
}

/// A record to encode into a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordRef<'a> {
    /// Timestamp, ms since the epoch.
    pub timestamp: i64,
    /// Key; `None` is null.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is null (a tombstone in a compacted topic).
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: &'a [HeaderRef<'a>],
}

/// Builds an uncompressed RecordBatch v2 in one buffer: records are appended as they come and the
/// header is filled in by [`BatchBuilder::finish`]. Offsets in the result start at 0; the broker
/// assigns the real base offset.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: i16,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl BatchBuilder {
    /// A builder whose buffer starts with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(HEADER_LEN));
        buf.put_bytes(0, HEADER_LEN);
        Self {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
        }
    }

    /// Marks the batch as coming from an idempotent producer.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets the raw attributes (compression bits are left to the caller to honour).
    pub fn attributes(mut self, attributes: i16) -> Self {
        self.attributes = attributes;
        self
    }

    /// Records added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// No records added yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the finished batch would take.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the buffer has room for without growing (the bytes so far included).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Moves the batch into a buffer of exactly `capacity` bytes, when that is more than it has:
    /// for a caller that accounts its batches' memory and grows them in steps of its choosing
    /// (a push into a full buffer grows it by however much the allocator decides). Copies the
    /// bytes so far once.
    pub fn grow_to(&mut self, capacity: usize) {
        if capacity <= self.buf.capacity() {
            return;
        }
        let mut buf = BytesMut::with_capacity(capacity);
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
    }

    /// Bytes `record` would add to the batch.
    pub fn record_size(&self, record: &RecordRef<'_>) -> usize {
        self.measured_record_size(record, payload_len(record))
    }

    /// As [`BatchBuilder::record_size`], for a record whose [`payload_len`] is known: a
    /// producer that measures a record once for its own checks need not measure it again.
    /// `payload` must be `payload_len(record)`.
    pub fn measured_record_size(&self, record: &RecordRef<'_>, payload: usize) -> usize {
        let base = if self.count == 0 {
            record.timestamp
        } else {
            self.base_timestamp
        };
        let body = body_len(payload, record.timestamp.wrapping_sub(base), self.count);
        varint::encoded_len(body as i64) + body
    }

    /// Appends one record.
    pub fn push(&mut self, record: &RecordRef<'_>) -> Result<(), BatchError> {
        self.push_measured(record, payload_len(record))
    }

    /// As [`BatchBuilder::push`], for a record whose [`payload_len`] is known. `payload` must
    /// be `payload_len(record)`: another value writes a record whose length prefix is wrong,
    /// which consumers reject as corrupt (debug builds assert it).
    pub fn push_measured(
        &mut self,
        record: &RecordRef<'_>,
        payload: usize,
    ) -> Result<(), BatchError> {
        debug_assert_eq!(payload, payload_len(record));
        if self.count == 0 {
            self.base_timestamp = record.timestamp;
        }
        let ts_delta = record.timestamp.wrapping_sub(self.base_timestamp);
        let offset_delta = self.count;
        let body = body_len(payload, ts_delta, offset_delta);
        let body_i32 = i32::try_from(body).map_err(|_| BatchError::TooLarge(body))?;
        let buf = &mut self.buf;
        varint::put_varint(buf, body_i32);
        buf.put_i8(0); // record attributes: unused
        varint::put_varlong(buf, ts_delta);
        varint::put_varint(buf, offset_delta);
        put_nullable(buf, record.key)?;
        put_nullable(buf, record.value)?;
        varint::put_varint(buf, len_i32(record.headers.len())?);
        for h in record.headers {
            varint::put_varint(buf, len_i32(h.key.len())?);
            buf.put_slice(h.key.as_bytes());
            put_nullable(buf, h.value)?;
        }
        self.count = self
            .count
            .checked_add(1)
            .ok_or(BatchError::TooLarge(self.buf.len()))?;
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        Ok(())
    }

    /// Writes the header and CRC and returns the encoded batch (base offset 0).
    pub fn finish(mut self) -> Result<Bytes, BatchError> {
        let total = self.buf.len();
        let batch_length =
            i32::try_from(total - LOG_OVERHEAD).map_err(|_| BatchError::TooLarge(total))?;
        let max_timestamp = if self.count == 0 {
            -1
        } else {
            self.max_timestamp
        };
        let mut h = &mut self.buf[..HEADER_LEN];
        h.put_i64(0);
        h.put_i32(batch_length);
        h.put_i32(-1); // partition leader epoch: set by the broker
        h.put_i8(MAGIC);
        h.put_u32(0); // CRC, filled below
        h.put_i16(self.attributes);
        h.put_i32((self.count - 1).max(0));
        h.put_i64(self.base_timestamp);
        h.put_i64(max_timestamp);
        h.put_i64(self.producer_id);
        h.put_i16(self.producer_epoch);
        h.put_i32(self.base_sequence);
        h.put_i32(self.count);
        let crc = compute_crc(&self.buf);
        self.buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(self.buf.freeze())
    }
}

fn len_i32(n: usize) -> Result<i32, BatchError> {
    i32::try_from(n).map_err(|_| BatchError::TooLarge(n))
}

fn put_nullable(buf: &mut BytesMut, v: Option<&[u8]>) -> Result<(), BatchError> {
    match v {
        None => varint::put_varint(buf, -1),
        Some(b) => {
            varint::put_varint(buf, len_i32(b.len())?);
            buf.put_slice(b);
        }
    }
    Ok(())
}

fn nullable_len(v: Option<&[u8]>) -> usize {
    match v {
        None => 1,
        Some(b) => varint::encoded_len(b.len() as i64) + b.len(),
    }
}

/// Bytes of a record's encoding that do not depend on where in a batch it goes: its key, value
/// and headers with their lengths. The rest (length prefix, attributes, timestamp and offset
/// deltas) is 3 to 21 bytes more ([`BatchBuilder::measured_record_size`]).
pub fn payload_len(record: &RecordRef<'_>) -> usize {
    let mut n = nullable_len(record.key)
        + nullable_len(record.value)
        + varint::encoded_len(record.headers.len() as i64);
    for h in record.headers {
        n += varint::encoded_len(h.key.len() as i64) + h.key.len() + nullable_len(h.value);
    }
    n
}

fn body_len(payload: usize, ts_delta: i64, offset_delta: i32) -> usize {
    1 // attributes
        + varint::encoded_len(ts_delta)
        + varint::encoded_len(i64::from(offset_delta))
        + payload
}

/// One decoded record: slices of the batch it came from, so decoding copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Absolute offset (batch base offset + offset delta).
    pub offset: i64,
    /// Absolute timestamp (ms).
    pub timestamp: i64,
    /// Key; `None` is null.
    pub key: Option<Bytes>,
    /// Value; `None` is null.
    pub value: Option<Bytes>,
    /// Encoded headers (count varint already consumed); walk them with [`Record::headers`].
    headers_raw: Bytes,
    header_count: usize,
    /// Byte range of the whole record (length prefix included) within the batch.
    pub raw: Range<usize>,
}

impl Record {
    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.header_count
    }

    /// The record's headers, in order. The encoding was checked when the record was decoded.
    pub fn headers(&self) -> impl Iterator<Item = HeaderRef<'_>> + '_ {
        let mut rest: &[u8] = &self.headers_raw;
        (0..self.header_count).map_while(move |_| {
            let (klen, n) = varint::get_varint(rest).ok()?;
            let key_bytes = rest.get(n..n + usize::try_from(klen).ok()?)?;
            let key = std::str::from_utf8(key_bytes).ok()?;
            rest = &rest[n + key_bytes.len()..];
            let (vlen, n) = varint::get_varint(rest).ok()?;
            let value = if vlen < 0 {
                rest = &rest[n..];
                None
            } else {
                let v = rest.get(n..n + vlen as usize)?;
                rest = &rest[n + v.len()..];
                Some(v)
            };
            Some(HeaderRef { key, value })
        })
    }
}

/// Iterates over the records of an uncompressed batch, checking every length against the batch.
#[derive(Debug)]
pub struct Records {
    batch: Bytes,
    base_offset: i64,
    base_timestamp: i64,
    pos: usize,
    index: usize,
    count: usize,
}

impl Records {
    /// Decodes the records of `batch` (a whole batch, header included). The header is parsed
    /// here; the CRC is not rechecked.
    pub fn new(batch: Bytes) -> Result<Self, BatchError> {
        let header = BatchHeader::parse(&batch)?;
        if header.total_len() > batch.len() {
            return Err(BatchError::LengthMismatch {
                declared: header.total_len(),
                actual: batch.len(),
            });
        }
        match header.compression() {
            Compression::None => {}
            other => return Err(BatchError::Compressed(other)),
        }
        let count =
            usize::try_from(header.record_count).map_err(|_| BatchError::InvalidRecordCount {
                count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            })?;
        let batch = batch.slice(..header.total_len());
        Ok(Self {
            batch,
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            pos: HEADER_LEN,
            index: 0,
            count,
        })
    }

    fn decode_next(&mut self) -> Result<Record, BatchError> {
        let index = self.index;
        let start = self.pos;
        let buf: &[u8] = &self.batch;
        let err = |reason| BatchError::MalformedRecord {
            index,
            position: start,
            reason,
        };
        let var = |source| BatchError::Varint { index, source };
        let (len, n) = varint::get_varint(&buf[start..]).map_err(var)?;
        let len = usize::try_from(len).map_err(|_| err("negative record length"))?;
        let body_start = start + n;
        let end = body_start
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| err("record runs past the end of the batch"))?;
        let body = &buf[body_start..end];
        let mut p = 1usize; // skip record attributes
        if body.is_empty() {
            return Err(err("empty record"));
        }
        let (ts_delta, n) = varint::get_varlong(&body[p..]).map_err(var)?;
        p += n;
        let (off_delta, n) = varint::get_varint(&body[p..]).map_err(var)?;
        p += n;
        let nullable = |p: &mut usize| -> Result<Option<Range<usize>>, BatchError> {
            let (l, n) = varint::get_varint(&body[*p..]).map_err(var)?;
            *p += n;
            if l < 0 {
                return Ok(None);
            }
            let l = l as usize;
            if *p + l > body.len() {
                return Err(err("field runs past the end of the record"));
            }
            let r = body_start + *p..body_start + *p + l;
            *p += l;
            Ok(Some(r))
        };
        let key = nullable(&mut p)?;
        let value = nullable(&mut p)?;
        let (hcount, n) = varint::get_varint(&body[p..]).map_err(var)?;
        p += n;
        let hcount = usize::try_from(hcount).map_err(|_| err("negative header count"))?;
        let headers_start = p;
        for _ in 0..hcount {
            let k = nullable(&mut p)?.ok_or_else(|| err("null header key"))?;
            if std::str::from_utf8(&buf[k]).is_err() {
                return Err(err("header key is not UTF-8"));
            }
            let _ = nullable(&mut p)?;
        }
        if p != body.len() {
            return Err(err("record length disagrees with its fields"));
        }
        let offset = self
            .base_offset
            .checked_add(i64::from(off_delta))
            .ok_or_else(|| err("record offset overflows i64"))?;
        self.pos = end;
        self.index += 1;
        Ok(Record {
            offset,
            timestamp: self.base_timestamp.wrapping_add(ts_delta),
            key: key.map(|r| self.batch.slice(r)),
            value: value.map(|r| self.batch.slice(r)),
            headers_raw: self.batch.slice(body_start + headers_start..body_start + p),
            header_count: hcount,
            raw: start..end,
        })
    }
}

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            if self.pos != self.batch.len() {
                let position = self.pos;
                self.pos = self.batch.len();
                return Some(Err(BatchError::MalformedRecord {
                    index: self.index,
                    position,
                    reason: "bytes left after the last record",
                }));
            }
            return None;
        }
        if self.pos >= self.batch.len() {
            let index = self.index;
            self.index = self.count;
            return Some(Err(BatchError::MalformedRecord {
                index,
                position: self.pos,
                reason: "fewer records than the record count",
            }));
        }
        let r = self.decode_next();
        if r.is_err() {
            // Stop after the first error: what follows cannot be framed.
            self.index = self.count;
            self.pos = self.batch.len();
        }
        Some(r)
    }
}

/// What [`retain_records`] made of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retained {
    /// Every record stays: keep the batch as it is.
    All,
    /// No record stays: drop the batch.
    Nothing,
    /// Some records stay: a new batch with the same header fields (base offset, last offset
    /// delta, timestamps, producer state) holding only them, with a fresh length, count and CRC.
    /// Offsets do not change, so a reader sees gaps where records were removed.
    Some(Bytes),
}

/// Filters the records of an uncompressed batch (compaction). Records keep their offset and
/// timestamp deltas, so they are copied as they are.
pub fn retain_records(
    batch: &Bytes,
    mut keep: impl FnMut(&Record) -> bool,
) -> Result<Retained, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let mut kept: Vec<Range<usize>> = Vec::new();
    let mut total = 0usize;
    for r in Records::new(batch.clone())? {
        let r = r?;
        total += 1;
        if keep(&r) {
            kept.push(r.raw.clone());
        }
    }
    if kept.len() == total {
        return Ok(Retained::All);
    }
    if kept.is_empty() {
        return Ok(Retained::Nothing);
    }
    let body: usize = kept.iter().map(|r| r.len()).sum();
    let mut out = BytesMut::with_capacity(HEADER_LEN + body);
    out.extend_from_slice(&batch[..HEADER_LEN]);
    for r in &kept {
        out.extend_from_slice(&batch[r.clone()]);
    }
    let len = len_i32(out.len() - LOG_OVERHEAD)?;
    out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
    out[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&len_i32(kept.len())?.to_be_bytes());
    let crc = compute_crc(&out);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(header.base_offset, BatchHeader::parse(&out)?.base_offset);
    Ok(Retained::Some(out.freeze()))
}

/// Iterates over consecutive whole batches in `buf` (as stored in a segment or a fetch response),
/// yielding each batch's byte range and header. It stops at the first incomplete batch; a bad
/// length field is an error.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BatchIter<'a> {
    /// Walks the batches of `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Byte position of the next batch.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(Range<usize>, BatchHeader), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        if rest.len() < HEADER_LEN {
            return None;
        }
        match BatchHeader::parse(rest) {
            Ok(h) if h.total_len() <= rest.len() => {
                let r = self.pos..self.pos + h.total_len();
                self.pos = r.end;
                Some(Ok((r, h)))
            }
            Ok(_) => None,
            Err(e) => {
                self.pos = self.buf.len();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(records: &[RecordRef<'_>]) -> Bytes {
        let mut b = BatchBuilder::default();
        for r in records {
            b.push(r).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn an_empty_batch_checks_and_holds_its_offsets_but_no_records() {
        let b = empty_batch(100, 6, 4, 1_700).unwrap();
        let h = validate(&b).unwrap();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(
            (h.base_offset, h.last_offset(), h.next_offset()),
            (100, 106, 107)
        );
        assert_eq!((h.partition_leader_epoch, h.record_count), (4, 0));
        assert_eq!(
            (h.base_timestamp, h.max_timestamp, h.producer_id),
            (1_700, 1_700, -1)
        );
        assert!(!h.is_control() && !h.is_transactional());
        assert_eq!(Records::new(b.clone()).unwrap().count(), 0);
        assert!(validate_produced(&b).is_err(), "not a produced batch");
        assert!(empty_batch(0, -1, 0, 0).is_none());
    }

    #[test]
    fn grow_to_sets_the_exact_capacity_and_keeps_the_records() {
        let r = RecordRef {
            timestamp: 5,
            key: Some(b"k"),
            value: Some(b"value"),
            headers: &[],
        };
        let mut b = BatchBuilder::with_capacity(HEADER_LEN);
        assert_eq!(b.capacity(), HEADER_LEN);
        b.push(&r).unwrap();
        b.grow_to(1000);
        assert_eq!(b.capacity(), 1000);
        b.grow_to(10);
        assert_eq!(b.capacity(), 1000, "never shrinks");
        let before = b.size();
        b.push(&r).unwrap();
        assert_eq!(b.capacity(), 1000, "a push that fits does not grow it");
        assert_eq!(b.size(), before * 2 - HEADER_LEN);
        let batch = b.finish().unwrap();
        let values: Vec<_> = Records::new(batch)
            .unwrap()
            .map(|r| r.unwrap().value.unwrap())
            .collect();
        assert_eq!(values, [&b"value"[..], &b"value"[..]]);
    }

    #[test]
    fn offsets_at_the_ends_of_i64_saturate_or_fail() {
        // Found by the batch_parse fuzz target: the CRC does not cover the base offset, so any
        // value reaches the offset arithmetic, which overflowed.
        let r = RecordRef {
            timestamp: 1,
            key: None,
            value: Some(b"v"),
            headers: &[],
        };
        let mut batch = BytesMut::from(&build(&[r, r])[..]);
        set_base_offset(&mut batch, i64::MAX).unwrap();
        let h = validate(&batch).unwrap();
        assert_eq!((h.last_offset(), h.next_offset()), (i64::MAX, i64::MAX));
        let mut records = Records::new(batch.freeze()).unwrap();
        assert_eq!(records.next().unwrap().unwrap().offset, i64::MAX);
        assert!(matches!(
            records.next(),
            Some(Err(BatchError::MalformedRecord { index: 1, .. }))
        ));
    }

    #[test]
    fn header_layout_is_kafka_v2() {
        let h = [HeaderRef {
            key: "trace",
            value: Some(b"abc"),
        }];
        let batch = build(&[
            RecordRef {
                timestamp: 1_700_000_000_000,
                key: Some(b"k1"),
                value: Some(b"v1"),
                headers: &h,
            },
            RecordRef {
                timestamp: 1_700_000_000_005,
                key: None,
                value: None,
                headers: &[],
            },
        ]);
        let header = validate_produced(&batch).unwrap();
        assert_eq!(header.magic, 2);
        assert_eq!(header.record_count, 2);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(header.base_timestamp, 1_700_000_000_000);
        assert_eq!(header.max_timestamp, 1_700_000_000_005);
        assert_eq!(header.producer_id, -1);
        assert_eq!(header.total_len(), batch.len());
        assert_eq!(batch[16], 2, "magic at byte 16");
        // Record 1: length, attributes 0, ts delta 0, offset delta 0, key "k1", value "v1",
        // one header "trace" = "abc".
        let rec1 = &batch[HEADER_LEN..];
        assert_eq!(
            &rec1[..22],
            &[
                40, 0, 0, 0, 4, b'k', b'1', 4, b'v', b'1', 2, 10, b't', b'r', b'a', b'c', b'e', 6,
                b'a', b'b', b'c', // record 2 starts here
                12
            ]
        );
    }

    #[test]
    fn offsets_are_outside_the_crc() {
        let mut batch = BytesMut::from(&build(&[RecordRef::default()])[..]);
        set_base_offset(&mut batch, 1234).unwrap();
        batch[12..16].copy_from_slice(&7i32.to_be_bytes());
        let h = validate(&batch).unwrap();
        assert_eq!(h.base_offset, 1234);
        assert_eq!(h.partition_leader_epoch, 7);
        batch[30] ^= 1;
        assert!(matches!(
            validate(&batch),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn rejects_malformed_headers() {
        let batch = build(&[RecordRef::default()]);
        assert!(matches!(
            validate(&batch[..30]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate(&batch[..batch.len() - 1]),
            Err(BatchError::LengthMismatch { .. })
        ));
        let mut bad = batch.to_vec();
        bad[16] = 1;
        assert_eq!(validate(&bad), Err(BatchError::UnsupportedMagic(1)));
        let mut bad = batch.to_vec();
        bad[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate(&bad), Err(BatchError::InvalidLength(-5)));
        let empty = BatchBuilder::default().finish().unwrap();
        assert!(validate(&empty).is_ok());
        assert!(matches!(
            validate_produced(&empty),
            Err(BatchError::InvalidRecordCount { .. })
        ));
    }

    #[test]
    fn retain_records_keeps_offsets() {
        let batch = build(&[
            RecordRef {
                timestamp: 1,
                key: Some(b"a"),
                value: Some(b"1"),
                headers: &[],
            },
            RecordRef {
                timestamp: 2,
                key: Some(b"b"),
                value: Some(b"2"),
                headers: &[],
            },
            RecordRef {
                timestamp: 3,
                key: Some(b"a"),
                value: Some(b"3"),
                headers: &[],
            },
        ]);
        assert_eq!(retain_records(&batch, |_| true).unwrap(), Retained::All);
        assert_eq!(
            retain_records(&batch, |_| false).unwrap(),
            Retained::Nothing
        );
        let Retained::Some(out) = retain_records(&batch, |r| r.offset != 0).unwrap() else {
            panic!("expected a filtered batch");
        };
        let h = validate(&out).unwrap();
        assert_eq!(h.record_count, 2);
        assert_eq!(h.last_offset_delta, 2, "last offset delta is kept");
        let recs: Vec<_> = Records::new(out).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(
            recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(recs[1].value.as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn batch_iter_stops_at_partial_batch() {
        let a = build(&[RecordRef::default()]);
        let b = build(&[RecordRef::default(), RecordRef::default()]);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let full: Vec<_> = BatchIter::new(&all).map(|r| r.unwrap().0).collect();
        assert_eq!(full, vec![0..a.len(), a.len()..a.len() + b.len()]);
        let cut = &all[..all.len() - 1];
        let partial: Vec<_> = BatchIter::new(cut).map(|r| r.unwrap().0).collect();
        assert_eq!(partial, vec![0..a.len()]);
    }

    type Rec = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn arb_record() -> impl Strategy<Value = Rec> {
        (
            0i64..4_000_000_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::vec(
                (
                    "[a-z]{0,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
                ),
                0..3,
            ),
        )
    }

    proptest! {
        #[test]
        fn records_round_trip(recs in proptest::collection::vec(arb_record(), 1..20), base in 0i64..1_000_000) {
            let mut b = BatchBuilder::default();
            for (ts, k, v, hs) in &recs {
                let headers: Vec<HeaderRef<'_>> = hs.iter().map(|(k, v)| HeaderRef { key: k, value: v.as_deref() }).collect();
                let r = RecordRef { timestamp: *ts, key: k.as_deref(), value: v.as_deref(), headers: &headers };
                let before = b.size();
                let predicted = b.record_size(&r);
                prop_assert_eq!(b.measured_record_size(&r, payload_len(&r)), predicted);
                b.push(&r).unwrap();
                prop_assert_eq!(b.size() - before, predicted);
            }
            let mut batch = BytesMut::from(&b.finish().unwrap()[..]);
            set_base_offset(&mut batch, base).unwrap();
            let batch = batch.freeze();
            let header = validate_produced(&batch).unwrap();
            prop_assert_eq!(header.max_timestamp, recs.iter().map(|r| r.0).max().unwrap());
            let decoded: Vec<Record> = Records::new(batch).unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded.len(), recs.len());
            for (i, (d, (ts, k, v, hs))) in decoded.iter().zip(&recs).enumerate() {
                prop_assert_eq!(d.offset, base + i as i64);
                prop_assert_eq!(d.timestamp, *ts);
                prop_assert_eq!(d.key.as_deref(), k.as_deref());
                prop_assert_eq!(d.value.as_deref(), v.as_deref());
                let got: Vec<(String, Option<Vec<u8>>)> = d.headers().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect();
                prop_assert_eq!(&got, hs);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<usize>()) {
            let _ = validate(&bytes);
            for r in BatchIter::new(&bytes) { let _ = r; }
            // A valid batch with one byte changed: header checks or the record walk must catch
            // it without panicking.
            let batch = build(&[RecordRef { timestamp: 5, key: Some(b"key"), value: Some(&bytes), headers: &[] }]);
            let mut damaged = batch.to_vec();
            let at = flip % damaged.len();
            damaged[at] = damaged[at].wrapping_add(1);
            let damaged = Bytes::from(damaged);
            if let Ok(records) = Records::new(damaged) {
                for r in records { let _ = r; }
            }
        }
    }
}
