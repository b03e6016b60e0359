//! The native protocol's queue-group APIs (`proto/queue.proto`): conversions between the wire
//! messages and the queue coordinator's types (`crate::core::queues`).

use std::sync::Arc;

use strom_protocol::ErrorCode;
use strom_protocol::messages::*;

use crate::core::admin::OffsetQuery;
use crate::core::queues::dlq::MAX_ERROR_BYTES;
use crate::core::queues::redrive;
use crate::core::queues::state::Outcome;
use crate::core::queues::{AckEntry, Fetched, Join, QueueFetch};
use crate::core::{Core, Failure};

fn split(f: Failure) -> (i32, Option<String>) {
    let (code, msg) = f;
    let msg = (code != ErrorCode::None).then_some(msg);
    (code.into(), msg)
}

/// Most acknowledgements in one request.
const MAX_ACKS: usize = 100_000;

fn acks(list: Vec<QueueAck>) -> Result<Vec<AckEntry>, Failure> {
    if list.len() > MAX_ACKS {
        return Err((
            ErrorCode::InvalidRequest,
            format!(
                "{} acknowledgements in one request; at most {MAX_ACKS}",
                list.len()
            ),
        ));
    }
    list.into_iter()
        .map(|a| {
            let error = a.error.as_deref().map(|e| {
                let mut end = e.len().min(MAX_ERROR_BYTES);
                while !e.is_char_boundary(end) {
                    end -= 1;
                }
                Arc::<str>::from(&e[..end])
            });
            let outcome = match a.kind() {
                QueueAckKind::Ack => Outcome::Ack,
                QueueAckKind::Nack => Outcome::Nack {
                    delay_ms: a
                        .delay_ms
                        .map(|d| d.min(crate::core::queues::settings::MAX_DELAY_MS)),
                    error,
                },
                QueueAckKind::Reject => Outcome::Reject { error },
                QueueAckKind::Extend => Outcome::Extend { ms: a.extend_ms },
                QueueAckKind::Release => Outcome::Release,
            };
            Ok(AckEntry {
                topic: a.topic,
                partition: a.partition,
                first: a.first_offset,
                last: a.last_offset,
                attempt: a.attempt,
                outcome,
            })
        })
        .collect()
}

fn ack_results(results: Vec<Failure>) -> Vec<QueueAckResult> {
    results
        .into_iter()
        .map(|f| {
            let (error_code, error_message) = split(f);
            QueueAckResult {
                error_code,
                error_message,
            }
        })
        .collect()
}

pub(super) async fn join(core: &Core, req: QueueJoinRequest) -> QueueJoinResponse {
    let join = Join {
        group: req.group_id,
        member: req.member_id,
        topics: req.topics,
        session_timeout_ms: req.session_timeout_ms,
        settings: req.settings.into_iter().collect(),
    };
    match core.queue_join(join).await {
        Ok(settings) => QueueJoinResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            settings,
        },
        Err(f) => {
            let (error_code, error_message) = split(f);
            QueueJoinResponse {
                error_code,
                error_message,
                settings: Default::default(),
            }
        }
    }
}

pub(super) async fn fetch(core: &Core, req: QueueFetchRequest) -> QueueFetchResponse {
    let entries = match acks(req.acks) {
        Ok(a) => a,
        Err(f) => {
            let (error_code, error_message) = split(f);
            return QueueFetchResponse {
                error_code,
                error_message,
                ..Default::default()
            };
        }
    };
    let fetched: Fetched = core
        .queue_fetch(QueueFetch {
            group: req.group_id,
            member: req.member_id,
            max_records: req.max_records,
            max_bytes: req.max_bytes,
            max_wait_ms: req.max_wait_ms,
            acks: entries,
        })
        .await;
    let (error_code, error_message) =
        split(fetched.error.unwrap_or((ErrorCode::None, String::new())));
    QueueFetchResponse {
        error_code,
        error_message,
        ack_results: ack_results(fetched.acks),
        partitions: fetched
            .chunks
            .into_iter()
            .map(|c| QueueFetchPartition {
                topic: c.topic.to_string(),
                partition: c.partition,
                acquired: c
                    .runs
                    .iter()
                    .map(|r| QueueAcquired {
                        first_offset: r.first,
                        last_offset: r.last,
                        attempt: r.attempt,
                    })
                    .collect(),
                lease_until_ms: c.lease_until,
                records: c.records,
            })
            .collect(),
    }
}

pub(super) async fn ack(core: &Core, req: QueueAckRequest) -> QueueAckResponse {
    let result = match acks(req.acks) {
        Ok(entries) => {
            core.queue_ack(&req.group_id, &req.member_id, &entries)
                .await
        }
        Err(f) => Err(f),
    };
    match result {
        Ok(results) => QueueAckResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            results: ack_results(results),
        },
        Err(f) => {
            let (error_code, error_message) = split(f);
            QueueAckResponse {
                error_code,
                error_message,
                results: Vec::new(),
            }
        }
    }
}

pub(super) async fn leave(core: &Core, req: QueueLeaveRequest) -> QueueLeaveResponse {
    let (error_code, error_message) = split(
        core.queue_leave(&req.group_id, &req.member_id)
            .await
            .err()
            .unwrap_or((ErrorCode::None, String::new())),
    );
    QueueLeaveResponse {
        error_code,
        error_message,
    }
}

pub(super) async fn describe(
    core: &Core,
    req: DescribeQueueGroupsRequest,
) -> DescribeQueueGroupsResponse {
    let names = req.groups.clone();
    let groups = core
        .queue_describe(&req.groups)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(v) => DescribedQueueGroup {
                group_id: v.group,
                error_code: ErrorCode::None.into(),
                error_message: None,
                settings: v.settings,
                members: v
                    .members
                    .into_iter()
                    .map(|(member_id, topics, in_flight)| QueueMember {
                        member_id,
                        topics,
                        in_flight,
                    })
                    .collect(),
                partitions: v
                    .partitions
                    .into_iter()
                    .map(|p| QueuePartitionState {
                        topic: p.topic,
                        partition: p.partition,
                        start_offset: p.start,
                        next_offset: p.next,
                        log_end_offset: p.log_end,
                        ready: p.counts.available,
                        delayed: p.counts.delayed,
                        in_flight: p.counts.in_flight,
                        dead_lettering: p.counts.dead_lettering,
                        oldest_unacked_ms: p.oldest_unacked_ms.unwrap_or(-1),
                        acked: p.finished.acked,
                        dead_lettered: p.finished.dead_lettered,
                    })
                    .collect(),
            },
            Err(f) => {
                let (error_code, error_message) = split(f);
                DescribedQueueGroup {
                    group_id: names.get(i).cloned().unwrap_or_default(),
                    error_code,
                    error_message,
                    ..Default::default()
                }
            }
        })
        .collect();
    DescribeQueueGroupsResponse { groups }
}

pub(super) async fn reset(core: &Core, req: ResetQueueGroupRequest) -> ResetQueueGroupResponse {
    use reset_queue_group_request::To;
    let to = match req.to {
        Some(To::Earliest(_)) => OffsetQuery::Earliest,
        Some(To::Latest(_)) => OffsetQuery::Latest,
        Some(To::TimestampMs(ms)) => OffsetQuery::Time(ms),
        None => {
            return ResetQueueGroupResponse {
                error_code: ErrorCode::InvalidRequest.into(),
                error_message: Some("say where to: earliest, latest or a timestamp".into()),
                partitions: Vec::new(),
            };
        }
    };
    match core.queue_reset(&req.group_id, &req.topic, to).await {
        Ok(moved) => ResetQueueGroupResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            partitions: moved
                .into_iter()
                .map(|(partition, offset)| QueueResetPartition { partition, offset })
                .collect(),
        },
        Err(f) => {
            let (error_code, error_message) = split(f);
            ResetQueueGroupResponse {
                error_code,
                error_message,
                partitions: Vec::new(),
            }
        }
    }
}

fn redrive_status(t: &redrive::Task) -> RedriveStatus {
    RedriveStatus {
        dlq_topic: t.dlq.clone(),
        target_topic: t.target.clone(),
        rate: t.rate,
        moved: t.moved,
        skipped: t.skipped,
        remaining: t.remaining(),
        done: t.done(),
    }
}

pub(super) async fn redrive(core: &Arc<Core>, req: RedriveRequest) -> RedriveResponse {
    let start = redrive::Start {
        dlq: req.dlq_topic.clone(),
        target: req.target_topic,
        rate: req.rate,
        from: req.from_offset,
        to: req.to_offset,
    };
    match core.redrive_start(start).await {
        Ok(t) => RedriveResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            status: Some(redrive_status(&t)),
        },
        Err(f) => {
            let (error_code, error_message) = split(f);
            RedriveResponse {
                error_code,
                error_message,
                status: core
                    .redrive_status(&req.dlq_topic)
                    .await
                    .as_ref()
                    .map(redrive_status),
            }
        }
    }
}

pub(super) async fn describe_redrive(
    core: &Core,
    req: DescribeRedriveRequest,
) -> DescribeRedriveResponse {
    match core.redrive_describe(&req.dlq_topic).await {
        Ok(Some(t)) => DescribeRedriveResponse {
            error_code: ErrorCode::None.into(),
            error_message: None,
            status: Some(redrive_status(&t)),
        },
        Err(f) => {
            let (error_code, error_message) = split(f);
            DescribeRedriveResponse {
                error_code,
                error_message,
                status: None,
            }
        }
        Ok(None) => DescribeRedriveResponse {
            error_code: ErrorCode::GroupIdNotFound.into(),
            error_message: Some(format!("no redrive of {} was started", req.dlq_topic)),
            status: None,
        },
    }
}
