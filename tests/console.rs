//! The web console (issue 15, docs/http.md) in a real browser: headless Chromium loads the page
//! from a broker child, and the check asserts that what the broker holds shows in the rendered
//! page: the topic list and a consumer group's lag (600, after 1,000 records produced and 400
//! committed) on the overview, and a dead-lettered record with its `strom.dlq.*` failure headers
//! on the queue group's page. Screenshots of the pages are kept in a temporary directory whose
//! path the test prints.
//!
//! Chromium: `$STROM_CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` on the
//! PATH. Without one the test passes with a note, unless `STROM_REQUIRE_BROWSER` is set (as
//! `.ci/run` does, after installing Debian's chromium package), then it fails.
//!
//! The dead-lettered record is waited for by fetching the dead-letter topic in a loop with a
//! deadline; the browser gets a virtual-time budget, so that the page's fetches finish before its
//! DOM is dumped, and a wall-clock timeout after which it is killed.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use strom_client::{QueueConfig, QueueConsumer, QueueRecord};
use strom_protocol::ErrorCode;
use strom_protocol::messages::*;
use support::*;

/// Longest wait for the broker to dead-letter a record.
const DEADLINE: Duration = Duration::from_secs(30);
/// Longest one Chromium run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
/// How much virtual time the page gets to run its scripts and fetches (it refreshes every 2 s).
const VIRTUAL_TIME_BUDGET_MS: u32 = 5000;

/// The browser to drive: `$STROM_CHROMIUM`, else the first of the usual names on the PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STROM_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let dirs: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH")?).collect();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// One page load: what Chromium rendered (the DOM after the scripts ran) and its screenshot.
struct Page {
    dom: String,
    dom_path: PathBuf,
    screenshot: PathBuf,
}

/// Loads `url` in headless Chromium with a fresh profile under `dir`, dumps the DOM once the
/// page's scripts have had their virtual-time budget, and saves a 1400x1000 screenshot as
/// `<dir>/<name>.png` (the DOM as `<dir>/<name>.html`). Kills the browser if it takes longer
/// than [`BROWSER_TIMEOUT`].
fn load(chromium: &Path, dir: &Path, profile: &Path, name: &str, url: &str) -> Page {
    let screenshot = dir.join(format!("{name}.png"));
    let dom_path = dir.join(format!("{name}.html"));
    let stderr_path = dir.join(format!("{name}.chromium.stderr"));
    let stderr = fs::File::create(&stderr_path).expect("create the browser's stderr file");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox", // CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        // Its own process group, so that a hung browser is killed with all its helpers.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut dom = String::new();
        stdout.read_to_string(&mut dom).map(|_| dom)
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        // Polling the exit of a process with a deadline; not a wait on the page's state.
        if let Some(status) = child.try_wait().expect("try_wait on the browser") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "{} did not finish loading {url} within {} s; killed it\n--- its stderr ---\n{}",
                chromium.display(),
                BROWSER_TIMEOUT.as_secs(),
                tail(&stderr_path)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let dom = reader
        .join()
        .expect("the stdout reader")
        .expect("read the browser's stdout");
    assert!(
        status.success() && !dom.is_empty(),
        "{} {url} exited with {status} and {} bytes of DOM\n--- its stderr ---\n{}",
        chromium.display(),
        dom.len(),
        tail(&stderr_path)
    );
    fs::write(&dom_path, &dom).expect("save the DOM");
    let png = fs::read(&screenshot).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG"),
        "no screenshot of {url} at {}\n--- the browser's stderr ---\n{}",
        screenshot.display(),
        tail(&stderr_path)
    );
    println!("console: {url} -> {}", screenshot.display());
    Page {
        dom,
        dom_path,
        screenshot,
    }
}

/// The text of the first element whose opening tag contains `needle` (up to its first child
/// tag), unescaped for the characters HTML serialisation escapes in text.
fn text_at(dom: &str, needle: &str) -> Option<String> {
    let at = dom.find(needle)?;
    let open_end = at + dom[at..].find('>')? + 1;
    let len = dom[open_end..].find('<')?;
    Some(
        dom[open_end..open_end + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&nbsp;", "\u{a0}")
            .replace("&amp;", "&"),
    )
}

/// The part of `dom` from the first `start` to the next `end` after it.
fn section<'a>(dom: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let at = dom.find(start)?;
    let len = dom[at..].find(end)?;
    Some(&dom[at..at + len])
}

/// Commits `offset` for `group` on `topic`/0 as a group without members (an admin commit).
fn commit(c: &mut Client, group: &str, topic: &str, offset: i64) {
    let r = c.call(OffsetCommitRequest {
        group_id: group.into(),
        member_id: String::new(),
        member_epoch: -1,
        topics: vec![OffsetCommitTopic {
            name: topic.into(),
            partitions: vec![OffsetCommitPartition {
                partition: 0,
                offset,
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
}

/// Waits until topic `topic` (partition 0) holds a record whose value is `value`.
fn wait_for_record(c: &mut Client, topic: &str, value: &str) -> Rec {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let exists = c
            .metadata(&[topic])
            .topics
            .first()
            .is_some_and(|t| t.error_code() == ErrorCode::None);
        // The metadata image names a new topic a moment before the broker has opened its
        // partitions (LEADER_NOT_AVAILABLE meanwhile, which clients retry).
        if exists && c.fetch(topic, 0, 0, 0, 0, 0).error_code() == ErrorCode::None {
            let found = c
                .fetch_all(topic, 0)
                .into_iter()
                .find(|r| r.value.as_deref() == Some(value.as_bytes()));
            if let Some(r) = found {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{value:?} did not appear in {topic} within {} s",
            DEADLINE.as_secs()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_console_shows_topics_group_lag_and_dead_letters_in_a_browser() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var_os("STROM_REQUIRE_BROWSER").is_none(),
            "STROM_REQUIRE_BROWSER is set but no browser was found: install Debian's chromium \
             package (apt-get install chromium), or point STROM_CHROMIUM at a Chromium binary"
        );
        println!(
            "chromium not found; skipping the console browser check (set STROM_REQUIRE_BROWSER=1 to require it)"
        );
        return;
    };
    let started = Instant::now();
    let dir = TestDir::new();
    // The screenshots outlive the test (its data directory does not).
    let shots = tempfile::Builder::new()
        .prefix("strom-console-")
        .tempdir()
        .expect("create the screenshot directory")
        .keep();
    let profiles = tempfile::Builder::new()
        .prefix("strom-chromium-")
        .tempdir()
        .expect("create the browser profile directory");
    let broker = Broker::start(&dir.data(), &[]);
    let http = broker.http_addr.expect("the HTTP listener");

    // A consumer group 600 records behind on `orders`.
    let mut c = broker.client();
    c.create_topic_ok("orders", 1, &[]);
    let records: Vec<Rec> = (0..1000)
        .map(|i| {
            let value = format!(r#"{{"order":{i},"amount":{}.50,"currency":"EUR"}}"#, i % 97);
            Rec::new(now_ms(), format!("order-{i}"), value)
        })
        .collect();
    for chunk in records.chunks(100) {
        c.produce_ok("orders", 0, &[batch_of(chunk)]);
    }
    commit(&mut c, "billing", "orders", 400);

    // A queue group on `jobs`: four acked, one rejected (dead-lettered to `jobs.dlq`), one held.
    c.create_topic_ok("jobs", 1, &[]);
    let poison = "poison pill: not an order";
    let mut jobs: Vec<Rec> = (0..5)
        .map(|i| Rec::new(now_ms(), format!("job-{i}"), format!(r#"{{"job":{i}}}"#)))
        .collect();
    jobs.insert(2, Rec::new(now_ms(), "job-x", poison));
    c.produce_ok("jobs", 0, &[batch_of(&jobs)]);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let addr = broker.addr.to_string();
    let member = rt.block_on(async {
        let mut config = QueueConfig::new(&addr, "workers", &["jobs"]);
        config.max_wait = Duration::from_millis(100);
        let mut member = QueueConsumer::join(config).await.expect("join");
        let deadline = Instant::now() + DEADLINE;
        let mut got: Vec<QueueRecord> = Vec::new();
        while got.len() < jobs.len() {
            assert!(Instant::now() < deadline, "{} of 6 jobs came", got.len());
            got.extend(member.poll(10).await.expect("poll"));
        }
        let is_poison = |r: &QueueRecord| r.value().is_some_and(|v| v[..] == *poison.as_bytes());
        // The last good job stays in flight.
        let held = got.iter().rposition(|r| !is_poison(r)).expect("a good job");
        for (i, r) in got.iter().enumerate() {
            if is_poison(r) {
                member.reject(r, Some("cannot parse the order"));
            } else if i != held {
                member.ack(r);
            }
        }
        member.flush().await.expect("flush");
        member
    });
    let dead = wait_for_record(&mut c, "jobs.dlq", poison);
    assert!(
        dead.headers
            .iter()
            .any(|(k, v)| k == "strom.dlq.reason" && v.as_deref() == Some(&b"rejected"[..])),
        "{dead:?}"
    );

    // The overview: the topic list and the group's lag.
    let overview = load(
        &chromium,
        &shots,
        profiles.path(),
        "console",
        &format!("http://{http}/#/"),
    );
    let dom = &overview.dom;
    let context = format!(
        "(DOM in {}, screenshot {})",
        overview.dom_path.display(),
        overview.screenshot.display()
    );
    assert!(
        dom.contains(r#"class="status ok""#),
        "the page did not load its data {context}"
    );
    for topic in ["orders", "jobs", "jobs.dlq"] {
        assert!(
            dom.contains(&format!(r#"data-topic="{topic}""#)),
            "topic {topic} is not in the topic list {context}"
        );
    }
    assert_eq!(
        text_at(dom, r#"data-group-lag="billing""#).as_deref(),
        Some("600"),
        "the lag of group billing {context}"
    );
    assert_eq!(
        text_at(dom, r#"data-topic-records="orders""#).as_deref(),
        Some("1,000"),
        "the records of orders {context}"
    );

    // The queue group's page: the dead-lettered record with its failure headers.
    let queue = load(
        &chromium,
        &shots,
        profiles.path(),
        "console-queue",
        &format!("http://{http}/#/queues/workers"),
    );
    let context = format!(
        "(DOM in {}, screenshot {})",
        queue.dom_path.display(),
        queue.screenshot.display()
    );
    let card = section(&queue.dom, r#"data-dlq="jobs.dlq""#, "</article>")
        .unwrap_or_else(|| panic!("no dead-lettered record of jobs.dlq on the page {context}"));
    assert!(card.contains(poison), "the record's value {context}");
    let header = |name: &str| text_at(card, &format!(r#"data-header="strom.dlq.{name}""#));
    assert_eq!(header("reason").as_deref(), Some("rejected"), "{context}");
    assert_eq!(
        header("error").as_deref(),
        Some("cannot parse the order"),
        "{context}"
    );
    assert_eq!(header("attempts").as_deref(), Some("1"), "{context}");
    assert!(
        queue.dom.contains(r#"data-redrive="jobs.dlq""#),
        "the redrive button {context}"
    );

    // Two more pages to look at: a topic's records and the consumer group.
    let topic = load(
        &chromium,
        &shots,
        profiles.path(),
        "console-topic",
        &format!("http://{http}/#/topics/orders"),
    );
    assert!(
        topic.dom.contains(r#"data-record="0/999""#),
        "the last record of orders (DOM in {})",
        topic.dom_path.display()
    );
    let group = load(
        &chromium,
        &shots,
        profiles.path(),
        "console-group",
        &format!("http://{http}/#/groups/billing"),
    );
    assert_eq!(
        text_at(&group.dom, r#"data-lag="orders/0""#).as_deref(),
        Some("600"),
        "the lag of billing on orders/0 (DOM in {})",
        group.dom_path.display()
    );

    rt.block_on(member.close()).expect("close the queue member");
    println!(
        "console: screenshots in {} ({:.1} s)",
        shots.display(),
        started.elapsed().as_secs_f64()
    );
}
