//! The producer: [`Producer::send`] appends a record to its partition's batch and returns at
//! once (or waits for buffer space); a background sender task sends the batches and completes
//! each record's [`DeliveryFuture`].
//!
//! - `accumulator`: per-partition batches, partition choice (murmur2 / sticky), the memory bound;
//! - `sender`: requests, responses, ordered retries, sequence numbers, reconnection;
//! - `delivery`: per-batch completion shared by the batch's records.
//!
//! Tasks: one sender task per producer, plus two connection tasks (reader, writer) for its data
//! connection and two for its control connection (metadata, InitProducerId). `send` runs on the
//! caller's task and takes one short lock per record.

mod accumulator;
mod delivery;
mod sender;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strom_protocol::batch::{HEADER_LEN, HeaderRef};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

pub use delivery::DeliveryFuture;

use crate::backoff::backoff;
use crate::config::ProducerConfig;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::record::{MAX_DELIVERY_DELAY, ProducerRecord};
use accumulator::{Accumulator, Append, first_record_size, record_payload};
use delivery::Completion;
use sender::{Identity, Sender, init_producer_id};

/// State shared by the producer handles and the sender task.
#[derive(Debug)]
pub(crate) struct Shared {
    acc: Mutex<Accumulator>,
    /// Every batch not yet complete, for `flush`.
    registry: Mutex<HashMap<u64, Arc<Completion>>>,
    /// Wakes the sender: a batch was created or closed, a flush or close began.
    wake: Notify,
    /// `buffer_memory`, in bytes.
    memory: Arc<Semaphore>,
    fatal: Mutex<Option<Error>>,
    /// Set once `fatal` is: `send` checks this on every record instead of taking the lock.
    failed: AtomicBool,
    closing: AtomicBool,
    /// Close gave up waiting: fail what is left.
    aborted: AtomicBool,
    flushing: AtomicUsize,
    /// `send` calls waiting for buffer memory: the sender sends open batches without waiting
    /// for `linger` while there are any (only completed batches give memory back).
    memory_waiters: AtomicUsize,
    /// Set by the sender when it exits.
    stopped: watch::Sender<bool>,
}

impl Shared {
    fn lock_acc(&self) -> MutexGuard<'_, Accumulator> {
        // Every accumulator change is complete when its lock is released (no await, no panic
        // path in between), so a poisoned lock still guards consistent state.
        self.acc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_registry(&self) -> MutexGuard<'_, HashMap<u64, Arc<Completion>>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fatal_error(&self) -> Option<Error> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_fatal(&self, e: Error) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            tracing::error!(error = %e, "producer stopped");
            *f = Some(e);
            self.failed.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Completes a batch and forgets it for `flush`.
    fn finish(&self, id: u64, completion: &Arc<Completion>, result: Result<i64>) {
        completion.complete(result);
        self.lock_registry().remove(&id);
    }

    /// Whether open batches go out now rather than after `linger`: a flush or close is under
    /// way, or a `send` waits for memory.
    fn forcing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
            || self.flushing.load(Ordering::Acquire) > 0
            || self.memory_waiters.load(Ordering::Acquire) > 0
    }

    fn begin_close(&self) {
        self.closing.store(true, Ordering::Release);
        self.lock_acc().close();
        self.wake.notify_one();
    }
}

/// Sends records to strom: batched per partition, pipelined, idempotent by default.
///
/// `Producer` is a cheap handle (`Clone`); every clone feeds the same batches. Dropping the last
/// handle starts a close in the background (records already accepted are still sent while the
/// runtime runs); call [`Producer::close`] to wait for it.
///
/// ```no_run
/// use strom_client::{HeaderRef, Producer, ProducerConfig};
///
/// # async fn run() -> Result<(), strom_client::Error> {
/// let producer = Producer::connect(ProducerConfig::new("127.0.0.1:9494")).await?;
/// let headers = [HeaderRef { key: "event", value: Some(b"order_placed") }];
/// let delivery = producer
///     .send("orders", Some(b"order-17"), Some(b"{\"amount\":42}"), &headers)
///     .await?;
/// let meta = delivery.await?;
/// println!("written to {}-{} at offset {}", meta.topic, meta.partition, meta.offset);
/// producer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    control: Arc<Control>,
    config: Arc<ProducerConfig>,
    /// One metadata lookup at a time, so a burst of sends to a new topic asks once.
    metadata: tokio::sync::Mutex<()>,
    stopped: watch::Receiver<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.begin_close();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Refuses a delivery time more than [`MAX_DELIVERY_DELAY`] after `now` (both ms since the Unix
/// epoch), as the broker would (with `INVALID_REQUEST`, for the whole batch).
fn check_deliver_at(at: i64, now: i64) -> Result<()> {
    let max = i64::try_from(MAX_DELIVERY_DELAY.as_millis()).unwrap_or(i64::MAX);
    if at > now.saturating_add(max) {
        return Err(Error::config(
            "deliver_at",
            format!(
                "{at} is {} ms from now, more than the {} days a delivery may be delayed",
                at.saturating_sub(now),
                MAX_DELIVERY_DELAY.as_secs() / 86_400
            ),
        ));
    }
    Ok(())
}

impl Producer {
    /// Checks `config`, connects to the cluster and (with idempotence) gets a producer id, then
    /// starts the sender task. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`]; the connection's or InitProducerId's failure.
    pub async fn connect(config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let control = Arc::new(Control::new(config.client.clone()));
        let identity = if config.is_idempotent() {
            // A retriable refusal (no controller to hand out ids during an election) is
            // retried with backoff for up to `max_block`; an unreachable cluster fails at once.
            let deadline = tokio::time::Instant::now() + config.max_block;
            let mut backoff = config.retry_backoff;
            loop {
                let conn = control.connection().await?;
                match init_producer_id(&conn, -1, -1).await {
                    Ok(identity) => break identity,
                    Err(Error::Broker { code, .. })
                        if code.is_retriable()
                            && tokio::time::Instant::now() + backoff < deadline =>
                    {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(config.retry_backoff_max);
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            // Fail fast when no broker is reachable, as in the idempotent case.
            control.connection().await?;
            Identity::NONE
        };
        let memory = Arc::new(Semaphore::new(config.buffer_memory));
        let (stopped_tx, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            acc: Mutex::new(Accumulator::new(config.batch_size, memory.clone())),
            registry: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            memory,
            fatal: Mutex::new(None),
            failed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            flushing: AtomicUsize::new(0),
            memory_waiters: AtomicUsize::new(0),
            stopped: stopped_tx,
        });
        let config = Arc::new(config);
        let sender = Sender::new(shared.clone(), config.clone(), control.clone(), identity)?;
        tokio::spawn(sender.run());
        Ok(Producer {
            inner: Arc::new(Inner {
                shared,
                control,
                config,
                metadata: tokio::sync::Mutex::new(()),
                stopped,
            }),
        })
    }

    /// Sends a record with the current time, letting the partitioner choose its partition
    /// (murmur2 of the key; for a null key, the topic's sticky partition).
    ///
    /// Returns once the record is in a batch: immediately, or after waiting for buffer space
    /// (`buffer_memory`) or, for a topic not seen before, for its metadata. The returned
    /// [`DeliveryFuture`] resolves when the broker acknowledges the record (with its partition
    /// and offset) or when it finally fails. Records of one partition are written in the order
    /// `send` returned.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for a record above `max_record_size`; [`Error::UnknownTopic`] when
    /// the topic does not exist after `max_block`; [`Error::Timeout`] when no buffer space
    /// frees up within `max_block`; [`Error::Closed`]; a fatal error of the producer (e.g.
    /// [`Error::ProducerFenced`]).
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> Result<DeliveryFuture> {
        self.send_record(ProducerRecord {
            topic,
            partition: None,
            key,
            value,
            headers,
            timestamp: None,
            deliver_at: None,
        })
        .await
    }

    /// Sends a record with an explicit partition, timestamp or delivery time; see
    /// [`Producer::send`]. A record with a delivery time goes in a batch of records with the
    /// same time (see [`ProducerRecord`]'s `deliver_at`).
    ///
    /// # Errors
    /// As [`Producer::send`], [`Error::UnknownPartition`] for a partition the topic does not
    /// have, and [`Error::Config`] (named `deliver_at`) for a delivery time more than
    /// [`crate::MAX_DELIVERY_DELAY`] ahead of this machine's clock.
    pub async fn send_record(&self, record: ProducerRecord<'_>) -> Result<DeliveryFuture> {
        let shared = &self.inner.shared;
        if let Some(e) = shared.fatal_error() {
            return Err(e);
        }
        if let Some(at) = record.deliver_at {
            check_deliver_at(at, now_ms())?;
        }
        let payload = record_payload(&record);
        let size = HEADER_LEN + first_record_size(payload);
        let max = self.inner.config.max_record_size;
        if size > max {
            return Err(Error::TooLarge {
                what: "record",
                size,
                limit: "max_record_size",
                max,
            });
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        // `max_block` runs from the first wait: a send that never waits (nearly all of them)
        // reads no monotonic clock, one clock read per record fewer on the hot path.
        let mut deadline: Option<Instant> = None;
        let max_block = self.inner.config.max_block;
        let mut permit: Option<OwnedSemaphorePermit> = None;
        loop {
            let outcome =
                shared
                    .lock_acc()
                    .append_measured(&record, payload, timestamp, &mut permit)?;
            match outcome {
                Append::Done {
                    future,
                    wake,
                    created,
                } => {
                    if let Some((id, completion)) = created {
                        // Checked under the registry lock: the sender completes a batch before
                        // removing it, so a batch already done is never left behind here.
                        let mut registry = shared.lock_registry();
                        if !completion.is_done() {
                            registry.insert(id, completion);
                        }
                    }
                    if wake {
                        shared.wake.notify_one();
                    }
                    return Ok(future);
                }
                Append::NeedMemory(n) => {
                    struct Waiting<'a>(&'a Shared);
                    impl Drop for Waiting<'_> {
                        fn drop(&mut self) {
                            self.0.memory_waiters.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    shared.memory_waiters.fetch_add(1, Ordering::AcqRel);
                    let _waiting = Waiting(shared);
                    shared.wake.notify_one();
                    let acquire = shared.memory.clone().acquire_many_owned(n);
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + max_block);
                    match tokio::time::timeout_at(deadline, acquire).await {
                        Ok(Ok(p)) => permit = Some(p),
                        Ok(Err(_)) => return Err(shared.fatal_error().unwrap_or(Error::Closed)),
                        Err(_) => return Err(Error::Timeout(self.inner.config.max_block)),
                    }
                }
                Append::UnknownTopic => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + max_block);
                    self.learn_topic(record.topic, deadline).await?;
                }
            }
        }
    }

    /// Looks up (and, if the broker allows, creates) `topic`, until `deadline`.
    async fn learn_topic(&self, topic: &str, deadline: Instant) -> Result<()> {
        let _one_at_a_time = self.inner.metadata.lock().await;
        if self
            .inner
            .shared
            .lock_acc()
            .topics()
            .iter()
            .any(|t| &**t == topic)
        {
            return Ok(());
        }
        strom_protocol::topic::validate_topic_name(topic).map_err(|e| Error::Broker {
            code: e.error_code(),
            message: Some(e.to_string()),
        })?;
        let config = &self.inner.config;
        let mut rng = crate::partitioner::Rng::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reason = match self.inner.control.partition_count(topic, true).await {
                Ok(Some(n)) => {
                    self.inner.shared.lock_acc().set_partitions(topic, n);
                    return Ok(());
                }
                Ok(None) => None,
                Err(e) if e.is_retriable() => Some(e.to_string()),
                Err(e) => return Err(e),
            };
            let wait = backoff(
                config.retry_backoff,
                config.retry_backoff_max,
                attempt,
                &mut rng,
            );
            if Instant::now() + wait >= deadline {
                return Err(Error::UnknownTopic {
                    topic: topic.to_string(),
                    reason,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends every record accepted so far right away (ignoring `linger`) and waits until each
    /// is acknowledged or failed. Per-record failures are reported by their delivery futures.
    ///
    /// # Errors
    /// The producer's fatal error, if it has one.
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.inner.shared;
        let pending: Vec<Arc<Completion>> = shared.lock_registry().values().cloned().collect();
        struct Flushing<'a>(&'a Shared);
        impl Drop for Flushing<'_> {
            fn drop(&mut self) {
                self.0.flushing.fetch_sub(1, Ordering::AcqRel);
            }
        }
        shared.flushing.fetch_add(1, Ordering::AcqRel);
        let _guard = Flushing(shared);
        shared.wake.notify_one();
        for c in pending {
            c.done().await;
        }
        match shared.fatal_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops accepting records, sends everything accepted (ignoring `linger`), waits until
    /// every record is acknowledged or failed, and stops the sender. Other handles' `send`
    /// calls fail with [`Error::Closed`] from now on.
    ///
    /// # Errors
    /// The producer's fatal error, if it has one.
    pub async fn close(&self) -> Result<()> {
        self.inner.shared.begin_close();
        let mut stopped = self.inner.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
        match self.inner.shared.fatal_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Like [`Producer::close`], but gives up after `timeout`: records not acknowledged by
    /// then fail with [`Error::Closed`].
    ///
    /// # Errors
    /// As [`Producer::close`].
    pub async fn close_timeout(&self, timeout: Duration) -> Result<()> {
        if tokio::time::timeout(timeout, self.close()).await.is_err() {
            self.inner.shared.aborted.store(true, Ordering::Release);
            self.inner.shared.wake.notify_one();
            let mut stopped = self.inner.stopped.clone();
            let _ = stopped.wait_for(|s| *s).await;
        }
        match self.inner.shared.fatal_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The number of partitions of `topic` (looked up, and created if the broker allows, when
    /// not known yet).
    ///
    /// # Errors
    /// As [`Producer::send`].
    pub async fn partition_count(&self, topic: &str) -> Result<i32> {
        let deadline = Instant::now() + self.inner.config.max_block;
        loop {
            if let Some(n) = self.inner.shared.lock_acc().partitions_of(topic) {
                return Ok(n);
            }
            self.learn_topic(topic, deadline).await?;
        }
    }
}

#[cfg(test)]
mod tests;
