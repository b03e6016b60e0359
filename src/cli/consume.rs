//! `strom consume`: read a topic's records and print them (template or JSON), from an offset, the
//! beginning, the end or a point in time; stop at the end, after N records or after a quiet
//! period, or follow forever.
//!
//! With `--group` it is a group member, a long-lived worker as with `kafka-console-consumer
//! --group` and `kcat -G`: it follows until SIGINT/SIGTERM, `--max-messages` or `--timeout-ms`,
//! then commits what it printed and leaves the group.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use strom_client::{Admin, ClientConfig, Consumer, ConsumerConfig, OffsetSpec, TopicPartition};

use super::Output;
use super::format::{Template, View, render_json};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition [default: all]
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    /// Start at this offset (of every partition read).
    #[arg(long, value_name = "N", conflicts_with_all = ["from_beginning", "from_time"])]
    pub offset: Option<i64>,
    /// Start at the oldest stored record.
    #[arg(long, conflicts_with = "from_time")]
    pub from_beginning: bool,
    /// Start at the first record at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub from_time: Option<String>,
    /// Consume as a member of this consumer group (committed offsets; see `strom groups`).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Stop when no record arrives for this long.
    #[arg(long, value_name = "T")]
    pub timeout_ms: Option<u64>,
    /// Print each record with this template: %t topic, %p partition, %o offset, %k key,
    /// %v value, %T timestamp, %h headers [default: %v]
    #[arg(long, value_name = "FMT", default_value = "%v")]
    pub format: String,
    /// Keep waiting for new records at the end instead of stopping there. Always so with
    /// --group: a group member runs until Ctrl-C/SIGTERM, --max-messages or --timeout-ms.
    #[arg(long)]
    pub follow: bool,
}

pub async fn run(bootstrap: &str, args: ConsumeArgs, output: Output) -> anyhow::Result<()> {
    let template = Template::parse(&args.format)?;
    let admin = Admin::connect(ClientConfig::new(bootstrap)).await?;
    let topic = admin
        .describe_topics(&[&args.topic])
        .await
        .with_context(|| format!("looking up topic {}", args.topic))?
        .into_iter()
        .next()
        .with_context(|| format!("no topic {}", args.topic))?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if topic.partitions.iter().any(|d| d.partition == p) => vec![p],
        Some(p) => bail!("topic {} has no partition {p}", args.topic),
        None => topic.partitions.iter().map(|d| d.partition).collect(),
    };
    if let Some(group) = &args.group {
        if args.partition.is_some() || args.offset.is_some() || args.from_time.is_some() {
            bail!(
                "--group takes its partitions from the group and starts at its committed offsets; \
                 to move them use `strom groups reset-offsets` (with --partition, --offset or \
                 --from-time, leave out --group)"
            );
        }
        return run_group(bootstrap, group, &args, &template, output).await;
    }
    // Where each partition ends now: without --follow, reading stops there.
    let ends: BTreeMap<i32, i64> = topic
        .partitions
        .iter()
        .filter(|d| partitions.contains(&d.partition))
        .map(|d| (d.partition, d.log_end_offset))
        .collect();
    let assigned: Vec<(&str, i32)> = partitions
        .iter()
        .map(|&p| (args.topic.as_str(), p))
        .collect();
    let mut config = ConsumerConfig::new(bootstrap);
    config.max_poll_records = 10_000;
    let mut consumer = Consumer::connect(config).await?;
    consumer.assign(&assigned);
    let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
    if let Some(offset) = args.offset {
        if offset < 0 {
            bail!("--offset must not be negative; got {offset}");
        }
        for &(t, p) in &assigned {
            consumer.seek(TopicPartition::new(t, p), offset)?;
            starts.insert(p, offset);
        }
    } else if let Some(t) = &args.from_time {
        let ts = humantime::parse_rfc3339_weak(t)
            .with_context(|| format!("--from-time {t:?} is not an RFC 3339 time"))?;
        let ms = ts
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let queries: Vec<(TopicPartition, OffsetSpec)> = assigned
            .iter()
            .map(|&(t, p)| (TopicPartition::new(t, p), OffsetSpec::Timestamp(ms)))
            .collect();
        for l in admin
            .list_offsets(&queries)
            .await
            .context("finding offsets by time")?
        {
            let p = l.topic_partition.partition;
            let offset = if l.offset < 0 { ends[&p] } else { l.offset };
            consumer.seek(l.topic_partition.clone(), offset)?;
            starts.insert(p, offset);
        }
    } else if args.from_beginning {
        consumer.seek_to_beginning(&assigned).await?;
    } else {
        consumer.seek_to_end(&assigned).await?;
    }
    for &(t, p) in &assigned {
        if let Some(pos) = consumer.position(TopicPartition::new(t, p)) {
            starts.insert(p, pos);
        }
    }
    let mut remaining: BTreeMap<i32, i64> = ends
        .iter()
        .filter(|(p, end)| starts.get(p).is_some_and(|s| s < end))
        .map(|(p, end)| (*p, *end))
        .collect();
    let mut printer = Printer::new(&template, output, args.max_messages);
    let mut last_record = Instant::now();
    loop {
        if !args.follow && remaining.is_empty() {
            break;
        }
        if printer.full() {
            break;
        }
        if let Some(t) = args.timeout_ms
            && last_record.elapsed() >= Duration::from_millis(t)
        {
            break;
        }
        let records = consumer
            .poll(Duration::from_millis(200))
            .await
            .context("reading records")?;
        if !records.is_empty() {
            last_record = Instant::now();
        }
        if printer.print(&records)? {
            return Ok(());
        }
        // A partition is done once the position passed its end (compacted logs may have no
        // record at end - 1).
        remaining.retain(|p, end| {
            consumer
                .position(TopicPartition::new(args.topic.as_str(), *p))
                .is_none_or(|pos| pos < *end)
        });
    }
    Ok(())
}

/// `--group`: a member of the group; starts at the committed offsets (or, for partitions without
/// one, the beginning with --from-beginning and the end otherwise) and follows, as a group member
/// is a long-lived worker: it does not stop at the end of its partitions (it may own none now and
/// others after the next rebalance) but on SIGINT/SIGTERM, `--max-messages` or `--timeout-ms`.
/// Then it commits what it printed and leaves the group, so its partitions move to the other
/// members at once.
async fn run_group(
    bootstrap: &str,
    group: &str,
    args: &ConsumeArgs,
    template: &Template,
    output: Output,
) -> anyhow::Result<()> {
    // Installed before joining, so a signal at any point from here on ends in a clean leave.
    let stop = stop_on_signal()?;
    let mut config = ConsumerConfig::new(bootstrap);
    config.max_poll_records = 10_000;
    config.group.auto_offset_reset = if args.from_beginning {
        strom_client::AutoOffsetReset::Earliest
    } else {
        strom_client::AutoOffsetReset::Latest
    };
    let mut consumer = Consumer::connect(config).await?;
    consumer
        .subscribe(group, &[args.topic.as_str()])
        .with_context(|| format!("joining group {group}"))?;
    let mut printer = Printer::new(template, output, args.max_messages);
    let mut last_record = Instant::now();
    let result: anyhow::Result<()> = async {
        // The poll timeout bounds how long a signal waits to be noticed. Polls are not raced
        // against the signal: a poll dropped half-way could lose records it had taken.
        while !stop.load(Ordering::Relaxed) && !printer.full() {
            if let Some(t) = args.timeout_ms
                && last_record.elapsed() >= Duration::from_millis(t)
            {
                break;
            }
            let records = consumer
                .poll(Duration::from_millis(200))
                .await
                .context("reading records")?;
            if !records.is_empty() {
                last_record = Instant::now();
            }
            let before = printer.printed;
            let closed = printer.print(&records)?;
            // Records polled past --max-messages were not printed: move those partitions back
            // to the first of them, so the commit on leaving covers only what was printed and
            // the group's next member starts there.
            let printed = usize::try_from(printer.printed - before).unwrap_or(usize::MAX);
            let mut rewound = BTreeSet::new();
            for r in records.iter().skip(printed) {
                let tp = r.topic_partition();
                if rewound.insert(tp.clone()) {
                    consumer
                        .seek(tp, r.offset())
                        .context("rewinding to the first record not printed")?;
                }
            }
            if closed {
                break;
            }
        }
        Ok(())
    }
    .await;
    // Commit what was printed and leave at once, so the partitions move immediately.
    let closed = consumer.close().await.context("leaving the group");
    result.and(closed)
}

/// A flag set by the first SIGINT or SIGTERM, so the caller can finish cleanly; a second one
/// exits at once (status 130), for when the clean finish hangs (e.g. the broker is gone).
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        flag.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("strom: interrupted again; exiting without leaving the group");
        std::process::exit(130);
    });
    Ok(stop)
}

/// Renders records (template or JSON) into one buffer per poll and writes it to stdout.
struct Printer<'a> {
    template: &'a Template,
    output: Output,
    needs_headers: bool,
    max: Option<u64>,
    printed: u64,
    buf: Vec<u8>,
}

impl<'a> Printer<'a> {
    fn new(template: &'a Template, output: Output, max: Option<u64>) -> Self {
        Self {
            template,
            output,
            needs_headers: output == Output::Json || template.uses_headers(),
            max,
            printed: 0,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    /// `--max-messages` reached.
    fn full(&self) -> bool {
        self.max.is_some_and(|m| self.printed >= m)
    }

    /// Prints `records` (up to `--max-messages`). `Ok(true)` when stdout was closed (`| head`):
    /// the reader is done, which is not a failure.
    fn print(&mut self, records: &[strom_client::ConsumerRecord]) -> anyhow::Result<bool> {
        self.buf.clear();
        for r in records {
            if self.full() {
                break;
            }
            let headers: Vec<(&str, Option<&[u8]>)> = if self.needs_headers {
                r.headers().map(|h| (h.key, h.value)).collect()
            } else {
                Vec::new()
            };
            let view = View {
                topic: r.topic(),
                partition: r.partition(),
                offset: r.offset(),
                timestamp: r.timestamp(),
                key: r.key().map(|b| &b[..]),
                value: r.value().map(|b| &b[..]),
                headers: &headers,
            };
            match self.output {
                Output::Json => render_json(&view, &mut self.buf),
                Output::Text => self.template.render(&view, &mut self.buf),
            }
            self.printed += 1;
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(&self.buf).and_then(|()| out.flush()) {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
            Err(e) => Err(e).context("writing to standard output"),
        }
    }
}
