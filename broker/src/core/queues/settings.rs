//! A queue group's settings: their names, defaults and limits, parsing from the `name=value`
//! pairs clients send (and `strom work` flags give), and their form in `__queue_state`.
//!
//! | name | default | range |
//! |---|---|---|
//! | `lease.ms` | 30000 | 100 to 43200000 (12 h); how long a fetched record is held |
//! | `max.attempts` | 5 | 1 to 1000 hand-outs before the record is dead-lettered |
//! | `backoff` | `exp:1s..60s` | `exp:BASE..MAX` (doubling, up to 20% jitter below), `list:D1,D2,...` (then the last), `none` |
//! | `dead.letter.topic` | `<topic>.dlq` | a topic name; created on demand |
//! | `ordering` | `none` | `none`, `partition`, `key` |
//! | `max.in.flight.per.member` | 1000 | 1 to 1000000 records held by one member |
//! | `max.in.flight.per.partition` | 10000 | 1 to 1000000 records held at once in one partition |
//! | `start` | `earliest` | where a new queue-partition begins: `earliest`, `latest` |

use std::collections::BTreeMap;

use bytes::{Buf, BufMut};

use super::codec::CodecError;
use super::policy::{Backoff, Ordering, Policy};

/// Longest lease, and longest extension.
pub const MAX_LEASE_MS: u64 = 12 * 60 * 60 * 1000;
/// Longest delay a backoff or a nack may ask for (days, as delayed delivery allows).
pub const MAX_DELAY_MS: u64 = 90 * 24 * 60 * 60 * 1000;

/// Where a queue-partition that has no state yet begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// At the log start: records produced before the group existed are handed out too.
    #[default]
    Earliest,
    /// At the log end.
    Latest,
}

/// A queue group's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub policy: Policy,
    /// Empty: `<topic>.dlq`.
    pub dead_letter_topic: String,
    pub start: Start,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: Policy {
                lease_ms: 30_000,
                max_lease_ms: MAX_LEASE_MS,
                max_attempts: 5,
                backoff: Backoff::Exponential {
                    base_ms: 1_000,
                    max_ms: 60_000,
                    jitter_pct: 20,
                },
                max_in_flight_member: 1_000,
                max_in_flight_partition: 10_000,
                ordering: Ordering::None,
            },
            dead_letter_topic: String::new(),
            start: Start::Earliest,
        }
    }
}

/// Parses a duration: a number and `ms`, `s`, `m`, `h` or `d` (a bare number is ms).
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 5s, 2m, 1h"))?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    n.checked_mul(scale)
        .filter(|ms| *ms <= MAX_DELAY_MS)
        .ok_or_else(|| format!("{text:?} is longer than {} days", MAX_DELAY_MS / 86_400_000))
}

fn format_ms(ms: u64) -> String {
    for (unit, scale) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= scale && ms.is_multiple_of(scale) {
            return format!("{}{unit}", ms / scale);
        }
    }
    format!("{ms}ms")
}

/// Parses a backoff: `exp:BASE..MAX`, `list:D1,D2,...` or `none`.
pub fn parse_backoff(text: &str) -> Result<Backoff, String> {
    let t = text.trim();
    if t == "none" {
        return Ok(Backoff::List(vec![0]));
    }
    if let Some(range) = t.strip_prefix("exp:") {
        let (base, max) = range
            .split_once("..")
            .ok_or_else(|| format!("{text:?}: write exp:BASE..MAX, e.g. exp:100ms..30s"))?;
        let base_ms = parse_duration_ms(base)?;
        let max_ms = parse_duration_ms(max)?;
        if base_ms > max_ms {
            return Err(format!("{text:?}: the base is above the maximum"));
        }
        return Ok(Backoff::Exponential {
            base_ms,
            max_ms,
            jitter_pct: 20,
        });
    }
    if let Some(list) = t.strip_prefix("list:") {
        let delays = list
            .split(',')
            .map(parse_duration_ms)
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 100 {
            return Err(format!("{text:?}: give 1 to 100 delays"));
        }
        return Ok(Backoff::List(delays));
    }
    Err(format!(
        "{text:?} is not a backoff: exp:BASE..MAX, list:D1,D2,... or none"
    ))
}

/// The text form of a backoff, as [`parse_backoff`] reads it.
pub fn format_backoff(b: &Backoff) -> String {
    match b {
        Backoff::List(d) if d == &[0] => "none".into(),
        Backoff::List(d) => format!(
            "list:{}",
            d.iter()
                .map(|ms| format_ms(*ms))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Backoff::Exponential {
            base_ms, max_ms, ..
        } => {
            format!("exp:{}..{}", format_ms(*base_ms), format_ms(*max_ms))
        }
    }
}

fn bounded(name: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{name}: {value:?} is not a number"))?;
    if n < min || n > max {
        return Err(format!("{name}: {n} is outside {min} to {max}"));
    }
    Ok(n)
}

impl Settings {
    /// The defaults with `pairs` applied; an unknown name or a bad value is an error naming it.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut s = Self::default();
        for (name, value) in pairs {
            s.set(name, value)?;
        }
        Ok(s)
    }

    /// Sets one setting.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let p = &mut self.policy;
        match name {
            "lease.ms" => p.lease_ms = bounded(name, value, 100, MAX_LEASE_MS)?,
            "max.attempts" => p.max_attempts = bounded(name, value, 1, 1000)? as u32,
            "backoff" => p.backoff = parse_backoff(value).map_err(|e| format!("backoff: {e}"))?,
            "dead.letter.topic" => {
                if !value.is_empty() {
                    strom_protocol::topic::validate_topic_name(value)
                        .map_err(|e| format!("dead.letter.topic: {e}"))?;
                }
                self.dead_letter_topic = value.to_string();
            }
            "ordering" => {
                p.ordering = match value {
                    "none" => Ordering::None,
                    "partition" => Ordering::Partition,
                    "key" => Ordering::Key,
                    other => {
                        return Err(format!(
                            "ordering: {other:?} is not one of none, partition, key"
                        ));
                    }
                }
            }
            "max.in.flight.per.member" => {
                p.max_in_flight_member = bounded(name, value, 1, 1_000_000)? as u32;
            }
            "max.in.flight.per.partition" => {
                p.max_in_flight_partition = bounded(name, value, 1, 1_000_000)? as u32;
            }
            "start" => {
                self.start = match value {
                    "earliest" => Start::Earliest,
                    "latest" => Start::Latest,
                    other => {
                        return Err(format!("start: {other:?} is not earliest or latest"));
                    }
                }
            }
            other => return Err(format!("unknown queue group setting {other:?}")),
        }
        Ok(())
    }

    /// Every setting as `name=value` pairs, as [`Settings::from_pairs`] reads them.
    pub fn pairs(&self) -> BTreeMap<String, String> {
        let p = &self.policy;
        let mut m = BTreeMap::new();
        m.insert("lease.ms".into(), p.lease_ms.to_string());
        m.insert("max.attempts".into(), p.max_attempts.to_string());
        m.insert("backoff".into(), format_backoff(&p.backoff));
        m.insert("dead.letter.topic".into(), self.dead_letter_topic.clone());
        m.insert(
            "ordering".into(),
            match p.ordering {
                Ordering::None => "none",
                Ordering::Partition => "partition",
                Ordering::Key => "key",
            }
            .into(),
        );
        m.insert(
            "max.in.flight.per.member".into(),
            p.max_in_flight_member.to_string(),
        );
        m.insert(
            "max.in.flight.per.partition".into(),
            p.max_in_flight_partition.to_string(),
        );
        m.insert(
            "start".into(),
            match self.start {
                Start::Earliest => "earliest",
                Start::Latest => "latest",
            }
            .into(),
        );
        m
    }

    /// The dead-letter topic for records of `topic`.
    pub fn dead_letter_topic_for(&self, topic: &str) -> String {
        if self.dead_letter_topic.is_empty() {
            format!("{topic}.dlq")
        } else {
            self.dead_letter_topic.clone()
        }
    }
}

/// The settings record's value: `0x01 | u16 count | (u16 len | name | u16 len | value)*`.
pub fn encode(settings: &Settings) -> Vec<u8> {
    let pairs = settings.pairs();
    let mut out = Vec::with_capacity(256);
    out.put_u8(1);
    out.put_u16(pairs.len() as u16);
    for (k, v) in &pairs {
        for s in [k, v] {
            out.put_u16(s.len() as u16);
            out.put_slice(s.as_bytes());
        }
    }
    out
}

/// Reads a settings record (a setting this build does not know is an error: the record is
/// from a newer strom).
pub fn decode(mut value: &[u8]) -> Result<Settings, CodecError> {
    let take_str = |v: &mut &[u8]| -> Result<String, CodecError> {
        if v.remaining() < 2 {
            return Err(CodecError("truncated"));
        }
        let n = v.get_u16() as usize;
        if v.remaining() < n {
            return Err(CodecError("truncated"));
        }
        let (s, rest) = v.split_at(n);
        *v = rest;
        String::from_utf8(s.to_vec()).map_err(|_| CodecError("a string is not UTF-8"))
    };
    if value.remaining() < 3 || value.get_u8() != 1 {
        return Err(CodecError("unknown settings version"));
    }
    let count = value.get_u16();
    let mut s = Settings::default();
    for _ in 0..count {
        let k = take_str(&mut value)?;
        let v = take_str(&mut value)?;
        s.set(&k, &v)
            .map_err(|_| CodecError("a setting this build cannot read"))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_print_and_round_trip() {
        let s = Settings::from_pairs([
            ("lease.ms", "5000"),
            ("max.attempts", "3"),
            ("backoff", "list:1s,5s,30s"),
            ("ordering", "partition"),
            ("dead.letter.topic", "failed-jobs"),
        ])
        .unwrap();
        assert_eq!(s.policy.backoff, Backoff::List(vec![1_000, 5_000, 30_000]));
        assert_eq!(s.pairs()["backoff"], "list:1s,5s,30s");
        assert_eq!(decode(&encode(&s)), Ok(s.clone()));
        let d = Settings::default();
        assert_eq!(d.pairs()["backoff"], "exp:1s..1m");
        assert_eq!(
            parse_backoff("exp:100ms..30s"),
            Ok(Backoff::Exponential {
                base_ms: 100,
                max_ms: 30_000,
                jitter_pct: 20
            })
        );
        assert_eq!(d.dead_letter_topic_for("jobs"), "jobs.dlq");
    }

    #[test]
    fn bad_settings_name_what_is_wrong() {
        for (k, v, want) in [
            ("lease.ms", "10", "outside"),
            ("max.attempts", "0", "outside"),
            ("backoff", "exp:5s..1s", "above"),
            ("backoff", "fast", "not a backoff"),
            ("backoff", "list:1x", "unknown unit"),
            ("ordering", "key!", "not one of"),
            ("colour", "red", "unknown queue group setting"),
        ] {
            let e = Settings::from_pairs([(k, v)]).unwrap_err();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
        assert!(decode(&[1, 0]).is_err());
        assert!(decode(&[1, 0, 1, 0, 9]).is_err());
    }
}
