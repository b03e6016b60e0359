//! Publishes a stream of `order_placed` events keyed by order id, so every event of one order
//! lands in one partition, in order.
//!
//! ```text
//! cargo run -p strom-client --example order_producer -- \
//!     [--bootstrap ADDR] [--topic orders] [--count 1000]
//!     [--compression none|gzip|snappy|lz4|zstd]
//! ```
//!
//! `--bootstrap` defaults to `$STROM_BOOTSTRAP`, then to 127.0.0.1:9494. The topic is created
//! by the broker on first use if it allows auto-creation (otherwise create it first:
//! `strom topics create orders --partitions 12`).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use strom_client::{CompressionType, HeaderRef, Producer, ProducerConfig};

struct Args {
    bootstrap: String,
    topic: String,
    count: u64,
    compression: CompressionType,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bootstrap: std::env::var("STROM_BOOTSTRAP")
            .unwrap_or_else(|_| strom_client::DEFAULT_BOOTSTRAP.to_string()),
        topic: "orders".to_string(),
        count: 1000,
        compression: CompressionType::None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => args.bootstrap = value()?,
            "--topic" => args.topic = value()?,
            "--count" => {
                args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?;
            }
            "--compression" => {
                let v = value()?;
                args.compression = CompressionType::parse(&v)
                    .ok_or_else(|| format!("--compression: unknown codec {v:?}"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: order_producer [--bootstrap ADDR] [--topic T] [--count N] [--compression none|gzip|snappy|lz4|zstd]"
                        .to_string(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("order_producer: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), strom_client::Error> {
    let producer = Producer::connect(ProducerConfig {
        compression: args.compression,
        ..ProducerConfig::new(args.bootstrap)
    })
    .await?;
    let headers = [
        HeaderRef {
            key: "event-type",
            value: Some(b"order_placed"),
        },
        HeaderRef {
            key: "content-type",
            value: Some(b"application/json"),
        },
    ];
    let started = Instant::now();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut deliveries = Vec::with_capacity(args.count as usize);
    for n in 0..args.count {
        let order_id = format!("order-{n:06}");
        let value = format!(
            "{{\"event\":\"order_placed\",\"order_id\":\"{order_id}\",\"customer\":\"c-{}\",\"amount_cents\":{},\"placed_at_ms\":{now_ms}}}",
            n % 97,
            1000 + (n * 7919) % 50_000
        );
        // `send` returns once the record is batched; the acknowledgement comes later.
        let delivery = producer
            .send(
                &args.topic,
                Some(order_id.as_bytes()),
                Some(value.as_bytes()),
                &headers,
            )
            .await?;
        deliveries.push(delivery);
    }
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    for delivery in deliveries {
        let meta = delivery.await?;
        *per_partition.entry(meta.partition).or_default() += 1;
    }
    producer.close().await?;
    let elapsed = started.elapsed();
    println!(
        "sent {} order_placed events to {} in {:.1} ms ({:.0} records/s)",
        args.count,
        args.topic,
        elapsed.as_secs_f64() * 1000.0,
        args.count as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    for (partition, n) in per_partition {
        println!("  partition {partition}: {n}");
    }
    Ok(())
}
