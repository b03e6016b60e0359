//! Fetch over the Kafka protocol, and its response encoder.
//!
//! The request is decoded by `kafka-protocol` and read by the core like any fetch (long poll
//! included). The response is encoded here rather than by the crate, whose encoder copies every
//! record byte into one buffer: this encoder writes the small fields into one buffer and hands
//! each partition's stored batches on as the very `Bytes` the core read from the segment map, so
//! the connection writes them to the socket with `writev` and no user-space copy, as the native
//! listener does. It covers versions 4 to 12 (the ones advertised); a test decodes its output
//! with the crate's decoder at every version.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::FetchRequest;

use super::{Kafka, KafkaResponse, Req, kafka_code};
use crate::core::fetch::{self as core_fetch, FetchPartition, FetchResult};
use crate::net::Started;

impl Kafka {
    pub(super) fn fetch(&self, req: Req, m: FetchRequest) -> Started<KafkaResponse> {
        let nonneg = |v: i32| u32::try_from(v).unwrap_or(0);
        let core_req = core_fetch::FetchRequest {
            max_wait_ms: nonneg(m.max_wait_ms),
            min_bytes: nonneg(m.min_bytes),
            max_bytes: nonneg(m.max_bytes),
            topics: m
                .topics
                .into_iter()
                .map(|t| {
                    let parts = t
                        .partitions
                        .iter()
                        .map(|p| FetchPartition {
                            partition: p.partition,
                            offset: p.fetch_offset,
                            max_bytes: nonneg(p.partition_max_bytes),
                            leader_epoch: p.current_leader_epoch,
                        })
                        .collect();
                    (t.topic.0.to_string(), parts)
                })
                .collect(),
        };
        let core = self.core.clone();
        Started::Pending(Box::pin(async move {
            let result = core.fetch(&core_req).await;
            let errors = result
                .iter()
                .flat_map(|(_, parts)| parts)
                .filter_map(|p| p.result.as_ref().err().map(|(code, _)| kafka_code(*code)))
                .collect();
            let leader = |topic: &str, partition| core.current_leader(topic, partition);
            Some(KafkaResponse {
                correlation_id: req.correlation_id,
                flexible_header: req.version >= 12,
                body: encode_fetch_response(&result, req.version, &leader),
                api: req.key as i16,
                errors,
            })
        }))
    }
}

/// Writes a response's fields, switching between the classic and the flexible (compact, tagged)
/// encodings by version, and keeps record bytes as chunks of their own.
struct Writer {
    flexible: bool,
    buf: BytesMut,
    chunks: Vec<Bytes>,
}

impl Writer {
    fn len(&mut self, n: usize) {
        // Counts fit: a response holds at most as many entries as its request, which the frame
        // limit bounds far below i32::MAX.
        let n = u32::try_from(n).unwrap_or(u32::MAX - 1);
        if self.flexible {
            put_uvarint(&mut self.buf, n + 1);
        } else {
            self.buf.put_i32(n as i32);
        }
    }

    /// A string: an i16 length (classic) or length + 1 as a varint (flexible). Topic names are
    /// at most 249 bytes, so the length fits either way.
    fn string(&mut self, s: &str) {
        if self.flexible {
            self.len(s.len());
        } else {
            self.buf.put_i16(i16::try_from(s.len()).unwrap_or(i16::MAX));
        }
        self.buf.put_slice(s.as_bytes());
    }

    fn null_array(&mut self) {
        if self.flexible {
            put_uvarint(&mut self.buf, 0);
        } else {
            self.buf.put_i32(-1);
        }
    }

    /// The tagged-field section of a flexible struct: none.
    fn no_tags(&mut self) {
        if self.flexible {
            self.buf.put_u8(0);
        }
    }

    fn records(&mut self, data: &Bytes) {
        self.len(data.len());
        if !data.is_empty() {
            self.chunks.push(self.buf.split().freeze());
            self.chunks.push(data.clone());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.freeze());
        }
        self.chunks
    }
}

fn put_uvarint(buf: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Looks up a partition's current leader and leader epoch.
pub(crate) type LeaderOf<'a> = dyn Fn(&str, i32) -> Option<(i32, i32)> + 'a;

/// Encodes a Fetch response body (versions 4-12) as chunks. A partition refused with
/// `NOT_LEADER_OR_FOLLOWER` carries the current leader and its epoch (KIP-951, v12's tagged
/// field 1), from `leader`, when there is one.
pub(crate) fn encode_fetch_response(
    result: &FetchResult,
    version: i16,
    leader: &LeaderOf<'_>,
) -> Vec<Bytes> {
    let mut w = Writer {
        flexible: version >= 12,
        buf: BytesMut::with_capacity(256),
        chunks: Vec::with_capacity(2 * result.iter().map(|(_, p)| p.len()).sum::<usize>() + 1),
    };
    w.buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        w.buf.put_i16(0); // error_code
        w.buf.put_i32(0); // session_id: no fetch session (every fetch is a full one)
    }
    w.len(result.len());
    for (topic, partitions) in result {
        w.string(topic);
        w.len(partitions.len());
        for p in partitions {
            let (code, records) = match &p.result {
                Ok(r) => (0, r),
                Err((code, _)) => (kafka_code(*code), &EMPTY),
            };
            w.buf.put_i32(p.partition);
            w.buf.put_i16(code);
            w.buf.put_i64(p.high_watermark);
            // No transactions: the last stable offset is the high watermark.
            w.buf.put_i64(p.high_watermark);
            if version >= 5 {
                w.buf.put_i64(p.log_start);
            }
            w.null_array(); // aborted_transactions
            if version >= 11 {
                w.buf.put_i32(-1); // preferred_read_replica: none
            }
            w.records(records);
            let hint = match &p.result {
                Err((strom_protocol::ErrorCode::NotLeaderOrFollower, _)) if w.flexible => {
                    leader(topic, p.partition)
                }
                _ => None,
            };
            match hint {
                Some((id, epoch)) => {
                    // One tagged field: CurrentLeader (tag 1), 9 bytes: leader id, leader
                    // epoch, and its own empty tag section.
                    w.buf.put_u8(1);
                    w.buf.put_u8(1);
                    w.buf.put_u8(9);
                    w.buf.put_i32(id);
                    w.buf.put_i32(epoch);
                    w.buf.put_u8(0);
                }
                None => w.no_tags(),
            }
        }
        w.no_tags();
    }
    w.no_tags();
    w.finish()
}

static EMPTY: Bytes = Bytes::new();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fetch::Fetched;
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::Decodable;
    use strom_protocol::ErrorCode;

    fn sample() -> FetchResult {
        vec![
            (
                "orders".to_string(),
                vec![
                    Fetched {
                        partition: 0,
                        result: Ok(Bytes::from_static(b"some stored batches")),
                        high_watermark: 42,
                        log_start: 7,
                    },
                    Fetched {
                        partition: 1,
                        result: Err((ErrorCode::OffsetOutOfRange, "too far".into())),
                        high_watermark: 10,
                        log_start: 3,
                    },
                ],
            ),
            (
                "empty".to_string(),
                vec![
                    Fetched {
                        partition: 5,
                        result: Ok(Bytes::new()),
                        high_watermark: 0,
                        log_start: 0,
                    },
                    Fetched {
                        partition: 6,
                        result: Err((ErrorCode::NotLeaderOrFollower, "elsewhere".into())),
                        high_watermark: -1,
                        log_start: -1,
                    },
                ],
            ),
        ]
    }

    #[test]
    fn every_version_decodes_with_the_codec_crate() {
        let result = sample();
        for version in 4..=12i16 {
            let chunks = encode_fetch_response(&result, version, &|_, _| Some((3, 7)));
            let mut whole = BytesMut::new();
            for c in &chunks {
                whole.extend_from_slice(c);
            }
            let mut bytes = whole.freeze();
            let r = FetchResponse::decode(&mut bytes, version)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert!(
                bytes.is_empty(),
                "v{version}: {} bytes left over",
                bytes.len()
            );
            assert_eq!(r.responses.len(), 2, "v{version}");
            let t = &r.responses[0];
            assert_eq!(&*t.topic.0, "orders");
            let p0 = &t.partitions[0];
            assert_eq!(p0.partition_index, 0);
            assert_eq!(p0.error_code, 0);
            assert_eq!(p0.high_watermark, 42);
            assert_eq!(p0.last_stable_offset, 42);
            if version >= 5 {
                assert_eq!(p0.log_start_offset, 7);
            }
            assert_eq!(p0.records.as_deref(), Some(&b"some stored batches"[..]));
            let p1 = &t.partitions[1];
            assert_eq!(p1.error_code, 1, "OFFSET_OUT_OF_RANGE");
            assert_eq!(p1.records.as_deref(), Some(&b""[..]));
            assert_eq!(r.responses[1].partitions[0].partition_index, 5);
            if version >= 12 {
                let hint = &r.responses[1].partitions[1].current_leader;
                assert_eq!((hint.leader_id.0, hint.leader_epoch), (3, 7), "v{version}");
                assert_eq!(p0.current_leader.leader_id.0, -1, "only on NOT_LEADER");
            }
        }
    }

    #[test]
    fn stored_batches_are_not_copied() {
        let result = sample();
        let Ok(data) = &result[0].1[0].result else {
            unreachable!()
        };
        let chunks = encode_fetch_response(&result, 12, &|_, _| None);
        assert!(
            chunks
                .iter()
                .any(|c| c.as_ptr() == data.as_ptr() && c.len() == data.len()),
            "the records must be their own chunk, the very bytes read"
        );
    }
}
