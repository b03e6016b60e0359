//! Decompressing record batches: Kafka's four codecs (gzip, snappy, LZ4 frame, zstd), read the
//! way Kafka's clients write them, with a cap on the decompressed size so a hostile batch cannot
//! exhaust memory. The client decompresses what it fetches; the broker decompresses a record
//! only where it must look inside one (the queue groups' dead-letter copies).
//!
//! Snappy comes in snappy-java's framing, as Kafka's Java client and kafka-python write it (see
//! [`XERIAL_HEADER`]), or as one raw snappy block without that header (what librdkafka writes).

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{BatchHeader, Compression, HEADER_LEN, LOG_OVERHEAD};

const LENGTH_AT: usize = 8;
const ATTRIBUTES_AT: usize = 21;
const COMPRESSION_MASK: i16 = 0x07;

/// A batch that does not decompress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} decompression failed: {reason}")]
pub struct DecompressError {
    /// The codec.
    pub codec: &'static str,
    /// What happened.
    pub reason: String,
}

fn err(codec: &'static str, e: &dyn std::fmt::Display) -> DecompressError {
    DecompressError {
        codec,
        reason: e.to_string(),
    }
}

/// snappy-java's stream header (`SnappyCodec`): the magic `0x82 "SNAPPY" 0`, then the format
/// version and the oldest version that can read it, both big-endian i32 1. The records follow in
/// blocks, each a big-endian i32 length and one raw snappy block.
pub const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];
/// The part of [`XERIAL_HEADER`] that identifies the framing.
const XERIAL_MAGIC_LEN: usize = 8;
/// Uncompressed bytes per snappy-java block: its default (`SnappyOutputStream`), which Kafka's
/// Java client uses.
pub const XERIAL_BLOCK: usize = 32 << 10;
/// Most bytes a valid raw snappy block can expand to per byte of input: the densest element, a
/// 3-byte copy, writes 64 bytes. A block whose header claims more is rejected before its output
/// is allocated.
const SNAPPY_MAX_RATIO: usize = 22;

/// The largest decompressed batch a reader accepts by default. A batch is at most the topic's
/// `max.message.bytes` compressed; this allows ratios far beyond what real data reaches.
pub const MAX_DECOMPRESSED_BATCH: usize = 256 << 20;

/// An uncompressed form of `batch` (one whole batch whose header is `header`): `batch` itself
/// when it is not compressed, otherwise a new batch with the same header fields, the codec bits
/// cleared, the decompressed records and a new length (its CRC field is stale: check the CRC
/// of the original before calling this).
///
/// # Errors
/// [`DecompressError`] for a codec Kafka does not define, bytes that do not decompress, or
/// records larger than `limit` once decompressed.
pub fn decompress(
    batch: &Bytes,
    header: &BatchHeader,
    limit: usize,
) -> Result<Bytes, DecompressError> {
    let codec = header.compression();
    let name = match codec {
        Compression::None => return Ok(batch.clone()),
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
        _ => return Err(err("unknown", &"codec not supported")),
    };
    let compressed = batch.get(HEADER_LEN..).unwrap_or_default();
    let mut out = BytesMut::with_capacity(HEADER_LEN + compressed.len() * 4);
    out.extend_from_slice(batch.get(..HEADER_LEN).unwrap_or_default());
    // Read at most limit + 1 bytes, so "exactly at the limit" and "above it" differ.
    let cap = limit as u64 + 1;
    let mut writer = out.writer();
    let copied = match codec {
        // Kafka's Java client writes one gzip member; a reader of concatenated members
        // (as Java's GZIPInputStream is) costs nothing more.
        Compression::Gzip => std::io::copy(
            &mut flate2::read::MultiGzDecoder::new(compressed).take(cap),
            &mut writer,
        )
        .map_err(|e| e.to_string()),
        Compression::Snappy => unsnappy(compressed, limit, writer.get_mut()),
        Compression::Lz4 => std::io::copy(
            &mut lz4_flex::frame::FrameDecoder::new(compressed).take(cap),
            &mut writer,
        )
        .map_err(|e| e.to_string()),
        _ => zstd::stream::read::Decoder::with_buffer(compressed)
            .and_then(|d| std::io::copy(&mut d.take(cap), &mut writer))
            .map_err(|e| e.to_string()),
    }
    .map_err(|e| err(name, &e))?;
    if copied > limit as u64 {
        return Err(err(
            name,
            &format!("records exceed {limit} bytes decompressed"),
        ));
    }
    let mut out = writer.into_inner();
    let attributes = header.attributes & !COMPRESSION_MASK;
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let length = i32::try_from(out.len() - LOG_OVERHEAD)
        .map_err(|_| err(name, &"decompressed batch too large"))?;
    out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    Ok(out.freeze())
}

fn unsnappy(
    compressed: &[u8],
    limit: usize,
    out: &mut BytesMut,
) -> std::result::Result<u64, String> {
    let mut decoder = snap::raw::Decoder::new();
    if !compressed.starts_with(&XERIAL_HEADER[..XERIAL_MAGIC_LEN]) {
        return unsnappy_block(&mut decoder, compressed, limit, out).map(|n| n as u64);
    }
    // The two version numbers are not checked: every snappy-java release writes 1 and 1, and
    // neither snappy-java nor librdkafka reads them.
    let mut rest = compressed
        .get(XERIAL_HEADER.len()..)
        .ok_or("truncated snappy-java header")?;
    let mut total = 0usize;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("truncated snappy-java block length")?;
        // An i32 in snappy-java: a negative one reads as a length past any batch's end.
        let len = u32::from_be_bytes(*len) as usize;
        let (block, after) = tail.split_at_checked(len).ok_or_else(|| {
            format!("snappy-java block of {len} bytes runs past the records' end")
        })?;
        // total <= limit here: the loop stops once it passes.
        let n = unsnappy_block(&mut decoder, block, limit - total, out)?;
        total = total.saturating_add(n);
        if total > limit {
            break;
        }
        rest = after;
    }
    Ok(total as u64)
}

/// Appends one raw snappy block to `out` and returns its decompressed size; a size above `room`
/// (without decompressing) when it would not fit.
fn unsnappy_block(
    decoder: &mut snap::raw::Decoder,
    block: &[u8],
    room: usize,
    out: &mut BytesMut,
) -> std::result::Result<usize, String> {
    let n = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if n > block.len().saturating_mul(SNAPPY_MAX_RATIO) {
        return Err(format!(
            "a block of {} bytes claims {n} bytes decompressed",
            block.len()
        ));
    }
    if n > room {
        return Ok(n);
    }
    let at = out.len();
    out.resize(at + n, 0);
    let written = decoder
        .decompress(block, &mut out[at..])
        .map_err(|e| e.to_string())?;
    out.truncate(at + written);
    Ok(written)
}
