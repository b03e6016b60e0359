//! Prints the order events of a topic, from the beginning (or the end), partition by partition
//! in offset order.
//!
//! ```text
//! cargo run -p strom-client --example order_consumer -- \
//!     [--bootstrap ADDR] [--topic orders] [--from beginning|end] [--max N] [--follow]
//! ```
//!
//! `--bootstrap` defaults to `$STROM_BOOTSTRAP`, then to 127.0.0.1:9494. Without `--follow` it
//! stops after 3 seconds without new records.

use std::time::{Duration, Instant};

use strom_client::{Consumer, ConsumerConfig};

struct Args {
    bootstrap: String,
    topic: String,
    from_end: bool,
    max: u64,
    follow: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bootstrap: std::env::var("STROM_BOOTSTRAP")
            .unwrap_or_else(|_| strom_client::DEFAULT_BOOTSTRAP.to_string()),
        topic: "orders".to_string(),
        from_end: false,
        max: 0,
        follow: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => args.bootstrap = value()?,
            "--topic" => args.topic = value()?,
            "--from" => match value()?.as_str() {
                "beginning" => args.from_end = false,
                "end" => args.from_end = true,
                other => return Err(format!("--from: expected beginning or end, got {other:?}")),
            },
            "--max" => args.max = value()?.parse().map_err(|e| format!("--max: {e}"))?,
            "--follow" => args.follow = true,
            "-h" | "--help" => {
                return Err(
                    "usage: order_consumer [--bootstrap ADDR] [--topic T] [--from beginning|end] [--max N] [--follow]"
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
        eprintln!("order_consumer: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), strom_client::Error> {
    let mut consumer = Consumer::connect(ConsumerConfig::new(args.bootstrap)).await?;
    let partitions = consumer.partition_count(&args.topic).await?;
    let assignment: Vec<(&str, i32)> = (0..partitions).map(|p| (args.topic.as_str(), p)).collect();
    consumer.assign(&assignment);
    if args.from_end {
        consumer.seek_to_end(&[]).await?;
    } else {
        consumer.seek_to_beginning(&[]).await?;
    }
    let idle_limit = Duration::from_secs(3);
    let mut last_record = Instant::now();
    let mut printed = 0u64;
    loop {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        if records.is_empty() {
            if !args.follow && last_record.elapsed() >= idle_limit {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        for r in records {
            let key = r.key().map(|k| String::from_utf8_lossy(k).into_owned());
            let value = r.value().map(|v| String::from_utf8_lossy(v).into_owned());
            let event = r
                .headers()
                .find(|h| h.key == "event-type")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            println!(
                "{}-{}@{} ts={} key={} event={} {}",
                r.topic(),
                r.partition(),
                r.offset(),
                r.timestamp(),
                key.as_deref().unwrap_or("-"),
                event.as_deref().unwrap_or("-"),
                value.as_deref().unwrap_or("null"),
            );
            printed += 1;
            if args.max > 0 && printed >= args.max {
                eprintln!("read {printed} records");
                return Ok(());
            }
        }
    }
    eprintln!("read {printed} records");
    Ok(())
}
