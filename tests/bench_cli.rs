//! `strom bench` end to end, at tiny sizes: each command runs the real binary (with an embedded
//! broker, or against a `strom serve` child), exits 0 and prints one JSON object whose numbers
//! are sane (counts as asked, rates above zero, percentiles in order); bad input is one line on
//! stderr and a non-zero exit.

mod support;

use std::process::{Command, Output};

use serde_json::Value;

fn strom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .output()
        .expect("run strom")
}

/// Runs `strom --output json bench <args>` and returns the one JSON object it prints.
fn bench(args: &[&str]) -> Value {
    let mut all = vec!["--output", "json", "bench"];
    all.extend_from_slice(args);
    let out = strom(&all);
    assert!(
        out.status.success(),
        "strom {all:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).expect("JSON")
}

/// A usage error: clap's message (first line `error: ...`) and exit status 2.
fn usage_error(args: &[&str]) {
    let out = strom(args);
    assert_eq!(out.status.code(), Some(2), "{args:?} should be refused");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A run-time failure: one line on stderr and a non-zero exit.
fn fails(args: &[&str]) -> String {
    let out = strom(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Rates above zero and latency percentiles in order.
fn sane(v: &Value, latency_kind: &str) {
    assert!(f(v, "records_per_sec") > 0.0, "{v}");
    assert!(f(v, "mb_per_sec") > 0.0, "{v}");
    assert!(f(v, "elapsed_s") > 0.0, "{v}");
    let l = &v["latency_ms"];
    assert_eq!(l["kind"], latency_kind, "{v}");
    assert!(l["samples"].as_u64().unwrap() > 0, "{v}");
    let ps: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|k| f(l, k))
        .collect();
    assert!(ps[0] > 0.0, "{v}");
    assert!(ps.windows(2).all(|w| w[0] <= w[1]), "ordered: {ps:?}");
    let p = &v["process"];
    assert!(p["rss_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(f(p, "cpu_user_s") + f(p, "cpu_system_s") >= 0.0, "{v}");
}

#[test]
fn produce_batch_and_per_record() {
    let v = bench(&["produce", "--embedded", "--records", "20000"]);
    assert_eq!(v["command"], "produce");
    assert_eq!(v["records"], 20000);
    assert_eq!(v["records_in_log"], 20000);
    assert_eq!(v["payload_bytes"], 2_000_000);
    assert_eq!(v["settings"]["method"], "send_batch");
    assert_eq!(v["latency_ms"]["samples"], 20, "every 1000th record");
    assert!(v["disk_bytes"].as_u64().unwrap() >= 2_000_000, "{v}");
    assert_eq!(v["process"]["includes_broker"], true);
    assert!(v["broker"].is_null());
    sane(&v, "send_to_ack");

    let v = bench(&[
        "produce",
        "--embedded",
        "--records",
        "5000",
        "--send-batch",
        "1",
        "--producers",
        "2",
        "--partitions",
        "3",
        "--keys",
        "10",
        "--record-size",
        "64",
        "--sample-every",
        "100",
    ]);
    assert_eq!(v["records"], 5000);
    assert_eq!(v["records_in_log"], 5000);
    assert_eq!(v["settings"]["method"], "per_record");
    assert_eq!(v["latency_ms"]["samples"], 50);
    sane(&v, "send_to_ack");
}

#[test]
fn consume_reads_what_produce_wrote() {
    // Against a broker process: produce, then consume the same topic; --broker-pid reports it.
    let dir = support::TestDir::new();
    let broker = support::Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let pid = broker.pid().to_string();
    let common = ["--bootstrap", addr.as_str(), "--broker-pid", pid.as_str()];
    let mut args = vec![
        "produce",
        "--records",
        "20000",
        "--partitions",
        "2",
        "--keys",
        "100",
    ];
    args.extend_from_slice(&common);
    let p = bench(&args);
    assert_eq!(p["records"], 20000);
    assert_eq!(p["process"]["includes_broker"], false);
    assert!(p["broker"]["rss_bytes"].as_u64().unwrap() > 0, "{p}");
    let mut args = vec!["consume", "--consumers", "2"];
    args.extend_from_slice(&common);
    let c = bench(&args);
    assert_eq!(c["command"], "consume");
    assert_eq!(c["records"], 20000);
    assert_eq!(c["payload_bytes"], 2_000_000);
    assert_eq!(c["disk_bytes"], p["disk_bytes"]);
    sane(&c, "poll");
    // Fewer than everything, as a group.
    let mut args = vec!["consume", "--records", "5000", "--group", "bench-test"];
    args.extend_from_slice(&common);
    let g = bench(&args);
    assert_eq!(g["records"], 5000);
    sane(&g, "poll");
}

#[test]
fn key_runs_send_each_run_to_one_partition() {
    // --key-run 500: records 0..499 share the first key, 500..999 the second, and so on, so
    // every partition holds whole runs (iggy-bench's keyed method); without it, every record
    // takes the next key, and each of the 3 keys gets 1,333 or 1,334 records.
    let dir = support::TestDir::new();
    let broker = support::Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let run = |topic: &str, extra: &[&str]| {
        let mut args = vec![
            "produce",
            "--bootstrap",
            addr.as_str(),
            "--topic",
            topic,
            "--records",
            "4000",
            "--partitions",
            "4",
            "--keys",
            "3",
        ];
        args.extend_from_slice(extra);
        let v = bench(&args);
        assert_eq!(v["records_in_log"], 4000, "{v}");
        let mut c = broker.client();
        (0..4)
            .map(|p| c.offset_of(topic, p, strom_protocol::messages::OffsetSpec::Latest, 0))
            .collect::<Vec<i64>>()
    };
    let runs = run("runs", &["--key-run", "500"]);
    assert_eq!(runs.iter().sum::<i64>(), 4000);
    assert!(runs.iter().all(|n| n % 500 == 0), "whole runs: {runs:?}");
    let each = run("each", &[]);
    assert_eq!(each.iter().sum::<i64>(), 4000);
    assert!(
        each.iter().any(|n| n % 500 != 0),
        "a key per record spreads records: {each:?}"
    );
}

#[test]
fn consume_embedded_fills_first() {
    let v = bench(&["consume", "--embedded", "--records", "20000"]);
    assert_eq!(v["records"], 20000);
    assert_eq!(v["payload_bytes"], 2_000_000);
    assert!(v["notes"][0].as_str().unwrap().contains("filled"), "{v}");
    sane(&v, "poll");
}

#[test]
fn consume_paced_reads_at_the_rate() {
    // 3,000 records at 4,000 records/s in polls of at most 100: the last ones are due at 0.75 s.
    let v = bench(&[
        "consume",
        "--embedded",
        "--records",
        "3000",
        "--rate",
        "4000",
        "--max-poll-records",
        "100",
    ]);
    assert_eq!(v["records"], 3000);
    assert_eq!(v["settings"]["rate"], 4000);
    assert!(f(&v, "elapsed_s") >= 0.74, "{v}");
    assert!(f(&v, "records_per_sec") <= 4050.0, "{v}");
}

#[test]
fn e2e_times_every_record() {
    let report = tempfile::tempdir().unwrap();
    let v = bench(&[
        "e2e",
        "--embedded",
        "--duration",
        "1",
        "--rate",
        "2000",
        "--linger-ms",
        "0",
        "--report",
        report.path().to_str().unwrap(),
    ]);
    assert_eq!(v["command"], "e2e");
    let sent = v["sent"].as_u64().unwrap();
    assert!((1500..=2500).contains(&sent), "paced to about 2000: {sent}");
    assert_eq!(v["records"], sent, "every record received");
    assert_eq!(v["latency_ms"]["samples"], sent, "and timed");
    sane(&v, "send_to_receipt");
    let pages: Vec<_> = std::fs::read_dir(report.path()).unwrap().collect();
    assert_eq!(pages.len(), 1);
    let html = std::fs::read_to_string(pages[0].as_ref().unwrap().path()).unwrap();
    assert!(html.contains("<svg") && html.contains("send_to_receipt"));
}

#[test]
fn ceiling_measures_tcp_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let v = bench(&[
        "ceiling",
        "--bytes",
        "8388608",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(v["command"], "ceiling");
    assert!(f(&v["loopback_tcp"], "bytes_per_sec") > 0.0, "{v}");
    assert!(f(&v["disk_write"], "mb_per_sec") > 0.0, "{v}");
    assert!(f(&v["disk_fsync"], "mb_per_sec") > 0.0, "{v}");
    assert_eq!(v["disk_fsync"]["fsyncs"], 8);
    assert!(f(&v["disk_fsync"], "fsync_p50_ms") <= f(&v["disk_fsync"], "fsync_p99_ms"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "its files are removed"
    );
}

#[test]
fn with_ceiling_reports_fractions() {
    let v = bench(&[
        "produce",
        "--embedded",
        "--records",
        "2000",
        "--with-ceiling",
        "--ceiling-bytes",
        "4194304",
    ]);
    assert!(f(&v["ceiling"]["disk_write"], "mb_per_sec") > 0.0, "{v}");
    for k in ["disk_write", "disk_fsync", "loopback_tcp"] {
        assert!(f(&v["fraction_of_ceiling"], k) > 0.0, "{v}");
    }
}

#[test]
fn bad_input_is_one_line() {
    let err = fails(&["bench", "e2e", "--embedded", "--record-size", "4"]);
    assert!(err.contains("at least 8"), "{err}");
    usage_error(&["bench", "produce", "--records", "0"]);
    usage_error(&["bench", "produce", "--records", "10", "--duration", "1"]);
    usage_error(&["bench", "produce", "--duration", "-1"]);
    usage_error(&["bench", "produce", "--acks", "2"]);
    usage_error(&["bench", "produce", "--data-dir", "/tmp"]);
    let err = fails(&[
        "bench",
        "produce",
        "--bootstrap",
        "127.0.0.1:1",
        "--records",
        "1",
    ]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    let err = fails(&[
        "bench",
        "consume",
        "--embedded",
        "--records",
        "10",
        "--consumers",
        "2",
    ]);
    assert!(err.contains("partition"), "{err}");
    let err = fails(&["bench", "produce", "--broker-pid", "999999999"]);
    assert!(err.contains("999999999"), "{err}");
    let err = fails(&[
        "bench",
        "produce",
        "--embedded",
        "--data-dir",
        "/nonexistent/x",
    ]);
    assert!(err.contains("/nonexistent/x"), "{err}");
    let err = fails(&[
        "bench",
        "ceiling",
        "--bytes",
        "1048576",
        "--dir",
        "/nonexistent/x",
    ]);
    assert!(err.contains("/nonexistent/x"), "{err}");
}

#[test]
fn topics_times_creations_and_deletes_what_it_created() {
    // Against a broker process: 5 topics of 10 partitions, timed, then deleted; with --keep
    // they stay; a second run with the same --prefix fails on the first existing name.
    let dir = support::TestDir::new();
    let broker = support::Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let pid = broker.pid().to_string();
    let topic_names = || -> Vec<(String, u64)> {
        let out = strom(&["--output", "json", "--bootstrap", &addr, "topics", "list"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("JSON");
                (
                    v["topic"].as_str().unwrap().to_string(),
                    v["partitions"].as_u64().unwrap(),
                )
            })
            .filter(|(n, _)| !n.starts_with("__"))
            .collect()
    };

    let v = bench(&[
        "topics",
        "--bootstrap",
        &addr,
        "--topics",
        "5",
        "--partitions",
        "10",
        "--broker-pid",
        &pid,
    ]);
    assert_eq!(v["command"], "topics");
    assert_eq!(v["settings"]["topics"], 5);
    assert_eq!(v["settings"]["partitions"], 10);
    assert!(
        v["settings"]["prefix"]
            .as_str()
            .unwrap()
            .starts_with("bench-topics-"),
        "{v}"
    );
    assert_eq!(v["topics"], 5);
    assert_eq!(v["partitions_created"], 50);
    assert!(
        f(&v, "elapsed_s") > 0.0 && f(&v, "topics_per_sec") > 0.0,
        "{v}"
    );
    for (key, kind) in [
        ("latency_ms", "create_to_ack"),
        ("delete_latency_ms", "delete_to_ack"),
    ] {
        let l = &v[key];
        assert_eq!(l["kind"], kind, "{v}");
        assert_eq!(l["samples"], 5, "{v}");
        let ps: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
            .iter()
            .map(|k| f(l, k))
            .collect();
        assert!(ps[0] > 0.0, "{v}");
        assert!(ps.windows(2).all(|w| w[0] <= w[1]), "ordered: {ps:?}");
        assert!(f(l, "mean") > 0.0 && f(l, "mean") <= ps[4], "{v}");
    }
    assert_eq!(v["deleted"], 5);
    assert_eq!(v["brokers"][0]["pid"], broker.pid());
    assert!(v["brokers"][0]["rss_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["aims"]["p99_create_ms_at_most"], 100.0);
    assert!(v["aims"]["p99_create_met"].is_boolean(), "{v}");
    assert_eq!(topic_names(), vec![], "the run deleted its topics");

    // --keep: the topics stay, with their partitions.
    let v = bench(&[
        "topics",
        "--bootstrap",
        &addr,
        "--topics",
        "2",
        "--partitions",
        "3",
        "--prefix",
        "kept",
        "--keep",
    ]);
    assert_eq!(v["topics"], 2);
    assert_eq!(v["deleted"], 0);
    assert!(v["delete_latency_ms"].is_null(), "{v}");
    let mut kept = topic_names();
    kept.sort();
    assert_eq!(kept, vec![("kept-0".into(), 3), ("kept-1".into(), 3)]);
    // The same names again: refused, one line that says what to do.
    let err = fails(&[
        "bench",
        "topics",
        "--bootstrap",
        &addr,
        "--topics",
        "2",
        "--prefix",
        "kept",
    ]);
    assert!(err.contains("kept-0") && err.contains("--prefix"), "{err}");
    assert_eq!(topic_names().len(), 2, "nothing else created or deleted");
    usage_error(&["bench", "topics", "--topics", "0"]);
    usage_error(&["bench", "topics", "--partitions", "0"]);
}
