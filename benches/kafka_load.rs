//! A Kafka client's load against a broker: librdkafka (through the `rdkafka` crate) producing or
//! consuming records as `strom bench` does over the native protocol, so the broker's CPU per
//! record can be compared between its Kafka listener and its native one (docs/performance.md,
//! "Kafka listener vs native listener: broker CPU per record"; `benches/kafka_vs_native.sh`
//! runs the comparison).
//!
//! ```sh
//! cargo bench --bench kafka_load -- --bootstrap 127.0.0.1:9092 --topic t --mode produce \
//!     --records 20000000 --record-bytes 100
//! target/release/deps/kafka_load-HASH --bootstrap ... --mode consume --records 20000000
//! ```
//!
//! It prints one JSON line: `records`, `bytes` (record values), `elapsed_s`, `records_per_sec`,
//! this process's CPU seconds (`client_cpu_s`), the broker's over the same interval with
//! `--broker-pid` (`broker_cpu_s`), the librdkafka settings used, and what librdkafka's own
//! statistics say it sent (`requests`, per API; batch sizes when producing).
//!
//! # What it matches in `strom bench`
//!
//! - Records: values of `--record-bytes` random capital letters (`strom bench`'s value), no key
//!   (`--keys 0`, the default), no headers, no compression.
//! - Produce: `batch.size` = `--batch-bytes` (default 262144, `strom bench --batch-size`),
//!   `linger.ms` = `--linger-ms` (default 5), at most 5 requests in flight, 32 MiB of buffered
//!   records (`buffer.memory`), no cap on the number of buffered records (strom's producer has
//!   none). `acks=1` (`--acks`, default 1). librdkafka refuses idempotence with `acks=1`, so
//!   `enable.idempotence` is off unless `--acks all`; strom's producer is idempotent with
//!   `acks=1` (one producer-state check per batch in the broker, ~2,400 records per batch at
//!   100 B).
//! - The measured interval, as in `strom bench`: produce from the first `send` until every
//!   record is acknowledged (`flush`); consume from the first `poll` until `--records` records
//!   were returned.
//! - Consume: every partition assigned from the beginning (no group), `max.partition.fetch.bytes`
//!   1 MiB and `fetch.max.bytes` 50 MiB, `fetch.min.bytes` 1, `fetch.wait.max.ms` 500 (strom's
//!   consumer defaults), and up to 64 MiB of prefetched records (strom's `max_buffered_bytes`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Produce,
    Consume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Acks {
    #[value(name = "0")]
    Zero,
    #[value(name = "1")]
    One,
    #[value(name = "all")]
    All,
}

/// librdkafka load against a Kafka listener; one JSON line on stdout.
#[derive(Debug, Parser)]
#[command(name = "kafka_load")]
struct Args {
    /// The broker's Kafka listener, HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    bootstrap: String,
    /// Topic to write or read (it must exist).
    #[arg(long, value_name = "T")]
    topic: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Records to write, or to read (the topic must hold at least as many).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    records: u64,
    /// Bytes of each record's value (produce).
    #[arg(long, value_name = "B", default_value_t = 100)]
    record_bytes: usize,
    /// librdkafka's batch.size (produce).
    #[arg(long, value_name = "B", default_value_t = 256 * 1024)]
    batch_bytes: u32,
    /// librdkafka's linger.ms (produce).
    #[arg(long, value_name = "MS", default_value_t = 5)]
    linger_ms: u32,
    /// acks (produce); `all` turns idempotence on, which librdkafka allows only with acks=all.
    #[arg(long, value_enum, default_value = "1")]
    acks: Acks,
    /// The broker's process id: report its CPU seconds over the measured interval.
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// librdkafka property NAME=VALUE, applied last (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(out) => println!("{out}"),
        Err(e) => {
            eprintln!("kafka_load: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The client context: counts deliveries and keeps librdkafka's latest statistics.
#[derive(Debug, Default)]
struct Ctx {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    stats: Mutex<Option<Statistics>>,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: Statistics) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(statistics);
    }
}

impl ConsumerContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

/// Milliseconds between librdkafka statistics; the last one is read after the run.
const STATS_INTERVAL_MS: u64 = 500;

fn base_config(a: &Args) -> (ClientConfig, Vec<(String, String)>) {
    let mut settings: Vec<(String, String)> = vec![
        ("bootstrap.servers".into(), a.bootstrap.clone()),
        (
            "statistics.interval.ms".into(),
            STATS_INTERVAL_MS.to_string(),
        ),
    ];
    match a.mode {
        Mode::Produce => {
            let (acks, idempotent) = match a.acks {
                Acks::Zero => ("0", false),
                Acks::One => ("1", false),
                Acks::All => ("all", true),
            };
            settings.extend(
                [
                    ("acks", acks.to_string()),
                    ("enable.idempotence", idempotent.to_string()),
                    ("compression.type", "none".into()),
                    ("batch.size", a.batch_bytes.to_string()),
                    ("linger.ms", a.linger_ms.to_string()),
                    ("max.in.flight.requests.per.connection", "5".into()),
                    ("queue.buffering.max.kbytes", (32 * 1024).to_string()),
                    // strom's producer bounds bytes only.
                    ("queue.buffering.max.messages", "2147483647".into()),
                    // Let batch.size alone decide when a batch is full.
                    ("batch.num.messages", "1000000".into()),
                    ("message.timeout.ms", "120000".into()),
                ]
                .map(|(k, v)| (k.to_string(), v)),
            );
        }
        Mode::Consume => {
            settings.extend(
                [
                    // Required by librdkafka's consumer; nothing joins it (`assign` only).
                    ("group.id", "kafka-load-assign-only"),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    ("enable.partition.eof", "false"),
                    ("auto.offset.reset", "earliest"),
                    ("fetch.min.bytes", "1"),
                    ("fetch.wait.max.ms", "500"),
                    ("fetch.max.bytes", "52428800"),
                    ("max.partition.fetch.bytes", "1048576"),
                    ("queued.max.messages.kbytes", "65536"),
                    // Bytes, not a record count, bound the prefetch (as in strom's consumer).
                    ("queued.min.messages", "10000000"),
                    ("check.crcs", "false"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
        }
    }
    for kv in &a.set {
        if let Some((k, v)) = kv.split_once('=') {
            settings.push((k.to_string(), v.to_string()));
        }
    }
    let mut c = ClientConfig::new();
    for (k, v) in &settings {
        c.set(k, v);
    }
    (c, settings)
}

fn run(a: &Args) -> anyhow::Result<Value> {
    for kv in &a.set {
        if !kv.contains('=') {
            bail!("--set {kv:?}: expected NAME=VALUE");
        }
    }
    let (config, settings) = base_config(a);
    let ctx_settings: BTreeMap<String, String> = settings.into_iter().collect();
    let result = match a.mode {
        Mode::Produce => produce(a, &config)?,
        Mode::Consume => consume(a, &config)?,
    };
    let Measured {
        records,
        bytes,
        elapsed,
        client_cpu,
        broker_cpu,
        stats,
    } = result;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut out = json!({
        "tool": "kafka_load",
        "client": format!("librdkafka {}", rdkafka::util::get_rdkafka_version().1),
        "mode": match a.mode { Mode::Produce => "produce", Mode::Consume => "consume" },
        "topic": a.topic,
        "records": records,
        "bytes": bytes,
        "elapsed_s": secs,
        "records_per_sec": records as f64 / secs,
        "mb_per_sec": bytes as f64 / secs / 1e6,
        "client_cpu_s": client_cpu,
        "settings": ctx_settings,
    });
    if let (Some(cpu), Value::Object(o)) = (broker_cpu, &mut out) {
        o.insert("broker_pid".into(), json!(a.broker_pid));
        o.insert("broker_cpu_s".into(), json!(cpu));
        o.insert(
            "broker_cpu_ns_per_record".into(),
            json!(cpu * 1e9 / records.max(1) as f64),
        );
    }
    if let (Some(s), Value::Object(o)) = (stats, &mut out) {
        o.insert("librdkafka".into(), s);
    }
    Ok(out)
}

struct Measured {
    records: u64,
    bytes: u64,
    elapsed: Duration,
    client_cpu: f64,
    broker_cpu: Option<f64>,
    stats: Option<Value>,
}

/// CPU seconds (user + system) of a process, from `/proc/PID/stat` (`self` without a pid).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks() as f64)
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on every common Linux).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU of this process and of the broker at one instant.
struct CpuMark {
    own: Option<f64>,
    broker: Option<f64>,
}

impl CpuMark {
    fn now(a: &Args) -> Self {
        Self {
            own: cpu_seconds(None),
            broker: a.broker_pid.and_then(|p| cpu_seconds(Some(p))),
        }
    }

    fn since(&self, a: &Args) -> (f64, Option<f64>) {
        let now = Self::now(a);
        let own = match (self.own, now.own) {
            (Some(b), Some(e)) => e - b,
            _ => f64::NAN,
        };
        let broker = match (self.broker, now.broker) {
            (Some(b), Some(e)) => Some(e - b),
            _ => None,
        };
        (own, broker)
    }
}

/// What librdkafka's last statistics say: requests per API (over the client's life, the
/// measured interval and its set-up), bytes sent and received, and batch sizes when producing.
fn summarize(stats: Option<Statistics>, topic: &str) -> Option<Value> {
    let s = stats?;
    let mut requests: BTreeMap<String, i64> = BTreeMap::new();
    let (mut tx_bytes, mut rx_bytes) = (0u64, 0u64);
    for b in s.brokers.values() {
        for (k, v) in &b.req {
            if *v > 0 {
                *requests.entry(k.clone()).or_default() += v;
            }
        }
        tx_bytes += b.txbytes;
        rx_bytes += b.rxbytes;
    }
    let mut out = json!({
        "requests": requests,
        "tx_bytes": tx_bytes,
        "rx_bytes": rx_bytes,
    });
    if let (Some(t), Value::Object(o)) = (s.topics.get(topic), &mut out)
        && t.batchcnt.cnt > 0
    {
        o.insert(
            "batch_records_avg_last_window".into(),
            json!(t.batchcnt.avg),
        );
        o.insert("batch_bytes_avg_last_window".into(), json!(t.batchsize.avg));
    }
    Some(out)
}

/// Waits until librdkafka has emitted statistics taken after the run, polling with `poll`.
fn final_stats(ctx: &Ctx, mut poll: impl FnMut(Duration)) -> Option<Statistics> {
    *ctx.stats.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let until = Instant::now() + Duration::from_millis(3 * STATS_INTERVAL_MS);
    while Instant::now() < until {
        poll(Duration::from_millis(50));
        if ctx
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            break;
        }
    }
    ctx.stats.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The value every record carries: `strom bench`'s (`src/cli/bench/load.rs`, `value`).
fn value(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'A' + (x % 26) as u8
        })
        .collect()
}

fn produce(a: &Args, config: &ClientConfig) -> anyhow::Result<Measured> {
    let producer: BaseProducer<Ctx> = config
        .create_with_context(Ctx::default())
        .context("creating the producer")?;
    // Learn the topic before the clock starts, as `strom bench` does.
    let md = producer
        .client()
        .fetch_metadata(Some(&a.topic), Duration::from_secs(10))
        .context("fetching metadata")?;
    match md.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
        _ => bail!("topic {} does not exist: create it first", a.topic),
    }
    let value = value(a.record_bytes);
    let ctx = producer.context();
    clock_ticks();
    let mark = CpuMark::now(a);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < a.records {
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&a.topic).payload(&value[..]);
        match producer.send(record) {
            Ok(()) => {
                sent += 1;
                // Serve delivery reports now and then without blocking.
                if sent.is_multiple_of(1024) {
                    producer.poll(Duration::ZERO);
                }
            }
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("sending record {}: {e}", sent + 1),
        }
        if ctx.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    producer
        .flush(Timeout::After(Duration::from_secs(120)))
        .context("flushing the producer")?;
    let elapsed = start.elapsed();
    let (client_cpu, broker_cpu) = mark.since(a);
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = ctx
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        bail!(
            "{failed} records failed, the first with: {}",
            first.unwrap_or_default()
        );
    }
    let delivered = ctx.delivered.load(Ordering::Relaxed);
    if delivered != a.records {
        bail!("{delivered} of {} records acknowledged", a.records);
    }
    let stats = final_stats(ctx, |d| producer.poll(d));
    Ok(Measured {
        records: delivered,
        bytes: delivered * a.record_bytes as u64,
        elapsed,
        client_cpu,
        broker_cpu,
        stats: summarize(stats, &a.topic),
    })
}

fn consume(a: &Args, config: &ClientConfig) -> anyhow::Result<Measured> {
    let consumer: BaseConsumer<Ctx> = config
        .create_with_context(Ctx::default())
        .context("creating the consumer")?;
    let md = consumer
        .fetch_metadata(Some(&a.topic), Duration::from_secs(10))
        .context("fetching metadata")?;
    let partitions: Vec<i32> = match md.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            t.partitions().iter().map(|p| p.id()).collect()
        }
        _ => bail!("topic {} does not exist", a.topic),
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&a.topic, *p, Offset::Beginning)
            .context("assigning")?;
    }
    consumer.assign(&tpl).context("assigning")?;
    let idle = Duration::from_secs(10);
    clock_ticks();
    let mark = CpuMark::now(a);
    let start = Instant::now();
    let mut last = start;
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < a.records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload_len() as u64;
                last = Instant::now();
            }
            Some(Err(e)) => bail!("after {records} records: {e}"),
            None if last.elapsed() > idle => bail!(
                "read {records} of {} records, then nothing for {} s",
                a.records,
                idle.as_secs()
            ),
            None => {}
        }
    }
    let elapsed = start.elapsed();
    let (client_cpu, broker_cpu) = mark.since(a);
    let stats = final_stats(consumer.context(), |d| {
        let _ = consumer.poll(d);
    });
    Ok(Measured {
        records,
        bytes,
        elapsed,
        client_cpu,
        broker_cpu,
        stats: summarize(stats, &a.topic),
    })
}
