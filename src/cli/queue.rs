//! `strom queue`: describe queue groups (per partition the records ready, delayed, in flight and
//! being dead-lettered, the offsets and the oldest unfinished record's age; members with what
//! they hold; the group's settings), reset a queue group's partitions of a topic (replay or
//! skip), and redrive a dead-letter topic back to its origin topics.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use strom_client::{
    Admin, Error, QueueGroupDescription, QueueResetTo, RedriveStatus, protocol::ErrorCode,
};

use super::Output;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Show queue groups (all of them when none is named): settings, members with the records
    /// they hold, and per partition the records ready, delayed, in flight and being
    /// dead-lettered, the start/next/end offsets and the age of the oldest unfinished record.
    Describe {
        /// Queue group ids [default: every queue group]
        groups: Vec<String>,
    },
    /// Move a queue group's partitions of a topic (stop its workers first): records from the
    /// new start are handed out as new, those before it count as done.
    Reset(ResetArgs),
    /// Move the records of a dead-letter topic back to the topics they came from (or --to), at
    /// a bounded rate. The broker runs the move (a restart resumes it, without duplicates);
    /// this command starts it and follows it to its end. Copies are new records: queue groups
    /// hand them out with fresh attempts.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The dead-letter topic, e.g. `orders.dlq`.
    pub dlq_topic: String,
    /// Send every record to this topic instead of its origin (its `strom.dlq.topic` header).
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Records per second at most.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true)))]
pub struct ResetArgs {
    /// Queue group id.
    pub group: String,
    /// Topic whose partitions to reset (all of them).
    #[arg(long)]
    pub topic: String,
    /// To the oldest stored record: hand everything out again.
    #[arg(long, group = "to")]
    pub to_earliest: bool,
    /// To the end: skip everything stored.
    #[arg(long, group = "to")]
    pub to_latest: bool,
    /// To the first record at or after this time (RFC 3339, or ms since the Unix epoch).
    #[arg(long, group = "to", value_name = "TIME")]
    pub to_time: Option<String>,
}

/// Parses a time given as RFC 3339 (e.g. `2026-11-22T10:00:00Z`) or as ms since the epoch.
pub fn parse_time_ms(flag: &str, text: &str) -> anyhow::Result<i64> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .with_context(|| format!("{flag} {text:?} is too large"));
    }
    let ts = humantime::parse_rfc3339_weak(t).with_context(|| {
        format!("{flag} {text:?} is neither an RFC 3339 time nor ms since the epoch")
    })?;
    Ok(ts
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// An age for people: `850ms`, `12.3s`, `4m05s`, `2h07m`, `3d04h`.
fn age(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if ms < 86_400_000 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

fn describe_json(g: &QueueGroupDescription) -> serde_json::Value {
    serde_json::json!({
        "group": g.group_id,
        "settings": g.settings,
        "members": g.members.iter().map(|m| serde_json::json!({
            "member": m.member_id, "topics": m.topics, "in_flight": m.in_flight,
        })).collect::<Vec<_>>(),
        "partitions": g.partitions.iter().map(|p| serde_json::json!({
            "topic": p.topic, "partition": p.partition,
            "ready": p.ready, "delayed": p.delayed, "in_flight": p.in_flight,
            "dead_lettering": p.dead_lettering,
            "acked": p.acked, "dead_lettered": p.dead_lettered,
            "start_offset": p.start_offset, "next_offset": p.next_offset,
            "log_end_offset": p.log_end_offset,
            "oldest_unacked_ms": p.oldest_unacked_ms,
        })).collect::<Vec<_>>(),
    })
}

fn describe_text(out: &mut impl Write, g: &QueueGroupDescription) -> std::io::Result<()> {
    writeln!(
        out,
        "queue group {}  members {}",
        g.group_id,
        g.members.len()
    )?;
    let settings: Vec<String> = g
        .settings
        .iter()
        .map(|(k, v)| {
            if k == "dead.letter.topic" && v.is_empty() {
                format!("{k}=<topic>.dlq")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    writeln!(out, "  settings: {}", settings.join(" "))?;
    for m in &g.members {
        writeln!(
            out,
            "  member {} ({}): {} in flight",
            m.member_id,
            m.topics.join(","),
            m.in_flight
        )?;
    }
    writeln!(
        out,
        "{:<30} {:>9} {:>10} {:>10} {:>10} {:>11} {:>10} {:>13} {:>12} {:>12} {:>12}  OLDEST-UNACKED",
        "TOPIC",
        "PARTITION",
        "READY",
        "DELAYED",
        "IN-FLIGHT",
        "DLQ-PENDING",
        "ACKED",
        "DEAD-LETTERED",
        "START",
        "NEXT",
        "LOG-END"
    )?;
    for p in &g.partitions {
        writeln!(
            out,
            "{:<30} {:>9} {:>10} {:>10} {:>10} {:>11} {:>10} {:>13} {:>12} {:>12} {:>12}  {}",
            p.topic,
            p.partition,
            p.ready,
            p.delayed,
            p.in_flight,
            p.dead_lettering,
            p.acked,
            p.dead_lettered,
            p.start_offset,
            p.next_offset,
            p.log_end_offset,
            p.oldest_unacked_ms.map_or_else(|| "-".to_string(), age)
        )?;
    }
    Ok(())
}

/// How long `strom queue reset` keeps retrying while records are being dead-lettered (BUSY).
const BUSY_RETRY_FOR: Duration = Duration::from_secs(10);

pub async fn run(admin: &Admin, cmd: QueueCommand, output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        QueueCommand::Describe { groups } => {
            let names: Vec<&str> = groups.iter().map(String::as_str).collect();
            let what = match names.as_slice() {
                [] => "describing queue groups".to_string(),
                [one] => format!("describing queue group {one}"),
                many => format!("describing queue groups {}", many.join(", ")),
            };
            let described = admin.describe_queue_groups(&names).await.context(what)?;
            for (i, g) in described.iter().enumerate() {
                match output {
                    Output::Json => writeln!(out, "{}", describe_json(g))?,
                    Output::Text => {
                        if i > 0 {
                            writeln!(out)?;
                        }
                        describe_text(&mut out, g)?;
                    }
                }
            }
        }
        QueueCommand::Reset(args) => {
            let to = if args.to_earliest {
                QueueResetTo::Earliest
            } else if args.to_latest {
                QueueResetTo::Latest
            } else if let Some(t) = &args.to_time {
                QueueResetTo::Time(parse_time_ms("--to-time", t)?)
            } else {
                bail!("give one of --to-earliest, --to-latest, --to-time TIME");
            };
            let deadline = tokio::time::Instant::now() + BUSY_RETRY_FOR;
            let moved = loop {
                match admin.reset_queue_group(&args.group, &args.topic, to).await {
                    // Records of the topic are being written to the dead-letter topic: that
                    // takes moments.
                    Err(Error::Broker {
                        code: ErrorCode::Busy,
                        ..
                    }) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    result => {
                        break result
                            .with_context(|| format!("resetting queue group {}", args.group))?;
                    }
                }
            };
            for (partition, offset) in moved {
                match output {
                    Output::Json => writeln!(
                        out,
                        "{}",
                        serde_json::json!({"group": args.group, "topic": args.topic, "partition": partition, "offset": offset})
                    )?,
                    Output::Text => {
                        writeln!(out, "{} {}/{partition} -> {offset}", args.group, args.topic)?
                    }
                }
            }
        }
        QueueCommand::Redrive(args) => {
            let started = admin
                .redrive(&args.dlq_topic, args.to.as_deref(), args.rate)
                .await
                .with_context(|| format!("starting a redrive of {}", args.dlq_topic))?;
            let progress = std::io::stderr().is_terminal();
            let mut status = started;
            while !status.done {
                if progress {
                    eprint!(
                        "\r{}: {} moved, {} to go   ",
                        args.dlq_topic, status.moved, status.remaining
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                status = admin
                    .redrive_status(&args.dlq_topic)
                    .await
                    .with_context(|| format!("following the redrive of {}", args.dlq_topic))?
                    .with_context(|| format!("the redrive of {} is gone", args.dlq_topic))?;
            }
            if progress {
                eprintln!();
            }
            redrive_print(&mut out, &status, output)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn redrive_print(out: &mut impl Write, s: &RedriveStatus, output: Output) -> std::io::Result<()> {
    match output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::json!({
                "dlq_topic": s.dlq_topic,
                "to": if s.target_topic.is_empty() { None } else { Some(&s.target_topic) },
                "rate": s.rate,
                "moved": s.moved,
                "skipped": s.skipped,
                "done": s.done,
            })
        ),
        Output::Text => writeln!(
            out,
            "{}: {} records moved back to {}{}",
            s.dlq_topic,
            s.moved,
            if s.target_topic.is_empty() {
                "their origin topics"
            } else {
                &s.target_topic
            },
            if s.skipped > 0 {
                format!(", {} skipped (no origin)", s.skipped)
            } else {
                String::new()
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_epoch_ms() {
        assert_eq!(
            parse_time_ms("--to-time", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time_ms("--to-time", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        let e = parse_time_ms("--to-time", "yesterday").unwrap_err();
        assert!(e.to_string().contains("--to-time"), "{e}");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_345), "12.3s");
        assert_eq!(age(245_000), "4m05s");
        assert_eq!(age(7_620_000), "2h07m");
        assert_eq!(age(273_600_000), "3d04h");
    }
}
