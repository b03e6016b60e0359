//! The HTTP listener against a real broker child (docs/http.md): the `http listening on` line,
//! and `/metrics`, which must parse as Prometheus text and show what the broker holds: after
//! 1,000 records produced and 400 committed by a group, that group's lag for the partition is
//! 600; a queue group's counts follow a scripted sequence of acks and nacks.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use strom_client::{QueueConfig, QueueConsumer};
use strom_protocol::ErrorCode;
use strom_protocol::messages::*;
use support::*;

/// `GET path` over HTTP/1.1: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    // Chunked or not: the body's lines are what the tests read.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the OpenMetrics text a scrape returns, strictly: `# HELP/TYPE/UNIT` lines, samples
/// `name{k="v",...} value`, and `# EOF` last.
fn parse(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    let mut out = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(meta) = line.strip_prefix("# ") {
            let kind = meta.split_whitespace().next().unwrap_or_default();
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels close");
                let labels = rest
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        out.push((name, labels, value));
    }
    out
}

/// The value of the sample `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

fn scrape(broker: &Broker) -> Vec<Sample> {
    let (status, body) = get(broker.http_addr.expect("http listener"), "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[test]
fn metrics_show_partitions_and_consumer_group_lag() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("orders", 1, &[]);
    let records: Vec<Rec> = (0..1000)
        .map(|i| Rec::new(now_ms(), "k", format!("v{i}")))
        .collect();
    for chunk in records.chunks(100) {
        c.produce_ok("orders", 0, &[batch_of(chunk)]);
    }
    let r = c.call(OffsetCommitRequest {
        group_id: "billing".into(),
        member_id: String::new(),
        member_epoch: -1,
        topics: vec![OffsetCommitTopic {
            name: "orders".into(),
            partitions: vec![OffsetCommitPartition {
                partition: 0,
                offset: 400,
                metadata: None,
            }],
        }],
    });
    match r.body {
        Some(response::Body::OffsetCommit(b)) => {
            assert_eq!(b.topics[0].partitions[0].error_code(), ErrorCode::None)
        }
        other => panic!("commit: {other:?}"),
    }

    let m = scrape(&broker);
    let tp = [("topic", "orders"), ("partition", "0")];
    assert_eq!(
        value(&m, "strom_partition_log_end_offset", &tp),
        Some(1000.0)
    );
    assert_eq!(
        value(&m, "strom_partition_log_start_offset", &tp),
        Some(0.0)
    );
    let g = [
        ("group", "billing"),
        ("topic", "orders"),
        ("partition", "0"),
    ];
    assert_eq!(
        value(&m, "strom_consumer_group_committed_offset", &g),
        Some(400.0)
    );
    assert_eq!(value(&m, "strom_consumer_group_lag", &g), Some(600.0));
    assert_eq!(
        value(
            &m,
            "strom_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(value(&m, "strom_uptime_seconds", &[]).is_some());
    // The process, under Prometheus's usual names: a broker holds some memory, CPU time and
    // files (its logs and sockets).
    assert!(value(&m, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6));
    assert!(value(&m, "process_cpu_seconds_total", &[]).is_some_and(|s| s >= 0.0));
    assert!(value(&m, "process_open_fds", &[]).is_some_and(|n| n >= 4.0));
    // Only what it serves: other paths are 404.
    assert_eq!(get(broker.http_addr.expect("http"), "/nothing-here").0, 404);
}

#[tokio::test]
async fn metrics_follow_a_queue_groups_acks_and_nacks() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("jobs", 1, &[]);
    let records: Vec<Rec> = (0..10)
        .map(|i| Rec::new(now_ms(), "k", format!("j{i}")))
        .collect();
    c.produce_ok("jobs", 0, &[batch_of(&records)]);

    let addr = broker.addr.to_string();
    let mut config = QueueConfig::new(&addr, "workers", &["jobs"]);
    config.max_wait = Duration::from_millis(100);
    let mut member = QueueConsumer::join(config).await.expect("join");
    let mut got = Vec::new();
    while got.len() < 10 {
        got.extend(member.poll(10).await.expect("poll"));
    }
    // 6 acked, 2 failed for an hour, 2 still held.
    for r in &got[..6] {
        member.ack(r);
    }
    for r in &got[6..8] {
        member.nack(r, Some(Duration::from_secs(3600)), Some("later"));
    }
    member.flush().await.expect("flush");

    let m = tokio::task::spawn_blocking(move || {
        let m = scrape(&broker);
        drop(broker);
        m
    })
    .await
    .expect("scrape");
    let q = [("group", "workers"), ("topic", "jobs"), ("partition", "0")];
    let state = |s: &str| {
        let mut l = q.to_vec();
        l.push(("state", s));
        value(&m, "strom_queue_group_records", &l)
    };
    assert_eq!(state("ready"), Some(0.0));
    assert_eq!(state("delayed"), Some(2.0));
    assert_eq!(state("in_flight"), Some(2.0));
    assert_eq!(state("dead_lettering"), Some(0.0));
    assert_eq!(value(&m, "strom_queue_group_acked_total", &q), Some(6.0));
    assert_eq!(
        value(&m, "strom_queue_group_dead_lettered_total", &q),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "strom_queue_group_members", &[("group", "workers")]),
        Some(1.0)
    );
    assert!(value(&m, "strom_queue_group_oldest_unacked_age_seconds", &q).is_some());
}
