//! Queue groups through the command line, against a real broker: `strom work` workers sharing a
//! topic, poison records retried with backoff and dead-lettered with the documented headers,
//! rejects, a worker killed mid-job whose record goes to another worker, long jobs kept by lease
//! extensions, and `strom queue describe` / `strom queue reset`.
//!
//! The commands the workers run are small `sh` scripts that leave one file per record (and
//! attempt) in a temporary directory, so the tests see who processed what, and how often.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// How long a test waits for something that takes a few seconds at most when all is well.
const DEADLINE: Duration = Duration::from_secs(40);

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
    assert!(
        !out.status.success(),
        "expected a failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("strom: "), "{err}");
    err
}

/// Calls `f` until it gives a value, up to [`DEADLINE`] (polling a condition, not a wait
/// standing in for one).
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `strom work` process; its stdout and stderr go to files. Dropping it kills it.
struct Worker {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Worker {
    fn spawn(addr: &str, dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_strom"))
            .arg("--bootstrap")
            .arg(addr)
            .arg("work")
            .args(args)
            .env("W", name)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("worker stdout file"))
            .stderr(File::create(&stderr).expect("worker stderr file"))
            .spawn()
            .expect("spawn strom work");
        Worker {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Fails the test if the worker exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("worker {} exited ({status}): {}", self.name, self.stderr());
        }
    }

    /// SIGTERM, then waits (polling its exit, up to [`DEADLINE`]) for it to exit.
    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {}", self.name);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit after SIGTERM: {}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; it must exit 0.
    fn stop(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "worker {} exited with {status} after SIGTERM: {}",
            self.name,
            self.stderr()
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `strom queue describe GROUP` as JSON; `None` while the group does not exist.
fn describe(addr: &str, group: &str) -> Option<Value> {
    let out = strom(addr, &["--output", "json", "queue", "describe", group], b"");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut lines = text.lines();
    let g: Value = serde_json::from_str(lines.next()?).expect("json");
    assert!(lines.next().is_none(), "one object per group: {text}");
    Some(g)
}

fn members(g: &Value) -> usize {
    g["members"].as_array().map_or(0, Vec::len)
}

/// Whether every record of the group's partitions is finished (acked or dead-lettered), and
/// there are `records` of them.
fn finished(g: &Value, records: i64) -> bool {
    let parts = g["partitions"].as_array().expect("partitions");
    let end: i64 = parts
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap())
        .sum();
    end == records
        && parts.iter().all(|p| {
            p["start_offset"] == p["log_end_offset"]
                && p["in_flight"] == 0
                && p["delayed"] == 0
                && p["ready"] == 0
                && p["dead_lettering"] == 0
        })
}

/// Every record of `topic` (from the beginning), as `strom consume --output json` prints them;
/// empty while the topic does not exist.
fn records(addr: &str, topic: &str) -> Vec<Value> {
    let out = strom(
        addr,
        &["--output", "json", "consume", topic, "--from-beginning"],
        b"",
    );
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// The files in `dir` and their contents.
fn files(dir: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dir)
        .expect("read the output directory")
        .map(|e| {
            let e = e.expect("dir entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

fn out_dir(parent: &tempfile::TempDir, name: &str) -> PathBuf {
    let d = parent.path().join(name);
    fs::create_dir_all(&d).expect("create an output directory");
    d
}

#[test]
fn five_workers_share_a_three_partition_topic() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = out_dir(&tmp, "out");
    ok(&strom(
        &addr,
        &["topics", "create", "jobs", "--partitions", "3"],
        b"",
    ));
    // Each record leaves one file, named by partition and offset, holding the worker's name
    // and the value: a second delivery would add a second line.
    let script = r#"printf '%s %s\n' "$W" "$(cat)" >> "$OUT/$STROM_PARTITION-$STROM_OFFSET""#;
    let mut workers: Vec<Worker> = (0..5)
        .map(|i| {
            Worker::spawn(
                &addr,
                tmp.path(),
                &format!("w{i}"),
                &[
                    "jobs",
                    "--group",
                    "pool",
                    "--concurrency",
                    "1",
                    "--exec",
                    script,
                ],
                &[("OUT", out.to_str().expect("utf-8 path"))],
            )
        })
        .collect();
    wait_until("five members", || {
        for w in &mut workers {
            w.assert_running();
        }
        describe(&addr, "pool").filter(|g| members(g) == 5)
    });

    const N: usize = 300;
    let input: String = (0..N).map(|i| format!("k{i}:job-{i}\n")).collect();
    ok(&strom(
        &addr,
        &["produce", "jobs", "--key-separator", ":"],
        input.as_bytes(),
    ));
    wait_until("every record processed", || {
        describe(&addr, "pool").filter(|g| finished(g, N as i64))
    });

    let done = files(&out);
    assert_eq!(done.len(), N, "one file per record");
    let mut values = BTreeSet::new();
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut partitions = BTreeSet::new();
    for (name, content) in &done {
        let lines: Vec<&str> = content.lines().collect();
        assert_eq!(lines.len(), 1, "{name} processed once: {content:?}");
        let (worker, value) = lines[0].split_once(' ').expect("worker and value");
        *per_worker.entry(worker.to_string()).or_default() += 1;
        values.insert(value.to_string());
        partitions.insert(name.split_once('-').expect("p-o").0.to_string());
    }
    let want: BTreeSet<String> = (0..N).map(|i| format!("job-{i}")).collect();
    assert_eq!(values, want);
    assert_eq!(partitions.len(), 3, "records of every partition");
    assert_eq!(per_worker.len(), 5, "every worker got work: {per_worker:?}");

    // SIGTERM: each finishes, leaves the group and exits 0.
    for w in &mut workers {
        w.stop();
    }
    let g = describe(&addr, "pool").expect("the group");
    assert_eq!(members(&g), 0, "{g}");
    assert!(finished(&g, N as i64), "{g}");
}

#[test]
fn poison_records_are_retried_then_dead_lettered_once() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = out_dir(&tmp, "out");
    ok(&strom(
        &addr,
        &["topics", "create", "orders", "--partitions", "2"],
        b"",
    ));
    // 20 records with keys and a header, values ok-i, poison-i (i % 5 == 1: fail every
    // attempt) and reject-i (i % 5 == 3: exit 100); and one record without a key.
    let value = |i: usize| match i % 5 {
        1 => format!("poison-{i}"),
        3 => format!("reject-{i}"),
        _ => format!("ok-{i}"),
    };
    let mut input: String = (0..20).map(|i| format!("k{i}:{}\n", value(i))).collect();
    input.push_str("ok-nokey\n");
    ok(&strom(
        &addr,
        &[
            "produce",
            "orders",
            "--key-separator",
            ":",
            "--header",
            "trace-id=t-42",
        ],
        input.as_bytes(),
    ));
    let script = r#"
        v=$(cat)
        echo "$STROM_ATTEMPT" >> "$OUT/$STROM_PARTITION-$STROM_OFFSET.attempts"
        echo "$STROM_TOPIC|$STROM_PARTITION|$STROM_OFFSET|${STROM_KEY-<null>}|$STROM_HEADER_TRACE_ID|$v" > "$OUT/$STROM_PARTITION-$STROM_OFFSET.env"
        case "$v" in
          poison*) echo "some noise" >&2; echo "boom: $v attempt $STROM_ATTEMPT" >&2; exit 1;;
          reject*) echo "bad input $v" >&2; exit 100;;
        esac
        echo "done $v"
    "#;
    let args = [
        "orders",
        "--group",
        "billing",
        "--concurrency",
        "2",
        "--max-attempts",
        "3",
        "--backoff",
        "list:100ms",
        "--exec",
        script,
    ];
    // An outer STROM_KEY must not leak into the commands of records without a key.
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| {
            let env = [
                ("OUT", out.to_str().expect("utf-8 path")),
                ("STROM_KEY", "outer"),
                ("STROM_HEADER_TRACE_ID", "outer"),
            ];
            let mut w = Worker::spawn(&addr, tmp.path(), &format!("w{i}"), &args, &env);
            w.assert_running();
            w
        })
        .collect();
    let dlq = wait_until("8 dead-letter records and every record finished", || {
        for w in &mut workers {
            w.assert_running();
        }
        let dlq = records(&addr, "orders.dlq");
        (dlq.len() >= 8 && describe(&addr, "billing").is_some_and(|g| finished(&g, 21)))
            .then_some(dlq)
    });
    let g = describe(&addr, "billing").expect("the group");
    assert_eq!(g["settings"]["max.attempts"], "3", "{g}");
    let total = |field: &str| -> u64 {
        g["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| p[field].as_u64().expect("a count"))
            .sum()
    };
    assert_eq!((total("acked"), total("dead_lettered")), (13, 8), "{g}");
    assert_eq!(g["settings"]["backoff"], "list:100ms", "{g}");

    // What each command saw, by value.
    let seen = files(&out);
    let mut env_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, content) in &seen {
        if let Some(po) = name.strip_suffix(".env") {
            let fields: Vec<String> = content.trim_end().split('|').map(str::to_string).collect();
            assert_eq!(fields.len(), 6, "{content:?}");
            assert_eq!(fields[0], "orders");
            assert_eq!(format!("{}-{}", fields[1], fields[2]), po);
            assert_eq!(fields[4], "t-42", "STROM_HEADER_TRACE_ID");
            env_of.insert(fields[5].clone(), fields);
        }
    }
    assert_eq!(env_of.len(), 21, "{seen:?}");
    assert_eq!(
        env_of["ok-nokey"][3], "<null>",
        "no STROM_KEY for a null key"
    );
    let attempts = |v: &str| -> String {
        let f = &env_of[v];
        seen[&format!("{}-{}.attempts", f[1], f[2])].clone()
    };

    // Each dead-lettered record once, with the documented headers.
    assert_eq!(dlq.len(), 8, "{dlq:#?}");
    let mut dead = BTreeSet::new();
    for r in &dlq {
        let v = r["value"].as_str().expect("value").to_string();
        let h = &r["headers"];
        let f = &env_of[&v];
        assert!(dead.insert(v.clone()), "{v} dead-lettered twice");
        let i: usize = v.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(r["key"], format!("k{i}"), "{r}");
        assert_eq!(h["trace-id"], "t-42", "{r}");
        assert_eq!(h["strom.dlq.topic"], "orders", "{r}");
        assert_eq!(h["strom.dlq.partition"], f[1].as_str(), "{r}");
        assert_eq!(h["strom.dlq.offset"], f[2].as_str(), "{r}");
        assert_eq!(h["strom.dlq.group"], "billing", "{r}");
        assert!(
            h["strom.dlq.timestamp"]
                .as_str()
                .is_some_and(|t| t.parse::<i64>().is_ok_and(|t| t > 0)),
            "{r}"
        );
        if v.starts_with("poison") {
            assert_eq!(attempts(&v), "1\n2\n3\n", "{v}: exactly 3 attempts");
            assert_eq!(h["strom.dlq.attempts"], "3", "{r}");
            assert_eq!(h["strom.dlq.reason"], "attempts-exhausted", "{r}");
            assert_eq!(h["strom.dlq.error"], format!("boom: {v} attempt 3"), "{r}");
        } else {
            assert!(v.starts_with("reject"), "{v} should not be dead-lettered");
            assert_eq!(attempts(&v), "1\n", "{v}: rejected at once");
            assert_eq!(h["strom.dlq.attempts"], "1", "{r}");
            assert_eq!(h["strom.dlq.reason"], "rejected", "{r}");
            assert_eq!(h["strom.dlq.error"], format!("bad input {v}"), "{r}");
        }
    }
    assert_eq!(dead.len(), 8);
    for v in env_of.keys().filter(|v| v.starts_with("ok")) {
        assert_eq!(attempts(v), "1\n", "{v}: acked at the first attempt");
    }

    for w in &mut workers {
        w.stop();
    }
    // The commands' stdout and stderr went through.
    let stdout: String = workers.iter().map(Worker::stdout).collect();
    let stderr: String = workers.iter().map(Worker::stderr).collect();
    for v in env_of.keys().filter(|v| v.starts_with("ok")) {
        assert!(
            stdout.lines().any(|l| l == format!("done {v}")),
            "{v}: {stdout}"
        );
    }
    assert!(stderr.contains("boom: poison-1 attempt 2"), "{stderr}");
    assert!(stderr.contains("bad input reject-3"), "{stderr}");
    assert!(!stderr.contains("refused"), "{stderr}");

    // A command that cannot be started is a failure whose text is why.
    let mut w = Worker::spawn(
        &addr,
        tmp.path(),
        "nostart",
        &[
            "orders",
            "--group",
            "nostart",
            "--max-attempts",
            "1",
            "--",
            "/nonexistent/strom-test-program",
        ],
        &[],
    );
    let dlq = wait_until("21 more dead-letter records", || {
        w.assert_running();
        let dlq = records(&addr, "orders.dlq");
        (dlq.len() >= 8 + 21).then_some(dlq)
    });
    w.stop();
    for r in &dlq[8..] {
        let h = &r["headers"];
        assert_eq!(h["strom.dlq.group"], "nostart", "{r}");
        assert_eq!(h["strom.dlq.reason"], "attempts-exhausted", "{r}");
        let err = h["strom.dlq.error"].as_str().expect("error text");
        assert!(
            err.starts_with("cannot start /nonexistent/strom-test-program"),
            "{r}"
        );
    }
}

#[test]
fn a_killed_workers_record_goes_to_another_worker_after_its_lease() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = out_dir(&tmp, "out");
    ok(&strom(
        &addr,
        &["topics", "create", "render", "--partitions", "1"],
        b"",
    ));
    ok(&strom(&addr, &["produce", "render"], b"frame-1\n"));
    // The first attempt is a long job (the shell becomes `sleep`, whose pid is noted so the
    // test can end it); a later one finishes at once.
    let script = r#"
        echo "$W $STROM_ATTEMPT" >> "$OUT/attempts"
        if [ "$STROM_ATTEMPT" = 1 ]; then echo $$ > "$OUT/pid"; exec sleep 60; fi
    "#;
    let args = [
        "render",
        "--group",
        "renderers",
        "--lease-ms",
        "1000",
        "--backoff",
        "list:100ms",
        "--exec",
        script,
    ];
    let mut a = Worker::spawn(
        &addr,
        tmp.path(),
        "a",
        &args,
        &[("OUT", out.to_str().expect("utf-8 path"))],
    );
    let attempts = || fs::read_to_string(out.join("attempts")).unwrap_or_default();
    let pid = wait_until("the first attempt to start", || {
        a.assert_running();
        fs::read_to_string(out.join("pid"))
            .ok()
            .filter(|p| p.ends_with('\n'))
    });
    let pid = pid.trim().to_string();
    let started = Instant::now();
    // Three lease lengths later the record is still a's: its lease is being extended.
    while started.elapsed() < Duration::from_secs(3) {
        a.assert_running();
        let g = describe(&addr, "renderers").expect("the group");
        assert_eq!(g["partitions"][0]["in_flight"], 1, "{g}");
        assert_eq!(attempts(), "a 1\n");
        std::thread::sleep(Duration::from_millis(200)); // sampling an invariant over time
    }
    let mut b = Worker::spawn(
        &addr,
        tmp.path(),
        "b",
        &args,
        &[("OUT", out.to_str().expect("utf-8 path"))],
    );
    wait_until("b to join", || {
        b.assert_running();
        describe(&addr, "renderers").filter(|g| members(g) == 2)
    });
    assert_eq!(attempts(), "a 1\n", "b must not get a record a still holds");

    // a dies mid-job: after its lease, b does it, as the second attempt.
    a.child.kill().expect("SIGKILL a");
    a.child.wait().expect("reap a");
    wait_until("b to finish the record", || {
        b.assert_running();
        describe(&addr, "renderers").filter(|g| finished(g, 1))
    });
    assert_eq!(attempts(), "a 1\nb 2\n");
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    b.stop();
    assert!(!b.stderr().contains("refused"), "{}", b.stderr());
}

#[test]
fn queue_describe_and_reset() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    ok(&strom(
        &addr,
        &["topics", "create", "audit", "--partitions", "2"],
        b"",
    ));
    let input: String = (0..10).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(&strom(
        &addr,
        &["produce", "audit", "--key-separator", ":"],
        input.as_bytes(),
    ));
    // A program run directly (no shell); its stdout is strom's.
    let args = [
        "audit",
        "--group",
        "auditors",
        "--max-attempts",
        "4",
        "--",
        "printenv",
        "STROM_OFFSET",
    ];
    let mut w = Worker::spawn(&addr, tmp.path(), "first", &args, &[]);
    let g = wait_until("every record processed", || {
        w.assert_running();
        describe(&addr, "auditors").filter(|g| finished(g, 10))
    });
    let ends: Vec<i64> = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap())
        .collect();
    let mut want_offsets: Vec<String> = ends
        .iter()
        .flat_map(|&end| (0..end).map(|o| o.to_string()))
        .collect();
    want_offsets.sort();

    // Described while the worker runs: text and JSON.
    assert_eq!(members(&g), 1, "{g}");
    assert_eq!(g["group"], "auditors");
    assert_eq!(g["settings"]["max.attempts"], "4", "{g}");
    assert_eq!(g["members"][0]["topics"][0], "audit", "{g}");
    assert_eq!(g["members"][0]["in_flight"], 0, "{g}");
    assert_eq!(g["partitions"].as_array().unwrap().len(), 2, "{g}");
    let text = ok(&strom(&addr, &["queue", "describe", "auditors"], b""));
    assert!(
        text.starts_with("queue group auditors  members 1\n"),
        "{text}"
    );
    assert!(text.contains("max.attempts=4"), "{text}");
    assert!(text.contains("  member "), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("audit ")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    let all = ok(&strom(&addr, &["queue", "describe"], b""));
    assert!(all.contains("queue group auditors"), "{all}");

    // Unknown groups, and a reset while a worker runs: one line, non-zero.
    let err = fails(&strom(&addr, &["queue", "describe", "nosuch"], b""));
    assert!(err.contains("nosuch"), "{err}");
    let err = fails(&strom(
        &addr,
        &[
            "queue",
            "reset",
            "nosuch",
            "--topic",
            "audit",
            "--to-earliest",
        ],
        b"",
    ));
    assert!(err.contains("nosuch"), "{err}");
    let err = fails(&strom(
        &addr,
        &[
            "queue",
            "reset",
            "auditors",
            "--topic",
            "audit",
            "--to-earliest",
        ],
        b"",
    ));
    assert!(err.contains("still has members"), "{err}");
    fails(&strom(
        &addr,
        &[
            "queue",
            "reset",
            "auditors",
            "--topic",
            "audit",
            "--to-time",
            "soon",
        ],
        b"",
    ));
    // No target: clap's usage error.
    let out = strom(
        &addr,
        &["queue", "reset", "auditors", "--topic", "audit"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));

    w.stop();
    let mut printed: Vec<String> = w.stdout().lines().map(str::to_string).collect();
    printed.sort();
    assert_eq!(printed, want_offsets, "the command's stdout is strom's");

    // Stopped: the reset works. To the end (a time after every record, in ms) first...
    let latest = ok(&strom(
        &addr,
        &[
            "--output",
            "json",
            "queue",
            "reset",
            "auditors",
            "--topic",
            "audit",
            "--to-time",
            "4102444800000",
        ],
        b"",
    ));
    let moved: Vec<Value> = latest
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(moved.len(), 2, "{latest}");
    for (i, m) in moved.iter().enumerate() {
        assert_eq!(m["group"], "auditors");
        assert_eq!(m["topic"], "audit");
        assert_eq!(m["partition"], i as i64);
        assert_eq!(m["offset"], ends[i], "{latest}");
    }
    // ...then to the beginning (an RFC 3339 time before every record): all ten are ready.
    let earliest = ok(&strom(
        &addr,
        &[
            "queue",
            "reset",
            "auditors",
            "--topic",
            "audit",
            "--to-time",
            "2000-01-01T00:00:00Z",
        ],
        b"",
    ));
    assert_eq!(earliest, "auditors audit/0 -> 0\nauditors audit/1 -> 0\n");
    let g = describe(&addr, "auditors").expect("the group");
    let ready: i64 = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ready"].as_i64().unwrap())
        .sum();
    assert_eq!(ready, 10, "{g}");
    assert!(
        g["partitions"][0]["oldest_unacked_ms"].as_i64().is_some(),
        "{g}"
    );
    ok(&strom(
        &addr,
        &[
            "queue",
            "reset",
            "auditors",
            "--topic",
            "audit",
            "--to-earliest",
        ],
        b"",
    ));

    // A worker started again goes through them all once more.
    let mut again = Worker::spawn(&addr, tmp.path(), "again", &args, &[]);
    wait_until("every record processed again", || {
        again.assert_running();
        describe(&addr, "auditors").filter(|g| finished(g, 10))
    });
    again.stop();
    let mut printed: Vec<String> = again.stdout().lines().map(str::to_string).collect();
    printed.sort();
    assert_eq!(printed, want_offsets);
    ok(&strom(
        &addr,
        &[
            "queue",
            "reset",
            "auditors",
            "--topic",
            "audit",
            "--to-latest",
        ],
        b"",
    ));
}

#[test]
fn queue_redrive_moves_dead_letters_back_to_their_topic() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    ok(&strom(&addr, &["topics", "create", "mail"], b""));
    ok(&strom(&addr, &["produce", "mail"], b"a\nb\nc\n"));
    // Every record is rejected the first time (straight to the dead-letter topic).
    let args = [
        "mail",
        "--group",
        "senders",
        "--exec",
        "cat > /dev/null; echo 'smtp down' >&2; exit 100",
    ];
    let mut w = Worker::spawn(&addr, tmp.path(), "rejecter", &args, &[]);
    wait_until("3 dead letters", || {
        w.assert_running();
        (records(&addr, "mail.dlq").len() == 3).then_some(())
    });
    assert!(w.terminate().success());
    let out = ok(&strom(
        &addr,
        &["queue", "redrive", "mail.dlq", "--rate", "100"],
        b"",
    ));
    assert_eq!(
        out.trim(),
        "mail.dlq: 3 records moved back to their origin topics"
    );
    let all = records(&addr, "mail");
    assert_eq!(all.len(), 6, "{all:?}");
    let redriven: Vec<&Value> = all
        .iter()
        .filter(|r| r.to_string().contains("strom.redrive.count"))
        .collect();
    assert_eq!(redriven.len(), 3, "{all:?}");
    // A second redrive of the same dead letters is a new task: it moves them again (the
    // dead-letter topic keeps its records), as JSON.
    let out = ok(&strom(
        &addr,
        &[
            "--output", "json", "queue", "redrive", "mail.dlq", "--to", "mail",
        ],
        b"",
    ));
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (v["moved"].as_u64(), v["done"].as_bool()),
        (Some(3), Some(true)),
        "{v}"
    );
    // An unknown topic is one line and a non-zero exit.
    let err = fails(&strom(&addr, &["queue", "redrive", "nope.dlq"], b""));
    assert!(err.contains("nope.dlq"), "{err}");
}

#[test]
fn key_order_holds_through_strom_work_under_failures() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = out_dir(&tmp, "out");
    ok(&strom(
        &addr,
        &["topics", "create", "ledger", "--partitions", "2"],
        b"",
    ));
    // 3 keys x 12 records, values key-seq; every record whose seq ends in 1 fails once.
    let input: String = (0..36)
        .map(|i| format!("acct{}:acct{}-{:02}\n", i % 3, i % 3, i / 3))
        .collect();
    ok(&strom(
        &addr,
        &["produce", "ledger", "--key-separator", ":"],
        input.as_bytes(),
    ));
    let script = r#"
        v=$(cat)
        case "$v" in
          *1) if [ "$STROM_ATTEMPT" = 1 ]; then echo "flaky" >&2; exit 1; fi;;
        esac
        echo "$v" >> "$OUT/$STROM_KEY"
    "#;
    let args = [
        "ledger",
        "--group",
        "bank",
        "--ordering",
        "key",
        "--concurrency",
        "3",
        "--backoff",
        "list:50ms",
        "--exec",
        script,
    ];
    let env = [("OUT", out.to_str().expect("utf-8 path"))];
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| Worker::spawn(&addr, tmp.path(), &format!("w{i}"), &args, &env))
        .collect();
    wait_until("every record finished", || {
        for w in &mut workers {
            w.assert_running();
        }
        describe(&addr, "bank").filter(|g| finished(g, 36))
    });
    for w in &mut workers {
        assert!(w.terminate().success());
    }
    let seen = files(&out);
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (key, lines) in seen {
        let got: Vec<&str> = lines.lines().collect();
        let want: Vec<String> = (0..12).map(|n| format!("{key}-{n:02}")).collect();
        assert_eq!(got, want, "records of {key} done out of order");
    }
}

#[test]
fn delayed_records_wait_for_their_time_through_strom_work() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = out_dir(&tmp, "out");
    ok(&strom(&addr, &["topics", "create", "jobs"], b""));
    // Each record leaves a file named by its value holding when the command ran (ms).
    let script = r#"date +%s%3N > "$OUT/$(cat)""#;
    let mut worker = Worker::spawn(
        &addr,
        tmp.path(),
        "w",
        &["jobs", "--group", "pool", "--exec", script],
        &[("OUT", out.to_str().expect("utf-8 path"))],
    );
    wait_until("the worker joined", || {
        worker.assert_running();
        describe(&addr, "pool").filter(|g| members(g) == 1)
    });

    // --deliver-after: the time is taken when the command runs, between these two clocks.
    let before = now_ms();
    ok(&strom(
        &addr,
        &["produce", "jobs", "--deliver-after", "3s"],
        b"after-1\nafter-2\n",
    ));
    let after = now_ms();
    ok(&strom(&addr, &["produce", "jobs"], b"now-1\nnow-2\n"));
    // --deliver-at: a whole second about 4 s ahead, in RFC 3339.
    let at_s = (now_ms() + 4_999) / 1000;
    let stamp = Command::new("date")
        .args(["-u", "-d", &format!("@{at_s}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    let stamp = String::from_utf8(stamp.stdout).expect("utf-8");
    ok(&strom(
        &addr,
        &["produce", "jobs", "--deliver-at", stamp.trim()],
        b"at-1\n",
    ));
    let g = describe(&addr, "pool").expect("the group");
    let delayed: i64 = g["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["delayed"].as_i64().unwrap())
        .sum();
    assert!(
        now_ms() >= before + 3_000 || delayed >= 2,
        "describe shows the pending delays: {g}"
    );

    let ran = wait_until("every record processed", || {
        worker.assert_running();
        let done = files(&out);
        (done.len() == 5 && done.values().all(|t| !t.trim().is_empty())).then_some(done)
    });
    let when = |v: &str| -> i64 { ran[v].trim().parse().expect("ms") };
    for v in ["after-1", "after-2"] {
        assert!(
            when(v) >= before + 3_000,
            "{v} ran {} ms early",
            before + 3_000 - when(v)
        );
        assert!(
            when(v) <= after + 3_000 + 1_000,
            "{v} ran {} ms after its time",
            when(v) - after - 3_000
        );
    }
    let at = at_s * 1000;
    assert!(
        when("at-1") >= at,
        "at-1 ran {} ms early",
        at - when("at-1")
    );
    assert!(
        when("at-1") <= at + 1_000,
        "at-1 ran {} ms late",
        when("at-1") - at
    );
    for v in ["now-1", "now-2"] {
        assert!(
            when(v) < before + 3_000,
            "{v} waited behind delayed records"
        );
    }
    worker.stop();

    // Bad times are refused by the command line, before anything is sent.
    for args in [
        ["produce", "jobs", "--deliver-after", "91d"],
        ["produce", "jobs", "--deliver-at", "tomorrow"],
    ] {
        let out = strom(&addr, &args, b"x\n");
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--deliver-"), "{args:?}: {err}");
    }
    assert_eq!(records(&addr, "jobs").len(), 5, "a refused produce wrote");
}
