//! The broker's resource bounds under hostile or careless clients: thousands of idle
//! connections, a flood from 50 producers past the in-flight memory bound, and a client that
//! never reads its responses. In each case the broker's RSS stays bounded and a well-behaved
//! client is still served.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use strom_protocol::encode_request;
use strom_protocol::messages::*;

use support::*;

/// The broker's resident set size in bytes, from /proc.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Samples the broker's RSS until stopped; returns the peak.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut peak = 0;
        while !s.load(Ordering::Relaxed) {
            peak = peak.max(rss(pid));
            std::thread::sleep(Duration::from_millis(20)); // a sampling period, not a wait
        }
        peak.max(rss(pid))
    });
    (stop, handle)
}

const MIB: u64 = 1 << 20;

#[test]
fn thousands_of_idle_connections_stay_cheap() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("t", 1, &[]);
    let before = rss(broker.pid());
    let idle: Vec<TcpStream> = (0..5000)
        .map(|_| TcpStream::connect(broker.addr).expect("connect"))
        .collect();
    // The broker has accepted them all once a request on a new connection is answered after
    // them (accepts are served in order).
    let mut late = broker.client();
    assert!(!late.api_versions().api_versions.is_empty());
    let after = rss(broker.pid());
    assert!(
        after.saturating_sub(before) < 150 * MIB,
        "5,000 idle connections cost {} MiB",
        (after - before) / MIB
    );
    // Still serving, with the idle ones open.
    assert_eq!(
        c.produce_ok("t", 0, &[batch_of(&[Rec::new(now_ms(), "k", "v")])]),
        0
    );
    drop(idle);
}

#[test]
fn a_flood_from_50_producers_stays_within_the_memory_bound() {
    let dir = TestDir::new();
    let broker = Broker::start(
        &dir.data(),
        &[
            "--max-inflight-bytes-total",
            &(64 * MIB).to_string(),
            "--topic-config",
            "max.message.bytes=2000000",
        ],
    );
    let mut c = broker.client();
    c.create_topic_ok("flood", 4, &[]);
    let base = rss(broker.pid());
    // One ~1 MiB produce request, sent over and over by every producer.
    let value = vec![b'x'; 1000];
    let recs: Vec<Rec> = (0..1000)
        .map(|i| Rec::new(now_ms(), format!("k{i}"), &value))
        .collect();
    let batch = batch_of(&recs);
    let (stop, peak) = watch_rss(broker.pid());
    let acked = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..50)
        .map(|n| {
            let addr = broker.addr;
            let batch = batch.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut wire = BytesMut::new();
                let requests = 8;
                for i in 0..requests {
                    let req = client.request(produce_request(
                        Acks::Leader,
                        &[("flood", (n + i) % 4, batch.clone())],
                    ));
                    encode_request(&req, &mut wire).expect("encode");
                }
                // Everything at once, before reading any response.
                client.send_raw(&wire);
                for _ in 0..requests {
                    let r = produce_body(client.recv());
                    assert_eq!(
                        r.topics[0].partitions[0].error_code(),
                        strom_protocol::ErrorCode::None
                    );
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer thread");
    }
    stop.store(true, Ordering::Relaxed);
    let peak = peak.join().expect("watcher");
    assert_eq!(acked.load(Ordering::Relaxed), 400);
    // 400 MiB were sent; requests held at once are bounded by 64 MiB.
    let grew = peak.saturating_sub(base);
    assert!(
        grew < 200 * MIB,
        "the broker grew by {} MiB under a 400 MiB flood with a 64 MiB in-flight bound",
        grew / MIB
    );
    assert_eq!(c.offset_of("flood", 0, OffsetSpec::Latest, 0), 100 * 1000);
}

#[test]
fn a_client_that_never_reads_its_responses_is_cut_off() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &["--write-timeout-ms", "1000"]);
    let mut c = broker.client();
    c.create_topic_ok("big", 1, &[]);
    let value = vec![b'y'; 1000];
    for _ in 0..8 {
        let recs: Vec<Rec> = (0..900)
            .map(|i| Rec::new(now_ms(), format!("k{i}"), &value))
            .collect();
        c.produce_ok("big", 0, &[batch_of(&recs)]);
    }
    // Ask for ~8 MiB again and again, never reading.
    let mut hog = TcpStream::connect(broker.addr).expect("connect");
    let mut wire = BytesMut::new();
    let mut ids = broker.client();
    for _ in 0..200 {
        let req = ids.request(fetch_request("big", 0, 0, 8 << 20, 0, 0));
        encode_request(&req, &mut wire).expect("encode");
    }
    let started = Instant::now();
    // The broker stops reading this client once its responses back up, then closes it after the
    // write timeout: our writes fail or the socket gets closed.
    let _ = hog.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = hog.write_all(&wire);
    // A well-behaved client is served all along.
    assert_eq!(c.offset_of("big", 0, OffsetSpec::Latest, 0), 7200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = hog.write(&[0u8; 1]);
        if probe.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "the broker never closed the hog");
        std::thread::sleep(Duration::from_millis(50)); // polling the socket's state
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(rss(broker.pid()) < 512 * MIB);
}
