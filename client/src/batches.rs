//! Record batches on the client side: finishing, compressing and stamping the batches a producer
//! sends, and checking and decompressing the batches a consumer fetches.
//!
//! The layout is `strom_protocol::batch` (Kafka's RecordBatch v2). Records are appended with
//! its [`BatchBuilder`]; this module adds what the builder leaves to its caller:
//! - **compression**, Kafka's way: the bytes after the 61-byte header are the compressed
//!   concatenation of the records, and attribute bits 0-2 name the codec (1 = gzip, 2 = snappy,
//!   3 = LZ4 frame format, 4 = zstd). The header (counts, timestamps, producer fields) stays
//!   readable, so the broker validates and stores the batch without decompressing it. Snappy
//!   records are written in snappy-java's framing, as Kafka's Java client and kafka-python write
//!   them (see [`XERIAL_HEADER`]); one raw snappy block without that header (what librdkafka
//!   writes) is read too;
//! - **stamping** the idempotent producer's id, epoch and base sequence, which can change after
//!   the batch is built (a retry renumbered after a dropped batch, a new epoch), followed by a
//!   fresh CRC-32C;
//! - **decompressing** a fetched batch back into an uncompressed one (same header, codec bits
//!   cleared, new length) that `strom_protocol::batch::Records` can walk, with a cap on the
//!   decompressed size so a hostile batch cannot exhaust memory.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use strom_protocol::batch::{BatchBuilder, BatchHeader, HEADER_LEN, LOG_OVERHEAD, compute_crc};
pub(crate) use strom_protocol::compression::MAX_DECOMPRESSED_BATCH;
use strom_protocol::compression::{XERIAL_BLOCK, XERIAL_HEADER};

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

/// Reusable compression state: one zstd context or snappy hash table per producer, not per
/// batch.
pub(crate) struct Compressor {
    codec: CompressionType,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    snappy: Option<snap::raw::Encoder>,
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
        let snappy = (codec == CompressionType::Snappy).then(snap::raw::Encoder::new);
        Ok(Self {
            codec,
            zstd,
            snappy,
        })
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
            CompressionType::Gzip { level } => {
                let mut enc =
                    flate2::write::GzEncoder::new(out.writer(), flate2::Compression::new(level));
                enc.write_all(records)
                    .map_err(|e| compress_error("gzip", &e))?;
                out = enc
                    .finish()
                    .map_err(|e| compress_error("gzip", &e))?
                    .into_inner();
            }
            CompressionType::Snappy => {
                let Some(enc) = self.snappy.as_mut() else {
                    return Err(compress_error("snappy", &"no compression context"));
                };
                snappy_xerial(enc, records, &mut out)?;
            }
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

/// Appends `records` in snappy-java's framing, as Kafka's Java client writes them: the header,
/// then per 32 KiB of records a big-endian length and a raw snappy block.
fn snappy_xerial(enc: &mut snap::raw::Encoder, records: &[u8], out: &mut BytesMut) -> Result<()> {
    out.extend_from_slice(&XERIAL_HEADER);
    for block in records.chunks(XERIAL_BLOCK) {
        let at = out.len();
        out.resize(at + 4 + snap::raw::max_compress_len(block.len()), 0);
        let n = enc
            .compress(block, &mut out[at + 4..])
            .map_err(|e| compress_error("snappy", &e))?;
        let len = u32::try_from(n).map_err(|_| compress_error("snappy", &"block too large"))?;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        out.truncate(at + 4 + n);
    }
    Ok(())
}

/// Appends the records of a snappy batch to `out`: snappy-java's framing when the records start
/// with its magic (what Kafka's Java client and kafka-python write), otherwise one raw snappy
/// block (what librdkafka writes; snappy-java's reader, and so Kafka's, accepts both too).
/// Returns the decompressed size, or a size above `limit` as soon as the next block would pass
/// it (that block is not decompressed).
fn compress_error(codec: &'static str, e: &dyn std::fmt::Display) -> Error {
    Error::Compression {
        codec,
        op: "compression",
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

/// [`strom_protocol::compression::decompress`], its error as the client's.
///
/// # Errors
/// [`Error::Compression`] for a codec Kafka does not define, bytes that do not decompress, or
/// records larger than `limit` once decompressed.
pub(crate) fn decompress(batch: &Bytes, header: &BatchHeader, limit: usize) -> Result<Bytes> {
    strom_protocol::compression::decompress(batch, header, limit).map_err(|e| Error::Compression {
        codec: e.codec,
        op: "decompression",
        reason: e.reason,
    })
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
        for codec in ALL_CODECS {
            round_trip(codec, &values);
        }
        // Compression actually shrinks repetitive records.
        let mut none = Compressor::new(CompressionType::None).unwrap();
        let plain = none.finish(builder(&values), stamp()).unwrap();
        for codec in &ALL_CODECS[1..] {
            let mut c = Compressor::new(*codec).unwrap();
            let packed = c.finish(builder(&values), stamp()).unwrap();
            assert!(
                packed.len() * 2 < plain.len(),
                "{codec:?}: {} vs {}",
                packed.len(),
                plain.len()
            );
        }
    }

    const ALL_CODECS: [CompressionType; 8] = [
        CompressionType::None,
        CompressionType::GZIP,
        CompressionType::Gzip { level: 1 },
        CompressionType::Gzip { level: 9 },
        CompressionType::Snappy,
        CompressionType::Lz4,
        CompressionType::ZSTD,
        CompressionType::Zstd { level: 19 },
    ];

    /// `plain` (an uncompressed batch) with its records replaced by `records` and the codec
    /// bits set to `codec`: a batch compressed by some other producer.
    fn recompressed(plain: &Bytes, codec: i16, records: &[u8]) -> Bytes {
        let mut b = BytesMut::from(&plain[..HEADER_LEN]);
        b.extend_from_slice(records);
        let attributes = (i16::from_be_bytes([b[ATTRIBUTES_AT], b[ATTRIBUTES_AT + 1]])
            & !COMPRESSION_MASK)
            | codec;
        b[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        let length = i32::try_from(b.len() - LOG_OVERHEAD).unwrap();
        b[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    /// The values of the records of a (compressed) batch, after checking its CRC.
    fn values_of(batch: &Bytes) -> Result<Vec<Vec<u8>>> {
        let header = validate(batch).unwrap();
        let plain = decompress(batch, &header, MAX_DECOMPRESSED_BATCH)?;
        Ok(Records::new(plain)
            .unwrap()
            .map(|r| r.unwrap().value.unwrap().to_vec())
            .collect())
    }

    /// A raw snappy block of literals only, written from the format description rather than by
    /// an encoder: the uncompressed length as a varint, then literal elements of up to 64 KiB.
    fn snappy_literals(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = data.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        for chunk in data.chunks(1 << 16) {
            let len = chunk.len() - 1;
            if len < 60 {
                out.push((len as u8) << 2);
            } else if len < 256 {
                out.extend_from_slice(&[60 << 2, len as u8]);
            } else {
                out.push(61 << 2);
                out.extend_from_slice(&(len as u16).to_le_bytes());
            }
            out.extend_from_slice(chunk);
        }
        out
    }

    /// snappy-java's framing around `blocks`, written out here rather than taken from the
    /// encoder.
    fn xerial(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for b in blocks {
            out.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    fn sample_values() -> Vec<Vec<u8>> {
        (0..300)
            .map(|i| format!("{{\"order\":{i},\"note\":\"{}\"}}", "x".repeat(i % 97)).into_bytes())
            .collect()
    }

    #[test]
    fn snappy_is_framed_as_snappy_java_writes_it() {
        // Records well past one 32 KiB block.
        let values: Vec<Vec<u8>> = (0..100u32)
            .map(|i| (0..1000u32).map(|j| (i * 7 + j * 13 % 251) as u8).collect())
            .collect();
        let plain = Compressor::new(CompressionType::None)
            .unwrap()
            .finish(builder(&values), stamp())
            .unwrap();
        let batch = Compressor::new(CompressionType::Snappy)
            .unwrap()
            .finish(builder(&values), stamp())
            .unwrap();
        let framed = &batch[HEADER_LEN..];
        assert_eq!(
            &framed[..16],
            &[
                0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1
            ]
        );
        let mut rest = &framed[16..];
        let mut blocks = Vec::new();
        while !rest.is_empty() {
            let len = i32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let block = snap::raw::Decoder::new()
                .decompress_vec(&rest[4..4 + len])
                .unwrap();
            blocks.push(block);
            rest = &rest[4 + len..];
        }
        let records = &plain[HEADER_LEN..];
        assert_eq!(blocks.len(), records.len().div_ceil(32 << 10));
        assert!(
            blocks[..blocks.len() - 1]
                .iter()
                .all(|b| b.len() == 32 << 10)
        );
        assert_eq!(blocks.concat(), records);
    }

    #[test]
    fn decodes_gzip_and_snappy_batches_other_producers_wrote() {
        let values = sample_values();
        let plain = Compressor::new(CompressionType::None)
            .unwrap()
            .finish(builder(&values), stamp())
            .unwrap();
        let records = &plain[HEADER_LEN..];
        let (front, back) = records.split_at(records.len() / 3);
        let gzip = |data: &[u8], level| {
            let mut enc = flate2::GzBuilder::new()
                .filename("records")
                .mtime(1_700_000_000)
                .write(Vec::new(), flate2::Compression::new(level));
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        };
        let snappy = |data: &[u8]| snap::raw::Encoder::new().compress_vec(data).unwrap();
        let cases: Vec<(&str, i16, Vec<u8>)> = vec![
            ("gzip, header fields set", 1, gzip(records, 9)),
            (
                "gzip, two members",
                1,
                [gzip(front, 1), gzip(back, 6)].concat(),
            ),
            (
                "snappy-java framing, 1 KiB blocks",
                2,
                xerial(&records.chunks(1024).map(snappy).collect::<Vec<_>>()),
            ),
            (
                "snappy-java framing, hand-written literal blocks",
                2,
                xerial(&[snappy_literals(front), snappy_literals(back)]),
            ),
            ("raw snappy, no framing", 2, snappy(records)),
            (
                "raw snappy, hand-written literals",
                2,
                snappy_literals(records),
            ),
        ];
        for (what, codec, compressed) in cases {
            let batch = recompressed(&plain, codec, &compressed);
            let got = values_of(&batch).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got, values, "{what}");
        }
    }

    #[test]
    fn damaged_compressed_batches_are_typed_errors() {
        let values = sample_values();
        let plain = Compressor::new(CompressionType::None)
            .unwrap()
            .finish(builder(&values), stamp())
            .unwrap();
        let is_decompression_error = |r: Result<Vec<Vec<u8>>>, name: &str, what: &str| match r {
            Err(Error::Compression { codec, op, .. }) => {
                assert_eq!((codec, op), (name, "decompression"), "{what}");
            }
            Err(other) => panic!("{name} {what}: {other}"),
            Ok(values) => panic!("{name} {what}: decoded {} records", values.len()),
        };
        for (codec, name) in [
            (CompressionType::GZIP, "gzip"),
            (CompressionType::Snappy, "snappy"),
            (CompressionType::Lz4, "lz4"),
            (CompressionType::ZSTD, "zstd"),
        ] {
            let batch = Compressor::new(codec)
                .unwrap()
                .finish(builder(&values), stamp())
                .unwrap();
            let compressed = &batch[HEADER_LEN..];
            // lz4_flex reads no bytes as no records (the records walk then fails with a
            // BatchError) and a frame whose 4-byte end mark is cut short as whole (its records
            // are intact); the other codecs refuse both.
            let strict = codec != CompressionType::Lz4;
            let mut cuts = vec![1, 5, 17, compressed.len() / 2];
            if strict {
                cuts.push(compressed.len() - 1);
            }
            for cut in cuts {
                let r = values_of(&recompressed(&plain, codec.codec(), &compressed[..cut]));
                is_decompression_error(r, name, &format!("cut to {cut} bytes"));
            }
            let mut garbled = compressed.to_vec();
            for b in garbled.iter_mut().skip(20) {
                *b ^= 0x5a;
            }
            let r = values_of(&recompressed(&plain, codec.codec(), &garbled));
            is_decompression_error(r, name, "garbled");
            if strict {
                let r = values_of(&recompressed(&plain, codec.codec(), &[]));
                is_decompression_error(r, name, "empty");
            }
            // Over the limit.
            let header = validate(&batch).unwrap();
            let err = decompress(&batch, &header, 100).unwrap_err();
            assert!(
                err.to_string().contains("exceed 100 bytes"),
                "{name}: {err}"
            );
        }
        let snappy = |what: &str, compressed: Vec<u8>| {
            let r = values_of(&recompressed(&plain, 2, &compressed));
            is_decompression_error(r, "snappy", what);
        };
        let records = &plain[HEADER_LEN..];
        let block = snappy_literals(records);
        snappy("magic only", xerial(&[])[..8].to_vec());
        let mut past_end = xerial(std::slice::from_ref(&block));
        past_end[16..20].copy_from_slice(&i32::MAX.to_be_bytes());
        snappy("block length past the end", past_end);
        let mut negative = xerial(std::slice::from_ref(&block));
        negative[16..20].copy_from_slice(&(-1i32).to_be_bytes());
        snappy("negative block length", negative);
        snappy("a block length cut short", {
            let mut v = xerial(std::slice::from_ref(&block));
            v.truncate(18);
            v
        });
        snappy("an empty block", xerial(&[block.clone(), Vec::new()]));
        // A 5-byte block claiming 200 MiB: refused before anything is allocated.
        let mut bomb = Vec::new();
        let mut n: u32 = 200 << 20;
        while n >= 0x80 {
            bomb.push((n as u8) | 0x80);
            n >>= 7;
        }
        bomb.push(n as u8);
        bomb.push(0);
        snappy(
            "a length no block that size can reach",
            xerial(&[bomb.clone()]),
        );
        let unframed = recompressed(&plain, 2, &bomb);
        let err = decompress(
            &unframed,
            &validate(&unframed).unwrap(),
            MAX_DECOMPRESSED_BATCH,
        );
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("claims")),
            "{err:?}"
        );
        // Blocks that each fit but together pass the limit.
        let framed = recompressed(&plain, 2, &xerial(&[block.clone(), block.clone()]));
        let header = validate(&framed).unwrap();
        let limit = records.len() + records.len() / 2;
        let err = decompress(&framed, &header, limit).unwrap_err();
        assert!(err.to_string().contains("exceed"), "{err}");
        assert_eq!(
            decompress(&framed, &header, 2 * records.len())
                .unwrap()
                .len(),
            HEADER_LEN + 2 * records.len()
        );
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
        // Another codec's bits on zstd bytes, and a codec Kafka does not define.
        for codec in [1, 2, 3, 5, 7] {
            let mut other = header;
            other.attributes = codec;
            let err = decompress(&batch, &other, MAX_DECOMPRESSED_BATCH).unwrap_err();
            assert!(matches!(err, Error::Compression { .. }), "{err}");
        }
    }

    proptest! {
        #[test]
        fn any_records_round_trip(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..30), codec in 0usize..ALL_CODECS.len()) {
            round_trip(ALL_CODECS[codec], &values);
        }
    }
}
