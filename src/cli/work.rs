//! `strom work`: a ready-made queue-group worker. It joins a queue group and, for each record it
//! is handed, runs a command with the record's value on stdin and its coordinates in the
//! environment; the command's exit status is the answer:
//!
//! - 0 acks the record;
//! - 100 rejects it (straight to the dead-letter topic);
//! - anything else (or a command that cannot be started, or one killed by a signal) nacks it:
//!   it is tried again after the group's backoff, or dead-lettered after `max.attempts`.
//!
//! The error text kept with a nack or a reject (and written into the dead-letter record's
//! `strom.dlq.error` header) is the command's last non-blank stderr line, up to 1 KiB (the exit
//! status when it printed none). The command's stdout goes to strom's stdout and its stderr to
//! strom's stderr, whole lines at a time, so the lines of commands running at once do not mix.
//!
//! Environment of each command: `STROM_TOPIC`, `STROM_PARTITION`, `STROM_OFFSET`, `STROM_KEY`
//! (the key as UTF-8, invalid bytes replaced; absent for a null key), `STROM_ATTEMPT` (1 for
//! the first delivery), and `STROM_HEADER_<NAME>` per header (the name upper-cased, every
//! character other than `A-Z 0-9 _` replaced by `_`; a null header value is empty). NUL bytes,
//! which the environment cannot hold, are left out of values. Inherited variables of those names
//! are removed, so a record without a key never sees an outer `STROM_KEY`.
//!
//! Up to `--concurrency` commands run at once. The worker polls for at most the free slots, so
//! it never holds records it has not started; answers go to the broker with the next poll (or a
//! flush). It keeps its membership alive while every slot is busy (an empty flush every
//! session/10) and extends the lease of a command still running once half of its lease has
//! passed, so a long job is not handed to a second worker.
//!
//! Commands run in their own process group, so a Ctrl-C in the terminal reaches strom, not
//! them. The first SIGINT or SIGTERM stops taking records: the running commands finish, their
//! answers are sent, anything held and not started is released, the worker leaves the group
//! and exits 0. A second signal kills the running commands and exits 130 at once, without
//! answering for them (their leases run out and they are tried again).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use strom_client::{QueueConfig, QueueConsumer, QueueRecord, Refused};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::{Id as TaskId, JoinSet};
use tokio::time::Instant;

/// The exit status that rejects a record.
pub const REJECT_STATUS: i32 = 100;
/// Most error text kept from a command's stderr.
const MAX_ERROR_BYTES: usize = 1024;
/// The session timeout the worker asks for; it sends something at least every tenth of it.
const SESSION_MS: u32 = 30_000;
/// Longest a poll waits on the broker for records (shorter with a short `--lease-ms`).
const POLL_WAIT: Duration = Duration::from_millis(250);
/// How long a finished command's output is still waited for (a process it left behind may
/// hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);
/// How often the progress line is redrawn, at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// `--ordering`: which records of the group may be in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderingArg {
    /// Any records at once: the most parallelism.
    None,
    /// At most one record per partition in flight: each partition in order.
    Partition,
    /// At most one record per key in flight: each key in order; a failing record holds back
    /// only its key.
    Key,
}

impl OrderingArg {
    fn as_str(self) -> &'static str {
        match self {
            OrderingArg::None => "none",
            OrderingArg::Partition => "partition",
            OrderingArg::Key => "key",
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("cmd").required(true).args(["exec", "argv"])))]
pub struct WorkArgs {
    /// Topic to take records from.
    pub topic: String,
    /// Queue group to work in (created by the first worker, with the settings below).
    #[arg(long, value_name = "G")]
    pub group: String,
    /// Run this shell command for each record (`sh -c CMD`).
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Commands run at once.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Group setting max.attempts: deliveries before a record goes to the dead-letter topic
    /// (used when this worker creates the group) [group default: 5]
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Group setting backoff: the delay before a failed record is tried again:
    /// `exp:BASE..MAX` (e.g. exp:100ms..30s), `list:D1,D2,...` (e.g. list:1s,5s,30s) or `none`
    /// (used when this worker creates the group) [group default: exp:1s..60s]
    #[arg(long, value_name = "SPEC")]
    pub backoff: Option<String>,
    /// Group setting lease.ms: how long a record is this worker's before it is handed out
    /// again; extended while the command runs (used when this worker creates the group)
    /// [group default: 30000]
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// Group setting ordering: `none` (any records at once), `partition` (one record per
    /// partition in flight) or `key` (one record per key in flight) (used when this worker
    /// creates the group) [group default: none]
    #[arg(long, value_enum, value_name = "ORDERING")]
    pub ordering: Option<OrderingArg>,
    /// The program to run for each record and its arguments, run directly (no shell): put them
    /// after `--`.
    #[arg(last = true, value_name = "CMD ARGS")]
    pub argv: Vec<String>,
}

/// What to run for each record.
#[derive(Debug)]
struct Program {
    program: String,
    args: Vec<String>,
    /// Inherited variables named like a record's, removed from each command's environment.
    inherited: Vec<OsString>,
}

impl Program {
    fn new(args: &WorkArgs) -> anyhow::Result<Self> {
        let (program, rest) = match (&args.exec, args.argv.split_first()) {
            (Some(_), Some(_)) => bail!("give --exec CMD or -- CMD ARGS..., not both"),
            (Some(cmd), None) => ("sh".to_string(), vec!["-c".to_string(), cmd.clone()]),
            (None, Some((program, rest))) => (program.clone(), rest.to_vec()),
            (None, None) => bail!("give the command to run: --exec CMD or -- CMD ARGS..."),
        };
        let inherited = std::env::vars_os()
            .map(|(k, _)| k)
            .filter(|k| {
                k.to_str()
                    .is_some_and(|k| k == "STROM_KEY" || k.starts_with("STROM_HEADER_"))
            })
            .collect();
        Ok(Self {
            program,
            args: rest,
            inherited,
        })
    }
}

/// How a command's run answers for its record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ack,
    Nack(String),
    Reject(String),
}

/// `STROM_HEADER_<NAME>` for a header name.
pub fn header_var(name: &str) -> String {
    let mut var = String::with_capacity(13 + name.len());
    var.push_str("STROM_HEADER_");
    var.extend(name.chars().map(|c| {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    var
}

/// An environment value for bytes: UTF-8 (invalid bytes replaced), NUL bytes left out.
fn env_value(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    s.retain(|c| c != '\0');
    s
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The last non-blank line of a stream, its first [`MAX_ERROR_BYTES`] bytes kept.
#[derive(Debug, Default)]
struct LastLine {
    current: Vec<u8>,
    last: Option<Vec<u8>>,
}

impl LastLine {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if self.current.len() < MAX_ERROR_BYTES {
                self.current.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        if !self.current.iter().all(u8::is_ascii_whitespace) {
            self.last = Some(std::mem::take(&mut self.current));
        }
        self.current.clear();
    }

    /// The last line so far (the unfinished one if it is not blank).
    fn text(&self) -> Option<String> {
        let line = if self.current.iter().all(u8::is_ascii_whitespace) {
            self.last.as_deref()?
        } else {
            &self.current
        };
        let text = String::from_utf8_lossy(line).trim().to_string();
        Some(truncate(text, MAX_ERROR_BYTES))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a command's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// strom's stdout and stderr, shared by the commands' output and the progress line (shown
/// only when stderr is a terminal, and cleared before anything else is written to it, or to
/// stdout when that is the same terminal).
#[derive(Debug)]
struct Term {
    tty: bool,
    stdout_tty: bool,
    shown: Mutex<bool>,
}

impl Term {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            stdout_tty: std::io::stdout().is_terminal(),
            shown: Mutex::new(false),
        }
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut shown = lock(&self.shown);
        if *shown && (stream == Stream::Err || self.stdout_tty) {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[K");
            let _ = err.flush();
            *shown = false;
        }
        // Write errors (a closed stdout) lose the output, not the record's answer.
        match stream {
            Stream::Out => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            }
            Stream::Err => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(bytes);
                let _ = err.flush();
            }
        }
    }

    /// One `strom: ...` line on stderr.
    fn note(&self, line: &str) {
        self.write(Stream::Err, format!("strom: {line}\n").as_bytes());
    }

    fn progress(&self, line: &str) {
        if !self.tty {
            return;
        }
        let mut shown = lock(&self.shown);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
        *shown = true;
    }

    fn shown(&self) -> bool {
        *lock(&self.shown)
    }

    /// Leaves the progress line, if one is shown, as the last line.
    fn finish(&self) {
        let mut shown = lock(&self.shown);
        if *shown {
            let _ = std::io::stderr().lock().write_all(b"\n");
            *shown = false;
        }
    }
}

/// Copies a command's output to strom's, whole lines at a time (so the lines of commands
/// running at once do not mix), noting the last line in `last`.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    term: Arc<Term>,
    last: Option<Arc<Mutex<LastLine>>>,
) {
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(last) = &last {
            lock(last).feed(&buf[..n]);
        }
        pending.extend_from_slice(&buf[..n]);
        if let Some(i) = pending.iter().rposition(|&b| b == b'\n') {
            term.write(stream, &pending[..=i]);
            pending.drain(..=i);
        }
        if pending.len() >= buf.len() {
            term.write(stream, &pending);
            pending.clear();
        }
    }
    if !pending.is_empty() {
        term.write(stream, &pending);
    }
}

/// Runs the command for one record and says how it answers.
async fn run_one(program: Arc<Program>, rec: QueueRecord, term: Arc<Term>) -> Answer {
    let mut cmd = Command::new(&program.program);
    cmd.args(&program.args);
    for var in &program.inherited {
        cmd.env_remove(var);
    }
    cmd.env("STROM_TOPIC", rec.topic())
        .env("STROM_PARTITION", rec.partition().to_string())
        .env("STROM_OFFSET", rec.offset().to_string())
        .env("STROM_ATTEMPT", rec.attempt().to_string());
    if let Some(key) = rec.key() {
        cmd.env("STROM_KEY", env_value(key));
    }
    for h in rec.headers() {
        cmd.env(header_var(h.key), env_value(h.value.unwrap_or_default()));
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Answer::Nack(format!("cannot start {}: {e}", program.program)),
    };
    let writer = child.stdin.take().map(|mut stdin| {
        let value = rec.value().cloned().unwrap_or_default();
        // A command that does not read its stdin is fine: the write just fails.
        tokio::spawn(async move {
            let _ = stdin.write_all(&value).await;
            let _ = stdin.shutdown().await;
        })
    });
    let last = Arc::new(Mutex::new(LastLine::default()));
    let mut pumps = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, Stream::Out, term.clone(), None)));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            err,
            Stream::Err,
            term,
            Some(last.clone()),
        )));
    }
    let status = child.wait().await;
    // What the command wrote before it ended is in the pipes; a process it left behind may
    // hold them open, so wait for their end only briefly (the copying goes on regardless).
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        for p in pumps {
            let _ = p.await;
        }
    })
    .await;
    if let Some(writer) = writer {
        writer.abort();
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => return Answer::Nack(format!("waiting for {}: {e}", program.program)),
    };
    let text = || {
        lock(&last)
            .text()
            .unwrap_or_else(|| format!("the command ended with {status}"))
    };
    match status.code() {
        Some(0) => Answer::Ack,
        Some(REJECT_STATUS) => Answer::Reject(text()),
        _ => Answer::Nack(text()),
    }
}

/// The signals: 0 until the first SIGINT/SIGTERM, 1 after it (finish and leave), 2 after a
/// second one (kill the commands and exit 130).
fn signals() -> anyhow::Result<watch::Receiver<u8>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = watch::channel(0u8);
    tokio::spawn(async move {
        for level in 1..=2u8 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(level);
        }
        // The worker kills its commands and exits; should it be stuck (a broker that does not
        // answer), exit anyway.
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::process::exit(130);
    });
    Ok(rx)
}

/// A backoff for retriable errors (the broker restarting, a connection lost), reported once
/// per outage.
#[derive(Debug)]
struct Retry {
    delay: Duration,
    failing: bool,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self {
            delay: Self::FIRST,
            failing: false,
        }
    }

    /// A retriable error: noted, then a pause (cut short by a signal). Any other error ends
    /// the worker.
    async fn failed(
        &mut self,
        e: strom_client::Error,
        what: &str,
        term: &Term,
        signals: &mut watch::Receiver<u8>,
    ) -> anyhow::Result<()> {
        if !e.is_retriable() {
            return Err(anyhow::Error::new(e).context(what.to_string()));
        }
        if !self.failing {
            term.note(&format!("{what}: {e}; retrying"));
            self.failing = true;
        }
        tokio::select! {
            () = tokio::time::sleep(self.delay) => {}
            _ = signals.changed() => {}
        }
        self.delay = (self.delay * 2).min(Self::MAX);
        Ok(())
    }

    fn succeeded(&mut self, term: &Term) {
        if self.failing {
            term.note("the broker answers again");
        }
        self.delay = Self::FIRST;
        self.failing = false;
    }
}

/// A command running for a record.
#[derive(Debug)]
struct Running {
    rec: QueueRecord,
    /// When to extend its lease: once half of it has passed.
    extend_at: Instant,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    done: u64,
    failed: u64,
    rejected: u64,
    running: usize,
}

/// Reads a backoff (`exp:A..B`, `list:D,...`, `none`) as its delays in ms, to compare two
/// spellings of the same one; `None` if it does not parse.
fn backoff_ms(spec: &str) -> Option<(bool, Vec<u64>)> {
    fn ms(d: &str) -> Option<u64> {
        let d = d.trim();
        let split = d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len());
        let (n, unit) = d.split_at(split);
        let scale = match unit {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        n.parse::<u64>().ok()?.checked_mul(scale)
    }
    let spec = spec.trim();
    if spec == "none" {
        return Some((false, vec![0]));
    }
    if let Some(r) = spec.strip_prefix("exp:") {
        let (a, b) = r.split_once("..")?;
        return Some((true, vec![ms(a)?, ms(b)?]));
    }
    let list = spec.strip_prefix("list:")?;
    Some((false, list.split(',').map(ms).collect::<Option<Vec<_>>>()?))
}

/// The settings the flags ask for, by their group setting names.
fn asked_settings(args: &WorkArgs) -> Vec<(&'static str, String)> {
    let mut s = Vec::new();
    if let Some(n) = args.max_attempts {
        s.push(("max.attempts", n.to_string()));
    }
    if let Some(b) = &args.backoff {
        s.push(("backoff", b.clone()));
    }
    if let Some(ms) = args.lease_ms {
        s.push(("lease.ms", ms.to_string()));
    }
    if let Some(o) = args.ordering {
        s.push(("ordering", o.as_str().to_string()));
    }
    s
}

fn report_refused(term: &Term, refused: Vec<Refused>) {
    for r in refused {
        let range = if r.first_offset == r.last_offset {
            format!("offset {}", r.first_offset)
        } else {
            format!("offsets {}..{}", r.first_offset, r.last_offset)
        };
        term.note(&format!(
            "the broker refused the answer for {}/{} {range} ({}{}): another worker may have it now",
            r.tp.topic,
            r.tp.partition,
            r.code,
            r.message.map(|m| format!(": {m}")).unwrap_or_default()
        ));
    }
}

pub async fn run(bootstrap: &str, args: WorkArgs) -> anyhow::Result<()> {
    let program = Arc::new(Program::new(&args)?);
    // Installed before joining, so a signal from here on ends in a clean leave.
    let mut signals = signals()?;
    let term = Arc::new(Term::new());
    let asked = asked_settings(&args);
    let mut config = QueueConfig::new(bootstrap, args.group.as_str(), &[args.topic.as_str()]);
    config.session_timeout_ms = SESSION_MS;
    config.max_wait = match args.lease_ms {
        Some(ms) if ms < 1_000 => Duration::from_millis((ms / 4).max(20)),
        _ => POLL_WAIT,
    };
    let poll_wait = config.max_wait;
    for (name, value) in &asked {
        config.settings.insert((*name).to_string(), value.clone());
    }
    let mut consumer = QueueConsumer::join(config)
        .await
        .with_context(|| format!("joining queue group {}", args.group))?;
    // The flags only configure a group this worker creates: say so when the group differs.
    for (name, value) in &asked {
        let Some(have) = consumer.settings().get(*name) else {
            continue;
        };
        let same = match *name {
            "backoff" => backoff_ms(have).is_some() && backoff_ms(have) == backoff_ms(value),
            _ => have == value,
        };
        if !same {
            term.note(&format!(
                "queue group {} already exists with {name}={have}; --{} {value} applies only \
                 when a worker creates the group",
                args.group,
                name.replace('.', "-")
            ));
        }
    }
    let lease_ms: u64 = consumer
        .settings()
        .get("lease.ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let half_lease = Duration::from_millis(lease_ms / 2);
    let keepalive = Duration::from_millis(u64::from(SESSION_MS / 10));
    let slots = args.concurrency as usize;

    let mut running: HashMap<TaskId, Running> = HashMap::new();
    let mut tasks: JoinSet<Answer> = JoinSet::new();
    let mut queued: VecDeque<QueueRecord> = VecDeque::new();
    let mut last_sent = Instant::now();
    let mut retry = Retry::new();
    let mut counts = Counts::default();
    let mut drawn: Option<(Counts, Instant)> = None;
    let label = format!("{} {}", args.topic, args.group);

    let finish = |consumer: &mut QueueConsumer,
                  running: &mut HashMap<TaskId, Running>,
                  counts: &mut Counts,
                  done: Result<(TaskId, Answer), tokio::task::JoinError>| {
        let (id, answer) = match done {
            Ok(d) => d,
            Err(e) => (
                e.id(),
                Answer::Nack(format!("strom's task for the command failed: {e}")),
            ),
        };
        let Some(r) = running.remove(&id) else { return };
        match answer {
            Answer::Ack => {
                consumer.ack(&r.rec);
                counts.done += 1;
            }
            Answer::Nack(text) => {
                consumer.nack(&r.rec, None, Some(&text));
                counts.failed += 1;
            }
            Answer::Reject(text) => {
                consumer.reject(&r.rec, Some(&text));
                counts.rejected += 1;
            }
        }
    };

    loop {
        let level = *signals.borrow();
        if level >= 2 {
            // Killed (kill_on_drop) as their tasks are dropped; not answered.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            term.finish();
            term.note("interrupted again: the running commands were killed, their records come back after their lease");
            std::process::exit(130);
        }
        let stopping = level >= 1;
        while let Some(done) = tasks.try_join_next_with_id() {
            finish(&mut consumer, &mut running, &mut counts, done);
        }
        while !stopping && running.len() < slots {
            let Some(rec) = queued.pop_front() else { break };
            let remaining = (rec.lease_until_ms() - now_ms()).max(0) as u64;
            let extend_at = Instant::now() + Duration::from_millis(remaining / 2);
            let task = tasks.spawn(run_one(program.clone(), rec.clone(), term.clone()));
            running.insert(task.id(), Running { rec, extend_at });
        }
        counts.running = running.len();
        if term.tty
            && drawn.is_none_or(|(c, at)| {
                (c != counts || !term.shown()) && at.elapsed() >= PROGRESS_EVERY
            })
        {
            term.progress(&format!(
                "{label}: {} done, {} failed, {} rejected, {} running",
                counts.done, counts.failed, counts.rejected, counts.running
            ));
            drawn = Some((counts, Instant::now()));
        }
        if stopping && running.is_empty() {
            break;
        }

        // Leases of commands still running at half their lease.
        let now = Instant::now();
        let mut due: Vec<(Instant, TaskId)> = running
            .iter()
            .filter(|(_, r)| r.extend_at <= now)
            .map(|(id, r)| (r.extend_at, *id))
            .collect();
        due.sort_unstable_by_key(|(at, _)| *at);
        let mut failed = false;
        for (_, id) in due {
            let Some(rec) = running.get(&id).map(|r| r.rec.clone()) else {
                continue;
            };
            match consumer.extend(&rec, None).await {
                Ok(()) => {
                    retry.succeeded(&term);
                    last_sent = Instant::now();
                    if let Some(r) = running.get_mut(&id) {
                        r.extend_at = last_sent + half_lease;
                    }
                }
                Err(e) => {
                    retry
                        .failed(e, "extending a lease", &term, &mut signals)
                        .await?;
                    failed = true;
                    break;
                }
            }
        }
        report_refused(&term, consumer.take_refused());
        if failed {
            continue;
        }

        // Take records for the free slots, unless a lease is due to be extended before the
        // poll would be back.
        let free = slots.saturating_sub(running.len() + queued.len());
        let next_extend = running.values().map(|r| r.extend_at).min();
        let now = Instant::now();
        if !stopping && free > 0 && next_extend.is_none_or(|t| t > now + poll_wait) {
            match consumer.poll(u32::try_from(free).unwrap_or(u32::MAX)).await {
                Ok(records) => {
                    retry.succeeded(&term);
                    last_sent = Instant::now();
                    queued.extend(records);
                }
                Err(e) => {
                    retry
                        .failed(e, "taking records", &term, &mut signals)
                        .await?;
                }
            }
            report_refused(&term, consumer.take_refused());
            continue;
        }

        // No poll now: send answers that are waiting, and keep the membership alive.
        if consumer.pending_answers() > 0 || now >= last_sent + keepalive {
            match consumer.flush().await {
                Ok(()) => {
                    retry.succeeded(&term);
                    last_sent = Instant::now();
                }
                Err(e) => {
                    retry
                        .failed(e, "sending answers", &term, &mut signals)
                        .await?;
                    continue;
                }
            }
            report_refused(&term, consumer.take_refused());
        }
        let mut wake = last_sent + keepalive;
        if let Some(t) = next_extend {
            wake = wake.min(t);
        }
        if term.tty {
            wake = wake.min(Instant::now() + PROGRESS_EVERY * 5);
        }
        tokio::select! {
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                finish(&mut consumer, &mut running, &mut counts, done);
            }
            () = tokio::time::sleep_until(wake) => {}
            _ = signals.changed() => {}
        }
    }

    // Stopping: every command has finished. Give back what was taken and not started, send
    // the answers and leave.
    for rec in queued.drain(..) {
        consumer.release(&rec);
    }
    term.finish();
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer.pending_answers() > 0 {
        match consumer.flush().await {
            Ok(()) => break,
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                retry
                    .failed(e, "sending the last answers", &term, &mut signals)
                    .await?;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("sending the last answers")),
        }
    }
    report_refused(&term, consumer.take_refused());
    consumer.close().await.context("leaving the queue group")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_become_variable_names() {
        assert_eq!(header_var("trace-id"), "STROM_HEADER_TRACE_ID");
        assert_eq!(header_var("Content.Type_2"), "STROM_HEADER_CONTENT_TYPE_2");
        assert_eq!(header_var("größe"), "STROM_HEADER_GR__E");
        assert_eq!(env_value(b"a\0b\xff"), "ab\u{fffd}");
    }

    #[test]
    fn the_last_stderr_line_is_kept_up_to_1_kib() {
        let mut l = LastLine::default();
        assert_eq!(l.text(), None);
        l.feed(b"first\nsecond line\r\n\n  \n");
        assert_eq!(l.text().as_deref(), Some("second line"));
        l.feed(b"partial");
        assert_eq!(l.text().as_deref(), Some("partial"));
        l.feed(&[b'x'; 5000]);
        l.feed(b"\n");
        assert_eq!(l.text().map(|t| t.len()), Some(MAX_ERROR_BYTES));
        assert_eq!(truncate("aé".to_string(), 2), "a");
    }

    #[test]
    fn backoffs_compare_by_their_delays() {
        assert_eq!(backoff_ms("exp:1000ms..60s"), backoff_ms("exp:1s..1m"));
        assert_eq!(backoff_ms("list:100ms"), Some((false, vec![100])));
        assert_ne!(backoff_ms("list:1s"), backoff_ms("exp:1s..1s"));
        assert_eq!(backoff_ms("fast"), None);
    }
}
