//! `strom topics`: create, list, describe, delete and alter topics.

use std::io::Write;

use anyhow::Context as _;
use clap::Subcommand;
use strom_client::{Admin, NewTopic};

use super::{Output, parse_pair};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1 to 249 of [a-zA-Z0-9._-].
        name: String,
        /// Number of partitions [default: the broker's default_partitions]
        #[arg(long, value_name = "N")]
        partitions: Option<i32>,
        /// Replicas per partition, at most the live brokers [default: the cluster's
        /// default_replication_factor: three, or every live broker when fewer]
        #[arg(long, value_name = "R")]
        replication_factor: Option<i32>,
        /// A topic setting by its Kafka name, e.g. `retention.ms=86400000` (repeatable)
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_pair)]
        configs: Vec<(String, String)>,
    },
    /// List topics with their partition counts.
    List,
    /// Show a topic's partitions (start and end offsets, size) and settings.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Change topic settings.
    Alter {
        /// Topic name.
        name: String,
        /// Set a setting (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_pair)]
        configs: Vec<(String, String)>,
        /// Return a setting to the broker's default (repeatable).
        #[arg(long, value_name = "KEY")]
        reset: Vec<String>,
    },
}

pub async fn run(admin: &Admin, cmd: TopicsCommand, output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TopicsCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut t = NewTopic::new(&name);
            if let Some(p) = partitions {
                t = t.partitions(p);
            }
            if let Some(r) = replication_factor {
                t = t.replication_factor(r);
            }
            for (k, v) in configs {
                t = t.config(k, v);
            }
            let n = admin
                .create_topic(t)
                .await
                .with_context(|| format!("creating topic {name}"))?;
            match output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"topic": name, "partitions": n, "created": true})
                )?,
                Output::Text => writeln!(out, "created topic {name} with {n} partitions")?,
            }
        }
        TopicsCommand::List => {
            let topics = admin.list_topics().await.context("listing topics")?;
            if output == Output::Text {
                writeln!(
                    out,
                    "{:<40} {:>10} {:>8}",
                    "TOPIC", "PARTITIONS", "INTERNAL"
                )?;
            }
            for t in topics {
                match output {
                    Output::Json => writeln!(
                        out,
                        "{}",
                        serde_json::json!({"topic": t.name, "partitions": t.partitions.len(), "internal": t.internal})
                    )?,
                    Output::Text => writeln!(
                        out,
                        "{:<40} {:>10} {:>8}",
                        t.name,
                        t.partitions.len(),
                        if t.internal { "yes" } else { "" }
                    )?,
                }
            }
        }
        TopicsCommand::Describe { name } => {
            let t = admin
                .describe_topics(&[&name])
                .await
                .with_context(|| format!("describing topic {name}"))?
                .into_iter()
                .next()
                .with_context(|| format!("no description of topic {name} in the answer"))?;
            let configs = admin
                .describe_configs(&name)
                .await
                .with_context(|| format!("reading the settings of topic {name}"))?;
            match output {
                Output::Json => {
                    for p in &t.partitions {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({
                                "topic": t.name, "partition": p.partition, "leader": p.leader,
                                "leader_epoch": p.leader_epoch, "replicas": p.replicas, "isr": p.isr,
                                "offline": p.leader < 0, "under_replicated": p.isr.len() < p.replicas.len(),
                                "start_offset": p.log_start_offset, "end_offset": p.log_end_offset,
                                "size_bytes": p.size_bytes,
                            })
                        )?;
                    }
                    for c in &configs {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({"topic": t.name, "config": c.name, "value": c.value, "source": format!("{:?}", c.source).to_lowercase()})
                        )?;
                    }
                }
                Output::Text => {
                    writeln!(out, "topic {}  partitions {}", t.name, t.partitions.len())?;
                    writeln!(
                        out,
                        "{:>9} {:>6} {:>6} {:<12} {:<12} {:>14} {:>14} {:>12} {:>12}",
                        "PARTITION",
                        "LEADER",
                        "EPOCH",
                        "REPLICAS",
                        "ISR",
                        "START",
                        "END",
                        "RECORDS",
                        "SIZE"
                    )?;
                    let ids =
                        |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
                    for p in &t.partitions {
                        // Offsets come from the broker asked; one that does not hold the
                        // partition (in a cluster) says -1.
                        let held = p.log_start_offset >= 0;
                        let dash = || "-".to_string();
                        // A partition without a leader is offline; one with fewer in-sync
                        // replicas than replicas is under-replicated (marked after the ISR).
                        let leader = if p.leader < 0 {
                            "none".to_string()
                        } else {
                            p.leader.to_string()
                        };
                        let isr = if p.isr.len() < p.replicas.len() {
                            format!("{} (under)", ids(&p.isr))
                        } else {
                            ids(&p.isr)
                        };
                        writeln!(
                            out,
                            "{:>9} {:>6} {:>6} {:<12} {:<12} {:>14} {:>14} {:>12} {:>12}",
                            p.partition,
                            leader,
                            p.leader_epoch,
                            ids(&p.replicas),
                            isr,
                            if held {
                                p.log_start_offset.to_string()
                            } else {
                                dash()
                            },
                            if held {
                                p.log_end_offset.to_string()
                            } else {
                                dash()
                            },
                            if held {
                                (p.log_end_offset - p.log_start_offset).to_string()
                            } else {
                                dash()
                            },
                            if held {
                                human_bytes(p.size_bytes)
                            } else {
                                dash()
                            },
                        )?;
                    }
                    writeln!(out, "{:<24} {:<22} SOURCE", "SETTING", "VALUE")?;
                    for c in &configs {
                        writeln!(
                            out,
                            "{:<24} {:<22} {}",
                            c.name,
                            c.value,
                            format!("{:?}", c.source).to_lowercase()
                        )?;
                    }
                }
            }
        }
        TopicsCommand::Delete { name } => {
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("deleting topic {name}"))?;
            match output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"topic": name, "deleted": true})
                )?,
                Output::Text => writeln!(out, "deleted topic {name}")?,
            }
        }
        TopicsCommand::Alter {
            name,
            configs,
            reset,
        } => {
            if configs.is_empty() && reset.is_empty() {
                anyhow::bail!("nothing to change: give --config KEY=VALUE or --reset KEY");
            }
            let set: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let reset: Vec<&str> = reset.iter().map(String::as_str).collect();
            admin
                .alter_configs(&name, &set, &reset)
                .await
                .with_context(|| format!("changing the settings of topic {name}"))?;
            match output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"topic": name, "altered": true})
                )?,
                Output::Text => writeln!(out, "changed the settings of topic {name}")?,
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Bytes for humans: 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
