//! The `strom` command-line tools against a real broker: a produce/consume round trip through
//! pipes, replay by offset and by time, JSON output, topic administration, and one clear line on
//! stderr with a non-zero exit for every failure.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use support::*;

/// Runs `strom <args>` against `addr` with `input` on stdin.
fn strom(addr: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .arg("--bootstrap")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strom");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for strom");
    writer.join().expect("stdin writer");
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "strom failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// A failure: non-zero exit, one line on stderr, no panic or backtrace.
fn fails(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure, got success");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

#[test]
fn produce_then_consume_gives_back_the_input_lines() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    ok(&strom(
        &addr,
        &["topics", "create", "lines", "--partitions", "1"],
        b"",
    ));
    let input: String = (0..2000)
        .map(|i| format!("key-{}:value {i}\n", i % 37))
        .collect();
    let produced = strom(
        &addr,
        &["produce", "lines", "--key-separator", ":"],
        input.as_bytes(),
    );
    ok(&produced);
    let out = ok(&strom(
        &addr,
        &["consume", "lines", "--from-beginning", "--format", "%k:%v"],
        b"",
    ));
    assert_eq!(out, input, "exactly the input lines, in order");

    // Several partitions: every line comes back once, and each key's lines in input order.
    ok(&strom(
        &addr,
        &["topics", "create", "spread", "--partitions", "4"],
        b"",
    ));
    ok(&strom(
        &addr,
        &["produce", "spread", "--key-separator", ":", "--acks", "all"],
        input.as_bytes(),
    ));
    let out = ok(&strom(
        &addr,
        &[
            "consume",
            "spread",
            "--from-beginning",
            "--format",
            "%p %k:%v",
        ],
        b"",
    ));
    let mut got: Vec<&str> = out.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    let mut want: Vec<&str> = input.lines().collect();
    let per_key = |lines: &[&str], key: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{key}:")))
            .map(|l| l.to_string())
            .collect()
    };
    for k in 0..37 {
        let key = format!("key-{k}");
        assert_eq!(per_key(&got, &key), per_key(&want, &key), "order of {key}");
        let partitions: std::collections::BTreeSet<&str> = out
            .lines()
            .filter(|l| l.split_once(' ').unwrap().1.starts_with(&format!("{key}:")))
            .map(|l| l.split_once(' ').unwrap().0)
            .collect();
        assert_eq!(partitions.len(), 1, "{key} lives in one partition");
    }
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn replay_by_offset_and_time_returns_the_right_suffix() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    ok(&strom(
        &addr,
        &["topics", "create", "replay", "--partitions", "1"],
        b"",
    ));
    for round in 0..5 {
        let input: String = (0..200).map(|i| format!("r{round}-{i}\n")).collect();
        ok(&strom(&addr, &["produce", "replay"], input.as_bytes()));
    }
    let all = ok(&strom(
        &addr,
        &[
            "consume",
            "replay",
            "--from-beginning",
            "--format",
            "%o %T %v",
        ],
        b"",
    ));
    let rows: Vec<(i64, i64, String)> = all
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let o = it.next().unwrap().parse().unwrap();
            let t = it.next().unwrap().parse().unwrap();
            (o, t, it.next().unwrap().to_string())
        })
        .collect();
    assert_eq!(rows.len(), 1000);

    let by_offset = ok(&strom(
        &addr,
        &["consume", "replay", "--offset", "640", "--format", "%v"],
        b"",
    ));
    let want: Vec<&str> = rows[640..].iter().map(|r| r.2.as_str()).collect();
    assert_eq!(by_offset.lines().collect::<Vec<_>>(), want);

    // From a time: the suffix from the first record at or after it.
    let t = rows[500].1;
    let when = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(t as u64),
    )
    .to_string();
    let by_time = ok(&strom(
        &addr,
        &["consume", "replay", "--from-time", &when, "--format", "%v"],
        b"",
    ));
    let first = rows.iter().position(|r| r.1 >= t).unwrap();
    let want: Vec<&str> = rows[first..].iter().map(|r| r.2.as_str()).collect();
    assert_eq!(by_time.lines().collect::<Vec<_>>(), want);
    // After every record: nothing, and no hang.
    let later = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    )
    .to_string();
    assert_eq!(
        ok(&strom(
            &addr,
            &["consume", "replay", "--from-time", &later],
            b""
        )),
        ""
    );

    // --max-messages, JSON output.
    let json = ok(&strom(
        &addr,
        &[
            "--output",
            "json",
            "consume",
            "replay",
            "--from-beginning",
            "--max-messages",
            "3",
        ],
        b"",
    ));
    let objs: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 3);
    assert_eq!(objs[2]["offset"], 2);
    assert_eq!(objs[0]["value"], "r0-0");
    assert_eq!(objs[0]["topic"], "replay");
}

#[test]
fn topics_are_administered_and_described() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    ok(&strom(
        &addr,
        &[
            "topics",
            "create",
            "admin",
            "--partitions",
            "2",
            "--config",
            "retention.ms=1000000",
        ],
        b"",
    ));
    ok(&strom(
        &addr,
        &["produce", "admin", "--partition", "1"],
        b"a\nb\nc\n",
    ));
    let described = ok(&strom(&addr, &["topics", "describe", "admin"], b""));
    assert!(described.contains("retention.ms"), "{described}");
    let row = described
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .expect("partition 1's row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..5], ["1", "0", "0", "3", "3"], "{row}");
    let list = ok(&strom(&addr, &["--output", "json", "topics", "list"], b""));
    assert!(
        list.lines().any(|l| l.contains("\"topic\":\"admin\"")),
        "{list}"
    );
    ok(&strom(
        &addr,
        &["topics", "alter", "admin", "--config", "retention.ms=5000"],
        b"",
    ));
    let json = ok(&strom(
        &addr,
        &["--output", "json", "topics", "describe", "admin"],
        b"",
    ));
    assert!(
        json.lines()
            .any(|l| l.contains("\"config\":\"retention.ms\"") && l.contains("\"5000\"")),
        "{json}"
    );
    ok(&strom(&addr, &["topics", "delete", "admin"], b""));
    let err = fails(&strom(&addr, &["topics", "describe", "admin"], b""));
    assert!(err.contains("admin"), "{err}");
}

#[test]
fn every_failure_is_one_line_and_a_non_zero_exit() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &["--auto-create-topics", "false"]);
    let addr = broker.addr.to_string();
    // Broker down.
    let err = fails(&strom("127.0.0.1:1", &["topics", "list"], b""));
    assert!(err.starts_with("strom: "), "{err}");
    // Unknown topic.
    fails(&strom(
        &addr,
        &["consume", "missing", "--from-beginning"],
        b"",
    ));
    fails(&strom(&addr, &["produce", "missing"], b"x\n"));
    // Bad values.
    fails(&strom(&addr, &["topics", "create", "bad name"], b""));
    fails(&strom(
        &addr,
        &["topics", "create", "t", "--partitions", "0"],
        b"",
    ));
    fails(&strom(
        &addr,
        &["topics", "create", "t", "--config", "retention.ms=soon"],
        b"",
    ));
    ok(&strom(&addr, &["topics", "create", "t"], b""));
    fails(&strom(&addr, &["consume", "t", "--format", "%x"], b""));
    fails(&strom(&addr, &["consume", "t", "--partition", "9"], b""));
    fails(&strom(
        &addr,
        &["consume", "t", "--from-time", "yesterday"],
        b"",
    ));
    fails(&strom(
        &addr,
        &["produce", "t", "--compression", "gzip"],
        b"x\n",
    ));
    // A flag value clap rejects: its usage message, exit code 2.
    let out = strom(&addr, &["produce", "t", "--acks", "7"], b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn group_consumption_commits_and_resets_replay() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    ok(&strom(
        &addr,
        &["topics", "create", "g", "--partitions", "2"],
        b"",
    ));
    let input: String = (0..100).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(&strom(
        &addr,
        &["produce", "g", "--key-separator", ":"],
        input.as_bytes(),
    ));
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let want = sorted(&input.replace(':', "="));
    let first = ok(&strom(
        &addr,
        &[
            "consume",
            "g",
            "--group",
            "audit",
            "--from-beginning",
            "--format",
            "%k=%v",
        ],
        b"",
    ));
    assert_eq!(sorted(&first), want);
    // The group committed what it printed: a second run has nothing new.
    let again = ok(&strom(
        &addr,
        &["consume", "g", "--group", "audit", "--timeout-ms", "3000"],
        b"",
    ));
    assert_eq!(again, "");
    let list = ok(&strom(&addr, &["groups", "list"], b""));
    assert!(
        list.lines()
            .any(|l| l.starts_with("audit ") && l.contains("empty")),
        "{list}"
    );
    ok(&strom(
        &addr,
        &["produce", "g"],
        b"late-1\nlate-2\nlate-3\n",
    ));
    let lag: i64 = ok(&strom(
        &addr,
        &["--output", "json", "groups", "describe", "audit"],
        b"",
    ))
    .lines()
    .map(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["lag"]
            .as_i64()
            .unwrap()
    })
    .sum();
    assert_eq!(lag, 3);
    // Replay everything.
    ok(&strom(
        &addr,
        &[
            "groups",
            "reset-offsets",
            "audit",
            "--topic",
            "g",
            "--to-earliest",
        ],
        b"",
    ));
    let replay = ok(&strom(&addr, &["consume", "g", "--group", "audit"], b""));
    assert_eq!(replay.lines().count(), 103);
    // Reset needs one target; delete removes the group.
    let out = strom(
        &addr,
        &["groups", "reset-offsets", "audit", "--topic", "g"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    ok(&strom(&addr, &["groups", "delete", "audit"], b""));
    let list = ok(&strom(&addr, &["groups", "list"], b""));
    assert!(!list.contains("audit"), "{list}");
    fails(&strom(&addr, &["groups", "describe", "audit"], b""));
}
