//! A Produce request body (versions 3-12) read straight into the core's types.
//!
//! Produce is the one request allowed the whole `max_frame_bytes`, and its bulk is record bytes,
//! which stay slices of the frame. Decoding it with the codec crate first builds a message of
//! owned structs and then converts it: two passes, and a frame of millions of empty topic
//! entries (3 bytes each) would decode to ~100 bytes per entry, hundreds of MiB per request.
//! This reader makes one pass, allocates only the core's request, and bounds what it builds:
//! at most [`MAX_TOPICS`] topics and [`MAX_PARTITIONS`] partition entries per request, a few
//! MiB whatever the frame holds.

use bytes::{Buf, Bytes};

use crate::core::partition::Durability;
use crate::core::produce::ProduceRequest;

/// Most topics one Produce may name.
pub(crate) const MAX_TOPICS: usize = 10_000;
/// Most partition entries one Produce may carry, over all its topics.
pub(crate) const MAX_PARTITIONS: usize = 100_000;

/// The fields of a Produce request besides its records.
#[derive(Debug)]
pub(crate) struct Produce {
    pub transactional: bool,
    pub acks: i16,
    pub request: ProduceRequest,
}

/// Reads a Produce body at `version` (3-12). `Err` is a malformed or over-large request.
pub(crate) fn parse(mut b: Bytes, version: i16) -> Result<Produce, String> {
    let flexible = version >= 9;
    let r = &mut b;
    let transactional = nullable_string(r, flexible)?.is_some();
    let acks = i16_of(r)?;
    let timeout_ms = i32_of(r)?;
    let topics = count(r, flexible, "topics")?;
    if topics > MAX_TOPICS {
        return Err(format!(
            "a Produce names {topics} topics; at most {MAX_TOPICS} are served"
        ));
    }
    let mut out = Vec::with_capacity(topics);
    let mut partitions_total = 0usize;
    for _ in 0..topics {
        let name = nullable_string(r, flexible)?.ok_or("a Produce topic has a null name")?;
        let n = count(r, flexible, "partitions")?;
        partitions_total += n;
        if partitions_total > MAX_PARTITIONS {
            return Err(format!(
                "a Produce carries over {MAX_PARTITIONS} partition entries"
            ));
        }
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            let index = i32_of(r)?;
            let records = nullable_bytes(r, flexible)?.unwrap_or_default();
            if flexible {
                skip_tags(r)?;
            }
            parts.push((index, records, Vec::new()));
        }
        if flexible {
            skip_tags(r)?;
        }
        out.push((name, parts));
    }
    if flexible {
        skip_tags(r)?;
    }
    Ok(Produce {
        transactional,
        acks,
        request: ProduceRequest {
            durability: if acks == -1 {
                Durability::Fsynced
            } else {
                Durability::Appended
            },
            timeout_ms: u32::try_from(timeout_ms).ok(),
            topics: out,
        },
    })
}

fn need(r: &Bytes, n: usize, what: &str) -> Result<(), String> {
    if r.remaining() < n {
        Err(format!("a Produce request ends inside its {what}"))
    } else {
        Ok(())
    }
}

fn i16_of(r: &mut Bytes) -> Result<i16, String> {
    need(r, 2, "fields")?;
    Ok(r.get_i16())
}

fn i32_of(r: &mut Bytes) -> Result<i32, String> {
    need(r, 4, "fields")?;
    Ok(r.get_i32())
}

fn uvarint(r: &mut Bytes) -> Result<u32, String> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        need(r, 1, "varint")?;
        let byte = r.get_u8();
        v |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a varint longer than 5 bytes".into())
}

/// An array's element count; each element takes at least one byte, so a count beyond the
/// bytes left is malformed (checked before anything is reserved).
fn count(r: &mut Bytes, flexible: bool, what: &str) -> Result<usize, String> {
    let n: i64 = if flexible {
        i64::from(uvarint(r)?) - 1
    } else {
        i64::from(i32_of(r)?)
    };
    let n =
        usize::try_from(n).map_err(|_| format!("a Produce has a null or negative {what} array"))?;
    if n > r.remaining() {
        return Err(format!(
            "a Produce claims {n} {what} in {} bytes",
            r.remaining()
        ));
    }
    Ok(n)
}

/// A length prefix: classic strings take an i16, classic bytes an i32, flexible ones a varint of
/// length + 1; `None` is null.
fn length(r: &mut Bytes, flexible: bool, wide: bool) -> Result<Option<usize>, String> {
    let n: i64 = if flexible {
        i64::from(uvarint(r)?) - 1
    } else if wide {
        i64::from(i32_of(r)?)
    } else {
        i64::from(i16_of(r)?)
    };
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| format!("a negative length {n}"))?;
    need(r, n, "strings or records")?;
    Ok(Some(n))
}

fn nullable_string(r: &mut Bytes, flexible: bool) -> Result<Option<String>, String> {
    let Some(n) = length(r, flexible, false)? else {
        return Ok(None);
    };
    let bytes = r.split_to(n);
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| "a string that is not UTF-8".into())
}

fn nullable_bytes(r: &mut Bytes, flexible: bool) -> Result<Option<Bytes>, String> {
    Ok(length(r, flexible, true)?.map(|n| r.split_to(n)))
}

/// Skips a tagged-field section (Produce defines no tags that strom reads).
fn skip_tags(r: &mut Bytes) -> Result<(), String> {
    let n = uvarint(r)?;
    for _ in 0..n {
        let _tag = uvarint(r)?;
        let size = uvarint(r)? as usize;
        need(r, size, "tagged fields")?;
        r.advance(size);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest as KafkaProduce, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encoded(version: i16, transactional: bool) -> Bytes {
        let req = KafkaProduce::default()
            .with_transactional_id(transactional.then(|| StrBytes::from_static_str("tx").into()))
            .with_acks(-1)
            .with_timeout_ms(1234)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(2)
                            .with_records(Some(Bytes::from_static(b"batch bytes"))),
                        PartitionProduceData::default()
                            .with_index(5)
                            .with_records(None),
                    ]),
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("empty")))
                    .with_partition_data(Vec::new()),
            ]);
        let mut b = BytesMut::new();
        req.encode(&mut b, version).expect("encode");
        b.freeze()
    }

    #[test]
    fn reads_what_the_codec_writes_at_every_version() {
        for v in 3..=12 {
            for transactional in [false, true] {
                let p = parse(encoded(v, transactional), v).unwrap_or_else(|e| panic!("v{v}: {e}"));
                assert_eq!(p.transactional, transactional);
                assert_eq!(p.acks, -1);
                assert_eq!(p.request.durability, Durability::Fsynced);
                assert_eq!(p.request.timeout_ms, Some(1234));
                let t = &p.request.topics;
                assert_eq!(t.len(), 2, "v{v}");
                assert_eq!(t[0].0, "orders");
                assert_eq!(t[0].1.len(), 2);
                assert_eq!((t[0].1[0].0, &t[0].1[0].1[..]), (2, &b"batch bytes"[..]));
                assert_eq!((t[0].1[1].0, t[0].1[1].1.len()), (5, 0));
                assert_eq!((t[1].0.as_str(), t[1].1.len()), ("empty", 0));
            }
        }
    }

    #[test]
    fn records_stay_slices_of_the_frame() {
        let frame = encoded(9, false);
        let p = parse(frame.clone(), 9).expect("parse");
        let records = &p.request.topics[0].1[0].1;
        let inside = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(
            inside.contains(&(records.as_ptr() as usize)),
            "no copy of the records"
        );
    }

    #[test]
    fn truncated_and_over_large_requests_are_refused() {
        for v in [3i16, 9] {
            let whole = encoded(v, false);
            for cut in 0..whole.len() {
                assert!(parse(whole.slice(..cut), v).is_err(), "v{v} cut at {cut}");
            }
        }
        // Millions of empty topic entries (3 bytes each, flexible): refused by count.
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0, 0, 1, 0, 0, 0x75, 0x30]); // null txn id, acks 1, timeout
        let n: u32 = 2_000_000;
        let mut v = n + 1;
        while v >= 0x80 {
            b.extend_from_slice(&[(v as u8) | 0x80]);
            v >>= 7;
        }
        b.extend_from_slice(&[v as u8]);
        for _ in 0..n {
            b.extend_from_slice(&[1, 1, 0]);
        }
        let e = parse(b.freeze(), 9).expect_err("too many topics");
        assert!(e.contains("topics"), "{e}");
        // A count beyond the bytes left.
        let e = parse(
            Bytes::from_static(&[0xff, 0xff, 0, 1, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff]),
            3,
        )
        .expect_err("absurd count");
        assert!(e.contains("claims"), "{e}");
    }
}
