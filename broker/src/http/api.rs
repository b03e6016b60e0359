//! The JSON API under `/api/` (docs/http.md has every route and field): what the console shows,
//! for scripts too. Field names follow the CLI's `--output json` where they overlap.
//!
//! Every answer is bounded (pages of records: `super::records`).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use strom_protocol::topic::is_internal_topic;

use super::error::{Answer, ApiError, text};
use super::history::{self, INTERVAL};
use super::{Http, batch_timestamp, now_ms};
use crate::core::admin::ConfigSource;
use crate::core::queues::redrive::{Start, Task};

pub(super) fn routes() -> Router<Http> {
    Router::new()
        .route("/overview", get(overview))
        .route("/topics", get(topics))
        .route("/topics/{topic}", get(topic))
        .route("/topics/{topic}/records", get(super::records::records))
        .route("/groups", get(groups))
        .route("/groups/{group}", get(group))
        .route("/queues", get(queues))
        .route("/queues/{group}", get(queue))
        .route("/redrives/{dlq}", get(redrive_status).post(redrive_start))
        .route("/history", get(history))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API route") })
}

/// `GET /api/overview`: the broker at a glance.
async fn overview(State(http): State<Http>) -> Answer {
    let core = &http.core;
    let topics = core.topics.all();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let size: u64 = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.reader().size_bytes())
        .sum();
    let (records, bytes) = history::appended(core);
    let queue_groups = core.queues.all().len();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": http.started.elapsed().as_secs_f64(),
        "time_ms": now_ms(),
        // Every registered broker of the cluster (this one alone when single).
        "brokers": core.brokers().into_iter().map(|b| json!({
            "id": b.id,
            "native": b.endpoints.native,
            "kafka": b.endpoints.kafka,
            "http": b.endpoints.http,
        })).collect::<Vec<_>>(),
        "broker": core.broker_id(),
        "controller": core.controller_id(),
        "topics": topics.len(),
        "partitions": partitions,
        "consumer_groups": core.groups.list().len(),
        "queue_groups": queue_groups,
        "records_appended_total": records,
        "bytes_appended_total": bytes,
        "size_bytes": size,
        "connections": http.net.open_connections(),
    })))
}

/// `GET /api/topics`: every topic with its totals, by name.
async fn topics(State(http): State<Http>) -> Answer {
    let mut all = http.core.topics.all();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let list: Vec<Value> = all
        .iter()
        .map(|t| {
            let (mut start, mut end, mut size, mut records, mut bytes) = (0i64, 0i64, 0u64, 0, 0);
            for p in &t.partitions {
                let r = p.reader();
                start += r.start_offset();
                end += r.end_offset();
                size += r.size_bytes();
                records += p.stats().records.load(std::sync::atomic::Ordering::Relaxed);
                bytes += p.stats().bytes.load(std::sync::atomic::Ordering::Relaxed);
            }
            json!({
                "topic": &*t.name,
                "partitions": t.count,
                "internal": is_internal_topic(&t.name),
                "records": end - start,
                "start_offset": start,
                "end_offset": end,
                "size_bytes": size,
                "records_appended_total": records,
                "bytes_appended_total": bytes,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/topics/{topic}`: partitions and settings.
async fn topic(State(http): State<Http>, name: Result<Path<String>, PathRejection>) -> Answer {
    let name = text(name)?;
    let core = &http.core;
    let t = core
        .topics
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no topic {name}")))?;
    let leaders: Vec<i32> = core
        .topic_view(&name)
        .map(|v| v.partitions.iter().map(|p| p.leader).collect())
        .unwrap_or_default();
    let partitions: Vec<Value> = t
        .partitions
        .iter()
        .map(|p| {
            let r = p.reader();
            let s = p.stats();
            let leader = usize::try_from(p.index)
                .ok()
                .and_then(|i| leaders.get(i).copied())
                .unwrap_or(-1);
            json!({
                "partition": p.index,
                "leader": leader,
                "start_offset": r.start_offset(),
                "end_offset": r.end_offset(),
                "size_bytes": r.size_bytes(),
                "segments": r.segment_count(),
                "records_appended_total": s.records.load(std::sync::atomic::Ordering::Relaxed),
                "bytes_appended_total": s.bytes.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let configs: Vec<Value> = core
        .describe_configs(&name, &[])?
        .into_iter()
        .map(|c| {
            let source = match c.source {
                ConfigSource::Topic => "topic",
                ConfigSource::Broker => "broker",
                ConfigSource::Default => "default",
            };
            json!({ "config": c.name, "value": c.value, "source": source })
        })
        .collect();
    Ok(Json(json!({
        "topic": &*t.name,
        "internal": is_internal_topic(&t.name),
        "partitions": partitions,
        "configs": configs,
    })))
}

/// `GET /api/groups`: consumer groups with their state, members and total lag.
async fn groups(State(http): State<Http>) -> Answer {
    let core = &http.core;
    let list: Vec<Value> = super::consumer_group_views(core)
        .iter()
        .map(|v| {
            json!({
                "group": v.name,
                "state": v.state.name(),
                "members": v.members.len(),
                "lag": super::total_lag(v),
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/groups/{group}`: members, assignments and lag per partition.
async fn group(State(http): State<Http>, name: Result<Path<String>, PathRejection>) -> Answer {
    let name = text(name)?;
    let core = &http.core;
    let v = core
        .groups
        .describe(&core.topics, &name)
        .ok_or_else(|| ApiError::not_found(format!("no consumer group {name}")))?;
    let now = now_ms();
    let members: Vec<Value> = v
        .members
        .iter()
        .map(|m| {
            let assignment: Vec<Value> = m
                .assigned
                .iter()
                .map(|(t, p)| json!({ "topic": t, "partition": p }))
                .collect();
            json!({
                "member": m.id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "assignment": assignment,
            })
        })
        .collect();
    let offsets: Vec<Value> = v
        .offsets
        .iter()
        .map(|o| {
            let owner = v
                .members
                .iter()
                .find(|m| m.assigned.contains(&(o.topic.clone(), o.partition)))
                .map(|m| m.id.clone());
            let lag_seconds = if o.lag() > 0 {
                batch_timestamp(core, &o.topic, o.partition, o.committed)
                    .map(|ts| (now - ts).max(0) as f64 / 1000.0)
            } else {
                None
            };
            json!({
                "topic": o.topic,
                "partition": o.partition,
                "committed": o.committed,
                "log_end": o.log_end,
                "lag": o.lag(),
                "lag_seconds": lag_seconds,
                "owner": owner,
            })
        })
        .collect();
    Ok(Json(json!({
        "group": v.name,
        "state": v.state.name(),
        "epoch": v.epoch,
        "protocol_type": v.protocol_type,
        "assignor": v.assignor,
        "members": members,
        "offsets": offsets,
    })))
}

/// A queue group's dead-letter topic for `topic`.
fn dead_letter_topic(settings: &BTreeMap<String, String>, topic: &str) -> String {
    match settings.get("dead.letter.topic") {
        Some(t) if !t.is_empty() => t.clone(),
        _ => format!("{topic}.dlq"),
    }
}

/// The topics a queue group takes records from.
fn queue_topics(v: &crate::core::queues::GroupView) -> BTreeSet<String> {
    v.partitions.iter().map(|p| p.topic.clone()).collect()
}

/// `GET /api/queues`: queue groups with their counts summed over partitions.
async fn queues(State(http): State<Http>) -> Answer {
    let views = super::queue_views(&http.core).await;
    let list: Vec<Value> = views
        .iter()
        .map(|v| {
            let sum = |f: fn(&crate::core::queues::PartitionView) -> u64| -> u64 {
                v.partitions.iter().map(f).sum()
            };
            let topics = queue_topics(v);
            let dlqs: BTreeSet<String> = topics
                .iter()
                .map(|t| dead_letter_topic(&v.settings, t))
                .collect();
            json!({
                "group": v.group,
                "members": v.members.len(),
                "topics": topics,
                "ready": sum(|p| p.counts.available),
                "delayed": sum(|p| p.counts.delayed),
                "in_flight": sum(|p| p.counts.in_flight),
                "dead_lettering": sum(|p| p.counts.dead_lettering),
                "acked": sum(|p| p.finished.acked),
                "dead_lettered": sum(|p| p.finished.dead_lettered),
                "redelivered": sum(|p| p.redelivered),
                "oldest_unacked_ms": v.partitions.iter().filter_map(|p| p.oldest_unacked_ms).max(),
                "dead_letter_topics": dlqs,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// A redrive task as the API shows it.
fn redrive_json(t: &Task) -> Value {
    json!({
        "dead_letter_topic": t.dlq,
        "target": t.target,
        "rate": t.rate,
        "moved": t.moved,
        "skipped": t.skipped,
        "remaining": t.remaining(),
        "done": t.done(),
    })
}

/// `GET /api/queues/{group}`: the group as `strom queue describe --output json` shows it, with
/// its dead-letter topics and their redrives.
async fn queue(State(http): State<Http>, name: Result<Path<String>, PathRejection>) -> Answer {
    let name = text(name)?;
    let core = &http.core;
    let v = core
        .queue_describe(std::slice::from_ref(&name))
        .await
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no queue group {name}")))??;
    let members: Vec<Value> = v
        .members
        .iter()
        .map(|(member, topics, held)| {
            json!({ "member": member, "topics": topics, "in_flight": held })
        })
        .collect();
    let partitions: Vec<Value> = v
        .partitions
        .iter()
        .map(|p| {
            json!({
                "topic": p.topic, "partition": p.partition,
                "ready": p.counts.available, "delayed": p.counts.delayed,
                "in_flight": p.counts.in_flight, "dead_lettering": p.counts.dead_lettering,
                "acked": p.finished.acked, "dead_lettered": p.finished.dead_lettered,
                "redelivered": p.redelivered,
                "start_offset": p.start, "next_offset": p.next, "log_end_offset": p.log_end,
                "oldest_unacked_ms": p.oldest_unacked_ms,
            })
        })
        .collect();
    let mut dlqs = Vec::new();
    for topic in queue_topics(&v) {
        let dlq = dead_letter_topic(&v.settings, &topic);
        let records = core.topics.get(&dlq).map_or(0, |t| {
            t.partitions
                .iter()
                .map(|p| p.reader().end_offset() - p.reader().start_offset())
                .sum::<i64>()
        });
        let redrive = core.redrive_status(&dlq).await.map(|t| redrive_json(&t));
        dlqs.push(json!({
            "topic": topic,
            "dead_letter_topic": dlq,
            "records": records,
            "redrive": redrive,
        }));
    }
    Ok(Json(json!({
        "group": v.group,
        "settings": v.settings,
        "members": members,
        "partitions": partitions,
        "dead_letter_topics": dlqs,
    })))
}

/// `GET /api/redrives/{dlq}`: the progress of the dead-letter topic's last redrive.
async fn redrive_status(
    State(http): State<Http>,
    dlq: Result<Path<String>, PathRejection>,
) -> Answer {
    let dlq = text(dlq)?;
    let task = http
        .core
        .redrive_status(&dlq)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no redrive of {dlq} has run")))?;
    Ok(Json(redrive_json(&task)))
}

/// The body of `POST /api/redrives/{dlq}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    #[serde(default)]
    target: String,
    #[serde(default)]
    rate: u32,
}

/// `POST /api/redrives/{dlq}`: starts a redrive of the dead-letter topic (as `strom queue
/// redrive` does).
async fn redrive_start(
    State(http): State<Http>,
    dlq: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let dlq = text(dlq)?;
    let b: RedriveBody = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad body: {e}")))?
    };
    let task = http
        .core
        .redrive_start(Start {
            dlq,
            target: b.target,
            rate: b.rate,
            from: None,
            to: None,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(redrive_json(&task))))
}

/// `GET /api/history`: the samples behind the console's plots.
async fn history(State(http): State<Http>) -> Answer {
    Ok(Json(json!({
        "interval_ms": INTERVAL.as_millis() as u64,
        "points": http.history.points(),
    })))
}
