//! Record batches on the client side: finishing, compressing and stamping the batches a producer
//! sends, and checking and decompressing the batches a consumer fetches.
//!
//! The layout is `strom_protocol::batch` (Kafka's RecordBatch v2). Records are appended with
//! its [`BatchBuilder`]; this module adds what the builder leaves to its caller:
//! - **compression**, Kafka's way: the bytes after the 61-byte header are the compressed
//!   concatenation of the records, and attribute bits 0-2 name the codec (3 = LZ4 frame format,
//!   4 = zstd). The header (counts, timestamps, producer fields) stays readable, so the broker
//!   validates and stores the batch without decompressing it;
//! - **stamping** the idempotent producer's id, epoch and base sequence, which can change after
//!   the batch is built (a retry renumbered after a dropped batch, a new epoch), followed by a
//!   fresh CRC-32C;
//! - **decompressing** a fetched batch back into an uncompressed one (same header, codec bits
//!   cleared, new length) that `strom_protocol::batch::Records` can walk, with a cap on the
//!   decompressed size so a hostile batch cannot exhaust memory.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use strom_protocol::batch::{
    BatchBuilder, BatchHeader, Compression, HEADER_LEN, LOG_OVERHEAD, compute_crc,
};

use crate::config::CompressionType;
use crate::error::{Error, Result};

// Byte positions of RecordBatch v2 header fields (see `strom_protocol::batch`).
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const COMPRESSION_MASK: i16 = 0x07;

/// The largest decompressed batch a consumer accepts. A batch is at most the topic's
/// `max.message.bytes` compressed; this allows ratios far beyond what real data reaches.
pub(crate) const MAX_DECOMPRESSED_BATCH: usize = 256 << 20;

/// The idempotent producer's fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerStamp {
    /// Producer id, -1 when not idempotent.
    pub(crate) producer_id: i64,
    /// Producer epoch, -1 when not idempotent.
    pub(crate) epoch: i16,
    /// Sequence of the batch's first record, -1 when not idempotent.
    pub(crate) base_sequence: i32,
}

impl ProducerStamp {
    /// The stamp of a producer without idempotence.
    pub(crate) const NONE: ProducerStamp = ProducerStamp {
        producer_id: -1,
        epoch: -1,
        base_sequence: -1,
    };
}

/// Reusable compression state: one zstd context per producer, not per batch.
pub(crate) struct Compressor {
    codec: CompressionType,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("codec", &self.codec)
            .finish()
    }
}

impl Compressor {
    pub(crate) fn new(codec: CompressionType) -> Result<Self> {
        let zstd = match codec {
            CompressionType::Zstd { level } => {
                Some(zstd::bulk::Compressor::new(level).map_err(|e| compress_error("zstd", &e))?)
            }
            _ => None,
        };
        Ok(Self { codec, zstd })
    }

    /// Finishes `builder` into a batch with `stamp`, compressing its records with this
    /// compressor's codec. The CRC is computed once, over the final bytes.
    pub(crate) fn finish(&mut self, builder: BatchBuilder, stamp: ProducerStamp) -> Result<Bytes> {
        let builder = builder.producer(stamp.producer_id, stamp.epoch, stamp.base_sequence);
        if self.codec == CompressionType::None || builder.is_empty() {
            return Ok(builder.finish()?);
        }
        // The builder computes a CRC over the uncompressed records; it is replaced below. That
        // costs one CRC-32C pass (~15 GiB/s), small next to the compression itself.
        let plain = builder.finish()?;
        let records = plain.get(HEADER_LEN..).unwrap_or_default();
        let mut out = BytesMut::with_capacity(HEADER_LEN + records.len() / 2 + 64);
        out.extend_from_slice(plain.get(..HEADER_LEN).unwrap_or_default());
        match self.codec {
            CompressionType::None => {}
            CompressionType::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB)
                    .block_mode(lz4_flex::frame::BlockMode::Independent);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out.writer());
                enc.write_all(records)
                    .map_err(|e| compress_error("lz4", &e))?;
                out = enc
                    .finish()
                    .map_err(|e| compress_error("lz4", &e))?
                    .into_inner();
            }
            CompressionType::Zstd { .. } => {
                let Some(z) = self.zstd.as_mut() else {
                    return Err(compress_error("zstd", &"no compression context"));
                };
                let bound = zstd::zstd_safe::compress_bound(records.len());
                let mut buf: Vec<u8> = Vec::with_capacity(bound);
                z.compress_to_buffer(records, &mut buf)
                    .map_err(|e| compress_error("zstd", &e))?;
                out.extend_from_slice(&buf);
            }
        }
        let attributes = (i16::from_be_bytes([plain[ATTRIBUTES_AT], plain[ATTRIBUTES_AT + 1]])
            & !COMPRESSION_MASK)
            | self.codec.codec();
        out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        let length = i32::try_from(out.len() - LOG_OVERHEAD)
            .map_err(|_| Error::Batch(strom_protocol::batch::BatchError::TooLarge(out.len())))?;
        out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        let crc = compute_crc(&out);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out.freeze())
    }
}

fn compress_error(codec: &'static str, e: &dyn std::fmt::Display) -> Error {
    Error::Compression {
        codec,
        op: "compression",
        reason: e.to_string(),
    }
}

fn decompress_error(codec: &'static str, e: &dyn std::fmt::Display) -> Error {
    Error::Compression {
        codec,
        op: "decompression",
        reason: e.to_string(),
    }
}

/// A copy of `batch` with new producer fields and CRC (for a resend that was renumbered or
/// moved to a new epoch; rare, so the copy does not matter).
pub(crate) fn restamp(batch: &Bytes, stamp: ProducerStamp) -> Bytes {
    if batch.len() < HEADER_LEN {
        return batch.clone();
    }
    let mut b = BytesMut::from(&batch[..]);
    b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&stamp.producer_id.to_be_bytes());
    b[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&stamp.epoch.to_be_bytes());
    b[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&stamp.base_sequence.to_be_bytes());
    let crc = compute_crc(&b);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// Kafka's `DefaultRecordBatch.incrementSequence`: sequences count records and wrap from
/// `i32::MAX` to 0.
pub(crate) fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// An uncompressed form of `batch` (one whole batch whose header is `header`): `batch` itself
/// when it is not compressed, otherwise a new batch with the same header fields, the codec bits
/// cleared, the decompressed records and a new length (its CRC field is stale: check the CRC
/// of the original before calling this).
///
/// # Errors
/// [`Error::Compression`] for a codec this client does not read (gzip, snappy, unknown), bytes
/// that do not decompress, or records larger than `limit` once decompressed.
pub(crate) fn decompress(batch: &Bytes, header: &BatchHeader, limit: usize) -> Result<Bytes> {
    let codec = header.compression();
    let name = match codec {
        Compression::None => return Ok(batch.clone()),
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
        Compression::Gzip => return Err(decompress_error("gzip", &"codec not supported")),
        Compression::Snappy => return Err(decompress_error("snappy", &"codec not supported")),
        _ => return Err(decompress_error("unknown", &"codec not supported")),
    };
    let compressed = batch.get(HEADER_LEN..).unwrap_or_default();
    let mut out = BytesMut::with_capacity(HEADER_LEN + compressed.len() * 4);
    out.extend_from_slice(batch.get(..HEADER_LEN).unwrap_or_default());
    // Read at most limit + 1 bytes, so "exactly at the limit" and "above it" differ.
    let cap = limit as u64 + 1;
    let mut writer = out.writer();
    let copied = match codec {
        Compression::Lz4 => std::io::copy(
            &mut lz4_flex::frame::FrameDecoder::new(compressed).take(cap),
            &mut writer,
        ),
        _ => zstd::stream::read::Decoder::with_buffer(compressed)
            .and_then(|d| std::io::copy(&mut d.take(cap), &mut writer)),
    }
    .map_err(|e| decompress_error(name, &e))?;
    if copied > limit as u64 {
        return Err(decompress_error(
            name,
            &format!("records exceed {limit} bytes decompressed"),
        ));
    }
    let mut out = writer.into_inner();
    let attributes = header.attributes & !COMPRESSION_MASK;
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let length = i32::try_from(out.len() - LOG_OVERHEAD)
        .map_err(|_| decompress_error(name, &"decompressed batch too large"))?;
    out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use strom_protocol::batch::{HeaderRef, RecordRef, Records, validate, validate_produced};

    fn builder(values: &[Vec<u8>]) -> BatchBuilder {
        let mut b = BatchBuilder::with_capacity(1024);
        let h = [HeaderRef {
            key: "event",
            value: Some(b"order_placed"),
        }];
        for (i, v) in values.iter().enumerate() {
            let key = format!("order-{i}");
            b.push(&RecordRef {
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(key.as_bytes()),
                value: Some(v),
                headers: &h,
            })
            .unwrap();
        }
        b
    }

    fn stamp() -> ProducerStamp {
        ProducerStamp {
            producer_id: 77,
            epoch: 3,
            base_sequence: 1000,
        }
    }

    fn round_trip(codec: CompressionType, values: &[Vec<u8>]) {
        let mut c = Compressor::new(codec).unwrap();
        let batch = c.finish(builder(values), stamp()).unwrap();
        let header = validate_produced(&batch).unwrap();
        assert_eq!(header.record_count as usize, values.len());
        assert_eq!(header.producer_id, 77);
        assert_eq!(header.producer_epoch, 3);
        assert_eq!(header.base_sequence, 1000);
        assert_eq!(header.attributes & 7, codec.codec());
        let plain = decompress(&batch, &header, MAX_DECOMPRESSED_BATCH).unwrap();
        let records: Vec<_> = Records::new(plain).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), values.len());
        for (i, (r, v)) in records.iter().zip(values).enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.value.as_deref(), Some(&v[..]));
            assert_eq!(r.timestamp, 1_700_000_000_000 + i as i64);
            assert_eq!(r.key.as_deref(), Some(format!("order-{i}").as_bytes()));
            let h: Vec<_> = r.headers().collect();
            assert_eq!(h[0].key, "event");
        }
    }

    #[test]
    fn compression_round_trips() {
        let values: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("{{\"order\":{i},\"amount\":{}}}", i * 7).into_bytes())
            .collect();
        for codec in [
            CompressionType::None,
            CompressionType::Lz4,
            CompressionType::ZSTD,
            CompressionType::Zstd { level: 19 },
        ] {
            round_trip(codec, &values);
        }
        // Compression actually shrinks repetitive records.
        let mut lz4 = Compressor::new(CompressionType::Lz4).unwrap();
        let mut none = Compressor::new(CompressionType::None).unwrap();
        let a = lz4.finish(builder(&values), stamp()).unwrap();
        let b = none.finish(builder(&values), stamp()).unwrap();
        assert!(a.len() * 2 < b.len(), "{} vs {}", a.len(), b.len());
    }

    #[test]
    fn restamp_rewrites_producer_fields_and_crc() {
        let mut c = Compressor::new(CompressionType::Lz4).unwrap();
        let batch = c.finish(builder(&[b"x".to_vec()]), stamp()).unwrap();
        let new = ProducerStamp {
            producer_id: 78,
            epoch: 0,
            base_sequence: 0,
        };
        let again = restamp(&batch, new);
        let h = validate(&again).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (78, 0, 0)
        );
        assert_eq!(again.len(), batch.len());
    }

    #[test]
    fn sequence_wraps_like_kafka() {
        assert_eq!(increment_sequence(0, 5), 5);
        assert_eq!(increment_sequence(i32::MAX - 5, 5), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX - 5, 6), 0);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 10), 8);
    }

    #[test]
    fn decompression_is_bounded_and_checks_codecs() {
        let values = vec![vec![b'a'; 100_000]];
        let mut c = Compressor::new(CompressionType::ZSTD).unwrap();
        let batch = c.finish(builder(&values), stamp()).unwrap();
        let header = validate(&batch).unwrap();
        assert!(batch.len() < 1000);
        let err = decompress(&batch, &header, 50_000).unwrap_err();
        assert!(matches!(err, Error::Compression { .. }), "{err}");
        // Garbage after a valid header.
        let mut bad = BytesMut::from(&batch[..]);
        for b in bad[HEADER_LEN..].iter_mut() {
            *b ^= 0x5a;
        }
        assert!(decompress(&bad.freeze(), &header, MAX_DECOMPRESSED_BATCH).is_err());
        let mut gzip = header;
        gzip.attributes = 1;
        assert!(decompress(&batch, &gzip, MAX_DECOMPRESSED_BATCH).is_err());
    }

    proptest! {
        #[test]
        fn any_records_round_trip(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..30), codec in 0usize..3) {
            let codec = [CompressionType::None, CompressionType::Lz4, CompressionType::ZSTD][codec];
            round_trip(codec, &values);
        }
    }
}
