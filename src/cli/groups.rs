//! `strom groups`: list, describe (members, assignments, committed offsets and lag), reset the
//! offsets of an empty group (replay), and delete groups.

use std::io::Write;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use strom_client::{Admin, ResetTo, TopicPartition};

use super::Output;

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups.
    List,
    /// Show a group's state, members, assignments, and per partition the committed offset, the
    /// log end and the lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move an empty group's committed offsets (stop its consumers first), to replay or skip.
    ResetOffsets(ResetArgs),
    /// Delete an empty group and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true)))]
pub struct ResetArgs {
    /// Group id.
    pub group: String,
    /// Topic whose partitions to reset (all of them).
    #[arg(long)]
    pub topic: String,
    /// To the oldest stored record.
    #[arg(long, group = "to")]
    pub to_earliest: bool,
    /// To the end: skip everything stored.
    #[arg(long, group = "to")]
    pub to_latest: bool,
    /// To this offset (of every partition).
    #[arg(long, group = "to", value_name = "N")]
    pub to_offset: Option<i64>,
    /// To the first record at or after this time (RFC 3339).
    #[arg(long, group = "to", value_name = "RFC3339")]
    pub to_time: Option<String>,
}

pub async fn run(admin: &Admin, cmd: GroupsCommand, output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        GroupsCommand::List => {
            let groups = admin.list_groups().await.context("listing groups")?;
            if output == Output::Text {
                writeln!(out, "{:<40} {:<12} {:>7}", "GROUP", "STATE", "MEMBERS")?;
            }
            for g in groups {
                match output {
                    Output::Json => writeln!(
                        out,
                        "{}",
                        serde_json::json!({"group": g.group_id, "state": g.state.as_str(), "members": g.members})
                    )?,
                    Output::Text => writeln!(
                        out,
                        "{:<40} {:<12} {:>7}",
                        g.group_id,
                        g.state.as_str(),
                        g.members
                    )?,
                }
            }
        }
        GroupsCommand::Describe { group } => {
            let g = admin
                .describe_group(&group)
                .await
                .with_context(|| format!("describing group {group}"))?;
            let owner_of = |tp: &TopicPartition| {
                g.members
                    .iter()
                    .find(|m| m.assignment.contains(tp))
                    .map(|m| m.member_id.as_str())
            };
            match output {
                Output::Json => {
                    for o in &g.offsets {
                        let tp = &o.topic_partition;
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({
                                "group": g.group_id, "state": g.state.as_str(),
                                "topic": &*tp.topic, "partition": tp.partition,
                                "committed": o.committed_offset, "log_end": o.log_end_offset,
                                "lag": o.lag, "owner": owner_of(tp),
                            })
                        )?;
                    }
                }
                Output::Text => {
                    writeln!(
                        out,
                        "group {}  state {}  epoch {}  assignor {}  members {}",
                        g.group_id,
                        g.state.as_str(),
                        g.epoch,
                        g.assignor,
                        g.members.len()
                    )?;
                    for m in &g.members {
                        let parts: Vec<String> = m
                            .assignment
                            .iter()
                            .map(|tp| format!("{}/{}", tp.topic, tp.partition))
                            .collect();
                        writeln!(
                            out,
                            "  member {} (epoch {}): {}",
                            m.member_id,
                            m.member_epoch,
                            if parts.is_empty() {
                                "-".to_string()
                            } else {
                                parts.join(" ")
                            }
                        )?;
                    }
                    writeln!(
                        out,
                        "{:<30} {:>9} {:>14} {:>14} {:>10}  OWNER",
                        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
                    )?;
                    for o in &g.offsets {
                        let tp = &o.topic_partition;
                        writeln!(
                            out,
                            "{:<30} {:>9} {:>14} {:>14} {:>10}  {}",
                            tp.topic,
                            tp.partition,
                            o.committed_offset,
                            o.log_end_offset,
                            o.lag,
                            owner_of(tp).unwrap_or("-")
                        )?;
                    }
                }
            }
        }
        GroupsCommand::ResetOffsets(args) => {
            let to = if args.to_earliest {
                ResetTo::Earliest
            } else if args.to_latest {
                ResetTo::Latest
            } else if let Some(o) = args.to_offset {
                if o < 0 {
                    bail!("--to-offset must not be negative; got {o}");
                }
                ResetTo::Offset(o)
            } else if let Some(t) = &args.to_time {
                let ts = humantime::parse_rfc3339_weak(t)
                    .with_context(|| format!("--to-time {t:?} is not an RFC 3339 time"))?;
                let ms = ts
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                ResetTo::Timestamp(ms)
            } else {
                bail!("give one of --to-earliest, --to-latest, --to-offset N, --to-time T");
            };
            let moved = admin
                .reset_offsets(&args.group, &args.topic, to)
                .await
                .with_context(|| format!("resetting the offsets of group {}", args.group))?;
            for (tp, offset) in moved {
                match output {
                    Output::Json => writeln!(
                        out,
                        "{}",
                        serde_json::json!({"group": args.group, "topic": &*tp.topic, "partition": tp.partition, "offset": offset})
                    )?,
                    Output::Text => writeln!(
                        out,
                        "{} {}/{} -> {offset}",
                        args.group, tp.topic, tp.partition
                    )?,
                }
            }
        }
        GroupsCommand::Delete { group } => {
            admin
                .delete_group(&group)
                .await
                .with_context(|| format!("deleting group {group}"))?;
            match output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"group": group, "deleted": true})
                )?,
                Output::Text => writeln!(out, "deleted group {group}")?,
            }
        }
    }
    out.flush()?;
    Ok(())
}
