//! The records of `__queue_state`: how queue groups write their state into a log and read it
//! back at start-up.
//!
//! Keys:
//! - `0x01 | u16 len | group | u16 len | topic | i32 partition`: a queue-partition's state;
//!   the value is `0x01 | kind | body` with kind 1 = snapshot (the whole state), 2 = delta (spans
//!   to overwrite, see [`super::state`]);
//! - `0x02 | u16 len | group`: the group's settings, value `0x01 | settings`
//!   ([`super::settings::encode`]); a null value deletes the group;
//! - `0x03 | u16 len | dead-letter topic`: a redrive task ([`super::redrive`]).
//!
//! - `0x04 | ...`: a delayed run of a partition ([`crate::core::delays`]).
//!
//! State body (version 2): `i64 start | i64 next | u64 acked | u64 dead-lettered | i64 fired at |
//! i64 fired through | i64 origin | u32 spans | span*` (version 1, read still, has no `fired` and `origin`), a span `i64 first |
//! i64 last | u32 attempts | u32 failures | u16 len | error | u8 0 or 1 | (u64 key hash) | u8
//! state | ...` with
//! state 1 available, 2 acquired (`u16 len | member | i64 until`), 3 delayed (`i64 until`), 4
//! acked, 5 dead-lettering (`u8 reason | i64 since`), 6 dead-lettered. All big-endian. Decoding
//! checks every length against the bytes present and never panics.

use std::sync::Arc;

use bytes::{Buf, BufMut};

use super::state::{Delta, Finished, Fired, Reason, Span, State};

/// What went wrong reading a state record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue state record: {0}")]
pub struct CodecError(pub &'static str);

/// Key kind: a queue-partition's state.
pub const KEY_PARTITION: u8 = 1;
/// Key kind: a group's settings.
pub const KEY_GROUP: u8 = 2;
/// Key kind: a redrive task ([`super::redrive`]).
pub const KEY_REDRIVE: u8 = 3;
/// Value kind: a snapshot.
pub const SNAPSHOT: u8 = 1;
/// Value kind: a delta.
pub const DELTA: u8 = 2;
const VERSION: u8 = 2;

/// A decoded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Partition {
        group: String,
        topic: String,
        partition: i32,
    },
    Group(String),
    Redrive(String),
    /// A delayed run ([`crate::core::delays`]); the whole key, for its own decoder.
    Delay,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(u16::MAX as usize);
    out.put_u16(n as u16);
    out.put_slice(&b[..n]);
}

/// The key of a queue-partition's records.
pub fn partition_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + group.len() + topic.len());
    k.put_u8(KEY_PARTITION);
    put_str(&mut k, group);
    put_str(&mut k, topic);
    k.put_i32(partition);
    k
}

/// The key of a group's settings.
pub fn group_key(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + group.len());
    k.put_u8(KEY_GROUP);
    put_str(&mut k, group);
    k
}

/// A reader over bytes that refuses to run past their end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.0.remaining() < n {
            Err(CodecError("truncated"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn i32(&mut self) -> Result<i32, CodecError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> Result<i64, CodecError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn str(&mut self) -> Result<&str, CodecError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        std::str::from_utf8(s).map_err(|_| CodecError("a string is not UTF-8"))
    }
}

/// Reads a key.
pub fn decode_key(key: &[u8]) -> Result<Key, CodecError> {
    let mut r = Reader(key);
    match r.u8()? {
        KEY_PARTITION => {
            let group = r.str()?.to_string();
            let topic = r.str()?.to_string();
            let partition = r.i32()?;
            Ok(Key::Partition {
                group,
                topic,
                partition,
            })
        }
        KEY_GROUP => Ok(Key::Group(r.str()?.to_string())),
        KEY_REDRIVE => Ok(Key::Redrive(r.str()?.to_string())),
        crate::core::delays::KEY_DELAY => Ok(Key::Delay),
        _ => Err(CodecError("unknown key kind")),
    }
}

/// Writes a queue-partition's snapshot or delta.
pub fn encode_state(kind: u8, delta: &Delta) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + delta.spans.len() * 40);
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_i64(delta.start);
    out.put_i64(delta.next);
    out.put_u64(delta.finished.acked);
    out.put_u64(delta.finished.dead_lettered);
    out.put_i64(delta.fired.at);
    out.put_i64(delta.fired.through);
    out.put_i64(delta.origin);
    out.put_u32(delta.spans.len() as u32);
    for s in &delta.spans {
        out.put_i64(s.first);
        out.put_i64(s.last);
        out.put_u32(s.attempts);
        out.put_u32(s.failures);
        put_str(&mut out, s.error.as_deref().unwrap_or(""));
        match s.key {
            None => out.put_u8(0),
            Some(k) => {
                out.put_u8(1);
                out.put_u64(k);
            }
        }
        match &s.state {
            State::Available => out.put_u8(1),
            State::Acquired { member, until } => {
                out.put_u8(2);
                put_str(&mut out, member);
                out.put_i64(*until);
            }
            State::Delayed { until } => {
                out.put_u8(3);
                out.put_i64(*until);
            }
            State::Acked => out.put_u8(4),
            State::DeadLettering { reason, since } => {
                out.put_u8(5);
                out.put_u8(*reason as u8);
                out.put_i64(*since);
            }
            State::DeadLettered => out.put_u8(6),
        }
    }
    out
}

/// Reads a queue-partition's snapshot or delta: (kind, delta). Spans must be in offset order,
/// within `start..next`, and not overlap.
pub fn decode_state(value: &[u8]) -> Result<(u8, Delta), CodecError> {
    let mut r = Reader(value);
    let version = r.u8()?;
    if version != VERSION && version != 1 {
        return Err(CodecError("unknown version"));
    }
    let kind = r.u8()?;
    if kind != SNAPSHOT && kind != DELTA {
        return Err(CodecError("unknown value kind"));
    }
    let start = r.i64()?;
    let next = r.i64()?;
    let finished = Finished {
        acked: r.i64()? as u64,
        dead_lettered: r.i64()? as u64,
    };
    let (fired, origin) = if version == 1 {
        (Fired::default(), start)
    } else {
        let fired = Fired {
            at: r.i64()?,
            through: r.i64()?,
        };
        (fired, r.i64()?)
    };
    let count = r.u32()? as usize;
    if start < 0 || next < start {
        return Err(CodecError("bounds out of order"));
    }
    // A span takes at least 28 bytes: count cannot ask for more memory than the bytes present.
    if count > r.0.len() / 28 {
        return Err(CodecError("more spans than bytes"));
    }
    let mut spans = Vec::with_capacity(count);
    let mut floor = i64::MIN;
    for _ in 0..count {
        let first = r.i64()?;
        let last = r.i64()?;
        if first <= floor || first < 0 || last < first {
            return Err(CodecError("spans out of order"));
        }
        floor = last;
        let attempts = r.u32()?;
        let failures = r.u32()?;
        let error = r.str()?;
        let error = (!error.is_empty()).then(|| Arc::<str>::from(error));
        let key = match r.u8()? {
            0 => None,
            1 => Some(r.i64()? as u64),
            _ => return Err(CodecError("unknown key marker")),
        };
        let state = match r.u8()? {
            1 => State::Available,
            2 => {
                let member = Arc::<str>::from(r.str()?);
                State::Acquired {
                    member,
                    until: r.i64()?,
                }
            }
            3 => State::Delayed { until: r.i64()? },
            4 => State::Acked,
            5 => {
                let reason = Reason::from_u8(r.u8()?).ok_or(CodecError("unknown reason"))?;
                State::DeadLettering {
                    reason,
                    since: r.i64()?,
                }
            }
            6 => State::DeadLettered,
            _ => return Err(CodecError("unknown state")),
        };
        spans.push(Span {
            first,
            last,
            state,
            attempts,
            failures,
            error,
            key,
        });
    }
    if !r.0.is_empty() {
        return Err(CodecError("bytes after the last span"));
    }
    Ok((
        kind,
        Delta {
            start,
            next,
            finished,
            fired,
            origin,
            spans,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Delta {
        let span = |first, last, state| Span {
            first,
            last,
            state,
            attempts: 2,
            failures: 1,
            error: Some(Arc::from("boom")),
            key: (first % 2 == 0).then_some(first as u64 * 7),
        };
        Delta {
            start: 10,
            next: 40,
            finished: Finished {
                acked: 5,
                dead_lettered: 2,
            },
            fired: Fired {
                at: 1_700_000_000_000,
                through: 3,
            },
            origin: 4,
            spans: vec![
                span(10, 12, State::Available),
                span(
                    13,
                    19,
                    State::Acquired {
                        member: Arc::from("m-1"),
                        until: 99,
                    },
                ),
                span(20, 20, State::Delayed { until: 5 }),
                span(21, 22, State::Acked),
                span(
                    23,
                    30,
                    State::DeadLettering {
                        reason: Reason::Rejected,
                        since: 3,
                    },
                ),
                span(31, 39, State::DeadLettered),
            ],
        }
    }

    #[test]
    fn state_records_round_trip() {
        let d = sample();
        for kind in [SNAPSHOT, DELTA] {
            assert_eq!(decode_state(&encode_state(kind, &d)), Ok((kind, d.clone())));
        }
        assert_eq!(
            decode_key(&partition_key("g", "t", 3)),
            Ok(Key::Partition {
                group: "g".into(),
                topic: "t".into(),
                partition: 3
            })
        );
        assert_eq!(decode_key(&group_key("g")), Ok(Key::Group("g".into())));
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = encode_state(DELTA, &sample());
        for n in 0..bytes.len() {
            assert!(decode_state(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = decode_state(&b);
            }
        }
        // A huge span count in a short record is refused before allocating.
        let mut b = bytes[..62].to_vec();
        b[58..62].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_state(&b), Err(CodecError("more spans than bytes")));
    }
}
