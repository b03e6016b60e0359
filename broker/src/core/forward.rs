//! strom's own client inside the broker, for work on partitions and groups other brokers lead:
//! the queue groups' dead-letter and redrive copies (here), and the check that one id names
//! one kind of group (`super::group_kinds`).
//!
//! Both write the same way, exactly once across crashes: note where the target ends (`since`),
//! append the copies, and after a crash look for them from `since` on by their headers before
//! writing again. Where this broker leads the target the three steps are local (the log end,
//! an fsynced append, a read of the log). Elsewhere they go through strom's own client,
//! bootstrapped at this broker's native listener, as any service's would: the leader's high
//! watermark as `since` (the next append lands at or after it), an idempotent producer with
//! durable acks (a retry inside it is deduplicated by the leader, across failovers too), and a
//! consumer reading from `since` up to the high watermark. The client follows leader changes
//! itself; its connections are opened on first use and kept.
//!
//! The one case a remote copy can be written twice: this broker dies after the leader appended
//! the copies and before they were acknowledged, the next coordinator looks for them while
//! they are still above the leader's high watermark, and they are committed after all (the
//! window is one append's replication, or until the ISR drops this broker when it was an
//! in-sync follower of that partition); docs/queues.md states it.

use std::sync::Arc;
use std::time::Duration;

use strom_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
};
use strom_protocol::batch::{BatchIter, HeaderRef, Records, validate};
use strom_protocol::compression::{MAX_DECOMPRESSED_BATCH, decompress};
use strom_storage::ValidBatch;
use tokio::sync::Mutex;

use super::Core;
use super::partition::{Durability, Partition};

/// Largest copy the producer sends (the leader refuses what its topic does not take).
const COPY_MAX_RECORD_BYTES: usize = 64 << 20;

/// How long a remote search for copies may take before the round gives up (and retries).
const FIND_TIMEOUT: Duration = Duration::from_secs(30);

/// The clients for partitions led elsewhere, opened on first use.
#[derive(Default)]
pub(crate) struct Forward {
    /// This broker's native listener, where the clients bootstrap (`None`: no native listener,
    /// so copies to partitions led elsewhere fail with a clear reason).
    bootstrap: Option<String>,
    producer: Mutex<Option<Producer>>,
    consumer: Mutex<Option<Consumer>>,
    admin: Mutex<Option<Arc<Admin>>>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Forward {
    pub(crate) fn new(bootstrap: Option<String>) -> Self {
        Self {
            bootstrap,
            ..Self::default()
        }
    }

    fn bootstrap(&self) -> Result<String, String> {
        self.bootstrap.clone().ok_or_else(|| {
            "the target partition is led by another broker, and without a native listener \
             this broker cannot write to it"
                .to_string()
        })
    }

    async fn producer(&self) -> Result<Producer, String> {
        let mut slot = self.producer.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let mut config = ProducerConfig::new(self.bootstrap()?);
        config.client.client_id = "strom-broker-copies".into();
        config.acks = strom_client::Acks::Durable;
        // A copy is as large as its record plus a few headers: the target topic's
        // `max.message.bytes` is the limit that counts, and the leader applies it.
        config.max_record_size = COPY_MAX_RECORD_BYTES;
        config.buffer_memory = 2 * COPY_MAX_RECORD_BYTES;
        let p = Producer::connect(config)
            .await
            .map_err(|e| format!("copy producer: {e}"))?;
        *slot = Some(p.clone());
        Ok(p)
    }

    pub(crate) async fn admin(&self) -> Result<Arc<Admin>, String> {
        let mut slot = self.admin.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let mut config = ClientConfig::new(self.bootstrap()?);
        config.client_id = "strom-broker".into();
        let a = Arc::new(
            Admin::connect(config)
                .await
                .map_err(|e| format!("admin client: {e}"))?,
        );
        *slot = Some(a.clone());
        Ok(a)
    }

    async fn consumer(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Consumer>, String> {
        let mut slot = self.consumer.lock().await;
        if slot.is_none() {
            let mut config = ConsumerConfig::new(self.bootstrap()?);
            config.client.client_id = "strom-broker-copies".into();
            config.fetch_max_wait = Duration::from_millis(100);
            let c = Consumer::connect(config)
                .await
                .map_err(|e| format!("copy consumer: {e}"))?;
            *slot = Some(c);
        }
        tokio::sync::MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| "copy consumer missing".to_string())
    }
}

impl Core {
    /// This broker's replica of `topic`/`partition` while it leads it.
    fn led_here(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let part = self.topics.get(topic)?.partition(partition).cloned()?;
        part.replica().status().leading.is_some().then_some(part)
    }

    /// Where copies appended to `topic`/`partition` from now on will land, at the earliest.
    pub(crate) async fn copy_since(&self, topic: &str, partition: i32) -> Result<i64, String> {
        if let Some(part) = self.led_here(topic, partition) {
            return Ok(part.reader().end_offset());
        }
        let mut c = self.forward.consumer().await?;
        high_watermark(&mut c, topic, partition).await
    }

    /// Appends `batch` to `topic`/`partition`, acknowledged once durable on the in-sync
    /// replicas.
    pub(crate) async fn copy_append(
        &self,
        topic: &str,
        partition: i32,
        batch: ValidBatch,
    ) -> Result<(), String> {
        if let Some(part) = self.led_here(topic, partition) {
            return part
                .append_acknowledged(vec![batch], Durability::Fsynced)
                .await
                .map(drop)
                .map_err(|(_, e)| e);
        }
        let producer = self.forward.producer().await?;
        let sent = send_copies(&producer, topic, partition, &batch).await;
        if sent.is_err() {
            // A producer that failed for good (fenced, out of sequence) stays failed: the next
            // round starts a new one.
            *self.forward.producer.lock().await = None;
        }
        sent.map_err(|e| format!("copy to {topic}/{partition}: {e}"))
    }

    /// Whether `topic`/`partition` holds, from `since` on, a record whose headers `is_copy`
    /// accepts.
    pub(crate) async fn copy_found(
        &self,
        topic: &str,
        partition: i32,
        since: i64,
        is_copy: &(dyn Fn(&[HeaderRef<'_>]) -> bool + Sync),
    ) -> Result<bool, String> {
        if let Some(part) = self.led_here(topic, partition) {
            return find_local(&part, since, is_copy);
        }
        let mut c = self.forward.consumer().await?;
        let end = high_watermark(&mut c, topic, partition).await?;
        if since >= end {
            return Ok(false);
        }
        // Retention may have moved the start past `since`.
        c.seek_to_beginning(&[(topic, partition)])
            .await
            .map_err(|e| format!("start of {topic}/{partition}: {e}"))?;
        let start = c.position((topic, partition)).unwrap_or(since);
        c.seek((topic, partition), since.max(start))
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + FIND_TIMEOUT;
        while c.position((topic, partition)).is_some_and(|p| p < end) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "reading {topic}/{partition} from {since} to {end} took over {FIND_TIMEOUT:?}"
                ));
            }
            for r in c
                .poll(Duration::from_millis(500))
                .await
                .map_err(|e| e.to_string())?
            {
                let headers: Vec<HeaderRef<'_>> = r.headers().collect();
                if is_copy(&headers) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Sends the records of `batch` to `topic`/`partition` and waits for their acknowledgements.
async fn send_copies(
    producer: &Producer,
    topic: &str,
    partition: i32,
    batch: &ValidBatch,
) -> Result<(), String> {
    let plain = decompress(batch.bytes(), batch.header(), MAX_DECOMPRESSED_BATCH)
        .map_err(|e| e.to_string())?;
    let mut deliveries = Vec::new();
    for rec in Records::new(plain).map_err(|e| e.to_string())? {
        let rec = rec.map_err(|e| e.to_string())?;
        let headers: Vec<HeaderRef<'_>> = rec.headers().collect();
        let mut record = ProducerRecord::new(topic)
            .partition(partition)
            .headers(&headers)
            .timestamp(rec.timestamp);
        if let Some(k) = rec.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = rec.value.as_deref() {
            record = record.value(v);
        }
        deliveries.push(
            producer
                .send_record(record)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    producer.flush().await.map_err(|e| e.to_string())?;
    for d in deliveries {
        d.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The partition's high watermark, as its leader says; the consumer is assigned to it.
async fn high_watermark(c: &mut Consumer, topic: &str, partition: i32) -> Result<i64, String> {
    c.assign(&[(topic, partition)]);
    c.seek_to_end(&[(topic, partition)])
        .await
        .map_err(|e| format!("end of {topic}/{partition}: {e}"))?;
    c.position((topic, partition))
        .ok_or_else(|| format!("no end offset for {topic}/{partition}"))
}

/// [`Core::copy_found`] on this broker's own log.
fn find_local(
    part: &Partition,
    since: i64,
    is_copy: &(dyn Fn(&[HeaderRef<'_>]) -> bool + Sync),
) -> Result<bool, String> {
    let reader = part.reader();
    let mut at = since.max(reader.start_offset());
    while at < reader.end_offset() {
        let r = reader.read(at, 1 << 20).map_err(|e| e.to_string())?;
        if r.data.is_empty() {
            break;
        }
        for item in BatchIter::new(&r.data) {
            let Ok((range, header)) = item else { break };
            let raw = r.data.slice(range);
            if validate(&raw).is_err() {
                continue;
            }
            let Ok(plain) = decompress(&raw, &header, MAX_DECOMPRESSED_BATCH) else {
                continue;
            };
            let Ok(records) = Records::new(plain) else {
                continue;
            };
            for rec in records.flatten() {
                let headers: Vec<HeaderRef<'_>> = rec.headers().collect();
                if is_copy(&headers) {
                    return Ok(true);
                }
            }
        }
        if r.next_offset <= at {
            break;
        }
        at = r.next_offset;
    }
    Ok(false)
}
