//! The HTTP listener against a real broker child (docs/http.md): the `http listening on` line,
//! and `/metrics`, which must parse as Prometheus text and show what the broker holds: after
//! 1,000 records produced and 400 committed by a group, that group's lag for the partition is
//! 600; a queue group's counts follow a scripted sequence of acks and nacks; requests, errors
//! and appends are counted; and the JSON API under `/api/` answers what the CLI shows, down to a
//! dead-lettered record and its redrive.

#[path = "support/kafka.rs"]
mod kafka;
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
    request(addr, "GET", path, "")
}

/// `method path` with `body` over HTTP/1.1: (status, body).
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
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

/// `GET /api/...` as JSON, expecting 200.
fn api(broker: &Broker, path: &str) -> serde_json::Value {
    let (status, body) = get(broker.http_addr.expect("http listener"), path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Runs a `strom` client command against the broker; its stdout's lines as JSON.
fn cli_json(broker: &Broker, args: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strom"))
        .arg("--bootstrap")
        .arg(broker.addr.to_string())
        .args(["--output", "json"])
        .args(args)
        .output()
        .expect("run strom");
    assert!(
        out.status.success(),
        "strom {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
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

    // Counted on the data path: appends per partition, requests per API with their latency,
    // bytes produced, the open connection.
    assert_eq!(
        value(&m, "strom_partition_records_appended_total", &tp),
        Some(1000.0)
    );
    let appended = value(&m, "strom_partition_appended_bytes_total", &tp).expect("bytes");
    assert!(appended > 1000.0 * 2.0, "{appended}");
    assert_eq!(value(&m, "strom_produce_bytes_total", &[]), Some(appended));
    assert!(value(&m, "strom_partition_size_bytes", &tp).is_some_and(|b| b >= appended));
    assert_eq!(value(&m, "strom_partition_segments", &tp), Some(1.0));
    let produce = [("listener", "native"), ("api", "Produce")];
    assert_eq!(value(&m, "strom_requests_total", &produce), Some(10.0));
    assert_eq!(
        value(&m, "strom_request_duration_seconds_count", &produce),
        Some(10.0)
    );
    let mut all = produce.to_vec();
    all.push(("le", "+Inf"));
    assert_eq!(
        value(&m, "strom_request_duration_seconds_bucket", &all),
        Some(10.0)
    );
    assert!(value(&m, "strom_connections", &[("listener", "native")]).is_some_and(|n| n >= 1.0));
    // The lag in seconds: the record at the committed offset was produced moments ago.
    let age = value(&m, "strom_consumer_group_lag_seconds", &g).expect("lag seconds");
    assert!((0.0..600.0).contains(&age), "{age}");

    // Errors by code: one partition of a produce that does not exist.
    let r = c.produce("orders", 7, &[batch_of(&records[..1])], Acks::Leader);
    assert_ne!(r.error_code(), ErrorCode::None);
    let m = scrape(&broker);
    let code = (r.error_code() as i32).to_string();
    assert_eq!(
        value(
            &m,
            "strom_request_errors_total",
            &[("listener", "native"), ("api", "Produce"), ("code", &code)]
        ),
        Some(1.0)
    );
    assert_eq!(value(&m, "strom_requests_total", &produce), Some(11.0));

    // The JSON API answers what the CLI shows.
    let topic = api(&broker, "/api/topics/orders");
    let shown = cli_json(&broker, &["topics", "describe", "orders"]);
    let p0 = &topic["partitions"][0];
    assert_eq!(p0["end_offset"], 1000);
    for field in ["start_offset", "end_offset", "size_bytes", "leader"] {
        assert_eq!(p0[field], shown[0][field], "{field}");
    }
    let configs = topic["configs"].as_array().expect("configs");
    for c in shown.iter().filter(|l| l.get("config").is_some()) {
        let mine = configs
            .iter()
            .find(|m| m["config"] == c["config"])
            .unwrap_or_else(|| panic!("{c} missing from {configs:?}"));
        assert_eq!(
            (&mine["value"], &mine["source"]),
            (&c["value"], &c["source"])
        );
    }
    let group = api(&broker, "/api/groups/billing");
    let shown = cli_json(&broker, &["groups", "describe", "billing"]);
    let o = &group["offsets"][0];
    assert_eq!(o["lag"], 600);
    for field in ["committed", "log_end", "lag", "topic", "partition"] {
        assert_eq!(o[field], shown[0][field], "{field}");
    }
    assert_eq!(group["state"], shown[0]["state"]);
    let groups = api(&broker, "/api/groups");
    assert_eq!(groups[0]["group"], "billing");
    assert_eq!(groups[0]["lag"], 600);
    let topics = api(&broker, "/api/topics");
    let listed = cli_json(&broker, &["topics", "list"]);
    let names = |v: &[serde_json::Value], key: &str| -> Vec<String> {
        v.iter()
            .map(|t| t[key].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let mut from_cli = names(&listed, "topic");
    from_cli.sort();
    assert_eq!(names(topics.as_array().expect("list"), "topic"), from_cli);
    let overview = api(&broker, "/api/overview");
    assert_eq!(overview["brokers"][0]["native"], broker.addr.to_string());
    // 1,000 records and the group's commit (on __consumer_offsets).
    assert_eq!(overview["records_appended_total"], 1001);
    let orders = topics
        .as_array()
        .and_then(|t| t.iter().find(|t| t["topic"] == "orders"))
        .expect("orders listed");
    assert_eq!(orders["records_appended_total"], 1000);
    assert_eq!(orders["records"], 1000);

    // The last records, decoded: text values, newest last within a partition.
    let page = api(&broker, "/api/topics/orders/records?partition=0&limit=3");
    let recs = page["records"].as_array().expect("records");
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2]["offset"], 999);
    assert_eq!(recs[2]["value"]["encoding"], "text");
    assert_eq!(recs[2]["value"]["data"], "v999");
    assert_eq!(recs[2]["key"]["data"], "k");
    let page = api(
        &broker,
        "/api/topics/orders/records?partition=0&offset=10&limit=2",
    );
    assert_eq!(page["records"][0]["offset"], 10);
    assert_eq!(page["records"][1]["value"]["data"], "v11");
    // Bad input: typed errors, never a panic.
    let http = broker.http_addr.expect("http");
    assert_eq!(get(http, "/api/topics/nope").0, 404);
    assert_eq!(get(http, "/api/groups/nope").0, 404);
    assert_eq!(get(http, "/api/topics/orders/records?partition=9").0, 404);
    assert_eq!(get(http, "/api/topics/orders/records?offset=3").0, 400);
    assert_eq!(get(http, "/api/topics/orders/records?limit=x").0, 400);
    assert_eq!(get(http, "/api/nothing").0, 404);
}

#[test]
fn partition_series_can_be_summed_per_topic() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &["--metrics-per-partition", "false"]);
    let mut c = broker.client();
    c.create_topic_ok("orders", 3, &[]);
    for p in 0..3 {
        let records: Vec<Rec> = (0..10)
            .map(|i| Rec::new(now_ms(), "k", format!("v{i}")))
            .collect();
        c.produce_ok("orders", p, &[batch_of(&records)]);
    }
    let m = scrape(&broker);
    let summed: Vec<&Sample> = m
        .iter()
        .filter(|(n, l, _)| n == "strom_partition_log_end_offset" && l["topic"] == "orders")
        .collect();
    assert_eq!(summed.len(), 1, "{summed:?}");
    assert!(!summed[0].1.contains_key("partition"));
    assert_eq!(summed[0].2, 30.0);
    assert_eq!(
        value(
            &m,
            "strom_partition_records_appended_total",
            &[("topic", "orders")]
        ),
        Some(30.0)
    );
}

#[test]
fn kafka_requests_are_counted_per_api() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut k = kafka::KafkaClient::to(&broker);
    k.api_versions(3);
    k.create_topic("t", 1);
    let m = scrape(&broker);
    let kafka = |api: &str| {
        value(
            &m,
            "strom_requests_total",
            &[("listener", "kafka"), ("api", api)],
        )
    };
    assert_eq!(kafka("ApiVersions"), Some(1.0));
    assert_eq!(kafka("CreateTopics"), Some(1.0));
    assert_eq!(
        value(&m, "strom_connections", &[("listener", "kafka")]),
        Some(1.0)
    );
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
    assert_eq!(
        value(&m, "strom_queue_group_redelivered_total", &q),
        Some(0.0)
    );
    let held: Vec<&Sample> = m
        .iter()
        .filter(|(n, _, _)| n == "strom_queue_group_member_in_flight")
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].2, 2.0);
}

#[tokio::test]
async fn the_api_shows_queue_groups_and_redrives_dead_letters() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "jobs", 1).await;
    let mut c = broker.client();
    let records: Vec<Rec> = (0..4)
        .map(|i| Rec::new(now_ms(), "k", format!("j{i}")))
        .collect();
    c.produce_ok("jobs", 0, &[batch_of(&records)]);
    let mut config = QueueConfig::new(&addr, "workers", &["jobs"]);
    config.max_wait = Duration::from_millis(100);
    let mut member = QueueConsumer::join(config).await.expect("join");
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(member.poll(4).await.expect("poll"));
    }
    member.ack(&got[0]);
    member.ack(&got[1]);
    member.reject(&got[2], Some("malformed job"));
    member.nack(&got[3], Some(Duration::ZERO), Some("try again"));
    member.flush().await.expect("flush");
    // The nacked record comes back: a redelivery.
    let again = loop {
        let r = member.poll(1).await.expect("poll");
        if let Some(r) = r.into_iter().next() {
            break r;
        }
    };
    assert_eq!(again.offset(), 3);

    let http = broker.http_addr.expect("http");
    // Wait until the rejected record is in jobs.dlq (the dead-letter writer runs every 100 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let q = loop {
        let q = tokio::task::spawn_blocking(move || {
            let (s, b) = get(http, "/api/queues/workers");
            assert_eq!(s, 200, "{b}");
            serde_json::from_str::<serde_json::Value>(&b).expect("json")
        })
        .await
        .expect("api");
        if q["dead_letter_topics"][0]["records"] == 1 {
            break q;
        }
        assert!(std::time::Instant::now() < deadline, "no dead letter: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let shown = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_strom"))
                .args(["--bootstrap", &addr, "--output", "json"])
                .args(["queue", "describe", "workers"])
                .output()
                .expect("run strom");
            serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
        }
    })
    .await
    .expect("cli");
    let p = &q["partitions"][0];
    assert_eq!(p["acked"], 2);
    assert_eq!(p["dead_lettered"], 1);
    assert_eq!(p["in_flight"], 1);
    assert_eq!(p["redelivered"], 1);
    for field in [
        "acked",
        "dead_lettered",
        "in_flight",
        "ready",
        "delayed",
        "log_end_offset",
    ] {
        assert_eq!(p[field], shown["partitions"][0][field], "{field}");
    }
    assert_eq!(q["members"][0]["in_flight"], 1);
    assert_eq!(q["members"][0]["member"], shown["members"][0]["member"]);
    assert_eq!(q["dead_letter_topics"][0]["dead_letter_topic"], "jobs.dlq");

    let (dlq, list) = tokio::task::spawn_blocking(move || {
        let (_, dlq) = get(http, "/api/topics/jobs.dlq/records");
        let (_, list) = get(http, "/api/queues");
        (dlq, list)
    })
    .await
    .expect("api");
    let dlq: serde_json::Value = serde_json::from_str(&dlq).expect("json");
    let rec = &dlq["records"][0];
    assert_eq!(rec["value"]["data"], "j2");
    let header = |k: &str| {
        rec["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["key"] == k))
            .map(|h| h["value"]["data"].clone())
    };
    assert_eq!(header("strom.dlq.reason"), Some("rejected".into()));
    assert_eq!(header("strom.dlq.error"), Some("malformed job".into()));
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list[0]["group"], "workers");
    assert_eq!(list[0]["dead_lettered"], 1);

    // A redrive from the API puts the record back on jobs, once.
    let (status, body) = tokio::task::spawn_blocking(move || {
        assert_eq!(get(http, "/api/redrives/jobs.dlq").0, 404);
        assert_eq!(request(http, "POST", "/api/redrives/nope", "").0, 404);
        assert_eq!(
            request(http, "POST", "/api/redrives/jobs.dlq", "{\"rate\": -1}").0,
            400
        );
        request(http, "POST", "/api/redrives/jobs.dlq", "{\"rate\": 100}")
    })
    .await
    .expect("api");
    assert_eq!(status, 202, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = tokio::task::spawn_blocking(move || get(http, "/api/redrives/jobs.dlq"))
            .await
            .expect("api");
        let r: serde_json::Value = serde_json::from_str(&body).expect("json");
        if r["done"] == true {
            assert_eq!(r["moved"], 1, "{r}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "redrive: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = tokio::task::spawn_blocking(move || {
        get(http, "/api/topics/jobs/records?partition=0&offset=4")
    })
    .await
    .expect("api");
    let back: serde_json::Value = serde_json::from_str(&back.1).expect("json");
    assert_eq!(back["records"][0]["value"]["data"], "j2");
    member.close().await.expect("close");
}

#[test]
fn hostile_http_input_gets_errors_and_the_broker_keeps_serving() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("orders", 1, &[]);
    c.produce_ok("orders", 0, &[batch_of(&[Rec::new(now_ms(), "k", "v")])]);
    let http = broker.http_addr.expect("http");
    // Raw garbage, a request line that never ends, and 1 MiB of headers: hyper refuses them.
    for junk in [
        vec![0xffu8; 64 * 1024],
        b"GET /api/topics HTTP/1.1\r\n"
            .to_vec()
            .into_iter()
            .chain(std::iter::repeat_n(b'a', 1 << 20))
            .collect(),
        b"\x00\x01\x02 / HTTP/9.9\r\n\r\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(http).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    // Absurd queries: typed answers.
    for (path, want) in [
        (
            "/api/topics/orders/records?limit=99999999999999999999999",
            400,
        ),
        ("/api/topics/orders/records?partition=-1", 404),
        (
            "/api/topics/orders/records?partition=0&offset=-9223372036854775808",
            200,
        ),
        (
            "/api/topics/orders/records?partition=0&offset=9223372036854775807",
            200,
        ),
        ("/api/topics/orders/records?limit=0", 200),
        ("/api/topics/%00", 404),
        ("/api/topics/%ff%fe", 400),
        ("/api/groups/..%2F..%2Fetc%2Fpasswd", 404),
        ("/api/redrives/orders", 404),
    ] {
        let (status, body) = get(http, path);
        assert_eq!(status, want, "{path}: {body}");
        if status != 200 {
            let v: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
            assert!(v["error"].is_string(), "{path}: {body}");
        }
    }
    let (status, body) = request(http, "POST", "/api/redrives/orders", "{not json");
    assert_eq!(status, 400, "{body}");
    let (status, _) = request(http, "DELETE", "/api/topics/orders", "");
    assert_eq!(status, 405);
    // Still serving, and the record is still there.
    let page = api(&broker, "/api/topics/orders/records?partition=0");
    assert_eq!(page["records"][0]["value"]["data"], "v");
}
