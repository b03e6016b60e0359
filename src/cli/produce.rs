//! `strom produce`: one record per line of standard input, through the batching, idempotent
//! producer (not one request per line), so a large file goes at bench-like speed.
//!
//! `--deliver-after` / `--deliver-at` delay the records for queue groups (docs/queues.md): every
//! record of the run gets one delivery time, so the records still share batches (the time is
//! kept per batch).

use std::collections::VecDeque;
use std::io::BufRead;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use strom_client::{
    Acks, CompressionType, HeaderRef, MAX_DELIVERY_DELAY, Producer, ProducerConfig, ProducerRecord,
};

use super::parse_pair;

/// When the broker acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Never: fire and forget.
    #[value(name = "0")]
    None,
    /// Once appended on the partition's leader.
    #[value(name = "1")]
    Leader,
    /// Once fsynced on the leader and every in-sync replica (on a single node, that node):
    /// the default, as Kafka producers default to acks=all.
    #[value(name = "all")]
    All,
    /// Once every in-sync replica has the records (the high watermark passed them), fsynced
    /// only as the topic's flush policy says: native ACKS_ALL, the Rust client's default.
    #[value(name = "replicated")]
    Replicated,
}

impl AcksArg {
    /// The client's setting for it.
    pub fn client(self) -> Acks {
        match self {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::All => Acks::Durable,
            AcksArg::Replicated => Acks::All,
        }
    }

    /// How the command line names it.
    pub fn name(self) -> &'static str {
        match self {
            AcksArg::None => "0",
            AcksArg::Leader => "1",
            AcksArg::All => "all",
            AcksArg::Replicated => "replicated",
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to (created on first use if the broker auto-creates topics).
    pub topic: String,
    /// Split each line at the first SEP into key and value; lines without SEP get no key.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// When the broker acknowledges each batch [default: all]
    #[arg(long, value_enum, default_value = "all")]
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
    /// Delay the records for queue groups by DURATION (e.g. 500ms, 30s, 5m, 2h, 3d; at most
    /// 90 days)
    ///
    /// Every record of the run gets one delivery time: now + DURATION, taken when the command
    /// starts. Queue groups hand the records out only from then on; consumer groups and plain
    /// consumers read them at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_deliver_after,
          conflicts_with = "deliver_at")]
    pub deliver_after: Option<Duration>,
    /// Delay the records for queue groups until this time (RFC 3339, e.g. 2026-12-02T15:00:00Z
    /// or 2026-12-02T16:00:00+01:00; at most 90 days ahead)
    ///
    /// Every record of the run gets this delivery time. Queue groups hand the records out only
    /// from then on; consumer groups and plain consumers read them at once. A time already past
    /// delays nothing.
    #[arg(long, value_name = "RFC3339", value_parser = parse_deliver_at)]
    pub deliver_at: Option<i64>,
}

/// ms since the Unix epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `--deliver-after`: a duration as humantime reads it (`500ms`, `30s`, `5m`, `2h`, `3d`,
/// `1h 30m`), at most [`MAX_DELIVERY_DELAY`].
fn parse_deliver_after(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration such as 500ms, 30s, 5m, 2h or 3d ({e})")
    })?;
    if d > MAX_DELIVERY_DELAY {
        return Err(format!(
            "{text:?} is more than the {} days a delivery may be delayed",
            MAX_DELIVERY_DELAY.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// `--deliver-at`: an RFC 3339 time ([`parse_rfc3339_ms`]) at most [`MAX_DELIVERY_DELAY`]
/// ahead, as ms since the Unix epoch.
fn parse_deliver_at(text: &str) -> Result<i64, String> {
    let at = parse_rfc3339_ms(text)?;
    let max = i64::try_from(MAX_DELIVERY_DELAY.as_millis()).unwrap_or(i64::MAX);
    if at > now_ms().saturating_add(max) {
        return Err(format!(
            "{text:?} is more than the {} days ahead a delivery may be delayed",
            MAX_DELIVERY_DELAY.as_secs() / 86_400
        ));
    }
    Ok(at)
}

/// A strict RFC 3339 time, `YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)` (`T` and `Z` in either
/// case), as ms since the Unix epoch. humantime reads the UTC part (it checks the fields'
/// ranges, leap years included); the offset is applied here, as humantime knows only UTC.
fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{text:?} is not an RFC 3339 time such as 2026-12-02T15:00:00Z or \
             2026-12-02T16:00:00+01:00"
        )
    };
    let t = text.trim().to_ascii_uppercase();
    let (local, offset_minutes) = if let Some(local) = t.strip_suffix('Z') {
        (local, 0)
    } else {
        let split = t.len().checked_sub(6).ok_or_else(bad)?;
        let (local, offset) = t.split_at_checked(split).ok_or_else(bad)?;
        let o = offset.as_bytes();
        let sign = match o[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let digits = |a: u8, b: u8| -> Option<i64> {
            (a.is_ascii_digit() && b.is_ascii_digit())
                .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
        };
        let (Some(h), b':', Some(m)) = (digits(o[1], o[2]), o[3], digits(o[4], o[5])) else {
            return Err(bad());
        };
        if h > 23 || m > 59 {
            return Err(format!("{text:?}: the offset {offset} is out of range"));
        }
        (local, sign * (h * 60 + m))
    };
    // `YYYY-MM-DDTHH:MM:SS`, then nothing or a fraction of at least one digit.
    let fraction_ok = match local.as_bytes().get(19..) {
        Some([]) => true,
        Some([b'.', digits @ ..]) => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !fraction_ok || !local.is_char_boundary(19) {
        return Err(bad());
    }
    let utc = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|e| match e {
        humantime::TimestampError::OutOfRange => format!("{text:?}: a field is out of range"),
        _ => bad(),
    })?;
    let ms = utc
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Ok(ms - offset_minutes * 60_000)
}

/// Deliveries awaited at most this far behind the sends, so errors surface early while the
/// producer keeps batching.
const WINDOW: usize = 100_000;

pub async fn run(bootstrap: &str, args: ProduceArgs) -> anyhow::Result<()> {
    let mut config = ProducerConfig::new(bootstrap);
    config.acks = args.acks.client();
    config.compression = CompressionType::parse(&args.compression).with_context(|| {
        format!(
            "unknown compression {:?}: use none, gzip, snappy, lz4 or zstd",
            args.compression
        )
    })?;
    config.linger = Duration::from_millis(args.linger_ms);
    config.batch_size = args.batch_size;
    let producer = Producer::connect(config).await?;
    // Learn the topic (the broker creates it here if it creates topics on first use) before
    // reading input, so an unknown topic fails at once instead of after the send timeout.
    match tokio::time::timeout(
        Duration::from_secs(3),
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
    // One delivery time for every record: the records keep sharing batches.
    let deliver_at = match (args.deliver_after, args.deliver_at) {
        (Some(d), _) => {
            let d = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Some(now_ms().saturating_add(d))
        }
        (None, Some(at)) => {
            if at <= now_ms() {
                eprintln!("note: --deliver-at is already past: the records are not delayed");
            }
            Some(at)
        }
        (None, None) => None,
    };
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
            deliver_at,
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
    use clap::Parser;

    use super::*;

    /// `strom produce`'s arguments alone, as clap parses them.
    #[derive(Debug, Parser)]
    struct Produce {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn parse(argv: &[&str]) -> Result<ProduceArgs, clap::Error> {
        Produce::try_parse_from(std::iter::once("produce").chain(argv.iter().copied()))
            .map(|p| p.args)
    }

    #[test]
    fn deliver_flags() {
        let a = parse(&["orders", "--deliver-after", "5m"]).unwrap();
        assert_eq!(a.deliver_after, Some(Duration::from_secs(300)));
        assert_eq!(a.deliver_at, None);
        let a = parse(&["orders", "--deliver-at", "2036-12-02T15:00:00Z"]);
        // More than 90 days ahead (until late 2036).
        assert_eq!(
            a.unwrap_err().kind(),
            clap::error::ErrorKind::ValueValidation
        );
        let soon = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(60))
            .to_string();
        let a = parse(&["orders", "--deliver-at", &soon]).unwrap();
        assert!(a.deliver_at.unwrap() > now_ms());
        let e = parse(&["orders", "--deliver-at", &soon, "--deliver-after", "1s"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        for bad in [
            "--deliver-after=soon",
            "--deliver-after=91d",
            "--deliver-at=tomorrow",
        ] {
            let e = parse(&["orders", bad]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
        let a = parse(&["orders"]).unwrap();
        assert_eq!((a.deliver_after, a.deliver_at), (None, None));
    }

    #[test]
    fn durations() {
        let ms = |t: &str| parse_deliver_after(t).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("3d"), Ok(259_200_000));
        assert_eq!(ms("90d"), Ok(7_776_000_000));
        assert!(ms("90d 1s").unwrap_err().contains("90 days"));
        assert!(ms("").is_err());
        assert!(ms("5").is_err());
        assert!(ms("-5s").is_err());
    }

    #[test]
    fn rfc3339_times() {
        let t = parse_rfc3339_ms;
        assert_eq!(t("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(t("2026-12-02T15:00:00Z"), Ok(1_796_223_600_000));
        assert_eq!(t("2026-12-02t15:00:00z"), Ok(1_796_223_600_000));
        assert_eq!(t("2026-12-02T16:00:00+01:00"), Ok(1_796_223_600_000));
        assert_eq!(t("2026-12-02T09:30:00-05:30"), Ok(1_796_223_600_000));
        assert_eq!(t("2026-12-02T15:00:00-00:00"), Ok(1_796_223_600_000));
        assert_eq!(t("2026-12-02T15:00:00.25Z"), Ok(1_796_223_600_250));
        assert_eq!(
            t("2026-12-02T15:00:00.123456789+00:00"),
            Ok(1_796_223_600_123)
        );
        assert_eq!(t("2028-02-29T00:00:00Z"), Ok(1_835_395_200_000));
        for bad in [
            "",
            "tomorrow",
            "2026-12-02",
            "2026-12-02T15:00:00",
            "2026-12-02 15:00:00Z",
            "2026-12-02T15:00Z",
            "2026-12-02T15:00:00.Z",
            "2026-12-02T15:00:00.5x+01:00",
            "2026-12-02T15:00:00+0100",
            "2026-12-02T15:00:00+01",
            "2026-12-02T15:00:00 +01:00",
            "2026-12-02T15:00:00+24:00",
            "2026-12-02T15:00:00+01:60",
            "2026-13-02T15:00:00Z",
            "2027-02-29T00:00:00Z",
            "2026-12-02T24:00:00Z",
            "2026-12-02T15:00:00Zé",
            "é026-12-02T15:00:00Z",
        ] {
            assert!(t(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn find_separator() {
        assert_eq!(super::find(b"k1=v=1", b"="), Some(2));
        assert_eq!(super::find(b"k1::v", b"::"), Some(2));
        assert_eq!(super::find(b"none", b"="), None);
        assert_eq!(super::find(b"x", b""), None);
    }
}
