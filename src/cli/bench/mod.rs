//! `strom bench`: how many records per second, how many MB/s and what latency strom gives on
//! this machine, measured the way Kafka's perf tools and iggy-bench do (issue 6;
//! docs/performance.md, "`strom bench`: how to run it", has the commands).
//!
//! - `produce`: P producers write M records (or for S seconds, optionally at R records/s) to a
//!   topic; throughput, send → ack latency of sampled records, bytes on disk.
//! - `consume`: C consumers read a topic from its beginning (assigned partitions, or as a
//!   group); throughput and poll durations. With `--embedded` (or `--fill`) the topic is first
//!   filled, untimed.
//! - `e2e`: producers and consumers at once; each record carries its send time and the
//!   consumers record send → receipt for every record.
//! - `queue`: W queue-group workers take a topic's records and ack each one on its own;
//!   throughput and ack latency (`queue` module).
//! - `delay`: N records with delivery times of their own spread over a window, all pending at
//!   once; how late queue-group workers get them, and the broker's RSS (`delay` module).
//! - `topics`: T topics of P partitions created one after another; how long each creation
//!   takes to be acknowledged (`topics` module).
//! - `ceiling`: this machine's loopback TCP and disk write ceilings (`ceiling` module); the
//!   other commands measure them first with `--with-ceiling` and report their result as a
//!   fraction of them.
//!
//! Every command targets `--bootstrap`, or with `--embedded` starts a broker in this process on
//! a temporary data dir that is removed at the end. CPU time and RSS come from `/proc`: this
//! process's (which includes the broker with `--embedded`), and the broker's with
//! `--broker-pid`. A progress bar runs on stderr (only when it is a terminal); the summary goes
//! to stdout, as text or one JSON object (`--output json`), and `--report DIR` also writes an
//! HTML page with plots.
//!
//! Modules: `load` (the producer and consumer loops and the send methods), `measure`
//! (histograms, `/proc`, progress), `ceiling`, `summary` (numbers and their renderings),
//! `report` (HTML).

mod ceiling;
mod delay;
mod load;
mod measure;
mod queue;
mod report;
mod summary;
mod topics;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use strom_broker::{Broker, BrokerConfig};
use strom_client::{
    Admin, AutoOffsetReset, ClientConfig, CompressionType, Consumer, ConsumerConfig, NewTopic,
    Producer, ProducerConfig, TopicDescription,
};
use strom_protocol::ErrorCode;
use tokio::task::JoinHandle;

use super::Output;
use super::parse_pair;
use super::produce::AcksArg;
use load::{ReadPlan, ReadResult, ReadShared, SendPlan, SendResult};
use measure::{Goal, ProcSample, ProcUsage, Ticker, Timeline, new_histogram, proc_sample};
use summary::{LatencyKind, Resources, Summary};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Write records and measure throughput and send → ack latency.
    Produce(ProduceArgs),
    /// Read a topic from its beginning and measure throughput.
    Consume(ConsumeArgs),
    /// Produce and consume at once; latency from send to receipt of every record.
    E2e(E2eArgs),
    /// Queue-group workers ack every record on its own; throughput and ack latency.
    Queue(queue::QueueArgs),
    /// Delayed delivery: records with delivery times of their own, all pending at once; how
    /// late queue-group workers get them, and the broker's RSS meanwhile.
    Delay(delay::DelayArgs),
    /// Measure this machine's loopback TCP and disk write ceilings.
    Ceiling(CeilingArgs),
    /// Create topics one after another and time each acknowledgement (then delete them).
    Topics(topics::TopicsArgs),
}

/// Which broker, and what else to write.
#[derive(Debug, Args)]
#[command(next_help_heading = "Broker")]
pub struct TargetArgs {
    /// Start a broker inside this process on a temporary data dir (removed at the end) instead
    /// of using --bootstrap.
    #[arg(long)]
    embedded: bool,
    /// With --embedded: where its temporary data dir is created [default: the system temp dir]
    #[arg(long, value_name = "DIR", requires = "embedded")]
    data_dir: Option<PathBuf>,
    /// The broker's process id, to report its CPU time and RSS from /proc (a broker on this
    /// machine, with --bootstrap).
    #[arg(long, value_name = "PID", conflicts_with = "embedded")]
    broker_pid: Option<u32>,
    /// Also write an HTML page with plots (throughput over time, latency percentiles) into DIR.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// The topic the bench uses.
#[derive(Debug, Args)]
#[command(next_help_heading = "Topic")]
pub struct TopicArgs {
    /// Topic to write and read.
    #[arg(long, value_name = "T", default_value = "strom-bench")]
    topic: String,
    /// Partitions of the topic when the bench creates it (an existing topic must have as many).
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100_000))]
    partitions: i32,
    /// Delete the topic first if it exists, so the run starts from an empty log.
    #[arg(long)]
    recreate: bool,
    /// A setting of the topic when the bench creates it, e.g. `flush.messages=1` (repeatable).
    #[arg(long = "topic-config", value_name = "KEY=VALUE", value_parser = parse_pair)]
    topic_config: Vec<(String, String)>,
}

/// Batch compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// How the producers send.
#[derive(Debug, Args)]
#[command(next_help_heading = "Producers")]
pub struct SendArgs {
    /// Concurrent producers, each its own client and connection.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    producers: u32,
    /// Bytes of each record's value (keys come on top).
    #[arg(long, value_name = "B", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    record_size: u32,
    /// Distinct keys, used in turn (the partitioner spreads them over the partitions); 0: no
    /// keys (each batch goes to one partition).
    #[arg(long, value_name = "K", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    keys: u32,
    /// Consecutive records sharing one key. 1: every record takes the next key, as an
    /// application keying by entity does (the partitioner routes each record on its own). N:
    /// each run of N records has one key, as iggy-bench's keyed producer sends every batch it is
    /// handed to one partition (with `--send-batch N`, one key per handed batch).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    key_run: u64,
    /// The producer's batch.size in bytes (its buffer.memory is the larger of 32 MiB and 4
    /// batches).
    #[arg(long, value_name = "B", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(128..=16 << 20))]
    batch_size: u32,
    /// The producer's linger.ms.
    #[arg(long, value_name = "L", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    linger_ms: u64,
    /// When the broker acknowledges: 0 never, 1 once appended, all once fsynced on every
    /// in-sync replica, replicated once every in-sync replica has the records.
    #[arg(long, value_enum, default_value = "1")]
    acks: AcksArg,
    /// Batch compression.
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// Records handed to the producer at a time: N sends back to back, only the last
    /// delivery future of each group kept (iggy-bench's method); 1: the per-record method,
    /// every delivery future awaited.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    send_batch: u64,
    /// Most records a producer sends after its oldest delivery future not yet awaited.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    window: u64,
    /// Time send → acknowledgement of every N-th record.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    sample_every: u64,
}

/// Ceilings measured before the run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Ceilings")]
pub struct WithCeilingArgs {
    /// Measure the loopback TCP and disk ceilings first (as `strom bench ceiling`) and report
    /// the result as a fraction of them.
    #[arg(long)]
    with_ceiling: bool,
    /// Where the disk measurement writes [default: the embedded broker's data dir, else the
    /// system temp dir]
    #[arg(long, value_name = "DIR", requires = "with_ceiling")]
    ceiling_dir: Option<PathBuf>,
    /// Bytes each ceiling measurement moves.
    #[arg(long, value_name = "N", default_value_t = 1 << 30, requires = "with_ceiling", value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40))]
    ceiling_bytes: u64,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Records to write over all producers [default: 1000000]
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "duration")]
    records: Option<u64>,
    /// Write for this many seconds instead of a number of records.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Pace the producers to R records/s in total [default: as fast as they go]
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    #[command(flatten)]
    send: SendArgs,
    #[command(flatten)]
    topic: TopicArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    ceiling: WithCeilingArgs,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Concurrent consumers, each its own client.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    consumers: u32,
    /// Read as members of this consumer group, from its committed offsets or the beginning
    /// (use a new name per run); without it the partitions are dealt out to the consumers.
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Records to read [default: every record in the topic at the start; with --embedded or
    /// --fill, the records written first (1000000 unless given)]
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    records: Option<u64>,
    /// Stop after this many seconds even if records are left.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Read at R records/s in total (each consumer its share), as a slower application would:
    /// the records of each `poll` are taken when they are due, the background fetch still
    /// prefetches [default: as fast as they go]
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Write the records to read first, untimed (implied by --embedded), with the producer
    /// settings below.
    #[arg(long)]
    fill: bool,
    /// Most records one poll returns (max.poll.records).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    max_poll_records: u32,
    /// Record bytes asked for per partition per fetch (max.partition.fetch.bytes).
    #[arg(long, value_name = "B", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=1 << 30))]
    partition_fetch_bytes: u32,
    /// Fail when no record arrives for this many seconds.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    idle_timeout: Duration,
    #[command(flatten)]
    send: SendArgs,
    #[command(flatten)]
    topic: TopicArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    ceiling: WithCeilingArgs,
}

#[derive(Debug, Args)]
pub struct E2eArgs {
    /// Records per second over all producers; 0: as fast as they go.
    #[arg(long, value_name = "R", default_value_t = 100_000)]
    rate: u64,
    /// Seconds the producers send [default: 10]
    #[arg(long, value_name = "S", value_parser = parse_seconds, conflicts_with = "records")]
    duration: Option<Duration>,
    /// Send this many records instead of sending for a time.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    records: Option<u64>,
    /// Concurrent consumers; the partitions are dealt out to them.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    consumers: u32,
    /// Most records one poll returns (max.poll.records).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    max_poll_records: u32,
    /// Fail when no record arrives for this many seconds.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    idle_timeout: Duration,
    #[command(flatten)]
    send: SendArgs,
    #[command(flatten)]
    topic: TopicArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    ceiling: WithCeilingArgs,
}

#[derive(Debug, Args)]
pub struct CeilingArgs {
    /// Directory the disk measurements write their files in (removed afterwards) [default: the
    /// system temp dir]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Bytes each measurement moves.
    #[arg(long, value_name = "N", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40))]
    bytes: u64,
    /// Also write an HTML page with the results into DIR.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// Positive seconds, fractions allowed: `10`, `0.5`.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected seconds, e.g. 10 or 0.5; got {s:?}"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e7 {
        return Err(format!(
            "seconds must be above 0 and at most 10000000; got {s}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Runs a bench command.
pub async fn run(bootstrap: &str, command: BenchCommand, output: Output) -> anyhow::Result<()> {
    let (target, name) = match &command {
        BenchCommand::Produce(a) => (&a.target, "produce"),
        BenchCommand::Consume(a) => (&a.target, "consume"),
        BenchCommand::E2e(a) => (&a.target, "e2e"),
        BenchCommand::Queue(a) => (a.target(), "queue"),
        BenchCommand::Delay(a) => (a.target(), "delay"),
        BenchCommand::Ceiling(a) => return run_ceiling(a, output).await,
        BenchCommand::Topics(a) => return topics::run(bootstrap, a, output).await,
    };
    let report_dir = target.report.clone();
    let env = Env::start(bootstrap, target).await?;
    let bench = async {
        match command {
            BenchCommand::Produce(a) => produce(&env, a).await,
            BenchCommand::Consume(a) => consume(&env, a).await,
            BenchCommand::E2e(a) => e2e(&env, a).await,
            BenchCommand::Queue(a) => queue::queue(&env, a).await,
            BenchCommand::Delay(a) => delay::delay(&env, a).await,
            BenchCommand::Ceiling(_) | BenchCommand::Topics(_) => {
                bail!("`bench ceiling` and `bench topics` start no broker of their own")
            }
        }
    };
    let result = tokio::select! {
        r = bench => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    env.stop().await;
    let summary = result.with_context(|| format!("bench {name}"))?;
    match output {
        Output::Json => println!("{}", summary.to_json()),
        Output::Text => print!("{}", summary.to_text()),
    }
    if let Some(dir) = &report_dir {
        let path = report::write(dir, &summary)?;
        eprintln!("report: {}", path.display());
    }
    Ok(())
}

async fn run_ceiling(a: &CeilingArgs, output: Output) -> anyhow::Result<()> {
    let dir = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let c = ceiling::measure(dir, a.bytes).await?;
    match output {
        Output::Json => {
            let mut j = c.to_json();
            if let Value::Object(o) = &mut j {
                o.insert("command".into(), json!("ceiling"));
            }
            println!("{j}");
        }
        Output::Text => print!("strom bench ceiling:\n{}", c.to_text()),
    }
    if let Some(dir) = &a.report {
        let path = report::write_ceiling(dir, &c)?;
        eprintln!("report: {}", path.display());
    }
    Ok(())
}

/// A directory removed (with its contents) when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("strom-bench-{}-{nanos}", std::process::id()));
        // `create_dir`, not `create_dir_all`: never adopt (and later remove) an existing one.
        std::fs::create_dir(&path)
            .with_context(|| format!("creating the data dir {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The broker a run talks to.
#[derive(Debug)]
struct Env {
    bootstrap: String,
    broker: Option<Broker>,
    dir: Option<TempDir>,
    broker_pid: Option<u32>,
}

impl Env {
    async fn start(bootstrap: &str, t: &TargetArgs) -> anyhow::Result<Self> {
        if let Some(pid) = t.broker_pid
            && proc_sample(Some(pid)).is_none()
        {
            bail!("--broker-pid {pid}: cannot read /proc/{pid}/stat and /proc/{pid}/status");
        }
        if !t.embedded {
            return Ok(Self {
                bootstrap: bootstrap.to_string(),
                broker: None,
                dir: None,
                broker_pid: t.broker_pid,
            });
        }
        let parent = t.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = TempDir::new(&parent)?;
        let config = BrokerConfig {
            listen: "127.0.0.1:0".into(),
            kafka_listen: strom_broker::config::LISTENER_OFF.into(),
            http_listen: strom_broker::config::LISTENER_OFF.into(),
            data_dir: dir.0.clone(),
            ..BrokerConfig::default()
        };
        let broker = Broker::start(config)
            .await
            .context("starting the embedded broker")?;
        Ok(Self {
            bootstrap: broker.local_addr().to_string(),
            broker: Some(broker),
            dir: Some(dir),
            broker_pid: None,
        })
    }

    fn embedded(&self) -> bool {
        self.broker.is_some()
    }

    async fn stop(mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
        drop(self.dir.take());
    }

    async fn admin(&self) -> anyhow::Result<Admin> {
        Admin::connect(ClientConfig::new(&self.bootstrap))
            .await
            .with_context(|| format!("connecting to the broker at {}", self.bootstrap))
    }

    fn settings(&self) -> (&'static str, Value) {
        (
            "broker",
            json!(if self.embedded() {
                "embedded"
            } else {
                &self.bootstrap
            }),
        )
    }

    /// Measures the ceilings when asked.
    async fn ceiling(&self, a: &WithCeilingArgs) -> anyhow::Result<Option<ceiling::Ceiling>> {
        if !a.with_ceiling {
            return Ok(None);
        }
        let dir = match (&a.ceiling_dir, &self.dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d.0.clone(),
            (None, None) => std::env::temp_dir(),
        };
        let label = "ceiling";
        let ticker = Ticker::start(label, Arc::new(AtomicU64::new(0)), Goal::Open, None);
        let c = ceiling::measure(dir, a.ceiling_bytes).await;
        ticker.finish().await;
        c.map(Some)
    }
}

/// CPU and RSS samples at the start of a measured interval.
#[derive(Debug)]
struct UsageStart {
    own: Option<ProcSample>,
    broker: Option<ProcSample>,
}

impl UsageStart {
    fn now(env: &Env) -> Self {
        Self {
            own: proc_sample(None),
            broker: env.broker_pid.and_then(|p| proc_sample(Some(p))),
        }
    }

    fn end(self, env: &Env, timeline: &Timeline) -> Vec<Resources> {
        let mut out = Vec::new();
        if let (Some(before), Some(after)) = (self.own, proc_sample(None)) {
            out.push(Resources {
                what: if env.embedded() {
                    "this process: the bench and the embedded broker".into()
                } else {
                    "this process: the bench clients only".into()
                },
                key: "process",
                pid: std::process::id(),
                includes_broker: env.embedded(),
                usage: ProcUsage::between(before, after, timeline.self_rss_max),
            });
        }
        if let (Some(pid), Some(before)) = (env.broker_pid, self.broker)
            && let Some(after) = proc_sample(Some(pid))
        {
            out.push(Resources {
                what: format!("the broker, pid {pid}"),
                key: "broker",
                pid,
                includes_broker: true,
                usage: ProcUsage::between(before, after, timeline.broker_rss_max),
            });
        }
        out
    }
}

/// Tasks that are aborted when dropped (a failed or interrupted run leaves nothing behind).
#[derive(Debug)]
struct Tasks<T>(Vec<JoinHandle<anyhow::Result<T>>>);

impl<T> Drop for Tasks<T> {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

impl<T> Tasks<T> {
    /// Waits for every task; the first failure is returned and the others aborted.
    async fn join(mut self) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.0.len());
        for h in &mut self.0 {
            out.push(h.await.context("a bench task stopped")??);
        }
        Ok(out)
    }
}

/// How much a run sends or reads.
#[derive(Debug, Clone, Copy)]
enum Amount {
    Records(u64),
    Duration(Duration),
}

impl Amount {
    fn goal(self) -> Goal {
        match self {
            Amount::Records(n) => Goal::Records(n),
            Amount::Duration(d) => Goal::Duration(d),
        }
    }

    fn settings(self) -> [(&'static str, Value); 2] {
        match self {
            Amount::Records(n) => [("records", json!(n)), ("duration_s", Value::Null)],
            Amount::Duration(d) => [
                ("records", Value::Null),
                ("duration_s", json!(d.as_secs_f64())),
            ],
        }
    }
}

fn producer_config(bootstrap: &str, s: &SendArgs) -> ProducerConfig {
    let mut c = ProducerConfig::new(bootstrap);
    c.acks = s.acks.client();
    c.compression = match s.compression {
        CompressionArg::None => CompressionType::None,
        CompressionArg::Gzip => CompressionType::GZIP,
        CompressionArg::Snappy => CompressionType::Snappy,
        CompressionArg::Lz4 => CompressionType::Lz4,
        CompressionArg::Zstd => CompressionType::ZSTD,
    };
    c.batch_size = s.batch_size as usize;
    c.linger = Duration::from_millis(s.linger_ms);
    c.buffer_memory = c.buffer_memory.max(4 * c.batch_size);
    c
}

fn send_settings(s: &SendArgs) -> Vec<(&'static str, Value)> {
    vec![
        ("producers", json!(s.producers)),
        ("record_size", json!(s.record_size)),
        ("keys", json!(s.keys)),
        ("key_run", json!(s.key_run)),
        (
            "method",
            json!(if s.send_batch > 1 {
                "send_batch"
            } else {
                "per_record"
            }),
        ),
        ("send_batch", json!(s.send_batch)),
        ("window", json!(s.window)),
        ("batch_size", json!(s.batch_size)),
        ("linger_ms", json!(s.linger_ms)),
        ("acks", json!(s.acks.name())),
        (
            "compression",
            json!(format!("{:?}", s.compression).to_lowercase()),
        ),
    ]
}

/// Connects the producers and has each learn the topic, so the run starts with warm clients.
async fn connect_producers(env: &Env, s: &SendArgs, topic: &str) -> anyhow::Result<Vec<Producer>> {
    let mut out = Vec::with_capacity(s.producers as usize);
    for _ in 0..s.producers {
        let p = Producer::connect(producer_config(&env.bootstrap, s))
            .await
            .context("connecting a producer")?;
        p.partition_count(topic)
            .await
            .with_context(|| format!("looking up topic {topic}"))?;
        out.push(p);
    }
    Ok(out)
}

/// Starts one send loop per producer.
fn spawn_senders(
    producers: &[Producer],
    s: &SendArgs,
    topic: &str,
    amount: Amount,
    rate: Option<u64>,
    stamp: Option<Instant>,
    sent: &Arc<AtomicU64>,
) -> Tasks<SendResult> {
    let n = producers.len() as u64;
    let value = load::value(s.record_size as usize);
    let keys = load::keys(s.keys);
    let (shares, deadline) = match amount {
        Amount::Records(m) => (load::split(m, n).into_iter().map(Some).collect(), None),
        Amount::Duration(d) => (vec![None; producers.len()], Some(Instant::now() + d)),
    };
    let rate = rate.map(|r| r as f64 / n as f64);
    Tasks(
        producers
            .iter()
            .zip(shares)
            .enumerate()
            .map(|(k, (p, records))| {
                let phase = rate.map_or(Duration::ZERO, |r| {
                    Duration::from_secs_f64((r / 1000.0).ceil().max(1.0) / r * k as f64 / n as f64)
                });
                let plan = SendPlan {
                    topic: topic.to_string(),
                    records,
                    deadline,
                    rate,
                    phase,
                    value: value.clone(),
                    stamp,
                    keys: keys.clone(),
                    key_run: s.key_run,
                    send_batch: s.send_batch,
                    window: s.window,
                    sample_every: s.sample_every,
                    sent: sent.clone(),
                };
                tokio::spawn(load::send_loop(p.clone(), plan))
            })
            .collect(),
    )
}

async fn close_producers(producers: Vec<Producer>) -> anyhow::Result<()> {
    for p in producers {
        p.close_timeout(Duration::from_secs(30))
            .await
            .context("closing a producer")?;
    }
    Ok(())
}

fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> anyhow::Result<()> {
    into.add(from).context("merging latency histograms")
}

/// Looks the topic up; `None` when it does not exist.
async fn describe(admin: &Admin, topic: &str) -> anyhow::Result<Option<TopicDescription>> {
    match admin.describe_topics(&[topic]).await {
        Ok(mut v) if !v.is_empty() => Ok(Some(v.remove(0))),
        Ok(_) | Err(strom_client::Error::UnknownTopic { .. }) => Ok(None),
        Err(e) if e.error_code() == Some(ErrorCode::UnknownTopicOrPartition) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("describing topic {topic}")),
    }
}

async fn describe_existing(admin: &Admin, topic: &str) -> anyhow::Result<TopicDescription> {
    describe(admin, topic)
        .await?
        .with_context(|| format!("topic {topic} disappeared during the run"))
}

fn size_bytes(t: &TopicDescription) -> u64 {
    t.partitions.iter().map(|p| p.size_bytes).sum()
}

fn end_offsets(t: &TopicDescription) -> u64 {
    t.partitions
        .iter()
        .map(|p| u64::try_from(p.log_end_offset).unwrap_or(0))
        .sum()
}

fn stored_records(t: &TopicDescription) -> u64 {
    t.partitions
        .iter()
        .map(|p| u64::try_from(p.log_end_offset - p.log_start_offset).unwrap_or(0))
        .sum()
}

/// Creates the topic (after deleting it with `--recreate`), or checks the existing one.
async fn prepare_topic(admin: &Admin, t: &TopicArgs) -> anyhow::Result<TopicDescription> {
    let name = t.topic.as_str();
    if t.recreate && describe(admin, name).await?.is_some() {
        admin
            .delete_topic(name)
            .await
            .with_context(|| format!("deleting topic {name}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(d) = describe(admin, name).await? {
            if t.recreate {
                // Still being deleted.
                if Instant::now() >= deadline {
                    bail!("topic {name} was not deleted within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if d.partitions.len() != t.partitions as usize {
                bail!(
                    "topic {name} exists with {} partitions, not {}: pass --partitions {}, --recreate or another --topic",
                    d.partitions.len(),
                    t.partitions,
                    d.partitions.len()
                );
            }
            return Ok(d);
        }
        let mut new = NewTopic::new(name).partitions(t.partitions);
        for (k, v) in &t.topic_config {
            new = new.config(k.clone(), v.clone());
        }
        match admin.create_topic(new).await {
            Ok(_) => return describe_existing(admin, name).await,
            Err(e)
                if e.error_code() == Some(ErrorCode::TopicAlreadyExists)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("creating topic {name}")),
        }
    }
}

/// Runs the producers to completion; returns the records acknowledged, the merged send → ack
/// histogram, the elapsed time and the progress timeline.
struct SendRun {
    records: u64,
    latency: Histogram<u64>,
    elapsed: Duration,
    timeline: Timeline,
    resources: Vec<Resources>,
}

async fn run_senders(
    env: &Env,
    s: &SendArgs,
    topic: &str,
    amount: Amount,
    rate: Option<u64>,
    label: &'static str,
) -> anyhow::Result<SendRun> {
    let producers = connect_producers(env, s, topic).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let ticker = Ticker::start(label, sent.clone(), amount.goal(), env.broker_pid);
    let usage = UsageStart::now(env);
    let start = Instant::now();
    let tasks = spawn_senders(&producers, s, topic, amount, rate, None, &sent);
    let joined = tasks.join().await;
    let elapsed = start.elapsed();
    let timeline = ticker.finish().await;
    let resources = usage.end(env, &timeline);
    let results = joined?;
    close_producers(producers).await?;
    let mut latency = new_histogram()?;
    for r in &results {
        merge(&mut latency, &r.latency)?;
    }
    Ok(SendRun {
        records: results.iter().map(|r| r.records).sum(),
        latency,
        elapsed,
        timeline,
        resources,
    })
}

async fn produce(env: &Env, a: ProduceArgs) -> anyhow::Result<Summary> {
    let admin = env.admin().await?;
    let ceiling = env.ceiling(&a.ceiling).await?;
    let before = prepare_topic(&admin, &a.topic).await?;
    let amount = match a.duration {
        Some(d) => Amount::Duration(d),
        None => Amount::Records(a.records.unwrap_or(1_000_000)),
    };
    let topic = a.topic.topic.as_str();
    let run = run_senders(env, &a.send, topic, amount, a.rate, "produce").await?;
    // A partition's offsets as Metadata reports them end at its high watermark: with acks=1
    // on replicated partitions, records acknowledged by the leader reach it once the followers
    // have them. Wait for that (outside the measured interval), up to a minute.
    let settle = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut after = describe_existing(&admin, topic).await?;
    while a.send.acks != AcksArg::None
        && end_offsets(&after).saturating_sub(end_offsets(&before)) < run.records
        && tokio::time::Instant::now() < settle
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = describe_existing(&admin, topic).await?;
    }
    let in_log = end_offsets(&after).saturating_sub(end_offsets(&before));
    let mut notes = Vec::new();
    if in_log < run.records {
        let msg = format!(
            "only {in_log} of the {} records sent reached the log",
            run.records
        );
        if a.send.acks != AcksArg::None {
            bail!("{msg}");
        }
        notes.push(format!("{msg} (acks=0 may lose records)"));
    } else if in_log > run.records {
        notes.push(format!(
            "the topic gained {in_log} records during the run, {} of them from this bench: another writer was active",
            run.records
        ));
    }
    if a.send.acks == AcksArg::None {
        notes.push("acks=0: latency is send → request written to the socket".into());
    }
    let mut settings = vec![
        env.settings(),
        ("topic", json!(topic)),
        ("partitions", json!(a.topic.partitions)),
    ];
    settings.extend(amount.settings());
    settings.push(("rate", json!(a.rate)));
    settings.extend(send_settings(&a.send));
    settings.push(("sample_every", json!(a.send.sample_every)));
    Ok(Summary {
        command: "produce",
        settings,
        records: run.records,
        payload_bytes: run.records * u64::from(a.send.record_size),
        elapsed: run.elapsed,
        latency: Some((LatencyKind::SendToAck, run.latency)),
        disk_bytes: Some(size_bytes(&after)),
        disk_bytes_added: Some(size_bytes(&after).saturating_sub(size_bytes(&before))),
        resources: run.resources,
        ceiling,
        timeline: run.timeline,
        extra: vec![("records_in_log", json!(in_log), None)],
        notes,
    })
}

/// Deals the partitions out: consumer `c` of `n` gets every partition `p` with `p % n == c`.
fn deal(partitions: &[i32], n: usize) -> Vec<Vec<i32>> {
    let mut out = vec![Vec::new(); n];
    for (i, p) in partitions.iter().enumerate() {
        out[i % n].push(*p);
    }
    out
}

fn consumer_config(bootstrap: &str, max_poll_records: u32, fetch_bytes: u32) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(bootstrap);
    c.max_poll_records = max_poll_records as usize;
    c.max_partition_fetch_bytes = fetch_bytes;
    c.auto_offset_reset = AutoOffsetReset::Earliest;
    c.group.auto_offset_reset = AutoOffsetReset::Earliest;
    c
}

/// Connects `n` consumers and deals the topic's partitions out to them.
async fn assigned_consumers(
    env: &Env,
    topic: &TopicDescription,
    n: u32,
    max_poll_records: u32,
    fetch_bytes: u32,
    at_end: bool,
) -> anyhow::Result<Vec<Consumer>> {
    let partitions: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
    if n as usize > partitions.len() {
        bail!(
            "{n} consumers but {} partition(s): each consumer needs a partition of its own (give the topic more --partitions)",
            partitions.len()
        );
    }
    let mut out = Vec::new();
    for share in deal(&partitions, n as usize) {
        let mut c = Consumer::connect(consumer_config(
            &env.bootstrap,
            max_poll_records,
            fetch_bytes,
        ))
        .await
        .context("connecting a consumer")?;
        let assignment: Vec<(&str, i32)> =
            share.iter().map(|p| (topic.name.as_str(), *p)).collect();
        c.assign(&assignment);
        if at_end {
            c.seek_to_end(&[]).await.context("seeking to the end")?;
        } else {
            c.seek_to_beginning(&[])
                .await
                .context("seeking to the beginning")?;
        }
        out.push(c);
    }
    Ok(out)
}

/// Joins the readers, failing (after stopping them) when nothing arrives for `idle`. Returns
/// the results and whether they stalled.
async fn join_readers(
    tasks: Tasks<ReadResult>,
    shared: &Arc<ReadShared>,
    idle: Duration,
) -> anyhow::Result<(Vec<ReadResult>, bool)> {
    let watchdog = async {
        let mut last = shared.received.load(Ordering::Acquire);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = shared.received.load(Ordering::Acquire);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= idle {
                return;
            }
        }
    };
    let mut join = std::pin::pin!(tasks.join());
    tokio::select! {
        r = &mut join => Ok((r?, false)),
        () = watchdog => {
            shared.done.store(true, Ordering::Release);
            Ok((join.await?, true))
        }
    }
}

struct ReadTotals {
    records: u64,
    bytes: u64,
    latency: Histogram<u64>,
    foreign: u64,
}

fn totals(results: &[ReadResult]) -> anyhow::Result<ReadTotals> {
    let mut latency = new_histogram()?;
    for r in results {
        merge(&mut latency, &r.latency)?;
    }
    Ok(ReadTotals {
        records: results.iter().map(|r| r.records).sum(),
        bytes: results.iter().map(|r| r.bytes).sum(),
        latency,
        foreign: results.iter().map(|r| r.foreign).sum(),
    })
}

fn when(m: &std::sync::Mutex<Option<Instant>>) -> Option<Instant> {
    *m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the records a read bench reads (`records`, or 1,000,000), untimed; the note saying so.
async fn fill_topic(
    env: &Env,
    admin: &Admin,
    topic: &TopicArgs,
    send: &SendArgs,
    records: Option<u64>,
) -> anyhow::Result<String> {
    prepare_topic(admin, topic).await?;
    let n = records.unwrap_or(1_000_000);
    let run = run_senders(env, send, &topic.topic, Amount::Records(n), None, "fill").await?;
    Ok(format!(
        "the topic was filled first with {} records ({:.0} records/s, not part of this result)",
        run.records,
        run.records as f64 / run.elapsed.as_secs_f64().max(1e-9)
    ))
}

async fn consume(env: &Env, a: ConsumeArgs) -> anyhow::Result<Summary> {
    let admin = env.admin().await?;
    let ceiling = env.ceiling(&a.ceiling).await?;
    let name = a.topic.topic.as_str();
    let fill = a.fill || env.embedded();
    let mut notes = Vec::new();
    if a.topic.recreate && !fill {
        bail!("--recreate would delete what consume reads: use it with --fill");
    }
    if fill && a.group.is_none() && i64::from(a.consumers) > i64::from(a.topic.partitions) {
        bail!(
            "{} consumers but {} partition(s): each consumer needs a partition of its own (give the topic more --partitions)",
            a.consumers,
            a.topic.partitions
        );
    }
    if fill {
        notes.push(fill_topic(env, &admin, &a.topic, &a.send, a.records).await?);
    }
    let topic = describe(&admin, name).await?.with_context(|| {
        format!("no topic {name}: write it first with `strom bench produce`, or pass --fill")
    })?;
    let available = stored_records(&topic);
    let target = match a.records {
        Some(m) if a.group.is_none() && m > available => bail!(
            "topic {name} holds {available} records, fewer than the {m} asked for (write more first, or pass --fill)"
        ),
        Some(m) => m,
        None => available,
    };
    if target == 0 {
        bail!("topic {name} is empty: write it first with `strom bench produce`, or pass --fill");
    }
    let consumers = match &a.group {
        None => {
            assigned_consumers(
                env,
                &topic,
                a.consumers,
                a.max_poll_records,
                a.partition_fetch_bytes,
                false,
            )
            .await?
        }
        Some(_) => {
            // They subscribe when the clock starts.
            let mut out = Vec::new();
            for _ in 0..a.consumers {
                let c = Consumer::connect(consumer_config(
                    &env.bootstrap,
                    a.max_poll_records,
                    a.partition_fetch_bytes,
                ))
                .await
                .context("connecting a consumer")?;
                out.push(c);
            }
            out
        }
    };
    let shared = ReadShared::new(Some(target));
    let goal = match a.duration {
        Some(d) => Goal::Duration(d),
        None => Goal::Records(target),
    };
    let ticker = Ticker::start("consume", shared.received.clone(), goal, env.broker_pid);
    let usage = UsageStart::now(env);
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + d);
    let mut consumers = consumers;
    if let Some(g) = &a.group {
        for c in &mut consumers {
            c.subscribe(g, &[name])
                .with_context(|| format!("joining group {g}"))?;
        }
    }
    let tasks = Tasks(
        consumers
            .into_iter()
            .map(|c| {
                tokio::spawn(load::read_loop(
                    c,
                    ReadPlan {
                        shared: shared.clone(),
                        deadline,
                        stamp: None,
                        close: a.group.is_some(),
                        rate: a.rate.map(|r| r as f64 / f64::from(a.consumers)),
                    },
                ))
            })
            .collect(),
    );
    let joined = join_readers(tasks, &shared, a.idle_timeout).await;
    let end = when(&shared.finished).unwrap_or_else(Instant::now);
    let timeline = ticker.finish().await;
    let resources = usage.end(env, &timeline);
    let (results, stalled) = joined?;
    let t = totals(&results)?;
    if stalled {
        bail!(
            "read {} of {target} records, then nothing for {:.0} s{}",
            t.records,
            a.idle_timeout.as_secs_f64(),
            if a.group.is_some() {
                " (a group that committed offsets before starts there: use a new --group)"
            } else {
                ""
            }
        );
    }
    let mut extra = Vec::new();
    if a.group.is_some() {
        let join =
            when(&shared.first).map_or(0.0, |f| f.saturating_duration_since(start).as_secs_f64());
        notes.push(format!(
            "the time includes joining the group: the first record arrived after {join:.3} s (join_s)"
        ));
        extra.push(("join_s", json!(join), None));
    }
    let mut settings = vec![
        env.settings(),
        ("topic", json!(name)),
        ("partitions", json!(topic.partitions.len())),
        ("consumers", json!(a.consumers)),
        ("group", json!(a.group)),
        ("records", json!(target)),
        ("duration_s", json!(a.duration.map(|d| d.as_secs_f64()))),
        ("rate", json!(a.rate)),
        ("max_poll_records", json!(a.max_poll_records)),
        ("partition_fetch_bytes", json!(a.partition_fetch_bytes)),
    ];
    if fill {
        settings.push(("fill_record_size", json!(a.send.record_size)));
    }
    Ok(Summary {
        command: "consume",
        settings,
        records: t.records,
        payload_bytes: t.bytes,
        elapsed: end.saturating_duration_since(start),
        latency: Some((LatencyKind::Poll, t.latency)),
        disk_bytes: Some(size_bytes(&topic)),
        disk_bytes_added: None,
        resources,
        ceiling,
        timeline,
        extra,
        notes,
    })
}

async fn e2e(env: &Env, a: E2eArgs) -> anyhow::Result<Summary> {
    if a.send.record_size < 8 {
        bail!(
            "--record-size must be at least 8 for e2e: each record carries its send time in its first 8 bytes"
        );
    }
    let admin = env.admin().await?;
    let ceiling = env.ceiling(&a.ceiling).await?;
    let topic = prepare_topic(&admin, &a.topic).await?;
    let name = a.topic.topic.as_str();
    let before = size_bytes(&topic);
    let amount = match (a.records, a.duration) {
        (Some(m), _) => Amount::Records(m),
        (None, Some(d)) => Amount::Duration(d),
        (None, None) => Amount::Duration(Duration::from_secs(10)),
    };
    let rate = (a.rate > 0).then_some(a.rate);
    let consumers =
        assigned_consumers(env, &topic, a.consumers, a.max_poll_records, 1 << 20, true).await?;
    let producers = connect_producers(env, &a.send, name).await?;
    let shared = ReadShared::new(None);
    let ticker = Ticker::start(
        "e2e",
        shared.received.clone(),
        amount.goal(),
        env.broker_pid,
    );
    let usage = UsageStart::now(env);
    let start = Instant::now();
    let readers = Tasks(
        consumers
            .into_iter()
            .map(|c| {
                tokio::spawn(load::read_loop(
                    c,
                    ReadPlan {
                        shared: shared.clone(),
                        deadline: None,
                        stamp: Some(start),
                        close: false,
                        rate: None,
                    },
                ))
            })
            .collect(),
    );
    let sent = Arc::new(AtomicU64::new(0));
    let senders = spawn_senders(&producers, &a.send, name, amount, rate, Some(start), &sent);
    let sent_results = senders.join().await;
    let send_elapsed = start.elapsed();
    let joined = match &sent_results {
        Ok(r) => {
            shared
                .target
                .store(r.iter().map(|r| r.records).sum(), Ordering::Release);
            shared.check_target();
            join_readers(readers, &shared, a.idle_timeout).await
        }
        Err(_) => {
            shared.done.store(true, Ordering::Release);
            drop(readers);
            Ok((Vec::new(), false))
        }
    };
    let end = when(&shared.finished).unwrap_or_else(Instant::now);
    let timeline = ticker.finish().await;
    let resources = usage.end(env, &timeline);
    let sent_results = sent_results?;
    let (results, stalled) = joined?;
    close_producers(producers).await?;
    let sent: u64 = sent_results.iter().map(|r| r.records).sum();
    let t = totals(&results)?;
    let mut notes = Vec::new();
    if stalled {
        let msg = format!(
            "the consumers received {} of the {sent} records sent, then nothing for {:.0} s",
            t.records,
            a.idle_timeout.as_secs_f64()
        );
        if a.send.acks != AcksArg::None {
            bail!("{msg}");
        }
        notes.push(format!("{msg} (acks=0 may lose records)"));
    }
    if t.foreign > 0 {
        notes.push(format!(
            "{} records did not carry a send time of this run (another writer?) and have no latency",
            t.foreign
        ));
    }
    let after = describe_existing(&admin, name).await?;
    let mut settings = vec![
        env.settings(),
        ("topic", json!(name)),
        ("partitions", json!(a.topic.partitions)),
        ("consumers", json!(a.consumers)),
    ];
    settings.extend(amount.settings());
    settings.push(("rate", json!(rate)));
    settings.extend(send_settings(&a.send));
    let send_rate = sent as f64 / send_elapsed.as_secs_f64().max(1e-9);
    Ok(Summary {
        command: "e2e",
        settings,
        records: t.records,
        payload_bytes: t.bytes,
        elapsed: end.saturating_duration_since(start),
        latency: Some((LatencyKind::SendToReceipt, t.latency)),
        disk_bytes: Some(size_bytes(&after)),
        disk_bytes_added: Some(size_bytes(&after).saturating_sub(before)),
        resources,
        ceiling,
        timeline,
        extra: vec![
            ("sent", json!(sent), None),
            (
                "send_records_per_sec",
                json!(send_rate),
                Some(format!(
                    "sent         {} records at {} records/s",
                    sent,
                    summary::group_digits(send_rate)
                )),
            ),
        ],
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "nan", "inf", "x", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partitions_are_dealt_out() {
        assert_eq!(deal(&[0, 1, 2, 3, 4], 2), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(deal(&[0], 1), vec![vec![0]]);
    }
}
