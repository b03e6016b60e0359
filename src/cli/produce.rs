//! `strom produce`: one record per line of standard input, through the batching, idempotent
//! producer (not one request per line), so a large file goes at bench-like speed.

use std::collections::VecDeque;
use std::io::BufRead;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use strom_client::{Acks, CompressionType, HeaderRef, Producer, ProducerConfig, ProducerRecord};

use super::parse_pair;

/// When the broker acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Never: fire and forget.
    #[value(name = "0")]
    None,
    /// Once appended on the broker (default).
    #[value(name = "1")]
    Leader,
    /// Once fsynced (on a single node, "all" replicas is this one).
    #[value(name = "all")]
    All,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to (created on first use if the broker auto-creates topics).
    pub topic: String,
    /// Split each line at the first SEP into key and value; lines without SEP get no key.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// When the broker acknowledges each batch [default: 1]
    #[arg(long, value_enum, default_value = "1")]
    pub acks: AcksArg,
    /// A header added to every record (repeatable).
    #[arg(long = "header", value_name = "K=V", value_parser = parse_pair)]
    pub headers: Vec<(String, String)>,
    /// Write every record to this partition instead of choosing by key.
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    /// Compress batches: none, gzip, snappy, lz4 or zstd [default: none]
    #[arg(long, value_name = "CODEC", default_value = "none")]
    pub compression: String,
    /// How long a batch may wait for more records [default: 5]
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// Batch size in bytes [default: 262144]
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    pub batch_size: usize,
}

/// Deliveries awaited at most this far behind the sends, so errors surface early while the
/// producer keeps batching.
const WINDOW: usize = 100_000;

pub async fn run(bootstrap: &str, args: ProduceArgs) -> anyhow::Result<()> {
    let mut config = ProducerConfig::new(bootstrap);
    config.acks = match args.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::All => Acks::Durable,
    };
    config.compression = CompressionType::parse(&args.compression).with_context(|| {
        format!(
            "unknown compression {:?}: use none, gzip, snappy, lz4 or zstd",
            args.compression
        )
    })?;
    config.linger = std::time::Duration::from_millis(args.linger_ms);
    config.batch_size = args.batch_size;
    let producer = Producer::connect(config).await?;
    // Learn the topic (the broker creates it here if it creates topics on first use) before
    // reading input, so an unknown topic fails at once instead of after the send timeout.
    match tokio::time::timeout(
        std::time::Duration::from_secs(3),
        producer.partition_count(&args.topic),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e).with_context(|| format!("looking up topic {}", args.topic)),
        Err(_) => bail!(
            "unknown topic {}: it does not exist and the broker does not create topics on first use",
            args.topic
        ),
    }
    let headers: Vec<HeaderRef<'_>> = args
        .headers
        .iter()
        .map(|(k, v)| HeaderRef {
            key: k,
            value: Some(v.as_bytes()),
        })
        .collect();
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut line = Vec::with_capacity(4096);
    let mut pending = VecDeque::new();
    let mut sent: u64 = 0;
    let sep = args.key_separator.as_deref().map(str::as_bytes);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .context("reading standard input")?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let (key, value) = match sep.and_then(|s| find(&line, s).map(|i| (i, s.len()))) {
            Some((i, len)) => (Some(&line[..i]), &line[i + len..]),
            None => (None, &line[..]),
        };
        let record = ProducerRecord {
            topic: &args.topic,
            partition: args.partition,
            key,
            value: Some(value),
            headers: &headers,
            timestamp: None,
        };
        let delivery = producer
            .send_record(record)
            .await
            .with_context(|| format!("sending line {}", sent + 1))?;
        sent += 1;
        pending.push_back(delivery);
        if pending.len() >= WINDOW
            && let Some(d) = pending.pop_front()
        {
            d.await.context("a record was not delivered")?;
        }
    }
    producer.flush().await.context("flushing")?;
    for d in pending {
        d.await.context("a record was not delivered")?;
    }
    producer.close().await.context("closing the producer")?;
    eprintln!("produced {sent} records to {}", args.topic);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn find_separator() {
        assert_eq!(super::find(b"k1=v=1", b"="), Some(2));
        assert_eq!(super::find(b"k1::v", b"::"), Some(2));
        assert_eq!(super::find(b"none", b"="), None);
        assert_eq!(super::find(b"x", b""), None);
    }
}
