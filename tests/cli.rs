//! The `strom` command-line tools against a real broker: a produce/consume round trip through
//! pipes, replay by offset and by time, JSON output, topic administration, and one clear line on
//! stderr with a non-zero exit for every failure.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    // Half of the lines acknowledged after their fsync, half once every in-sync replica has
    // them (native ACKS_ALL; on one broker, once appended).
    let lines: Vec<&str> = input.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    for (part, acks) in [(first, "all"), (second, "replicated")] {
        let text: String = part.iter().map(|l| format!("{l}\n")).collect();
        ok(&strom(
            &addr,
            &["produce", "spread", "--key-separator", ":", "--acks", acks],
            text.as_bytes(),
        ));
    }
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
fn every_codec_round_trips_through_the_broker() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    // Enough repetitive lines for several batches and snappy blocks each.
    let input: String = (0..5000)
        .map(|i| format!("order-{}:{{\"order\":{i},\"state\":\"placed\"}}\n", i % 50))
        .collect();
    let mut sizes = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        ok(&strom(
            &addr,
            &["topics", "create", &topic, "--partitions", "2"],
            b"",
        ));
        ok(&strom(
            &addr,
            &[
                "produce",
                &topic,
                "--key-separator",
                ":",
                "--compression",
                codec,
                "--batch-size",
                "65536",
            ],
            input.as_bytes(),
        ));
        let out = ok(&strom(
            &addr,
            &["consume", &topic, "--from-beginning", "--format", "%k:%v"],
            b"",
        ));
        let mut got: Vec<&str> = out.lines().collect();
        let mut want: Vec<&str> = input.lines().collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{codec}");
        sizes.push((codec, stored_bytes(&addr, &topic)));
    }
    // The broker stored what the producer compressed.
    let plain = sizes[0].1;
    for (codec, size) in &sizes[1..] {
        assert!(
            size * 2 < plain,
            "{codec}: {size} bytes vs {plain} uncompressed"
        );
    }
}

/// The bytes a topic's partitions hold, from `strom topics describe`.
fn stored_bytes(addr: &str, topic: &str) -> u64 {
    ok(&strom(
        addr,
        &["--output", "json", "topics", "describe", topic],
        b"",
    ))
    .lines()
    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    .filter_map(|row| row["size_bytes"].as_u64())
    .sum()
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
    // PARTITION LEADER EPOCH REPLICAS ISR START END RECORDS
    assert_eq!(
        &cols[..8],
        ["1", "0", "0", "0", "0", "0", "3", "3"],
        "{row}"
    );
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
    // Replication factors: at most the brokers (one here).
    let err = fails(&strom(
        &addr,
        &["topics", "create", "r", "--replication-factor", "2"],
        b"",
    ));
    assert!(
        err.contains("INVALID_REPLICATION_FACTOR") || err.contains("replication factor 2"),
        "{err}"
    );
    fails(&strom(
        &addr,
        &["topics", "create", "r", "--replication-factor", "0"],
        b"",
    ));
    ok(&strom(
        &addr,
        &["topics", "create", "r", "--replication-factor", "1"],
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
        &["produce", "t", "--compression", "brotli"],
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
    // A group member follows until stopped: here by --max-messages.
    let first = ok(&strom(
        &addr,
        &[
            "consume",
            "g",
            "--group",
            "audit",
            "--from-beginning",
            "--max-messages",
            "100",
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
    let replay = ok(&strom(
        &addr,
        &["consume", "g", "--group", "audit", "--max-messages", "103"],
        b"",
    ));
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

/// How long a test waits for something that takes well under a second when all is well.
const DEADLINE: Duration = Duration::from_secs(60);

/// Starts `strom <args>` against `addr` with stdout and stderr piped and no stdin.
fn spawn_strom(addr: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_strom"))
        .arg("--bootstrap")
        .arg(addr)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strom")
}

/// The stderr of a child that has exited, for failure messages.
fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// Waits for `child` to exit, up to [`DEADLINE`] (polling its exit, not a wait on its work).
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The members of `group` and the partitions the coordinator assigned each, from `strom groups
/// describe` (empty when the group does not exist yet).
fn group_members(addr: &str, group: &str) -> Vec<Vec<String>> {
    let out = strom(addr, &["groups", "describe", group], b"");
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("member "))
        .map(|l| {
            let parts = l.split_once("): ").map_or("", |(_, p)| p);
            parts
                .split_whitespace()
                .filter(|p| *p != "-")
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn group_members_follow_an_empty_topic_and_share_its_records_until_stopped() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    ok(&strom(
        &addr,
        &["topics", "create", "jobs", "--partitions", "3"],
        b"",
    ));
    const N: usize = 300;
    // Three members start together on the empty topic. Each would stop after N records; none
    // gets that many, so only a signal stops them.
    let n = N.to_string();
    let mut members: Vec<Child> = (0..3)
        .map(|_| {
            spawn_strom(
                &addr,
                &[
                    "consume",
                    "jobs",
                    "--group",
                    "g",
                    "--from-beginning",
                    "--max-messages",
                    &n,
                ],
            )
        })
        .collect();
    let (tx, lines) = mpsc::channel::<(usize, String)>();
    let readers: Vec<_> = members
        .iter_mut()
        .enumerate()
        .map(|(i, m)| {
            let stdout = m.stdout.take().expect("stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((i, line)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);

    // Wait until the coordinator gave each of the three one partition; none may exit meanwhile
    // (before, a member that alone owned every empty partition counted as done and exited 0).
    let deadline = Instant::now() + DEADLINE;
    loop {
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(status) = m.try_wait().expect("try_wait") {
                panic!(
                    "member {i} exited ({status}) before any record arrived: {}",
                    stderr_of(m)
                );
            }
        }
        let assigned = group_members(&addr, "g");
        if assigned.len() == 3 && assigned.iter().all(|a| a.len() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members never split: {assigned:?}"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling the group's state
    }

    let input: String = (0..N).map(|i| format!("job-{i}:run {i}\n")).collect();
    ok(&strom(
        &addr,
        &["produce", "jobs", "--key-separator", ":"],
        input.as_bytes(),
    ));
    let mut got: Vec<(usize, String)> = Vec::new();
    while got.len() < N {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(e) => panic!("{} of {N} records printed: {e}", got.len()),
        }
    }
    // Still running with every record printed; SIGTERM makes each commit, leave and exit 0.
    for m in &members {
        let sent = Command::new("kill")
            .args(["-TERM", &m.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {}: {sent}", m.id());
    }
    for (i, m) in members.iter_mut().enumerate() {
        let status = wait_exit(m, "a member after SIGTERM");
        assert!(status.success(), "member {i}: {status}: {}", stderr_of(m));
    }
    for r in readers {
        r.join().expect("reader");
    }
    got.extend(lines.try_iter());

    // Every record exactly once, and every member did a share.
    let mut values: Vec<&str> = got.iter().map(|(_, v)| v.as_str()).collect();
    values.sort_unstable();
    let mut want: Vec<String> = (0..N).map(|i| format!("run {i}")).collect();
    want.sort_unstable();
    assert_eq!(values, want);
    for i in 0..3 {
        assert!(
            got.iter().any(|(m, _)| *m == i),
            "member {i} printed nothing"
        );
    }
    // They committed what they printed and left the group.
    let described = ok(&strom(
        &addr,
        &["--output", "json", "groups", "describe", "g"],
        b"",
    ));
    let rows: Vec<serde_json::Value> = described
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 3, "{described}");
    for row in &rows {
        assert_eq!(row["lag"], 0, "{described}");
        assert_eq!(row["owner"], serde_json::Value::Null, "{described}");
    }
    assert!(group_members(&addr, "g").is_empty());
}

#[test]
fn a_group_member_stopped_by_max_messages_commits_only_what_it_printed() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    ok(&strom(
        &addr,
        &["topics", "create", "work", "--partitions", "1"],
        b"",
    ));
    let input: String = (0..10).map(|i| format!("w{i}\n")).collect();
    ok(&strom(&addr, &["produce", "work"], input.as_bytes()));
    // One poll returns all ten records; only four are printed, and only four committed.
    let first = ok(&strom(
        &addr,
        &[
            "consume",
            "work",
            "--group",
            "w",
            "--from-beginning",
            "--max-messages",
            "4",
        ],
        b"",
    ));
    assert_eq!(first, "w0\nw1\nw2\nw3\n");
    // The next member starts at the fifth. (--timeout-ms only ends the run if records were
    // lost; it is not what the test waits on.)
    let rest = ok(&strom(
        &addr,
        &[
            "consume",
            "work",
            "--group",
            "w",
            "--max-messages",
            "6",
            "--timeout-ms",
            "30000",
        ],
        b"",
    ));
    assert_eq!(rest, "w4\nw5\nw6\nw7\nw8\nw9\n");
}

/// Shrinking a topic's retention frees its disk at once: the change runs a retention pass
/// instead of waiting for the periodic one (`retention_check_interval_ms`, 60 s here).
#[test]
fn shrinking_retention_deletes_old_segments_at_once() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    ok(&strom(
        &addr,
        &[
            "topics",
            "create",
            "shrink",
            "--config",
            "segment.bytes=4096",
        ],
        b"",
    ));
    // Four runs, four batches of ~10 KB: each rolls a 4 KiB segment.
    for run in 0..4 {
        let lines: String = (0..500).map(|i| format!("record-{run}-{i:05}\n")).collect();
        ok(&strom(&addr, &["produce", "shrink"], lines.as_bytes()));
    }
    let start = |addr: &str| -> i64 {
        let json = ok(&strom(
            addr,
            &["--output", "json", "topics", "describe", "shrink"],
            b"",
        ));
        let row = json
            .lines()
            .find(|l| l.contains("\"start_offset\""))
            .expect("a partition row");
        let v: serde_json::Value = serde_json::from_str(row).expect("json");
        v["start_offset"].as_i64().expect("start_offset")
    };
    assert_eq!(start(&addr), 0);
    ok(&strom(
        &addr,
        &[
            "topics",
            "alter",
            "shrink",
            "--config",
            "retention.bytes=8192",
        ],
        b"",
    ));
    // Well under the 60 s period: only the pass the change starts can do it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if start(&addr) > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run after the change"
        );
    }
}
