//! The result of a bench run and its two renderings: one JSON object (`--output json`) and a
//! few lines for people. Every number is computed here from the raw measurements, once, so the
//! two renderings and the HTML report always agree.
//!
//! Units: rates in records/s and MB/s with 1 MB = 10^6 bytes of record values (keys and
//! protocol overhead are not counted); latencies in milliseconds; sizes in bytes.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::ceiling::Ceiling;
use super::measure::{ProcUsage, Timeline};

/// The percentiles reported, with their JSON names.
pub const PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99_9", 0.999),
];

/// What a latency histogram measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    /// produce: from just before `send` to the delivery future resolving, sampled records.
    SendToAck,
    /// e2e: from just before `send` to `poll` returning the record, every record.
    SendToReceipt,
    /// consume: how long each `poll` that returned records took.
    Poll,
    /// queue: from a record's `ack` call to the response of the request that carried it.
    AckToDurable,
    /// delay: from a record's delivery time to `poll` returning it, every record.
    Lateness,
}

impl LatencyKind {
    pub fn name(self) -> &'static str {
        match self {
            LatencyKind::SendToAck => "send_to_ack",
            LatencyKind::SendToReceipt => "send_to_receipt",
            LatencyKind::Poll => "poll",
            LatencyKind::AckToDurable => "ack",
            LatencyKind::Lateness => "lateness",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            LatencyKind::SendToAck => "send → ack",
            LatencyKind::SendToReceipt => "send → receipt",
            LatencyKind::Poll => "poll duration",
            LatencyKind::AckToDurable => "ack → durable",
            LatencyKind::Lateness => "lateness (delivery time → receipt)",
        }
    }
}

/// A latency histogram's numbers, in ms.
#[derive(Debug, Clone)]
pub struct LatencyMs {
    pub kind: LatencyKind,
    pub samples: u64,
    /// p50, p90, p99, p99_9, max, mean.
    pub values: Vec<(&'static str, f64)>,
}

/// CPU and memory of one process over the run.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Which process and what it includes, for people.
    pub what: String,
    /// JSON name: `process` (this one) or `broker` (`--broker-pid`).
    pub key: &'static str,
    pub pid: u32,
    /// This process runs the broker too (`--embedded`).
    pub includes_broker: bool,
    pub usage: ProcUsage,
}

/// One bench run's results.
#[derive(Debug)]
pub struct Summary {
    /// `produce`, `consume` or `e2e`.
    pub command: &'static str,
    /// The settings of the run, for the JSON `settings` object and the text header.
    pub settings: Vec<(&'static str, Value)>,
    /// Records counted (produced and acknowledged, or received).
    pub records: u64,
    /// Value bytes of those records.
    pub payload_bytes: u64,
    /// The measured interval.
    pub elapsed: Duration,
    pub latency: Option<(LatencyKind, Histogram<u64>)>,
    /// Sum of the topic's partitions' `size_bytes` after the run.
    pub disk_bytes: Option<u64>,
    /// What the run added to it (produce, e2e).
    pub disk_bytes_added: Option<u64>,
    pub resources: Vec<Resources>,
    pub ceiling: Option<Ceiling>,
    /// Counter over time (records acknowledged-or-sent for produce, received otherwise).
    pub timeline: Timeline,
    /// Further numbers of this command (JSON name, value, text line or `None`).
    pub extra: Vec<(&'static str, Value, Option<String>)>,
    /// Things the reader should know (shown in both renderings).
    pub notes: Vec<String>,
}

impl Summary {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.payload_bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The result as a fraction of each measured ceiling: against the disk ceilings, the bytes
    /// the run added on disk per second (record framing and batch headers included: what the
    /// disk had to take), or the payload where the run added none; against loopback TCP, the
    /// payload.
    pub fn fractions(&self) -> Option<Vec<(&'static str, f64)>> {
        let c = self.ceiling.as_ref()?;
        let b = self.bytes_per_sec();
        let disk = match self.disk_bytes_added {
            Some(n) if n > 0 => n as f64 / self.elapsed.as_secs_f64().max(1e-9),
            _ => b,
        };
        Some(vec![
            ("disk_write", disk / c.disk_write_bytes_per_sec.max(1e-9)),
            ("disk_fsync", disk / c.disk_fsync_bytes_per_sec.max(1e-9)),
            ("loopback_tcp", b / c.tcp_bytes_per_sec.max(1e-9)),
        ])
    }

    /// Percentiles in ms: (name, value), then max and mean.
    pub fn latency_ms(&self) -> Option<LatencyMs> {
        let (kind, h) = self.latency.as_ref()?;
        if h.is_empty() {
            return None;
        }
        let mut v: Vec<(&'static str, f64)> = PERCENTILES
            .iter()
            .map(|(name, q)| (*name, h.value_at_quantile(*q) as f64 / 1e6))
            .collect();
        v.push(("max", h.max() as f64 / 1e6));
        v.push(("mean", h.mean() / 1e6));
        Some(LatencyMs {
            kind: *kind,
            samples: h.len(),
            values: v,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("command".into(), json!(self.command));
        o.insert(
            "settings".into(),
            Value::Object(
                self.settings
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), v.clone()))
                    .collect(),
            ),
        );
        o.insert("records".into(), json!(self.records));
        o.insert("payload_bytes".into(), json!(self.payload_bytes));
        o.insert("elapsed_s".into(), json!(self.elapsed.as_secs_f64()));
        o.insert("records_per_sec".into(), json!(self.records_per_sec()));
        o.insert("mb_per_sec".into(), json!(self.bytes_per_sec() / 1e6));
        o.insert(
            "latency_ms".into(),
            match self.latency_ms() {
                None => Value::Null,
                Some(LatencyMs {
                    kind,
                    samples,
                    values,
                }) => {
                    let mut l = serde_json::Map::new();
                    l.insert("kind".into(), json!(kind.name()));
                    l.insert("samples".into(), json!(samples));
                    for (k, v) in values {
                        l.insert(k.into(), json!(v));
                    }
                    Value::Object(l)
                }
            },
        );
        o.insert("disk_bytes".into(), json!(self.disk_bytes));
        o.insert("disk_bytes_added".into(), json!(self.disk_bytes_added));
        o.insert("process".into(), Value::Null);
        o.insert("broker".into(), Value::Null);
        for r in &self.resources {
            let u = &r.usage;
            let cpu = u.user_s + u.system_s;
            o.insert(
                r.key.into(),
                json!({
                    "pid": r.pid,
                    "includes_broker": r.includes_broker,
                    "cpu_user_s": u.user_s,
                    "cpu_system_s": u.system_s,
                    "cpu_cores": cpu / self.elapsed.as_secs_f64().max(1e-9),
                    "rss_bytes": u.rss,
                    "rss_max_bytes": u.rss_max,
                    "rss_anon_bytes": u.rss_anon,
                    "rss_anon_max_bytes": u.rss_anon_max,
                }),
            );
        }
        o.insert(
            "ceiling".into(),
            self.ceiling.as_ref().map_or(Value::Null, Ceiling::to_json),
        );
        o.insert(
            "fraction_of_ceiling".into(),
            match self.fractions() {
                None => Value::Null,
                Some(f) => {
                    Value::Object(f.into_iter().map(|(k, v)| (k.into(), json!(v))).collect())
                }
            },
        );
        for (k, v, _) in &self.extra {
            o.insert((*k).into(), v.clone());
        }
        o.insert(
            "timeline".into(),
            Value::Array(
                self.timeline
                    .rates()
                    .into_iter()
                    .map(|(t, r)| json!({"t_s": t, "records_per_sec": r}))
                    .collect(),
            ),
        );
        o.insert("notes".into(), json!(self.notes));
        Value::Object(o)
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let settings: Vec<String> = self
            .settings
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(t) => format!("{k}={t}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = writeln!(s, "strom bench {}: {}", self.command, settings.join(" "));
        let _ = writeln!(
            s,
            "  throughput   {} records/s   {:.1} MB/s   ({} records, {} of values, in {:.3} s)",
            group_digits(self.records_per_sec()),
            self.bytes_per_sec() / 1e6,
            self.records,
            human_bytes(self.payload_bytes),
            self.elapsed.as_secs_f64()
        );
        if let Some(LatencyMs {
            kind,
            samples,
            values,
        }) = self.latency_ms()
        {
            let vals: Vec<String> = values
                .iter()
                .map(|(k, v)| format!("{} {v:.3}", k.replace('_', ".")))
                .collect();
            let _ = writeln!(
                s,
                "  latency      {} ms: {}   ({samples} samples)",
                kind.describe(),
                vals.join("  ")
            );
        }
        for (_, _, line) in &self.extra {
            if let Some(line) = line {
                let _ = writeln!(s, "  {line}");
            }
        }
        if let Some(d) = self.disk_bytes {
            let added = self
                .disk_bytes_added
                .map(|a| format!(" ({} added by this run)", human_bytes(a)))
                .unwrap_or_default();
            let _ = writeln!(s, "  on disk      {} in the topic{added}", human_bytes(d));
        }
        for r in &self.resources {
            let u = &r.usage;
            let cpu = u.user_s + u.system_s;
            let _ = writeln!(
                s,
                "  {:<12} CPU {:.2} s user + {:.2} s system = {:.2} cores; RSS {} at the end, {} at most (anonymous: {}, {})   ({})",
                r.key,
                u.user_s,
                u.system_s,
                cpu / self.elapsed.as_secs_f64().max(1e-9),
                human_bytes(u.rss),
                human_bytes(u.rss_max),
                human_bytes(u.rss_anon),
                human_bytes(u.rss_anon_max),
                r.what
            );
        }
        if let (Some(c), Some(f)) = (&self.ceiling, self.fractions()) {
            let _ = writeln!(s, "  ceilings (measured first):");
            s.push_str(&c.to_text());
            let pct: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("{:.1}% of {}", v * 100.0, k.replace('_', " ")))
                .collect();
            let _ = writeln!(s, "  this run     {}", pct.join(", "));
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

/// 1234567.8 -> "1,234,568".
pub fn group_digits(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes for people, binary units: 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    crate::cli::topics::human_bytes(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::measure::{ProcUsage, new_histogram, record_ns};

    fn summary() -> Summary {
        let mut h = new_histogram().unwrap();
        for v in [1_000_000u64, 2_000_000, 3_000_000] {
            record_ns(&mut h, v);
        }
        Summary {
            command: "produce",
            settings: vec![("topic", json!("t")), ("rate", Value::Null)],
            records: 1000,
            payload_bytes: 100_000,
            elapsed: Duration::from_millis(500),
            latency: Some((LatencyKind::SendToAck, h)),
            disk_bytes: Some(120_000),
            disk_bytes_added: Some(120_000),
            resources: vec![Resources {
                what: "this process".into(),
                key: "process",
                pid: 1,
                includes_broker: true,
                usage: ProcUsage {
                    user_s: 0.25,
                    system_s: 0.25,
                    rss: 10 << 20,
                    rss_max: 12 << 20,
                    rss_anon: 8 << 20,
                    rss_anon_max: 9 << 20,
                },
            }],
            ceiling: None,
            timeline: Timeline::default(),
            extra: vec![("records_in_log", json!(1000), None)],
            notes: vec![],
        }
    }

    #[test]
    fn json_has_every_number() {
        let j = summary().to_json();
        assert_eq!(j["records"], 1000);
        assert_eq!(j["records_per_sec"], 2000.0);
        assert_eq!(j["mb_per_sec"], 0.2);
        assert_eq!(j["latency_ms"]["kind"], "send_to_ack");
        assert_eq!(j["latency_ms"]["samples"], 3);
        assert!((j["latency_ms"]["p50"].as_f64().unwrap() - 2.0).abs() < 0.01);
        assert_eq!(j["process"]["cpu_cores"], 1.0);
        assert!(j["broker"].is_null());
        assert!(j["fraction_of_ceiling"].is_null());
        assert_eq!(j["records_in_log"], 1000);
        assert!(j["settings"]["rate"].is_null());
    }

    #[test]
    fn disk_fractions_count_bytes_on_disk() {
        let mut s = summary();
        s.ceiling = Some(crate::cli::bench::ceiling::Ceiling {
            dir: "/tmp".into(),
            bytes: 1 << 20,
            tcp_bytes_per_sec: 2_000_000.0,
            disk_write_bytes_per_sec: 480_000.0,
            disk_fsync_bytes_per_sec: 240_000.0,
            fsync_ns: new_histogram().unwrap(),
        });
        // 120,000 bytes on disk in 0.5 s against 100,000 of payload.
        let f: std::collections::HashMap<_, _> = s.fractions().unwrap().into_iter().collect();
        assert!((f["disk_write"] - 0.5).abs() < 1e-9, "{f:?}");
        assert!((f["disk_fsync"] - 1.0).abs() < 1e-9, "{f:?}");
        assert!((f["loopback_tcp"] - 0.1).abs() < 1e-9, "{f:?}");
        // Nothing added on disk (a consume run): the payload counts.
        s.disk_bytes_added = Some(0);
        let f: std::collections::HashMap<_, _> = s.fractions().unwrap().into_iter().collect();
        assert!(
            (f["disk_write"] - 200_000.0 / 480_000.0).abs() < 1e-9,
            "{f:?}"
        );
    }

    #[test]
    fn text_is_readable() {
        let t = summary().to_text();
        assert!(t.starts_with("strom bench produce: topic=t\n"), "{t}");
        assert!(t.contains("2,000 records/s"), "{t}");
        assert!(t.contains("p99.9"), "{t}");
        assert_eq!(group_digits(1_234_567.4), "1,234,567");
        assert_eq!(group_digits(12.0), "12");
    }
}
