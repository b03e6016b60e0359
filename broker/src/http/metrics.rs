//! What a scrape of `/metrics` shows (docs/http.md lists every metric): gathered when asked from
//! the core's state into a registry of its own, then encoded in the OpenMetrics text format.

use std::fmt::Write as _;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::core::Core;

type Labels = Vec<(&'static str, String)>;

fn gauges() -> Family<Labels, Gauge> {
    Family::default()
}

fn counters() -> Family<Labels, Counter> {
    Family::default()
}

fn tp(topic: &str, partition: i32) -> Labels {
    vec![
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ]
}

fn with(mut labels: Labels, more: &[(&'static str, &str)]) -> Labels {
    labels.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    labels
}

/// The whole scrape, as text.
pub(super) async fn render(core: &Core, started: Instant) -> String {
    let mut root = Registry::default();
    process(&mut root);
    let registry = root.sub_registry_with_prefix("strom");

    let build = gauges();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
        .set(1);
    registry.register("build_info", "The broker's version", build);
    let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    uptime.set(started.elapsed().as_secs_f64());
    registry.register_with_unit(
        "uptime",
        "Time since the HTTP listener started",
        Unit::Seconds,
        uptime,
    );

    // Partitions.
    let log_start = gauges();
    let log_end = gauges();
    let segments = gauges();
    for t in core.topics.all() {
        for p in &t.partitions {
            let labels = tp(&t.name, p.index);
            let r = p.reader();
            log_start.get_or_create(&labels).set(r.start_offset());
            log_end.get_or_create(&labels).set(r.end_offset());
            segments
                .get_or_create(&labels)
                .set(i64::try_from(r.segment_count()).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "partition_log_start_offset",
        "First offset still stored in the partition",
        log_start,
    );
    registry.register(
        "partition_log_end_offset",
        "Offset the partition's next record gets",
        log_end,
    );
    registry.register(
        "partition_segments",
        "Segments of the partition's log",
        segments,
    );

    // Consumer groups.
    let committed = gauges();
    let lag = gauges();
    let members = gauges();
    let state = gauges();
    for g in core.groups.list() {
        let Some(view) = core.groups.describe(&core.topics, &g.name) else {
            continue;
        };
        let group = vec![("group", view.name.clone())];
        members
            .get_or_create(&group)
            .set(i64::try_from(view.members.len()).unwrap_or(i64::MAX));
        state
            .get_or_create(&with(group.clone(), &[("state", view.state.name())]))
            .set(1);
        for o in &view.offsets {
            let labels = with(group.clone(), &[]);
            let labels = [labels, tp(&o.topic, o.partition)].concat();
            committed.get_or_create(&labels).set(o.committed);
            if o.lag() >= 0 {
                lag.get_or_create(&labels).set(o.lag());
            }
        }
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

    // Queue groups.
    let records = gauges();
    let acked = counters();
    let dead_lettered = counters();
    let oldest = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let queue_members = gauges();
    for view in core.queue_describe(&[]).await.into_iter().flatten() {
        let group = vec![("group", view.group.clone())];
        queue_members
            .get_or_create(&group)
            .set(i64::try_from(view.members.len()).unwrap_or(i64::MAX));
        for p in &view.partitions {
            let labels = [group.clone(), tp(&p.topic, p.partition)].concat();
            for (name, n) in [
                ("ready", p.counts.available),
                ("delayed", p.counts.delayed),
                ("in_flight", p.counts.in_flight),
                ("dead_lettering", p.counts.dead_lettering),
            ] {
                records
                    .get_or_create(&with(labels.clone(), &[("state", name)]))
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            acked.get_or_create(&labels).inc_by(p.finished.acked);
            dead_lettered
                .get_or_create(&labels)
                .inc_by(p.finished.dead_lettered);
            if let Some(ms) = p.oldest_unacked_ms {
                oldest.get_or_create(&labels).set(ms as f64 / 1000.0);
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
    registry.register_with_unit(
        "queue_group_oldest_unacked_age",
        "Age of the oldest unfinished record of the queue-partition, by its timestamp",
        Unit::Seconds,
        oldest,
    );
    registry.register(
        "queue_group_members",
        "Members of the queue group",
        queue_members,
    );

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &root) {
        tracing::error!(error = %e, "encoding the metrics failed");
        out.clear();
        let _ = writeln!(out, "# EOF");
    }
    out
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
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(ticks as f64 / 100.0);
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
        let rss = Gauge::<i64>::default();
        rss.set(kib.saturating_mul(1024));
        registry.register_with_unit(
            "process_resident_memory",
            "Resident set size of the process (anonymous and file-backed pages)",
            Unit::Bytes,
            rss,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds = Gauge::<i64>::default();
        fds.set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        registry.register(
            "process_open_fds",
            "File descriptors the process holds open",
            fds,
        );
    }
}
