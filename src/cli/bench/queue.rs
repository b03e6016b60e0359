//! `strom bench queue`: W queue-group workers take the records of a topic and ack each one on
//! its own (the client sends the answers with the next fetch, consecutive offsets as one range,
//! as a real worker using `QueueConsumer` would); throughput, and the ack latency: from the
//! `ack` calls of a poll's records (timed once per poll) to the response of the request that
//! carried them (the moment the acks are durable), counted for every record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use strom_client::{QueueConfig, QueueConsumer};

use super::measure::{Goal, Ticker, new_histogram};
use super::summary::{LatencyKind, Summary};
use super::{
    Env, SendArgs, TargetArgs, TopicArgs, UsageStart, WithCeilingArgs, describe, fill_topic, merge,
    parse_seconds, size_bytes, stored_records,
};

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Concurrent workers, each a queue-group member with its own connection.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// The queue group [default: a new one per run, so every record is handed out]
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Records to ack [default: every record in the topic; with --embedded or --fill, the
    /// records written first (1000000 unless given)]
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    records: Option<u64>,
    /// Write the records first, untimed (implied by --embedded), with the producer settings.
    #[arg(long)]
    fill: bool,
    /// Most records one fetch takes.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_poll_records: u32,
    /// The group's max.in.flight.per.member (it bounds what one fetch can take).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_in_flight: u32,
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

impl QueueArgs {
    pub(super) fn target(&self) -> &TargetArgs {
        &self.target
    }
}

struct WorkerResult {
    acked: u64,
    bytes: u64,
    latency: Histogram<u64>,
}

/// `workers` members of queue group `group` over `topic`, each on its own connection (the
/// group's `max.in.flight.per.member` and `start` set in case the join creates it).
pub(super) async fn join_members(
    env: &Env,
    group: &str,
    topic: &str,
    workers: u32,
    max_in_flight: u32,
    start: &str,
) -> anyhow::Result<Vec<QueueConsumer>> {
    let mut members = Vec::new();
    for _ in 0..workers {
        let mut config = QueueConfig::new(&env.bootstrap, group, &[topic])
            .setting("max.in.flight.per.member", max_in_flight.to_string())
            .setting("start", start);
        config.max_wait = Duration::from_millis(500);
        members.push(
            QueueConsumer::join(config)
                .await
                .with_context(|| format!("joining queue group {group}"))?,
        );
    }
    Ok(members)
}

/// One worker: fetch, ack every record, until the shared count reaches the target.
async fn work(
    mut member: QueueConsumer,
    max_poll: u32,
    acked: Arc<AtomicU64>,
    target: u64,
    idle_timeout: Duration,
) -> anyhow::Result<WorkerResult> {
    let mut latency = new_histogram()?;
    let mut bytes = 0u64;
    let mut mine = 0u64;
    // When the acks now queued were made, and how many (a poll's records are acked together).
    let mut queued_at: Vec<(Instant, u64)> = Vec::new();
    let mut last_record = Instant::now();
    while acked.load(Ordering::Relaxed) < target {
        let records = member.poll(max_poll).await.context("queue fetch")?;
        let now = Instant::now();
        // The request that just returned carried the acks queued before it.
        for (t, n) in queued_at.drain(..) {
            let ns = now.saturating_duration_since(t).as_nanos() as u64;
            latency.saturating_record_n(ns.max(1), n);
        }
        if records.is_empty() {
            if now.duration_since(last_record) > idle_timeout {
                bail!("no record for {:.0} s", idle_timeout.as_secs_f64());
            }
            continue;
        }
        last_record = now;
        for r in &records {
            bytes += r.value().map_or(0, |v| v.len() as u64);
            member.ack(r);
        }
        queued_at.push((Instant::now(), records.len() as u64));
        mine += records.len() as u64;
        acked.fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    member.flush().await.context("sending the last acks")?;
    let now = Instant::now();
    for (t, n) in queued_at.drain(..) {
        let ns = now.saturating_duration_since(t).as_nanos() as u64;
        latency.saturating_record_n(ns.max(1), n);
    }
    let refused = member.take_refused();
    if !refused.is_empty() {
        bail!(
            "{} ack ranges refused: {:?}",
            refused.len(),
            refused.first()
        );
    }
    member.close().await.context("leaving the group")?;
    Ok(WorkerResult {
        acked: mine,
        bytes,
        latency,
    })
}

pub(super) async fn queue(env: &Env, a: QueueArgs) -> anyhow::Result<Summary> {
    let admin = env.admin().await?;
    let ceiling = env.ceiling(&a.ceiling).await?;
    let name = a.topic.topic.as_str();
    let fill = a.fill || env.embedded();
    let mut notes = Vec::new();
    if fill {
        notes.push(fill_topic(env, &admin, &a.topic, &a.send, a.records).await?);
    }
    let topic = describe(&admin, name).await?.with_context(|| {
        format!("no topic {name}: write it first with `strom bench produce`, or pass --fill")
    })?;
    let available = stored_records(&topic);
    let target = a.records.unwrap_or(available).min(available);
    if target == 0 {
        bail!("topic {name} is empty: write it first with `strom bench produce`, or pass --fill");
    }
    let group = a.group.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("strom-bench-queue-{now}")
    });
    let members = join_members(env, &group, name, a.workers, a.max_in_flight, "earliest").await?;
    let acked = Arc::new(AtomicU64::new(0));
    let ticker = Ticker::start(
        "queue",
        acked.clone(),
        Goal::Records(target),
        env.broker_pid,
    );
    let usage = UsageStart::now(env);
    let start = Instant::now();
    let tasks: Vec<_> = members
        .into_iter()
        .map(|m| {
            tokio::spawn(work(
                m,
                a.max_poll_records,
                acked.clone(),
                target,
                a.idle_timeout,
            ))
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.context("a worker panicked")??);
    }
    let elapsed = start.elapsed();
    let timeline = ticker.finish().await;
    let resources = usage.end(env, &timeline);
    let mut latency = new_histogram()?;
    for r in &results {
        merge(&mut latency, &r.latency)?;
    }
    let records: u64 = results.iter().map(|r| r.acked).sum();
    let per_worker: Vec<u64> = results.iter().map(|r| r.acked).collect();
    notes.push(format!(
        "every record acked on its own; the acks of one fetch travel with the next (ack latency: ack call → that request's response, when the ack is durable); records per worker {per_worker:?}"
    ));
    let mut settings = vec![
        env.settings(),
        ("topic", json!(name)),
        ("partitions", json!(topic.partitions.len())),
        ("workers", json!(a.workers)),
        ("group", json!(group)),
        ("records", json!(target)),
        ("max_poll_records", json!(a.max_poll_records)),
        ("max_in_flight", json!(a.max_in_flight)),
    ];
    if fill {
        settings.push(("fill_record_size", json!(a.send.record_size)));
    }
    Ok(Summary {
        command: "queue",
        settings,
        records,
        payload_bytes: results.iter().map(|r| r.bytes).sum(),
        elapsed,
        latency: Some((LatencyKind::AckToDurable, latency)),
        disk_bytes: Some(size_bytes(&topic)),
        disk_bytes_added: None,
        resources,
        ceiling,
        timeline,
        extra: Vec::new(),
        notes,
    })
}
