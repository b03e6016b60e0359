//! What a scrape of `/metrics` shows (docs/http.md lists every metric): gathered when asked from
//! the core's state and the data path's counters into a registry of its own, then encoded in
//! the OpenMetrics text format by `prometheus-client`.
//!
//! Series are kept in the order they are gathered (topics, then partitions in index order;
//! groups by name), so a scrape reads like a table. With `metrics_per_partition = false` the
//! partition series lose their `partition` label and are summed per topic.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Registry, Unit};

use super::series::{Histograms, Labels, Series, Value, shared};
use super::{Http, now_ms};
use crate::core::Core;
use crate::core::queues::GroupView;
use crate::core::topics::{Topic, TopicId};
use crate::stats::ApiTable;

/// The broker's topics by name, looked up once per scrape: series are labelled with the names
/// the registry holds (no copies), and partitions are found without its lock.
struct TopicNames(HashMap<Arc<str>, Arc<Topic>>);

impl TopicNames {
    fn of(core: &Core) -> Self {
        TopicNames(
            core.topics
                .all()
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Value {
        self.0
            .get_key_value(name)
            .map_or_else(|| shared(name), |(n, _)| Value::Shared(n.clone()))
    }

    fn topic(&self, name: &str) -> Option<&Arc<Topic>> {
        self.0.get(name)
    }
}

/// Batch timestamps of committed offsets found by earlier scrapes: (topic id, partition,
/// offset) -> the first timestamp of the batch holding it. A scrape keeps the entries it used,
/// so the map holds one per lagging group-partition, and a group whose offset does not move
/// costs no read.
pub(super) type LagTimes = HashMap<(TopicId, i32, i64), i64>;

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The whole scrape, as text. Queue groups are described on the runtime (their state sits
/// behind async locks); everything else, walking every partition and group and encoding tens of
/// thousands of lines, runs on the blocking pool so a scrape never holds a runtime worker that
/// produce and fetch requests need.
pub(super) async fn render(http: Http) -> String {
    let queues = super::queue_views(&http.core).await;
    let rendered = tokio::task::spawn_blocking(move || render_now(&http, &queues)).await;
    rendered.unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering the metrics failed");
        "# EOF\n".to_string()
    })
}

fn render_now(http: &Http, queues: &[GroupView]) -> String {
    // The last scrape's size, so the text is written without growing (and copying) its buffer.
    let mut out = String::with_capacity(http.metrics_size.load(Relaxed) + 4096);
    let mut root = Registry::default();
    process(&mut root);
    let registry = root.sub_registry_with_prefix("strom");
    broker(registry, http);
    requests(registry, http);
    partitions(registry, http);
    consumer_groups(registry, http);
    queue_groups(registry, http, queues);
    if let Err(e) = encode(&mut out, &root) {
        tracing::error!(error = %e, "encoding the metrics failed");
        out.clear();
        let _ = writeln!(out, "# EOF");
    }
    http.metrics_size.store(out.len(), Relaxed);
    out
}

/// Build, uptime, connections, in-flight bytes, bytes produced and fetched, fsyncs, storage
/// health.
fn broker(registry: &mut Registry, http: &Http) {
    let stats = &http.core.stats;
    let mut build = Series::<i64>::gauge();
    build.add(Labels::of("version", env!("CARGO_PKG_VERSION")), 1);
    registry.register("build_info", "The broker's version", build);
    let mut uptime = Series::<f64>::gauge();
    uptime.add(Labels::none(), http.started.elapsed().as_secs_f64());
    registry.register_with_unit(
        "uptime",
        "Time since the broker started serving",
        Unit::Seconds,
        uptime,
    );

    let mut open = Series::<i64>::gauge();
    let mut rejected = Series::<u64>::counter();
    for listener in ["native", "kafka"] {
        let c = stats.connections(listener);
        let labels = Labels::of("listener", listener);
        open.add(labels.clone(), c.open.load(Relaxed));
        rejected.add(labels, c.rejected.load(Relaxed));
    }
    registry.register("connections", "Open client connections", open);
    registry.register(
        "connections_rejected",
        "Connections closed at once because max_connections were open",
        rejected,
    );
    let mut limit = Series::<i64>::gauge();
    limit.add(Labels::none(), count(http.net.max_connections));
    registry.register(
        "connections_limit",
        "The bound on open connections (max_connections)",
        limit,
    );
    let mut inflight = Series::<i64>::gauge();
    inflight.add(Labels::none(), count(http.net.inflight_bytes()));
    registry.register_with_unit(
        "inflight_request",
        "Request bytes whose responses are not written yet, over all connections",
        Unit::Bytes,
        inflight,
    );
    let mut inflight_limit = Series::<i64>::gauge();
    inflight_limit.add(Labels::none(), count(http.net.max_inflight));
    registry.register_with_unit(
        "inflight_request_limit",
        "The bound on request bytes in flight (max_inflight_bytes_total)",
        Unit::Bytes,
        inflight_limit,
    );

    let mut produced = Series::<u64>::counter();
    produced.add(Labels::none(), stats.produce_bytes.load(Relaxed));
    registry.register_with_unit(
        "produce",
        "Record batch bytes received in produce requests",
        Unit::Bytes,
        produced,
    );
    let mut fetched = Series::<u64>::counter();
    fetched.add(Labels::none(), stats.fetch_bytes.load(Relaxed));
    registry.register_with_unit(
        "fetch",
        "Record batch bytes sent in fetch and queue fetch responses",
        Unit::Bytes,
        fetched,
    );
    registry.register_with_unit(
        "fsync_duration",
        "Partition writers' fsyncs (each covers every append before it)",
        Unit::Seconds,
        Histograms(vec![(Labels::none(), stats.fsync.snapshot())]),
    );
    let mut storage_failed = Series::<i64>::gauge();
    storage_failed.add(Labels::none(), i64::from(stats.storage.is_failed()));
    registry.register(
        "storage_failed",
        "1 while the disk fails writes and no probe write has succeeded since (the broker then leads nothing and leaves its ISRs)",
        storage_failed,
    );
    let mut storage_failures = Series::<u64>::counter();
    storage_failures.add(Labels::none(), stats.storage.failures());
    registry.register(
        "storage_write_failures",
        "Partition writes the disk refused (full, or an I/O error)",
        storage_failures,
    );
}

/// How a listener names an API key.
type ApiName = fn(i32) -> String;

/// Requests, errors and latency per listener and API.
fn requests(registry: &mut Registry, http: &Http) {
    let stats = &http.core.stats;
    let mut requests = Series::<u64>::counter();
    let mut errors = Series::<u64>::counter();
    let mut latency = Histograms::default();
    let tables: [(&str, &ApiTable, ApiName); 2] = [
        ("native", &stats.native, native_api_name),
        ("kafka", &stats.kafka, kafka_api_name),
    ];
    for (listener, table, name) in tables {
        for (key, api) in table.called() {
            let labels = Labels::of("listener", listener).and("api", shared(&name(key)));
            requests.add(labels.clone(), api.requests.load(Relaxed));
            for (code, n) in api.errors() {
                errors.add(labels.and("code", code), n);
            }
            latency.0.push((labels, api.latency.snapshot()));
        }
    }
    registry.register("requests", "Requests answered, per API", requests);
    registry.register(
        "request_errors",
        "Error codes in answers, per API and code (one per failed partition, topic or group)",
        errors,
    );
    registry.register_with_unit(
        "request_duration",
        "Time from a request read whole to its answer ready to write (long polls included)",
        Unit::Seconds,
        latency,
    );
}

/// The name of a native API key (`unknown` for answers to requests that did not decode).
fn native_api_name(key: i32) -> String {
    match strom_protocol::messages::ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => "unknown".to_string(),
    }
}

/// The name of a Kafka API key (`unknown` for keys the listener does not serve).
fn kafka_api_name(key: i32) -> String {
    i16::try_from(key)
        .ok()
        .and_then(|k| kafka_protocol::messages::ApiKey::try_from(k).ok())
        .map_or_else(|| "unknown".to_string(), |k| format!("{k:?}"))
}

/// Offsets, sizes, segments, appends, writer queues and idempotent producers per partition.
fn partitions(registry: &mut Registry, http: &Http) {
    let per_partition = http.core.config.metrics_per_partition;
    let mut records = Series::<u64>::counter();
    let mut bytes = Series::<u64>::counter();
    let mut start = Series::<i64>::gauge();
    let mut end = Series::<i64>::gauge();
    let mut size = Series::<i64>::gauge();
    let mut segments = Series::<i64>::gauge();
    let mut queued = Series::<i64>::gauge();
    let mut producers = Series::<i64>::gauge();
    let mut hw = Series::<i64>::gauge();
    let mut under = Series::<i64>::gauge();
    let mut lag = Series::<i64>::gauge();
    let mut under_total = 0usize;
    let mut topics = http.core.topics.all();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for t in &topics {
        let topic = Labels::of("topic", &t.name);
        for p in &t.partitions {
            let labels = if per_partition {
                topic.and("partition", p.index)
            } else {
                topic.clone()
            };
            let r = p.reader();
            let s = p.stats();
            records.add(labels.clone(), s.records.load(Relaxed));
            bytes.add(labels.clone(), s.bytes.load(Relaxed));
            start.add(labels.clone(), r.start_offset());
            end.add(labels.clone(), r.end_offset());
            size.add(
                labels.clone(),
                i64::try_from(r.size_bytes()).unwrap_or(i64::MAX),
            );
            segments.add(labels.clone(), count(r.segment_count()));
            queued.add(labels.clone(), count(p.queued()));
            hw.add(labels.clone(), p.high_watermark());
            if let Some(standing) = p.replica().standing() {
                let short = standing.in_sync < standing.replicas;
                under_total += usize::from(short);
                under.add(labels.clone(), i64::from(short));
                for (follower, behind) in standing.lags {
                    let follower = i32::try_from(follower).unwrap_or(i32::MAX);
                    lag.add(labels.and("follower", follower), behind);
                }
            }
            producers.add(
                labels,
                i64::try_from(s.producers.load(Relaxed)).unwrap_or(i64::MAX),
            );
        }
    }
    registry.register(
        "partition_records_appended",
        "Records appended to the partition since the broker started",
        records,
    );
    registry.register_with_unit(
        "partition_appended",
        "Record batch bytes appended to the partition since the broker started",
        Unit::Bytes,
        bytes,
    );
    registry.register(
        "partition_log_start_offset",
        "First offset still stored in the partition",
        start,
    );
    registry.register(
        "partition_log_end_offset",
        "Offset the partition's next record gets",
        end,
    );
    registry.register_with_unit(
        "partition_size",
        "Bytes of the partition's segment files",
        Unit::Bytes,
        size,
    );
    registry.register(
        "partition_segments",
        "Segments of the partition's log",
        segments,
    );
    registry.register(
        "partition_writer_queue_depth",
        "Append and control requests queued for the partition's writer",
        queued,
    );
    registry.register(
        "partition_idempotent_producers",
        "Idempotent producers whose sequence state the partition keeps",
        producers,
    );
    registry.register(
        "partition_high_watermark",
        "Offset below which the partition's records are replicated to every in-sync replica (what consumers read)",
        hw,
    );
    registry.register(
        "partition_under_replicated",
        "1 when the partition, led here, has fewer in-sync replicas than replicas",
        under,
    );
    registry.register(
        "replica_follower_lag",
        "Offsets a follower's log end is behind the leader's, for partitions led here (per follower)",
        lag,
    );
    let mut total = Series::<i64>::gauge();
    total.add(Labels::none(), count(under_total));
    registry.register(
        "under_replicated_partitions",
        "Partitions led here with fewer in-sync replicas than replicas",
        total,
    );
}

/// Committed offsets, lag in records and in seconds, members and state per consumer group.
fn consumer_groups(registry: &mut Registry, http: &Http) {
    let core = &http.core;
    let now = now_ms();
    let names = TopicNames::of(core);
    let mut seen = match http.lag_times.lock() {
        Ok(mut t) => std::mem::take(&mut *t),
        Err(_) => LagTimes::new(),
    };
    let mut times = LagTimes::with_capacity(seen.len());
    let mut committed = Series::<i64>::gauge();
    let mut lag = Series::<i64>::gauge();
    let mut lag_seconds = Series::<f64>::gauge();
    let mut members = Series::<i64>::gauge();
    let mut state = Series::<i64>::gauge();
    for view in super::consumer_group_views(core) {
        let group = Labels::of("group", shared(&view.name));
        members.add(group.clone(), count(view.members.len()));
        state.add(group.and("state", view.state.name()), 1);
        for o in &view.offsets {
            let labels = group
                .and("topic", names.get(&o.topic))
                .and("partition", o.partition);
            committed.add(labels.clone(), o.committed);
            if o.lag() >= 0 {
                lag.add(labels.clone(), o.lag());
                let age = if o.lag() == 0 {
                    Some(0.0)
                } else {
                    names.topic(&o.topic).and_then(|t| {
                        let key = (t.id, o.partition, o.committed);
                        let ts = match times.get(&key).copied().or_else(|| seen.remove(&key)) {
                            Some(ts) => ts,
                            None => {
                                t.partition(o.partition)?
                                    .reader()
                                    .batch_header(o.committed)
                                    .ok()??
                                    .base_timestamp
                            }
                        };
                        times.insert(key, ts);
                        Some((now - ts).max(0) as f64 / 1000.0)
                    })
                };
                if let Some(age) = age {
                    lag_seconds.add(labels, age);
                }
            }
        }
    }
    if let Ok(mut t) = http.lag_times.lock() {
        *t = times;
    }
    registry.register(
        "consumer_group_committed_offset",
        "The group's committed offset for the partition",
        committed,
    );
    registry.register(
        "consumer_group_lag",
        "Records after the group's committed offset: the partition's end offset minus it",
        lag,
    );
    registry.register_with_unit(
        "consumer_group_lag",
        "Age of the oldest record after the committed offset, by its batch's first timestamp (0 when none waits)",
        Unit::Seconds,
        lag_seconds,
    );
    registry.register(
        "consumer_group_members",
        "Members of the consumer group",
        members,
    );
    registry.register(
        "consumer_group_state",
        "1 for the consumer group's state",
        state,
    );
}

/// Record counts by state, acks, dead letters, redeliveries and members per queue group.
fn queue_groups(registry: &mut Registry, http: &Http, views: &[GroupView]) {
    let names = TopicNames::of(&http.core);
    let mut records = Series::<i64>::gauge();
    let mut acked = Series::<u64>::counter();
    let mut dead_lettered = Series::<u64>::counter();
    let mut redelivered = Series::<u64>::counter();
    let mut oldest = Series::<f64>::gauge();
    let mut members = Series::<i64>::gauge();
    let mut member_in_flight = Series::<i64>::gauge();
    for view in views {
        let group = Labels::of("group", shared(&view.group));
        members.add(group.clone(), count(view.members.len()));
        for (member, _, held) in &view.members {
            member_in_flight.add(
                group.and("member", shared(member)),
                i64::try_from(*held).unwrap_or(i64::MAX),
            );
        }
        for p in &view.partitions {
            let labels = group
                .and("topic", names.get(&p.topic))
                .and("partition", p.partition);
            for (name, n) in [
                ("ready", p.counts.available),
                ("delayed", p.counts.delayed),
                ("in_flight", p.counts.in_flight),
                ("dead_lettering", p.counts.dead_lettering),
            ] {
                records.add(
                    labels.and("state", name),
                    i64::try_from(n).unwrap_or(i64::MAX),
                );
            }
            acked.add(labels.clone(), p.finished.acked);
            dead_lettered.add(labels.clone(), p.finished.dead_lettered);
            redelivered.add(labels.clone(), p.redelivered);
            if let Some(ms) = p.oldest_unacked_ms {
                oldest.add(labels, ms as f64 / 1000.0);
            }
        }
    }
    registry.register(
        "queue_group_records",
        "Records of the queue-partition by state: ready (including never handed out), delayed (backoff or delivery time), in_flight, dead_lettering",
        records,
    );
    registry.register(
        "queue_group_acked",
        "Records the queue group acked in the partition",
        acked,
    );
    registry.register(
        "queue_group_dead_lettered",
        "Records the queue group dead-lettered from the partition",
        dead_lettered,
    );
    registry.register(
        "queue_group_redelivered",
        "Records handed out again (attempt 2 or later) since the broker started",
        redelivered,
    );
    registry.register_with_unit(
        "queue_group_oldest_unacked_age",
        "Age of the oldest unfinished record of the queue-partition, by its timestamp",
        Unit::Seconds,
        oldest,
    );
    registry.register("queue_group_members", "Members of the queue group", members);
    registry.register(
        "queue_group_member_in_flight",
        "Records the member holds (leased, not yet answered)",
        member_in_flight,
    );
}

/// What `/proc/self` says of the broker's process, under the names Prometheus's own clients use
/// (`process_*`). Linux only; a file that cannot be read leaves its metric out.
fn process(registry: &mut Registry) {
    // utime and stime, in clock ticks (USER_HZ, 100 on Linux), fields 14 and 15 of stat; the
    // command name (field 2) may hold spaces, so count after its closing parenthesis.
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
    {
        let mut cpu = Series::<f64>::counter();
        cpu.add(Labels::none(), ticks as f64 / 100.0);
        registry.register_with_unit(
            "process_cpu",
            "User and system CPU time the process used",
            Unit::Seconds,
            cpu,
        );
    }
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<i64>().ok()
        })
    {
        let mut rss = Series::<i64>::gauge();
        rss.add(Labels::none(), kib.saturating_mul(1024));
        registry.register_with_unit(
            "process_resident_memory",
            "Resident set size of the process (anonymous and file-backed pages)",
            Unit::Bytes,
            rss,
        );
    }
    if let Some(n) = open_fds() {
        let mut fds = Series::<i64>::gauge();
        fds.add(Labels::none(), count(n));
        registry.register(
            "process_open_fds",
            "File descriptors the process holds open",
            fds,
        );
    }
}

/// File descriptors the process holds open. Since Linux 6.2 the size of `/proc/self/fd` is that
/// count, a `stat` away; listing the directory (older kernels say 0) makes the kernel build an
/// entry per descriptor, which with thousands of segment files open costs more than the rest of
/// a scrape's process metrics together.
fn open_fds() -> Option<usize> {
    match std::fs::metadata("/proc/self/fd") {
        Ok(m) if m.len() > 0 => usize::try_from(m.len()).ok(),
        _ => std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count),
    }
}
