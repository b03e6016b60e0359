//! `strom cluster`: the cluster's state as its active controller sees it (`status`), and a local
//! cluster of `strom serve` child processes for trying things out (`up`).
//!
//! `cluster up` starts N brokers (node ids 1..N) of the running executable, every client
//! listener on a free loopback port and the controller listeners on ports it picks (bound to
//! port 0, then released). The first 1, 3 or 5 nodes are the voters of the metadata quorum (all
//! of them when N is 1, 3 or 5; one of two; three otherwise), the others learners. It reads each
//! child's `listening on` lines, prints the addresses, and waits: SIGINT or SIGTERM stops every
//! child (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and exits 0; a child that exits on its
//! own stops the others and exits non-zero. The children run in their own process groups, so a
//! Ctrl-C in the terminal reaches only `cluster up`, which stops them in order.
//!
//! With `--data-dir DIR` node N keeps its data in `DIR/node-N` and the controller addresses are
//! saved in `DIR/cluster.json`: the metadata log remembers the voters' addresses, so the next
//! `cluster up --data-dir DIR` must use the same ones. Without it the data goes to a fresh
//! temporary directory, removed on exit. Each child's stderr (its log) is `node-N/strom.log`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use strom_client::{Admin, ClusterDescription};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, watch};

use super::Output;

/// How long the brokers may take to print their addresses (a larger quorum waits for its
/// voters before it listens).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The file in `--data-dir` that keeps the cluster's shape and controller addresses.
const CLUSTER_FILE: &str = "cluster.json";
/// The most brokers `cluster up` starts.
const MAX_NODES: u32 = 9;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the brokers (endpoints, alive or fenced, voter or learner, how far each holds the
    /// metadata log) and the active controller, as the active controller sees them.
    Status,
    /// Start a local cluster of `strom serve` child processes for trying things out; print each
    /// broker's addresses; Ctrl-C stops them all.
    Up(UpArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Brokers to start, 1 to 9 (node ids 1..N)
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_nodes)]
    pub nodes: u32,
    /// Keep the data in DIR/node-N and the controller ports in DIR/cluster.json, so the next
    /// `cluster up --data-dir DIR` starts the same cluster again [default: a temporary
    /// directory, removed on exit]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

fn parse_nodes(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_NODES).contains(&n) => Ok(n),
        _ => Err(format!(
            "--nodes must be a number from 1 to {MAX_NODES} (a local cluster), not {s:?}"
        )),
    }
}

/// `strom cluster status`.
pub async fn status(admin: &Admin, output: Output) -> anyhow::Result<()> {
    let cluster = admin
        .describe_cluster()
        .await
        .context("describing the cluster")?;
    let topics = admin
        .list_topics()
        .await
        .context("listing the cluster's partitions")?;
    let health = Health::of(&topics);
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            let mut v = status_json(&cluster);
            v["partitions"] = health.partitions.into();
            v["offline"] = Health::json(&health.offline);
            v["under_replicated"] = Health::json(&health.under_replicated);
            writeln!(out, "{v}")?;
        }
        Output::Text => {
            write_status_table(&mut out, &cluster)?;
            health.write(&mut out)?;
        }
    }
    Ok(())
}

/// The partitions' health as Metadata describes them: which have no leader (offline: their
/// leader's broker is down and no other in-sync replica is alive) and which have fewer
/// in-sync replicas than replicas (under-replicated).
struct Health {
    partitions: usize,
    offline: Vec<(String, i32)>,
    under_replicated: Vec<(String, i32)>,
}

impl Health {
    /// Partitions listed by name in the text output before "and N more".
    const LISTED: usize = 20;

    fn of(topics: &[strom_client::TopicDescription]) -> Self {
        let mut h = Health {
            partitions: 0,
            offline: Vec::new(),
            under_replicated: Vec::new(),
        };
        for t in topics {
            for p in &t.partitions {
                h.partitions += 1;
                if p.leader < 0 {
                    h.offline.push((t.name.clone(), p.partition));
                }
                if p.isr.len() < p.replicas.len() {
                    h.under_replicated.push((t.name.clone(), p.partition));
                }
            }
        }
        h
    }

    fn json(parts: &[(String, i32)]) -> serde_json::Value {
        parts
            .iter()
            .map(|(t, p)| serde_json::json!({"topic": t, "partition": p}))
            .collect()
    }

    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "partitions {}  offline {}  under-replicated {}",
            self.partitions,
            self.offline.len(),
            self.under_replicated.len()
        )?;
        for (label, parts) in [
            ("offline", &self.offline),
            ("under-replicated", &self.under_replicated),
        ] {
            if parts.is_empty() {
                continue;
            }
            let mut names: Vec<String> = parts
                .iter()
                .take(Self::LISTED)
                .map(|(t, p)| format!("{t}-{p}"))
                .collect();
            if parts.len() > Self::LISTED {
                names.push(format!("and {} more", parts.len() - Self::LISTED));
            }
            writeln!(out, "{label}: {}", names.join(" "))?;
        }
        Ok(())
    }
}

/// A broker's state word: `alive`, `storage-failed` (alive, but its disk refuses writes: it
/// leads nothing), `fenced`, or `unregistered` (a quorum member that never registered as a
/// broker).
fn state(b: &strom_client::BrokerDescription) -> &'static str {
    match (b.broker_epoch, b.alive) {
        (None, _) => "unregistered",
        (Some(_), true) if b.storage_failed => "storage-failed",
        (Some(_), true) => "alive",
        (Some(_), false) => "fenced",
    }
}

fn status_json(c: &ClusterDescription) -> serde_json::Value {
    let brokers: Vec<serde_json::Value> = c
        .brokers
        .iter()
        .map(|b| {
            serde_json::json!({
                "broker": b.node_id,
                "epoch": b.broker_epoch,
                "native": b.native_address,
                "kafka": b.kafka_address,
                "http": b.http_address,
                "controller": b.controller_address,
                "role": b.role.as_str(),
                "state": state(b),
                "metadata": b.metadata_index,
                "active_controller": b.node_id == c.controller_id,
            })
        })
        .collect();
    serde_json::json!({
        "controller_id": c.controller_id,
        "term": c.term,
        "committed": c.committed_index,
        "brokers": brokers,
    })
}

fn write_status_table(out: &mut impl Write, c: &ClusterDescription) -> std::io::Result<()> {
    writeln!(
        out,
        "controller {}  term {}  committed {}  brokers {} (* active controller)",
        c.controller_id,
        c.term,
        c.committed_index,
        c.brokers.len()
    )?;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let rows: Vec<[String; 8]> = c
        .brokers
        .iter()
        .map(|b| {
            let mark = if b.node_id == c.controller_id {
                "*"
            } else {
                ""
            };
            [
                format!("{}{mark}", b.node_id),
                dash(&b.native_address),
                dash(&b.kafka_address),
                dash(&b.http_address),
                dash(&b.controller_address),
                b.role.as_str().to_string(),
                state(b).to_string(),
                b.metadata_index
                    .map_or_else(|| "-".to_string(), |i| i.to_string()),
            ]
        })
        .collect();
    let header = [
        "BROKER",
        "NATIVE",
        "KAFKA",
        "HTTP",
        "CONTROLLER",
        "ROLE",
        "STATE",
        "METADATA",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                // The last column (a number) is right-aligned.
                s.push_str(&format!("{cell:>w$}"));
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// cluster up
// ------------------------------------------------------------------------------------------

/// How many of `nodes` are voters: the broker takes 1, 3 or 5.
fn voter_count(nodes: u32) -> u32 {
    match nodes {
        1 | 3 | 5 => nodes,
        2 => 1,
        _ => 3,
    }
}

/// The cluster's shape and controller addresses, as `DIR/cluster.json` keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    nodes: u32,
    voters: u32,
    /// Controller listener of each node, by node id.
    controllers: BTreeMap<u32, SocketAddr>,
}

impl Plan {
    /// New controller ports: all bound at once (so they differ), then released for the
    /// brokers to bind. Picked below the OS's ephemeral range when it leaves room: a port from
    /// that range can be taken by any outgoing connection's local end between the release and
    /// the broker's bind (seen in the test suite as "Address already in use"), one below it only
    /// by another listener.
    fn fresh(nodes: u32) -> anyhow::Result<Plan> {
        let listeners = (1..=nodes)
            .map(|id| {
                let l = reserve_port().context("reserving a controller port on 127.0.0.1")?;
                Ok((id, l.local_addr()?, l))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Plan {
            nodes,
            voters: voter_count(nodes),
            controllers: listeners.into_iter().map(|(id, a, _)| (id, a)).collect(),
        })
    }

    fn to_json(&self) -> serde_json::Value {
        let controllers: serde_json::Map<String, serde_json::Value> = self
            .controllers
            .iter()
            .map(|(id, a)| (id.to_string(), a.to_string().into()))
            .collect();
        serde_json::json!({
            "nodes": self.nodes,
            "voters": self.voters,
            "controllers": controllers,
        })
    }

    fn from_json(text: &str) -> Result<Plan, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let number = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("no number {key:?}"))
        };
        let nodes = number("nodes")?;
        let voters = number("voters")?;
        if !(1..=MAX_NODES).contains(&nodes) || ![1, 3, 5].contains(&voters) || voters > nodes {
            return Err(format!(
                "{nodes} nodes with {voters} voters is not a cluster"
            ));
        }
        let map = v
            .get("controllers")
            .and_then(serde_json::Value::as_object)
            .ok_or("no \"controllers\" object")?;
        let mut controllers = BTreeMap::new();
        for id in 1..=nodes {
            let addr = map
                .get(&id.to_string())
                .and_then(serde_json::Value::as_str)
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or_else(|| format!("no controller address of node {id}"))?;
            controllers.insert(id, addr);
        }
        Ok(Plan {
            nodes,
            voters,
            controllers,
        })
    }

    /// `--controller-voters`: the first `voters` nodes.
    fn voters_arg(&self) -> String {
        self.controllers
            .iter()
            .filter(|(id, _)| **id <= self.voters)
            .map(|(id, a)| format!("{id}@{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Where the cluster's data lives; a temporary directory is removed on drop.
#[derive(Debug)]
struct DataDir {
    path: PathBuf,
    temporary: bool,
}

impl DataDir {
    fn temporary() -> anyhow::Result<DataDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("strom-cluster-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating the temporary directory {}", path.display()))?;
        Ok(DataDir {
            path,
            temporary: true,
        })
    }

    fn kept(dir: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let path = std::path::absolute(dir)
            .with_context(|| format!("resolving the data directory {}", dir.display()))?;
        Ok(DataDir {
            path,
            temporary: false,
        })
    }

    fn node(&self, id: u32) -> PathBuf {
        self.path.join(format!("node-{id}"))
    }

    fn log(&self, id: u32) -> PathBuf {
        self.node(id).join("strom.log")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.temporary
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            eprintln!(
                "strom: could not remove the temporary directory {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Lowest port [`reserve_port`] picks.
const RESERVED_PORTS_FROM: u16 = 20_000;

/// A listener on 127.0.0.1 at a free port below the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, else 32768), tried at random; the OS's pick (port
/// 0) when none is found or the range leaves no room below it.
fn reserve_port() -> std::io::Result<TcpListener> {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(RESERVED_PORTS_FROM);
    if span >= 1_000 {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        for attempt in 0..64u64 {
            random.write_u64(attempt);
            let port = RESERVED_PORTS_FROM + (random.finish() % u64::from(span)) as u16;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                return Ok(l);
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
}

/// The plan for `dir`: the one saved there (checked against `nodes`, its ports free), or a new
/// one, saved.
fn plan_for(dir: &DataDir, nodes: u32) -> anyhow::Result<Plan> {
    let file = dir.path.join(CLUSTER_FILE);
    if dir.temporary {
        return Plan::fresh(nodes);
    }
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let plan = Plan::from_json(&text)
                .map_err(|e| anyhow!("{} is not a cluster file of strom: {e}", file.display()))?;
            if plan.nodes != nodes {
                bail!(
                    "{} holds a cluster of {} nodes, not {nodes}: run `strom cluster up --nodes {} --data-dir {}`, or use another directory",
                    dir.path.display(),
                    plan.nodes,
                    plan.nodes,
                    dir.path.display()
                );
            }
            for (id, addr) in &plan.controllers {
                if let Err(e) = TcpListener::bind(addr) {
                    bail!(
                        "the controller port {addr} of node {id} (saved in {}) is taken: {e}; stop what holds it (another `strom cluster up` on this directory?) and try again",
                        file.display()
                    );
                }
            }
            Ok(plan)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(id) = (1..=MAX_NODES).find(|id| dir.node(*id).exists()) {
                bail!(
                    "{} holds {} but no {CLUSTER_FILE}: it is not a directory of `strom cluster up`",
                    dir.path.display(),
                    dir.node(id).display()
                );
            }
            let plan = Plan::fresh(nodes)?;
            std::fs::write(&file, format!("{:#}\n", plan.to_json()))
                .with_context(|| format!("writing {}", file.display()))?;
            Ok(plan)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// A broker's addresses from its `listening on` lines.
#[derive(Debug, Clone, Default)]
struct Addrs {
    native: Option<String>,
    kafka: Option<String>,
    http: Option<String>,
}

impl Addrs {
    fn complete(&self) -> bool {
        self.native.is_some() && self.kafka.is_some() && self.http.is_some()
    }
}

/// What the children's tasks report.
#[derive(Debug)]
enum Event {
    /// The broker printed all its addresses.
    Listening { id: u32, addrs: Addrs },
    /// The broker exited (or could not be waited for); `killed`: SIGKILLed after the grace.
    Exited {
        id: u32,
        status: std::io::Result<ExitStatus>,
        killed: bool,
    },
}

/// How the start-up ended.
#[derive(Debug)]
enum Startup {
    /// Every broker printed its addresses.
    Listening,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// A broker exited, or did not listen in time.
    Failed(anyhow::Error),
}

/// 0 while running, 1 to stop the children (SIGTERM, then SIGKILL after the grace), 2 to kill
/// them now.
type Stop = watch::Sender<u8>;

/// `strom cluster up`.
pub async fn up(args: UpArgs, output: Output) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let exe = std::env::current_exe().context("finding the strom executable")?;
    let dir = match &args.data_dir {
        Some(d) => DataDir::kept(d)?,
        None => DataDir::temporary()?,
    };
    let plan = plan_for(&dir, args.nodes)?;
    // Before any child starts, so a signal from here on stops them in order.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let (stop, _) = watch::channel(0u8);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut running = BTreeSet::new();
    let mut pids = BTreeMap::new();
    let mut spawn_error = None;
    for id in 1..=plan.nodes {
        match spawn_node(&exe, &dir, &plan, id) {
            Ok((child, stdout)) => {
                if let Some(pid) = child.id() {
                    pids.insert(id, pid);
                }
                tokio::spawn(read_addresses(id, stdout, events_tx.clone()));
                tokio::spawn(supervise(id, child, stop.subscribe(), events_tx.clone()));
                running.insert(id);
            }
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }
    drop(events_tx);
    if let Some(e) = spawn_error {
        stop_all(&stop, &mut running, &mut events, &mut term, &mut int).await;
        return Err(e);
    }

    // Start-up: every broker's addresses, or the first failure.
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut listening: BTreeMap<u32, Addrs> = BTreeMap::new();
    let started = loop {
        if listening.len() == running.len() {
            break Startup::Listening;
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Listening { id, addrs }) => {
                    listening.insert(id, addrs);
                }
                Some(Event::Exited { id, status, .. }) => {
                    running.remove(&id);
                    break Startup::Failed(failed(&dir, id, true, &status));
                }
                None => break Startup::Failed(anyhow!("lost track of the brokers")),
            },
            _ = tokio::time::sleep_until(deadline) => {
                let waiting: Vec<u32> = running
                    .iter()
                    .copied()
                    .filter(|id| !listening.contains_key(id))
                    .collect();
                let first = waiting.first().copied().unwrap_or(1);
                let names: Vec<String> = waiting.iter().map(u32::to_string).collect();
                break Startup::Failed(anyhow!(
                    "broker {} did not print its addresses within {} s (the end of {}: {})",
                    names.join(", "),
                    STARTUP_TIMEOUT.as_secs(),
                    dir.log(first).display(),
                    last_line(&dir.log(first)),
                ));
            }
            _ = term.recv() => break Startup::Interrupted,
            _ = int.recv() => break Startup::Interrupted,
        }
    };
    match started {
        Startup::Listening => {}
        Startup::Interrupted => {
            stop_all(&stop, &mut running, &mut events, &mut term, &mut int).await;
            eprintln!("strom: interrupted while starting: stopped the brokers");
            return Ok(());
        }
        Startup::Failed(e) => {
            stop_all(&stop, &mut running, &mut events, &mut term, &mut int).await;
            return Err(e);
        }
    }

    if let Err(e) = print_cluster(&dir, &plan, &listening, &pids, output) {
        stop_all(&stop, &mut running, &mut events, &mut term, &mut int).await;
        return Err(e);
    }

    // Running: until a signal, or a child exits on its own.
    let outcome = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Exited { id, status, .. }) => {
                    running.remove(&id);
                    break Err(failed(&dir, id, false, &status));
                }
                Some(Event::Listening { .. }) => {}
                None => break Err(anyhow!("lost track of the brokers")),
            },
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        }
    };
    if outcome.is_err() {
        eprintln!("strom: a broker stopped: stopping the others");
    } else {
        let n = running.len();
        let plural = if n == 1 { "" } else { "s" };
        eprintln!("strom: stopping {n} broker{plural} (Ctrl-C again kills at once)");
    }
    stop_all(&stop, &mut running, &mut events, &mut term, &mut int).await;
    if outcome.is_ok() {
        eprintln!("strom: stopped");
    }
    outcome
}

/// Starts node `id`: `strom serve` with its data directory, free loopback ports, the quorum's
/// voters, its log as stderr, in its own process group.
fn spawn_node(
    exe: &Path,
    dir: &DataDir,
    plan: &Plan,
    id: u32,
) -> anyhow::Result<(Child, ChildStdout)> {
    let data = dir.node(id);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let log_path = dir.log(id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the log {}", log_path.display()))?;
    let controller = plan
        .controllers
        .get(&id)
        .with_context(|| format!("no controller address for node {id}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--kafka-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .arg("--controller-voters")
        .arg(plan.voters_arg());
    if id > plan.voters {
        // A learner binds here; a voter binds its address in --controller-voters.
        cmd.arg("--controller-listen").arg(controller.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting broker {id} ({})", exe.display()))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("no stdout of broker {id}"))?;
    Ok((child, stdout))
}

/// Reads a broker's `listening on` lines, reports its addresses, then drains its stdout so it
/// never blocks on a full pipe.
async fn read_addresses(id: u32, stdout: ChildStdout, events: mpsc::UnboundedSender<Event>) {
    let mut lines = BufReader::new(stdout).lines();
    let mut addrs = Addrs::default();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        if let Some(a) = line.strip_prefix("kafka listening on ") {
            addrs.kafka = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("http listening on ") {
            addrs.http = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("listening on ") {
            addrs.native = Some(a.to_string());
        }
        if addrs.complete() {
            let _ = events.send(Event::Listening {
                id,
                addrs: addrs.clone(),
            });
            while let Ok(Some(_)) = lines.next_line().await {}
            return;
        }
    }
    // Stdout closed early: the child is exiting, and its supervisor reports how.
}

/// Waits for the child to exit, or stops it when asked; reports its exit status.
async fn supervise(
    id: u32,
    mut child: Child,
    mut stop: watch::Receiver<u8>,
    events: mpsc::UnboundedSender<Event>,
) {
    let exited = tokio::select! {
        status = child.wait() => Some(status),
        _ = stop.wait_for(|s| *s >= 1) => None,
    };
    let (status, killed) = match exited {
        Some(status) => (status, false),
        None => terminate(&mut child, &mut stop).await,
    };
    let _ = events.send(Event::Exited { id, status, killed });
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`] (or at once when asked again).
async fn terminate(
    child: &mut Child,
    stop: &mut watch::Receiver<u8>,
) -> (std::io::Result<ExitStatus>, bool) {
    if let Some(pid) = child.id() {
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !sent.is_ok_and(|s| s.success()) {
            // No kill(1) to send SIGTERM with: SIGKILL is what is left.
            let _ = child.start_kill();
        }
    }
    tokio::select! {
        status = child.wait() => return (status, false),
        _ = tokio::time::sleep(STOP_GRACE) => {}
        _ = stop.wait_for(|s| *s >= 2) => {}
    }
    let _ = child.start_kill();
    (child.wait().await, true)
}

/// Stops every running child and waits for each; a second signal kills them at once.
async fn stop_all(
    stop: &Stop,
    running: &mut BTreeSet<u32>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    stop.send_replace(1);
    let started = Instant::now();
    while !running.is_empty() {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Exited { id, status, killed }) => {
                    running.remove(&id);
                    if killed {
                        eprintln!(
                            "strom: broker {id} did not stop within {} s of SIGTERM: killed",
                            STOP_GRACE.as_secs()
                        );
                    } else if let Ok(s) = &status
                        && !s.success()
                    {
                        eprintln!("strom: broker {id} stopped with {s}");
                    }
                }
                Some(Event::Listening { .. }) => {}
                None => break,
            },
            _ = term.recv() => { stop.send_replace(2); }
            _ = int.recv() => { stop.send_replace(2); }
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "brokers stopped");
}

/// The error for broker `id` that exited (`starting`: before it printed its addresses), with
/// the end of its log: the last lines on stderr and, for a failed start, the last one (the
/// broker's own error line) in the message.
fn failed(
    dir: &DataDir,
    id: u32,
    starting: bool,
    status: &std::io::Result<ExitStatus>,
) -> anyhow::Error {
    let log = dir.log(id);
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status ({e})"),
    };
    let tail = tail_lines(&log, 10);
    if !tail.is_empty() {
        eprintln!("--- the end of {} ---", log.display());
        for line in &tail {
            eprintln!("{line}");
        }
        eprintln!("---");
    }
    let kept = if dir.temporary {
        ", removed with the temporary directory"
    } else {
        ""
    };
    if starting {
        let reason = tail.last().map_or("its log is empty", |l| {
            l.strip_prefix("strom: ").unwrap_or(l)
        });
        anyhow!(
            "broker {id} failed to start ({status}): {reason} (its log: {}{kept})",
            log.display()
        )
    } else {
        anyhow!(
            "broker {id} exited on its own ({status}); the others were stopped (its log: {}{kept})",
            log.display()
        )
    }
}

/// The last `n` non-empty lines of a log file (none when it cannot be read).
fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let start = bytes.len().saturating_sub(16 << 10);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn last_line(path: &Path) -> String {
    tail_lines(path, 1)
        .pop()
        .unwrap_or_else(|| "nothing".to_string())
}

/// Prints every broker's addresses, the bootstrap lists, where the data and logs are.
fn print_cluster(
    dir: &DataDir,
    plan: &Plan,
    listening: &BTreeMap<u32, Addrs>,
    pids: &BTreeMap<u32, u32>,
    output: Output,
) -> anyhow::Result<()> {
    let dash = |a: &Option<String>| a.clone().unwrap_or_else(|| "-".to_string());
    let controller = |id: &u32| {
        plan.controllers
            .get(id)
            .map_or_else(|| "-".to_string(), SocketAddr::to_string)
    };
    let join = |f: fn(&Addrs) -> &Option<String>| {
        listening
            .values()
            .filter_map(|a| f(a).clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    let bootstrap = join(|a| &a.native);
    let kafka_bootstrap = join(|a| &a.kafka);
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            let brokers: Vec<serde_json::Value> = listening
                .iter()
                .map(|(id, a)| {
                    serde_json::json!({
                        "broker": id,
                        "native": a.native,
                        "kafka": a.kafka,
                        "http": a.http,
                        "controller": controller(id),
                        "role": if *id <= plan.voters { "voter" } else { "learner" },
                        "log": dir.log(*id).display().to_string(),
                        "pid": pids.get(id),
                    })
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "brokers": brokers,
                    "bootstrap": bootstrap,
                    "kafka_bootstrap": kafka_bootstrap,
                    "controller_voters": plan.voters_arg(),
                    "data_dir": dir.path.display().to_string(),
                    "temporary": dir.temporary,
                    "pid": std::process::id(),
                })
            )?;
        }
        Output::Text => {
            for (id, a) in listening {
                writeln!(
                    out,
                    "broker {id}: native {} kafka {} http {} controller {}",
                    dash(&a.native),
                    dash(&a.kafka),
                    dash(&a.http),
                    controller(id)
                )?;
            }
            writeln!(out, "bootstrap: {bootstrap}")?;
            writeln!(out, "kafka bootstrap: {kafka_bootstrap}")?;
            writeln!(out, "controller voters: {}", plan.voters_arg())?;
            if dir.temporary {
                writeln!(
                    out,
                    "data: {} (temporary: removed on exit; --data-dir DIR keeps it)",
                    dir.path.display()
                )?;
            } else {
                writeln!(
                    out,
                    "data: {} (kept: `strom cluster up --nodes {} --data-dir {}` starts this cluster again)",
                    dir.path.display(),
                    plan.nodes,
                    dir.path.display()
                )?;
            }
            writeln!(
                out,
                "logs: {}",
                dir.path.join("node-N").join("strom.log").display()
            )?;
            writeln!(out, "Ctrl-C stops the cluster.")?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_are_1_3_or_5() {
        let counts: Vec<u32> = (1..=9).map(voter_count).collect();
        assert_eq!(counts, [1, 1, 3, 3, 5, 3, 3, 3, 3]);
    }

    #[test]
    fn nodes_are_1_to_9() {
        assert_eq!(parse_nodes("3"), Ok(3));
        for bad in ["0", "10", "-1", "x", ""] {
            let e = parse_nodes(bad).unwrap_err();
            assert!(e.contains("1 to 9"), "{e}");
        }
    }

    #[test]
    fn the_plan_round_trips_and_bad_files_are_refused() {
        let plan = Plan::fresh(4).unwrap();
        assert_eq!(plan.voters, 3);
        assert_eq!(plan.controllers.len(), 4);
        let distinct: BTreeSet<u16> = plan.controllers.values().map(SocketAddr::port).collect();
        assert_eq!(distinct.len(), 4);
        assert_eq!(Plan::from_json(&plan.to_json().to_string()).unwrap(), plan);
        assert!(plan.voters_arg().starts_with("1@127.0.0.1:"));
        assert_eq!(plan.voters_arg().split(',').count(), 3);
        assert!(Plan::from_json("{}").is_err());
        assert!(Plan::from_json(r#"{"nodes": 3, "voters": 2, "controllers": {}}"#).is_err());
        assert!(
            Plan::from_json(r#"{"nodes": 2, "voters": 1, "controllers": {"1": "127.0.0.1:1"}}"#)
                .is_err()
        );
    }
}
