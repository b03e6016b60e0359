//! Shared helpers of the end-to-end tests: a `strom serve` child process on an ephemeral port
//! with a temporary data directory, a blocking protocol client over `std::net`, and record
//! batch builders and decoders.
//!
//! Nothing here sleeps to wait for the broker: startup is the `listening on ADDR` line on the
//! broker's stdout, every other wait is a blocking read with a timeout. The only polling loop is
//! [`Broker::stop`] waiting for the process to exit, which has a deadline.

#![allow(dead_code)] // every test binary uses a different subset of these helpers

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use strom_protocol::batch::{self, BatchBuilder, BatchIter, HeaderRef, RecordRef, Records};
use strom_protocol::frame::{LENGTH_PREFIX_LEN, decode_frame, encode_frame};
use strom_protocol::messages::*;
use strom_protocol::{ErrorCode, decode_response, encode_request};

pub mod cluster;
pub mod load;

/// How long the broker may take to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop (SIGTERM) may take.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Read and write timeout of every client socket: a broker that does not answer fails the test
/// instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response frame the test client accepts.
pub const MAX_RESPONSE_FRAME: usize = 256 << 20;
/// The broker's default `--max-frame-bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 << 20;

// ------------------------------------------------------------------------------------------
// The broker process
// ------------------------------------------------------------------------------------------

/// A temporary directory holding the broker's data directory (`data/`) and its stderr logs.
#[derive(Debug)]
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("strom-e2e-")
                .tempdir()
                .expect("create a temporary directory"),
        }
    }

    /// The data directory to hand to `strom serve --data-dir`.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

static BROKER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A running `strom serve` child process. Dropping it kills the process (SIGKILL).
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    /// The address from the broker's `listening on` line.
    pub addr: SocketAddr,
    /// The address from its `kafka listening on` line (`None` with `--kafka-listen none`).
    pub kafka_addr: Option<SocketAddr>,
    /// The address from its `http listening on` line (`None` with `--http-listen none`).
    pub http_addr: Option<SocketAddr>,
    /// Where the broker's stderr goes (printed when a test panics while the broker is alive).
    pub log_path: PathBuf,
    data_dir: PathBuf,
}

impl Broker {
    /// Starts `strom serve --listen 127.0.0.1:0 --data-dir <data_dir> <extra_args>` and waits
    /// (at most [`STARTUP_TIMEOUT`]) for its first stdout line, which must be exactly
    /// `listening on 127.0.0.1:PORT`.
    ///
    /// The data directory is created first if missing (assumption: the broker accepts an
    /// existing, empty data directory). The broker's stderr goes to a file beside the data
    /// directory, never inside it.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Broker {
        Broker::spawn(data_dir, None, &[], extra_args)
    }

    /// As [`Broker::start`], run through `wrapper` (a command that ends by executing the
    /// command line it is given after its own arguments, in the same process, as `unshare`
    /// and `sh -c '...; exec "$@"'` do), on `addr` when given.
    pub fn start_wrapped(
        data_dir: &Path,
        addr: Option<SocketAddr>,
        wrapper: &[String],
        extra_args: &[&str],
    ) -> Broker {
        Broker::spawn(data_dir, addr, wrapper, extra_args)
    }

    /// Spawns `strom serve` on `addr` (or `127.0.0.1:0`), through `wrapper` when it is not
    /// empty, and waits for its `listening on` line, which must name `addr` when one was asked
    /// for.
    fn spawn(
        data_dir: &Path,
        addr: Option<SocketAddr>,
        wrapper: &[String],
        extra_args: &[&str],
    ) -> Broker {
        fs::create_dir_all(data_dir).expect("create the data directory");
        let n = BROKER_SEQ.fetch_add(1, Ordering::Relaxed);
        let log_dir = data_dir
            .parent()
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        let log_path = log_dir.join(format!("strom-{}-{n}.stderr", std::process::id()));
        let stderr = File::create(&log_path).expect("create the broker's stderr file");
        let listen = addr.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        // The Kafka listener's default (Kafka's port 9092) would collide between tests: every
        // test broker takes a free port unless the test names its own `--kafka-listen`.
        let kafka_named = extra_args.contains(&"--kafka-listen");
        let kafka_expected = !extra_args
            .windows(2)
            .any(|w| w[0] == "--kafka-listen" && w[1] == "none");
        let default_kafka: &[&str] = if kafka_named {
            &[]
        } else {
            &["--kafka-listen", "127.0.0.1:0"]
        };
        // The same for the HTTP listener (its default port is 9644).
        let http_named = extra_args.contains(&"--http-listen");
        let http_expected = !extra_args
            .windows(2)
            .any(|w| w[0] == "--http-listen" && w[1] == "none");
        let default_http: &[&str] = if http_named {
            &[]
        } else {
            &["--http-listen", "127.0.0.1:0"]
        };

        let strom = env!("CARGO_BIN_EXE_strom");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(strom);
                c
            }
            None => Command::new(strom),
        };
        let mut child = command
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(default_kafka)
            .args(default_http)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn strom serve");

        // A reader thread hands over the first three lines (`listening on`, `kafka listening
        // on`, `http listening on`), then keeps draining stdout so that the broker never blocks
        // on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for _ in 0..3 {
                let _ = tx.send(lines.next());
            }
            for _ in lines.by_ref() {}
        });

        let first = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(Ok(line))) => Ok(line),
            Ok(Some(Err(e))) => Err(format!("reading its stdout failed: {e}")),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("it closed stdout without printing a line".to_string())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "it printed nothing within {} s",
                STARTUP_TIMEOUT.as_secs()
            )),
        };
        let listening = first.and_then(|line| {
            parse_listening_line(&line)
                .filter(|got| {
                    addr.is_none_or(|want| {
                        *got == want || (want.port() == 0 && got.ip() == want.ip())
                    })
                })
                .ok_or_else(|| {
                    format!("its first stdout line is {line:?}, not `listening on {listen}`")
                })
        });
        // Then `<prefix> listening on ADDR`, when that listener is on.
        let next_line = |expected: bool, prefix: &str| -> Result<Option<SocketAddr>, String> {
            if !expected {
                return Ok(None);
            }
            let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
                Ok(Some(Ok(line))) => line,
                other => return Err(format!("no `{prefix}listening on` line: {other:?}")),
            };
            line.strip_prefix(prefix)
                .and_then(parse_listening_line)
                .map(Some)
                .ok_or_else(|| format!("{line:?} is not `{prefix}listening on ...`"))
        };
        let listening = listening.and_then(|addr| {
            let kafka = next_line(kafka_expected, "kafka ")?;
            let http = next_line(http_expected, "http ")?;
            Ok((addr, kafka, http))
        });
        match listening {
            Ok((addr, kafka_addr, http_addr)) => Broker {
                child: Some(child),
                addr,
                kafka_addr,
                http_addr,
                log_path,
                data_dir: data_dir.to_path_buf(),
            },
            Err(why) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "strom serve did not start on {listen}: {why} (exit: {status:?})\n--- broker stderr ---\n{}",
                    tail(&log_path)
                );
            }
        }
    }

    /// The data directory this broker was started on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// A new client connection to this broker.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Kills the broker with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker running");
        child.kill().expect("SIGKILL the broker");
        child.wait().expect("reap the broker");
    }

    /// Stops the broker gracefully: SIGTERM, then waits up to [`STOP_TIMEOUT`] for it to exit.
    /// Asserts that it exited by itself with status 0 (assumption: `strom serve` handles
    /// SIGTERM by shutting down cleanly, flushing its logs, and exits successfully).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            // Polling the exit of a process with a deadline; not a wait on broker state.
            if let Some(status) = child.try_wait().expect("try_wait on the broker") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "strom serve did not exit within {} s of SIGTERM\n--- broker stderr ---\n{}",
                    STOP_TIMEOUT.as_secs(),
                    tail(&self.log_path)
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "strom serve exited with {status} after SIGTERM\n--- broker stderr ---\n{}",
            tail(&self.log_path)
        );
        status
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if thread::panicking() {
                eprintln!(
                    "--- stderr of the broker at {} ---\n{}",
                    self.addr,
                    tail(&self.log_path)
                );
            }
        }
    }
}

fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = line.strip_prefix("listening on ")?.parse().ok()?;
    (addr.ip().is_loopback() && addr.port() != 0).then_some(addr)
}

/// The last 8 KiB of a log file, for failure messages.
pub fn tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(8 << 10);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

// ------------------------------------------------------------------------------------------
// The client
// ------------------------------------------------------------------------------------------

/// A blocking protocol client on one TCP connection. Every API is called at version 0.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u32,
}

impl Client {
    /// Connects with TCP_NODELAY and [`IO_TIMEOUT`] read and write timeouts.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to the broker at {addr}: {e}"))
    }

    /// As [`Client::connect`]; `Err` when the connection cannot be made, e.g. because the
    /// broker was just killed.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            stream,
            buf: BytesMut::with_capacity(64 << 10),
            next_id: 1,
        })
    }

    /// The socket, for tests that need to shut a half down or change its timeouts.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// A fresh correlation id (they start at 1 and increase by 1).
    pub fn next_correlation_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// A version-0 request with a fresh correlation id.
    pub fn request(&mut self, body: impl Into<request::Body>) -> Request {
        let id = self.next_correlation_id();
        Request::new(id, 0, body).with_client_id("strom-e2e")
    }

    /// Writes one request; does not wait for anything.
    pub fn send(&mut self, request: &Request) {
        let mut out = BytesMut::new();
        encode_request(request, &mut out).expect("encode the request");
        self.send_raw(&out);
    }

    /// Sends a version-0 request for `body` and returns its correlation id.
    pub fn send_body(&mut self, body: impl Into<request::Body>) -> u32 {
        let request = self.request(body);
        self.send(&request);
        correlation_id_of(&request)
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes).expect("write to the broker");
    }

    /// Writes raw bytes; `Err` when the connection is broken.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Closes the write half: the broker reads EOF after what was sent. Errors are ignored (the
    /// broker may have reset the connection already).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads the next response. `Err` when the connection closes or fails, the read times out,
    /// or the bytes are not a well-formed response frame.
    pub fn try_recv(&mut self) -> io::Result<Response> {
        loop {
            match decode_frame(&mut self.buf, MAX_RESPONSE_FRAME) {
                Ok(Some(payload)) => {
                    return decode_response(payload)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let mut chunk = [0u8; 64 << 10];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the broker closed the connection ({} bytes of an unfinished frame)",
                        self.buf.len()
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the next response; panics on any failure.
    pub fn recv(&mut self) -> Response {
        self.try_recv()
            .unwrap_or_else(|e| panic!("receive a response: {e}"))
    }

    /// Sends `request` and reads its response, checking the echoed correlation id.
    pub fn call_request(&mut self, request: &Request) -> Response {
        self.send(request);
        let response = self.recv();
        assert_eq!(
            response_id(&response),
            correlation_id_of(request),
            "the response's correlation id is the request's"
        );
        response
    }

    /// Sends a version-0 request for `body` and reads its response (correlation id checked).
    pub fn call(&mut self, body: impl Into<request::Body>) -> Response {
        let request = self.request(body);
        self.call_request(&request)
    }

    /// Waits for the broker to close the connection without sending anything: reads until EOF
    /// or a connection error (reset). Panics when bytes arrive or when nothing happens within
    /// [`IO_TIMEOUT`].
    pub fn expect_closed_without_answer(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread response bytes before the hostile input"
        );
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => panic!(
                    "the broker answered ({n} bytes: {:02x?}) instead of closing the connection",
                    &chunk[..n.min(64)]
                ),
                Err(e) if is_timeout(&e) => {
                    panic!("the broker did not close the connection within {IO_TIMEOUT:?}")
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // reset or aborted: closed as well
            }
        }
    }

    /// Waits for the broker to either close the connection or answer with request-level error
    /// responses (header error code not NONE, no body) and then close it; returns how many
    /// error responses came. Panics on a success response, on bytes that are not a response
    /// frame, or when nothing happens within [`IO_TIMEOUT`]. Use after [`Client::shutdown_write`].
    pub fn expect_closed_or_error_responses(&mut self) -> usize {
        let mut errors = 0;
        loop {
            match self.try_recv() {
                Ok(response) => {
                    let header = response.header.as_ref().expect("header");
                    assert_ne!(
                        header.error_code(),
                        ErrorCode::None,
                        "garbage got a success response: {response:?}"
                    );
                    assert!(response.body.is_none(), "an error response has no body");
                    errors += 1;
                }
                Err(e) if is_timeout(&e) => {
                    panic!("the broker neither answered nor closed within {IO_TIMEOUT:?}")
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    panic!("the broker sent bytes that are not a response frame: {e}")
                }
                Err(_) => return errors, // EOF, reset
            }
        }
    }

    // ---- one helper per API ----

    pub fn api_versions(&mut self) -> ApiVersionsResponse {
        api_versions_body(self.call(ApiVersionsRequest {
            client_software_name: Some("strom-e2e".into()),
            client_software_version: Some("0".into()),
        }))
    }

    /// Metadata of the named topics (in request order).
    pub fn metadata(&mut self, topics: &[&str]) -> MetadataResponse {
        metadata_body(self.call(MetadataRequest {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            all_topics: false,
            allow_auto_topic_creation: false,
        }))
    }

    /// Metadata of every topic.
    pub fn metadata_all(&mut self) -> MetadataResponse {
        metadata_body(self.call(MetadataRequest {
            topics: vec![],
            all_topics: true,
            allow_auto_topic_creation: false,
        }))
    }

    /// The metadata of one topic, asserting that it has no error.
    pub fn topic_metadata(&mut self, topic: &str) -> TopicMetadata {
        let mut response = self.metadata(&[topic]);
        assert_eq!(response.topics.len(), 1, "one entry per requested topic");
        let t = response.topics.remove(0);
        assert_eq!(t.name, topic);
        assert_eq!(
            t.error_code(),
            ErrorCode::None,
            "metadata of {topic}: {t:?}"
        );
        t
    }

    pub fn create_topics(
        &mut self,
        topics: Vec<CreatableTopic>,
        validate_only: bool,
    ) -> CreateTopicsResponse {
        create_topics_body(self.call(CreateTopicsRequest {
            topics,
            timeout_ms: 0,
            validate_only,
        }))
    }

    /// Creates one topic; returns its result (whatever the error code).
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> CreatableTopicResult {
        let mut response = self.create_topics(vec![creatable(name, partitions, configs)], false);
        assert_eq!(response.topics.len(), 1, "one result per requested topic");
        let result = response.topics.remove(0);
        assert_eq!(result.name, name);
        result
    }

    /// Creates one topic and asserts success.
    pub fn create_topic_ok(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let result = self.create_topic(name, partitions, configs);
        assert_eq!(
            result.error_code(),
            ErrorCode::None,
            "create topic {name}: {result:?}"
        );
        assert_eq!(result.num_partitions, partitions);
    }

    pub fn delete_topic(&mut self, name: &str) -> DeletableTopicResult {
        let mut response = delete_topics_body(self.call(DeleteTopicsRequest {
            topics: vec![name.to_string()],
            timeout_ms: 0,
        }));
        assert_eq!(response.topics.len(), 1, "one result per requested topic");
        let result = response.topics.remove(0);
        assert_eq!(result.name, name);
        result
    }

    pub fn describe_configs(&mut self, topic: &str, names: &[&str]) -> DescribeConfigsResult {
        let mut response = describe_configs_body(self.call(DescribeConfigsRequest {
            topics: vec![topic.to_string()],
            config_names: names.iter().map(|n| n.to_string()).collect(),
        }));
        assert_eq!(response.topics.len(), 1, "one result per requested topic");
        let result = response.topics.remove(0);
        assert_eq!(result.name, topic);
        result
    }

    pub fn alter_configs(
        &mut self,
        topic: &str,
        set: &[(&str, &str)],
        reset: &[&str],
    ) -> AlterConfigsResult {
        let mut response = alter_configs_body(self.call(AlterConfigsRequest {
            topics: vec![AlterableTopic {
                name: topic.to_string(),
                set: config_map(set),
                reset: reset.iter().map(|n| n.to_string()).collect(),
            }],
            validate_only: false,
        }));
        assert_eq!(response.topics.len(), 1, "one result per requested topic");
        let result = response.topics.remove(0);
        assert_eq!(result.name, topic);
        result
    }

    /// One produce request for several (topic, partition, records) entries; not for
    /// [`Acks::None`], which gets no response.
    pub fn produce_many(&mut self, acks: Acks, data: &[(&str, i32, Bytes)]) -> ProduceResponse {
        assert_ne!(
            acks,
            Acks::None,
            "ACKS_NONE gets no response: use send_produce"
        );
        produce_body(self.call(produce_request(acks, data)))
    }

    /// Sends a produce request without reading anything; returns its correlation id.
    pub fn send_produce(&mut self, acks: Acks, data: &[(&str, i32, Bytes)]) -> u32 {
        self.send_body(produce_request(acks, data))
    }

    /// Produces `batches` (back to back in one partition entry) and returns that partition's
    /// result (whatever the error code).
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        batches: &[Bytes],
        acks: Acks,
    ) -> PartitionProduceResponse {
        let response = self.produce_many(acks, &[(topic, partition, concat(batches))]);
        single_partition(response.topics, topic, |t| (t.name, t.partitions))
    }

    /// Produces and asserts success; returns the base offset.
    pub fn produce_ok(&mut self, topic: &str, partition: i32, batches: &[Bytes]) -> i64 {
        let p = self.produce(topic, partition, batches, Acks::Leader);
        assert_eq!(
            p.error_code(),
            ErrorCode::None,
            "produce to {topic}/{partition}: {p:?}"
        );
        assert!(p.base_offset >= 0);
        p.base_offset
    }

    /// Fetches one partition and returns its result (whatever the error code).
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: u32,
        min_bytes: u32,
        max_wait_ms: u32,
    ) -> FetchPartitionResponse {
        let response = fetch_body(self.call(fetch_request(
            topic,
            partition,
            offset,
            max_bytes,
            min_bytes,
            max_wait_ms,
        )));
        single_partition(response.topics, topic, |t| (t.name, t.partitions))
    }

    /// Reads a partition from its log start offset up to its high watermark (as of the first
    /// fetch), in as many fetches as it takes; asserts there are no errors and no gaps.
    pub fn fetch_all(&mut self, topic: &str, partition: i32) -> Vec<Rec> {
        self.fetch_all_raw(topic, partition).0
    }

    /// As [`Client::fetch_all`], also returning the fetched batch bytes back to back.
    pub fn fetch_all_raw(&mut self, topic: &str, partition: i32) -> (Vec<Rec>, Vec<u8>) {
        let first = self.fetch(topic, partition, 0, 0, 0, 0);
        assert_eq!(
            first.error_code(),
            ErrorCode::None,
            "fetch {topic}/{partition} from 0: {first:?}"
        );
        assert_eq!(
            first.log_start_offset, 0,
            "nothing was deleted by retention"
        );
        let end = first.high_watermark;
        let mut records = Vec::new();
        let mut raw = Vec::new();
        let mut next = 0;
        let mut response = first;
        loop {
            assert!(
                next == end || !response.records.is_empty(),
                "fetch {topic}/{partition} at {next} (< high watermark {end}) returned nothing"
            );
            raw.extend_from_slice(&response.records);
            for r in decode_records(&response.records) {
                if r.offset >= next {
                    assert_eq!(
                        r.offset, next,
                        "{topic}/{partition}: offsets are contiguous"
                    );
                    next += 1;
                    records.push(r);
                }
            }
            if next >= end {
                break;
            }
            response = self.fetch(topic, partition, next, 0, 0, 0);
            assert_eq!(
                response.error_code(),
                ErrorCode::None,
                "fetch {topic}/{partition} at {next}: {response:?}"
            );
        }
        (records, raw)
    }

    pub fn list_offsets(
        &mut self,
        topic: &str,
        partition: i32,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> ListOffsetsPartitionResponse {
        let response = list_offsets_body(self.call(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_string(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    spec: spec as i32,
                    timestamp_ms,
                    current_leader_epoch: None,
                }],
            }],
        }));
        single_partition(response.topics, topic, |t| (t.name, t.partitions))
    }

    /// ListOffsets, asserting no error; returns the offset.
    pub fn offset_of(&mut self, topic: &str, partition: i32, spec: OffsetSpec, ts: i64) -> i64 {
        let p = self.list_offsets(topic, partition, spec, ts);
        assert_eq!(p.error_code(), ErrorCode::None, "list offsets: {p:?}");
        p.offset
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The only partition entry of the only topic entry of a response, checking the names.
fn single_partition<T, P>(
    mut topics: Vec<T>,
    topic: &str,
    split: impl FnOnce(T) -> (String, Vec<P>),
) -> P {
    assert_eq!(topics.len(), 1, "one topic entry per requested topic");
    let (name, mut partitions) = split(topics.remove(0));
    assert_eq!(name, topic);
    assert_eq!(partitions.len(), 1, "one partition entry per requested one");
    partitions.remove(0)
}

pub fn correlation_id_of(request: &Request) -> u32 {
    request.header.as_ref().expect("header").correlation_id
}

pub fn response_id(response: &Response) -> u32 {
    response.header.as_ref().expect("header").correlation_id
}

/// The header error code of a response.
pub fn header_error(response: &Response) -> ErrorCode {
    response.header.as_ref().expect("header").error_code()
}

macro_rules! body_getters {
    ($($name:ident => $variant:ident($ty:ty);)*) => {
        $(
            /// The body of a successful response of this API; panics otherwise.
            pub fn $name(response: Response) -> $ty {
                let header = response.header.clone().expect("response header");
                assert_eq!(
                    header.error_code(),
                    ErrorCode::None,
                    "request-level error: {header:?}"
                );
                match response.body {
                    Some(response::Body::$variant(body)) => body,
                    other => panic!(
                        "expected a {} response body, got {other:?}",
                        stringify!($variant)
                    ),
                }
            }
        )*
    };
}

body_getters! {
    api_versions_body => ApiVersions(ApiVersionsResponse);
    metadata_body => Metadata(MetadataResponse);
    create_topics_body => CreateTopics(CreateTopicsResponse);
    delete_topics_body => DeleteTopics(DeleteTopicsResponse);
    describe_configs_body => DescribeConfigs(DescribeConfigsResponse);
    alter_configs_body => AlterConfigs(AlterConfigsResponse);
    produce_body => Produce(ProduceResponse);
    fetch_body => Fetch(FetchResponse);
    list_offsets_body => ListOffsets(ListOffsetsResponse);
    init_producer_id_body => InitProducerId(InitProducerIdResponse);
    describe_cluster_body => DescribeCluster(DescribeClusterResponse);
}

// ------------------------------------------------------------------------------------------
// Request builders
// ------------------------------------------------------------------------------------------

pub fn config_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn creatable(name: &str, partitions: i32, configs: &[(&str, &str)]) -> CreatableTopic {
    CreatableTopic {
        name: name.to_string(),
        num_partitions: Some(partitions),
        replication_factor: None,
        configs: config_map(configs),
    }
}

/// A produce request body; entries of the same topic are grouped into one topic entry, in
/// order of first appearance, partitions in the order given.
pub fn produce_request(acks: Acks, data: &[(&str, i32, Bytes)]) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for (topic, partition, records) in data {
        let entry = PartitionProduceData {
            partition: *partition,
            records: records.clone(),
            deliver_at_ms: Vec::new(),
        };
        match topics.iter_mut().find(|t| t.name == *topic) {
            Some(t) => t.partitions.push(entry),
            None => topics.push(TopicProduceData {
                name: topic.to_string(),
                partitions: vec![entry],
            }),
        }
    }
    ProduceRequest {
        acks: acks as i32,
        timeout_ms: 0,
        topics,
    }
}

pub fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: u32,
    min_bytes: u32,
    max_wait_ms: u32,
) -> FetchRequest {
    FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes,
        topics: vec![FetchTopic {
            name: topic.to_string(),
            partitions: vec![FetchPartition {
                partition,
                fetch_offset: offset,
                partition_max_bytes: max_bytes,
                current_leader_epoch: None,
            }],
        }],
    }
}

/// One frame holding `request` exactly as given, without the envelope checks of
/// `encode_request`: for requests a correct client would never send.
pub fn raw_request_frame(request: &Request) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(request, &mut out).expect("encode");
    out.to_vec()
}

/// A frame whose payload is `request` (possibly without a body) followed by `extra` bytes,
/// e.g. a body field of an API this build does not know.
pub fn raw_request_frame_with(request: &Request, extra: &[u8]) -> Vec<u8> {
    let frame = raw_request_frame(request);
    let mut payload = frame[LENGTH_PREFIX_LEN..].to_vec();
    payload.extend_from_slice(extra);
    frame_bytes(&payload)
}

/// `payload` behind a 4-byte big-endian length prefix.
pub fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len())
        .expect("payload fits a frame")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

// ------------------------------------------------------------------------------------------
// Records
// ------------------------------------------------------------------------------------------

/// One record, owned: what a test produces and what it reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rec {
    /// Offset: ignored when building a batch, the broker's when decoded.
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    /// A record with a key and a value and no headers.
    pub fn new(timestamp: i64, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Rec {
        Rec {
            offset: -1,
            timestamp,
            key: Some(key.as_ref().to_vec()),
            value: Some(value.as_ref().to_vec()),
            headers: vec![],
        }
    }

    /// A record as decoded from a fetched batch, at its offset.
    pub fn decoded(r: &batch::Record) -> Rec {
        Rec {
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.as_deref().map(<[u8]>::to_vec),
            value: r.value.as_deref().map(<[u8]>::to_vec),
            headers: r
                .headers()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect(),
        }
    }

    /// The same record at `offset`.
    pub fn at(&self, offset: i64) -> Rec {
        Rec {
            offset,
            ..self.clone()
        }
    }
}

/// Creates `topic` with `partitions` through the Rust client's `Admin` (for the async tests).
pub async fn admin_create_topic(addr: &str, topic: &str, partitions: i32) {
    let admin = strom_client::Admin::connect(strom_client::ClientConfig::new(addr))
        .await
        .expect("admin");
    admin
        .create_topic(strom_client::NewTopic::new(topic).partitions(partitions))
        .await
        .expect("create topic");
}

/// Milliseconds since the Unix epoch, now. Records get timestamps near now so that the default
/// `retention.ms` (7 days) never deletes test data.
pub fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("fits i64")
}

/// A batch of `n` records with key `k` and values `{tag}-{i}` from idempotent producer
/// (`id`, `epoch`), starting at sequence `seq`.
pub fn producer_batch(id: i64, epoch: i16, seq: i32, n: usize, tag: &str) -> Bytes {
    let records: Vec<Rec> = (0..n)
        .map(|i| Rec::new(now_ms(), "k", format!("{tag}-{i}")))
        .collect();
    batch_with(BatchBuilder::default().producer(id, epoch, seq), &records)
}

/// One uncompressed RecordBatch v2 holding `records` (base offset 0, as a producer writes it).
pub fn batch_of(records: &[Rec]) -> Bytes {
    batch_with(BatchBuilder::default(), records)
}

/// `records` pushed into `builder` (a plain one, or one set up for an idempotent producer).
pub fn batch_with(mut builder: BatchBuilder, records: &[Rec]) -> Bytes {
    for r in records {
        let headers: Vec<HeaderRef<'_>> = r
            .headers
            .iter()
            .map(|(k, v)| HeaderRef {
                key: k,
                value: v.as_deref(),
            })
            .collect();
        builder
            .push(&RecordRef {
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &headers,
            })
            .expect("push a record");
    }
    builder.finish().expect("finish the batch")
}

/// Batches back to back.
pub fn concat(batches: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    for b in batches {
        out.extend_from_slice(b);
    }
    out.freeze()
}

/// The base offsets of the batches in fetched `records`, checking each batch's CRC.
pub fn batch_base_offsets(records: &[u8]) -> Vec<i64> {
    walk_batches(records)
        .into_iter()
        .map(|(_, h)| h.base_offset)
        .collect()
}

/// Every record of fetched `records` (whole batches back to back), including those below the
/// fetch offset. Checks each batch's length, magic and CRC, and that nothing is left over.
pub fn decode_records(records: &[u8]) -> Vec<Rec> {
    let all = Bytes::copy_from_slice(records);
    let mut out = Vec::new();
    for (range, header) in walk_batches(records) {
        let mut expected = header.base_offset;
        for r in Records::new(all.slice(range)).expect("decode a fetched batch") {
            let r = r.expect("decode a fetched record");
            assert_eq!(
                r.offset, expected,
                "record offsets inside a batch are consecutive"
            );
            expected += 1;
            out.push(Rec::decoded(&r));
        }
        assert_eq!(
            expected,
            header.next_offset(),
            "a fetched batch holds as many records as its header says"
        );
    }
    out
}

/// The records of fetched `records` at or after `offset` (a fetch returns whole batches, so
/// the first one may start before the offset asked for).
pub fn records_from(records: &[u8], offset: i64) -> Vec<Rec> {
    decode_records(records)
        .into_iter()
        .filter(|r| r.offset >= offset)
        .collect()
}

fn walk_batches(records: &[u8]) -> Vec<(std::ops::Range<usize>, batch::BatchHeader)> {
    let mut iter = BatchIter::new(records);
    let mut out = Vec::new();
    for item in iter.by_ref() {
        let (range, header) = item.expect("a well-formed batch in a fetch response");
        batch::validate(&records[range.clone()]).expect("a fetched batch passes its CRC check");
        out.push((range, header));
    }
    assert_eq!(
        iter.position(),
        records.len(),
        "a fetch response holds whole batches only"
    );
    out
}

/// Expected records: `records` given consecutive offsets from `base`.
pub fn with_offsets(records: &[Rec], base: i64) -> Vec<Rec> {
    records
        .iter()
        .zip(base..)
        .map(|(r, offset)| r.at(offset))
        .collect()
}

/// A small deterministic pseudo-random generator (xorshift64*), for payloads and garbage.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

// ------------------------------------------------------------------------------------------
// Restarting on the same address
// ------------------------------------------------------------------------------------------

impl Broker {
    /// As [`Broker::start`], but listening on `addr` (`--listen <addr>`), e.g. the address of a
    /// broker that was stopped or killed, so that running clients reconnect to the same
    /// address. The old port is free once the old process is gone (the listener sets
    /// `SO_REUSEADDR`).
    pub fn start_at(data_dir: &Path, addr: SocketAddr, extra_args: &[&str]) -> Broker {
        Broker::spawn(data_dir, Some(addr), &[], extra_args)
    }
}

/// The text of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(a panic without a message)".into())
}
