//! `strom cluster up` and `strom cluster status` as processes: a local three-broker cluster
//! started as children of `cluster up`, described through one broker, used through the others,
//! and stopped by SIGINT; the same cluster started twice on one `--data-dir` (same controller
//! ports, topics kept); the status of a single `strom serve`; bad `--nodes`.
//!
//! Every port is picked by the OS (the brokers' own listeners on port 0, the controller ports
//! by `cluster up`); waits poll a condition up to a deadline.

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Broker, TestDir, tail};

/// How long `cluster up` may take to print its cluster (three brokers forming a quorum).
const STARTUP: Duration = Duration::from_secs(120);
/// How long anything else may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `strom <args>` to completion, with no stdin.
fn strom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run strom")
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

/// Calls `f` until it gives a value, up to [`DEADLINE`] (polling a condition, not a sleep
/// standing in for one).
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`-INT`, `-TERM`) to a process.
fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill {signal} {pid}: {sent}");
}

/// Waits for `child` to exit, up to `within` (polling its exit).
fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

static UP_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A running `strom cluster up --output json`: its JSON object, its stderr in a file. Dropping
/// it stops it with SIGTERM (so it stops its brokers), then SIGKILL.
struct Up {
    child: Option<Child>,
    info: Value,
    stderr: PathBuf,
}

impl Up {
    fn start(args: &[&str], stderr_dir: &Path) -> Up {
        std::fs::create_dir_all(stderr_dir).expect("a directory for the stderr of cluster up");
        let n = UP_SEQ.fetch_add(1, Ordering::Relaxed);
        let stderr = stderr_dir.join(format!("cluster-up-{n}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args(["cluster", "up", "--output", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("the stderr file"))
            .spawn()
            .expect("spawn strom cluster up");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let mut up = Up {
            child: Some(child),
            info: Value::Null,
            stderr,
        };
        match rx.recv_timeout(STARTUP) {
            Ok(Some(Ok(line))) => {
                up.info = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("cluster up printed {line:?}, not JSON: {e}"));
            }
            other => panic!(
                "cluster up printed no cluster ({other:?}); its stderr:\n{}",
                tail(&up.stderr)
            ),
        }
        assert_eq!(
            up.info["brokers"].as_array().map(Vec::len),
            args.windows(2)
                .find(|w| w[0] == "--nodes")
                .map(|w| w[1].parse().expect("a node count"))
                .or(Some(3)),
            "{}",
            up.info
        );
        up
    }

    fn brokers(&self) -> &[Value] {
        self.info["brokers"].as_array().expect("brokers")
    }

    /// Broker `id`'s address of `kind` (`native`, `kafka`, `http`, `controller`).
    fn addr(&self, id: u64, kind: &str) -> String {
        let b = self
            .brokers()
            .iter()
            .find(|b| b["broker"].as_u64() == Some(id))
            .unwrap_or_else(|| panic!("no broker {id} in {}", self.info));
        b[kind]
            .as_str()
            .unwrap_or_else(|| panic!("no {kind} address of broker {id} in {b}"))
            .to_string()
    }

    /// Every address of every broker.
    fn all_addrs(&self) -> Vec<SocketAddr> {
        let mut all = Vec::new();
        for b in self.brokers() {
            for kind in ["native", "kafka", "http", "controller"] {
                let a: SocketAddr = b[kind]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no {kind} address in {b}"));
                assert!(a.ip().is_loopback(), "{a} is not a loopback address");
                all.push(a);
            }
        }
        all
    }

    /// SIGINT; the exit status (within [`DEADLINE`]).
    fn interrupt(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("cluster up running");
        signal(child.id(), "-INT");
        match wait_exit(&mut child, DEADLINE) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cluster up did not exit after SIGINT; its stderr:\n{}",
                    tail(&self.stderr)
                );
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- stderr of cluster up ---\n{}", tail(&self.stderr));
            for b in self.brokers() {
                if let Some(log) = b["log"].as_str() {
                    eprintln!("--- {log} ---\n{}", tail(Path::new(log)));
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-TERM");
            if wait_exit(&mut child, DEADLINE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `strom cluster status --output json` through `addr`; `None` when it fails.
fn status(addr: &str) -> Option<Value> {
    let out = strom(&["--bootstrap", addr, "cluster", "status", "--output", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The status once every one of `ids` is registered, alive, and holds the metadata log up to
/// an index above 0 and at most the committed one.
fn settled_status(addr: &str, ids: &[u64]) -> Value {
    wait_until("every broker alive in cluster status", || {
        let s = status(addr)?;
        let committed = s["committed"].as_u64()?;
        let brokers = s["brokers"].as_array()?;
        let listed: Vec<u64> = brokers
            .iter()
            .filter_map(|b| b["broker"].as_u64())
            .collect();
        let settled = listed == ids
            && brokers.iter().all(|b| {
                b["state"] == "alive"
                    && b["metadata"]
                        .as_u64()
                        .is_some_and(|m| m > 0 && m <= committed)
            });
        settled.then_some(s)
    })
}

/// Each partition's leader of `topic`, from `strom topics describe --output json` through
/// `addr`, once it lists `partitions` partitions.
fn leaders(addr: &str, topic: &str, partitions: usize) -> Vec<i64> {
    wait_until(&format!("{topic} described through {addr}"), || {
        let out = strom(&[
            "--bootstrap",
            addr,
            "--output",
            "json",
            "topics",
            "describe",
            topic,
        ]);
        if !out.status.success() {
            return None;
        }
        let mut rows: Vec<(i64, i64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| Some((v["partition"].as_i64()?, v["leader"].as_i64()?)))
            .collect();
        rows.sort_unstable();
        (rows.len() == partitions && rows.iter().all(|(_, l)| *l >= 0))
            .then(|| rows.into_iter().map(|(_, l)| l).collect())
    })
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn cluster_up_starts_three_brokers_that_status_describes_and_sigint_stops() {
    let logs = TestDir::new();
    let mut up = Up::start(&["--nodes", "3"], &logs.data());
    assert_eq!(up.info["temporary"], true, "{}", up.info);
    let data_dir = PathBuf::from(up.info["data_dir"].as_str().expect("data_dir"));
    assert!(data_dir.join("node-2").is_dir(), "{}", data_dir.display());
    let natives: Vec<String> = (1..=3).map(|id| up.addr(id, "native")).collect();
    assert_eq!(up.info["bootstrap"], natives.join(","));
    for addr in up.all_addrs() {
        assert!(answers(addr), "{addr} does not answer");
    }

    // Status through broker 1: three voters alive, one of them the active controller, each
    // holding the metadata log up to the committed index at most.
    let s = settled_status(&natives[0], &[1, 2, 3]);
    let controller = s["controller_id"].as_u64().expect("controller_id");
    assert!((1..=3).contains(&controller), "{s}");
    assert!(s["term"].as_u64().is_some_and(|t| t > 0), "{s}");
    let brokers = s["brokers"].as_array().expect("brokers");
    let active: Vec<u64> = brokers
        .iter()
        .filter(|b| b["active_controller"] == true)
        .filter_map(|b| b["broker"].as_u64())
        .collect();
    assert_eq!(active, [controller], "{s}");
    for b in brokers {
        let id = b["broker"].as_u64().expect("broker id");
        assert_eq!(b["role"], "voter", "{b}");
        assert!(b["epoch"].as_u64().is_some_and(|e| e > 0), "{b}");
        for kind in ["native", "kafka", "http", "controller"] {
            assert_eq!(b[kind].as_str(), Some(up.addr(id, kind).as_str()), "{b}");
        }
    }
    // The same through broker 3, as a table.
    let text = ok(&strom(&["--bootstrap", &natives[2], "cluster", "status"]));
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("controller {controller}  term "))),
        "{text}"
    );
    assert!(
        text.contains("BROKER") && text.contains("METADATA"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{controller}* ")) && l.contains("alive")),
        "{text}"
    );

    // A topic created through broker 1 is led by all three, as broker 2 describes it.
    ok(&strom(&[
        "--bootstrap",
        &natives[0],
        "topics",
        "create",
        "t",
        "--partitions",
        "6",
    ]));
    let led: BTreeSet<i64> = leaders(&natives[1], "t", 6).into_iter().collect();
    assert_eq!(led, BTreeSet::from([1, 2, 3]));
    // Status counts the partitions, none offline or under-replicated (a broker killed is in
    // tests/cluster.rs: its partitions are then listed offline).
    // 6 of t, and the asked broker's own `__queue_delays` (its log of delayed runs).
    let s = status(&natives[1]).expect("status");
    assert_eq!(s["partitions"], 7, "{s}");
    assert_eq!(s["offline"], serde_json::json!([]), "{s}");
    assert_eq!(s["under_replicated"], serde_json::json!([]), "{s}");
    let text = ok(&strom(&["--bootstrap", &natives[1], "cluster", "status"]));
    assert!(
        text.contains("partitions 7  offline 0  under-replicated 0"),
        "{text}"
    );

    // SIGINT stops every broker: none of their ports answers, and the temporary data is gone.
    let addrs = up.all_addrs();
    let status = up.interrupt();
    assert!(
        status.success(),
        "cluster up exited with {status}: {}",
        tail(&up.stderr)
    );
    for addr in addrs {
        assert!(
            !answers(addr),
            "{addr} still answers after cluster up exited"
        );
    }
    assert!(!data_dir.exists(), "{} is still there", data_dir.display());
}

#[test]
fn cluster_up_on_a_data_dir_starts_the_same_cluster_again() {
    let dir = TestDir::new();
    let data = dir.data().join("cluster");
    let data_arg = data.to_str().expect("a utf-8 path");
    let logs = dir.data().join("logs");

    let mut first = Up::start(&["--nodes", "3", "--data-dir", data_arg], &logs);
    assert_eq!(first.info["temporary"], false, "{}", first.info);
    let controllers: Vec<String> = (1..=3).map(|id| first.addr(id, "controller")).collect();
    ok(&strom(&[
        "--bootstrap",
        &first.addr(1, "native"),
        "topics",
        "create",
        "kept",
        "--partitions",
        "3",
        // One copy each: where each partition is led is then fixed across the restart.
        "--replication-factor",
        "1",
    ]));
    assert_eq!(leaders(&first.addr(3, "native"), "kept", 3).len(), 3);
    let status = first.interrupt();
    assert!(status.success(), "{status}: {}", tail(&first.stderr));
    assert!(data.join("cluster.json").is_file());
    for id in 1..=3 {
        let log = data.join(format!("node-{id}")).join("strom.log");
        assert!(log.is_file(), "{}", log.display());
    }

    let second = Up::start(&["--nodes", "3", "--data-dir", data_arg], &logs);
    let again: Vec<String> = (1..=3).map(|id| second.addr(id, "controller")).collect();
    assert_eq!(again, controllers, "the controller ports are reused");
    let led: BTreeSet<i64> = leaders(&second.addr(2, "native"), "kept", 3)
        .into_iter()
        .collect();
    assert_eq!(led, BTreeSet::from([1, 2, 3]), "the topic is still there");
    settled_status(&second.addr(3, "native"), &[1, 2, 3]);

    // While it runs: another node count is refused, and so are its taken ports.
    let other = strom(&["cluster", "up", "--nodes", "1", "--data-dir", data_arg]);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("3 nodes, not 1"), "{err}");
    let again = strom(&["cluster", "up", "--nodes", "3", "--data-dir", data_arg]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("is taken") && err.contains(&controllers[0]),
        "{err}"
    );
    drop(second);
}

#[test]
fn cluster_status_of_a_single_broker_shows_its_own_controller() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let s = settled_status(&addr, &[0]);
    assert_eq!(s["controller_id"], 0, "{s}");
    let b = &s["brokers"][0];
    assert_eq!(b["active_controller"], true, "{s}");
    assert_eq!(b["role"], "voter", "{s}");
    assert_eq!(b["native"].as_str(), Some(addr.as_str()), "{s}");
    assert_eq!(
        b["kafka"].as_str(),
        broker.kafka_addr.map(|a| a.to_string()).as_deref(),
        "{s}"
    );
    assert!(b["controller"].as_str().is_some(), "{s}");
    let text = ok(&strom(&["--bootstrap", &addr, "cluster", "status"]));
    assert!(text.starts_with("controller 0  term "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("0* ") && l.contains(&addr)),
        "{text}"
    );
}

#[test]
fn bad_node_counts_are_refused() {
    for n in ["0", "10"] {
        let out = strom(&["cluster", "up", "--nodes", n]);
        assert!(!out.status.success(), "--nodes {n} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--nodes") && err.contains("1 to 9"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty());
    }
}
