//! The `strom` binary: the broker (`strom serve`) and the command-line tools (`strom topics`,
//! `strom produce`, `strom consume`, `strom groups`, `strom work`, `strom queue`, `strom cluster`,
//! `strom bench`).
//!
//! Every failure is one line on stderr and a non-zero exit status, never a panic or backtrace.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
mod cli;

use clap::{Args, Parser, Subcommand};
use strom_broker::{Broker, BrokerConfig};

/// strom: a partitioned, append-only event log broker.
#[derive(Debug, Parser)]
#[command(
    name = "strom",
    version,
    about,
    propagate_version = true,
    args_override_self = true
)]
struct Cli {
    /// Broker to talk to (client commands).
    #[arg(long, global = true, env = "STROM_BOOTSTRAP", default_value = strom_client::DEFAULT_BOOTSTRAP)]
    bootstrap: String,
    /// Output for client commands: text for people, json for programs (one object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: cli::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker. With no flags it serves ./strom-data on 127.0.0.1:9494.
    Serve(Box<ServeArgs>),
    /// Create, list, describe, delete and alter topics.
    Topics {
        #[command(subcommand)]
        command: cli::topics::TopicsCommand,
    },
    /// Write records from standard input, one per line.
    ///
    /// Records go through the batching, idempotent producer. With --deliver-after or
    /// --deliver-at, queue groups hand them out only from that time on (delayed delivery).
    Produce(cli::produce::ProduceArgs),
    /// Read records and print them.
    Consume(cli::consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    Groups {
        #[command(subcommand)]
        command: cli::groups::GroupsCommand,
    },
    /// Work through a topic's records as a member of a queue group: run a command for each
    /// record; its exit status acks (0), rejects (100) or nacks (any other) the record.
    Work(cli::work::WorkArgs),
    /// Describe and reset queue groups.
    Queue {
        #[command(subcommand)]
        command: cli::queue::QueueCommand,
    },
    /// Show a cluster's brokers and controller (`status`), or start a local cluster of child
    /// brokers for trying things out (`up`).
    Cluster {
        #[command(subcommand)]
        command: cli::cluster::ClusterCommand,
    },
    /// Measure throughput and latency: produce, consume, e2e, queue groups, delayed delivery,
    /// and this machine's ceilings.
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
}

/// Settings come from the embedded defaults, then `--config FILE`, then these flags.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML file with broker settings (the names below with `_` for `-`; topic defaults under
    /// `[topic_defaults]`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: ./strom-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on for strom's protocol; port 0 picks a free port
    /// [default: 127.0.0.1:9494]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Address to listen on for Kafka clients; port 0 picks a free port, `none` turns the Kafka
    /// listener off [default: 127.0.0.1:9092]
    #[arg(long, value_name = "HOST:PORT|none")]
    kafka_listen: Option<String>,
    /// Address of the HTTP listener (`/metrics`); port 0 picks a free port, `none` turns it off
    /// [default: 127.0.0.1:9644]
    #[arg(long, value_name = "HOST:PORT|none")]
    http_listen: Option<String>,
    /// Show partition series in /metrics per partition; false sums them per topic (for many
    /// thousands of partitions) [default: true]
    #[arg(long, value_name = "BOOL")]
    metrics_per_partition: Option<bool>,
    /// This broker's id, in Metadata and in the metadata quorum [default: 0]
    #[arg(long)]
    node_id: Option<i32>,
    /// The metadata quorum's voters, `ID@HOST:PORT,...` (1, 3 or 5; Kafka's
    /// controller.quorum.voters); a broker whose id is not listed follows as a learner
    /// [default: none, this broker alone]
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    controller_voters: Option<String>,
    /// Address of this broker's controller listener [default: its address in
    /// --controller-voters, else 127.0.0.1:0]
    #[arg(long, value_name = "HOST:PORT")]
    controller_listen: Option<String>,
    /// Metadata log entries between snapshots of the metadata image [default: 5000]
    #[arg(long, value_name = "N")]
    metadata_snapshot_entries: Option<u64>,
    /// Metadata log bytes that cause a snapshot whatever the entry count [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    metadata_snapshot_bytes: Option<u64>,
    /// How long a follower may stay behind its leader before it leaves the ISR [default: 30000]
    #[arg(long, value_name = "MS")]
    replica_lag_time_max_ms: Option<u64>,
    /// Partitions of __consumer_offsets when the cluster creates it [default: 16]
    #[arg(long, value_name = "N")]
    offsets_topic_partitions: Option<u32>,
    /// Create a topic on its first produce [default: true]
    #[arg(long, value_name = "BOOL")]
    auto_create_topics: Option<bool>,
    /// Replicas of each partition of a topic created without a factor; 0: three, or every live
    /// broker when there are fewer [default: 0]
    #[arg(long, value_name = "N")]
    default_replication_factor: Option<u32>,
    /// Partitions of an auto-created topic [default: 1]
    #[arg(long, value_name = "N")]
    default_partitions: Option<u32>,
    /// Most partitions one topic may have [default: 10000]
    #[arg(long, value_name = "N")]
    max_partitions: Option<u32>,
    /// Largest request frame in bytes, checked before allocating [default: 8388608]
    #[arg(long, value_name = "BYTES")]
    max_frame_bytes: Option<u32>,
    /// Largest request in bytes for every API but Produce [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    max_control_frame_bytes: Option<u32>,
    /// Most open client connections [default: 10000]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Request bytes per connection awaiting responses before the broker stops reading it
    /// [default: 33554432]
    #[arg(long, value_name = "BYTES")]
    max_inflight_bytes: Option<usize>,
    /// Request bytes awaiting responses over all connections: the bound on memory requests hold
    /// [default: 134217728]
    #[arg(long, value_name = "BYTES")]
    max_inflight_bytes_total: Option<usize>,
    /// Close a connection whose client does not read a response for this long [default: 30000]
    #[arg(long, value_name = "MS")]
    write_timeout_ms: Option<u64>,
    /// Close a connection whose request does not arrive whole within this long of its first
    /// byte (slow-loris writers) [default: 30000]
    #[arg(long, value_name = "MS")]
    request_read_timeout_ms: Option<u64>,
    /// Close a connection that sends nothing and awaits no response for this long
    /// [default: 600000]
    #[arg(long, value_name = "MS")]
    connections_max_idle_ms: Option<u64>,
    /// Requests per connection awaiting responses [default: 1024]
    #[arg(long, value_name = "N")]
    max_pipelined_requests: Option<usize>,
    /// Cap on a fetch response's record bytes [default: 52428800]
    #[arg(long, value_name = "BYTES")]
    fetch_max_bytes: Option<u32>,
    /// Record bytes per partition when a fetch names no limit [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    fetch_partition_max_bytes: Option<u32>,
    /// Cap on a fetch's long-poll wait [default: 30000]
    #[arg(long, value_name = "MS")]
    fetch_max_wait_ms: Option<u32>,
    /// How long a produce waits for its acknowledgement when it names no timeout [default: 30000]
    #[arg(long, value_name = "MS")]
    produce_timeout_ms: Option<u32>,
    /// How often retention and compaction run [default: 60000]
    #[arg(long, value_name = "MS")]
    retention_check_interval_ms: Option<u64>,
    /// Shortest session timeout a group member may ask for [default: 1000]
    #[arg(long, value_name = "MS")]
    group_min_session_timeout_ms: Option<u32>,
    /// Longest session timeout a group member may ask for [default: 300000]
    #[arg(long, value_name = "MS")]
    group_max_session_timeout_ms: Option<u32>,
    /// Session timeout of a group member that asks for none [default: 45000]
    #[arg(long, value_name = "MS")]
    group_default_session_timeout_ms: Option<u32>,
    /// How long a new Kafka consumer group's first rebalance waits for more members (Kafka's
    /// group.initial.rebalance.delay.ms) [default: 3000]
    #[arg(long, value_name = "MS")]
    group_initial_rebalance_delay_ms: Option<u64>,
    /// Queue-group state records `__queue_state` holds beyond its last snapshots and the
    /// pending delayed runs before it is compacted (every group snapshotted, older records
    /// dropped) [default: 100000]
    #[arg(long, value_name = "N")]
    queue_state_compact_records: Option<u64>,
    /// How long a graceful shutdown waits for in-flight requests [default: 10000]
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<u64>,
    /// A topic default by its Kafka name, e.g. `retention.ms=86400000` or `flush.messages=1`
    /// (repeatable; see docs/storage.md for every setting and its default)
    #[arg(long = "topic-config", value_name = "KEY=VALUE", value_parser = cli::parse_pair)]
    topic_config: Vec<(String, String)>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<BrokerConfig> {
        let mut c = match &self.config {
            Some(path) => BrokerConfig::from_file(path)?,
            None => BrokerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(
            data_dir,
            listen,
            kafka_listen,
            http_listen,
            metrics_per_partition,
            node_id,
            controller_voters,
            controller_listen,
            metadata_snapshot_entries,
            metadata_snapshot_bytes,
            replica_lag_time_max_ms,
            offsets_topic_partitions,
            auto_create_topics,
            default_partitions,
            default_replication_factor,
            max_partitions,
            max_frame_bytes,
            max_control_frame_bytes,
            max_connections,
            max_inflight_bytes,
            max_inflight_bytes_total,
            write_timeout_ms,
            request_read_timeout_ms,
            connections_max_idle_ms,
            max_pipelined_requests,
            fetch_max_bytes,
            fetch_partition_max_bytes,
            fetch_max_wait_ms,
            produce_timeout_ms,
            retention_check_interval_ms,
            group_min_session_timeout_ms,
            group_max_session_timeout_ms,
            group_default_session_timeout_ms,
            group_initial_rebalance_delay_ms,
            queue_state_compact_records,
            shutdown_timeout_ms
        );
        for (k, v) in self.topic_config {
            c.topic_defaults.insert(k, v);
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        command => client_command(&cli.bootstrap, cli.output, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`strom ... | head`): stop quietly, with the status a
        // process killed by SIGPIPE has, as other command-line tools do.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("strom: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message before it
/// already includes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Runs a client command on a small runtime; logs stay quiet unless RUST_LOG asks.
fn client_command(bootstrap: &str, output: cli::Output, command: Command) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match command {
            Command::Serve(_) => Ok(()),
            Command::Topics { command } => {
                let admin =
                    strom_client::Admin::connect(strom_client::ClientConfig::new(bootstrap))
                        .await?;
                cli::topics::run(&admin, command, output).await
            }
            Command::Groups { command } => {
                let admin =
                    strom_client::Admin::connect(strom_client::ClientConfig::new(bootstrap))
                        .await?;
                cli::groups::run(&admin, command, output).await
            }
            Command::Queue { command } => {
                let admin =
                    strom_client::Admin::connect(strom_client::ClientConfig::new(bootstrap))
                        .await?;
                cli::queue::run(&admin, command, output).await
            }
            Command::Cluster { command } => match command {
                cli::cluster::ClusterCommand::Status => {
                    let admin =
                        strom_client::Admin::connect(strom_client::ClientConfig::new(bootstrap))
                            .await?;
                    cli::cluster::status(&admin, output).await
                }
                cli::cluster::ClusterCommand::Up(args) => cli::cluster::up(args, output).await,
            },
            Command::Work(args) => cli::work::run(bootstrap, args).await,
            Command::Produce(args) => cli::produce::run(bootstrap, args).await,
            Command::Consume(args) => cli::consume::run(bootstrap, args, output).await,
            Command::Bench { command } => cli::bench::run(bootstrap, command, output).await,
        }
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Install the handlers before announcing the address, so a signal right after the
        // announcement is never missed.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let broker = Broker::start(config).await?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {}", broker.local_addr())?;
            if let Some(addr) = broker.kafka_addr() {
                writeln!(out, "kafka listening on {addr}")?;
            }
            if let Some(addr) = broker.http_addr() {
                writeln!(out, "http listening on {addr}")?;
            }
            out.flush()?;
        }
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        broker.shutdown().await;
        Ok(())
    })
}
