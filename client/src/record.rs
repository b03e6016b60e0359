//! The record types applications see: what a producer sends ([`ProducerRecord`]), what it gets
//! back ([`RecordMetadata`]), what a consumer reads ([`ConsumerRecord`]), and the
//! [`TopicPartition`] that names a partition.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use strom_protocol::batch::{HeaderRef, Record};

/// A topic and a partition index.
///
/// ```
/// use strom_client::TopicPartition;
///
/// let tp = TopicPartition::new("orders", 3);
/// assert_eq!(tp.to_string(), "orders-3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`'s partition `partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

impl<T: Into<Arc<str>>> From<(T, i32)> for TopicPartition {
    fn from((topic, partition): (T, i32)) -> Self {
        Self::new(topic, partition)
    }
}

/// How far ahead a record's delivery time ([`ProducerRecord::deliver_at()`]) may be: 90 days, as
/// the broker allows. [`crate::Producer::send_record`] refuses a later time.
pub const MAX_DELIVERY_DELAY: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// One record to send, with every optional part. [`crate::Producer::send`] covers the common
/// case (no explicit partition, timestamp now, not delayed).
///
/// ```
/// use std::time::Duration;
/// use strom_client::{HeaderRef, ProducerRecord};
///
/// let headers = [HeaderRef { key: "source", value: Some(b"web") }];
/// let record = ProducerRecord::new("orders")
///     .key(b"order-17")
///     .value(b"{\"amount\":42}")
///     .headers(&headers)
///     .timestamp(1_700_000_000_000)
///     .deliver_after(Duration::from_secs(30));
/// assert_eq!(record.partition, None);
/// assert!(record.deliver_at.is_some());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ProducerRecord<'a> {
    /// Topic to send to.
    pub topic: &'a str,
    /// Explicit partition; `None` lets the partitioner choose (murmur2 of the key, or the
    /// sticky partition for a record without a key).
    pub partition: Option<i32>,
    /// Key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a null value (a tombstone for compacted topics).
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: &'a [HeaderRef<'a>],
    /// Create time in ms since the Unix epoch; `None` uses the current time.
    pub timestamp: Option<i64>,
    /// Delayed delivery: the time (ms since the Unix epoch, on the producer's clock) before
    /// which queue groups do not hand this record to a member; `None` (or a time already past)
    /// is not delayed. Consumer groups and plain fetches read the record at once, as any other.
    /// At most [`MAX_DELIVERY_DELAY`] ahead. The time is kept per batch, so records with
    /// different times never share a batch: give many records the same time (not "now + d"
    /// per record) to keep them batched.
    pub deliver_at: Option<i64>,
}

impl<'a> ProducerRecord<'a> {
    /// A record for `topic` with no key, value or headers yet.
    pub fn new(topic: &'a str) -> Self {
        Self {
            topic,
            partition: None,
            key: None,
            value: None,
            headers: &[],
            timestamp: None,
            deliver_at: None,
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the value.
    #[must_use]
    pub fn value(mut self, value: &'a [u8]) -> Self {
        self.value = Some(value);
        self
    }

    /// Sets the headers.
    #[must_use]
    pub fn headers(mut self, headers: &'a [HeaderRef<'a>]) -> Self {
        self.headers = headers;
        self
    }

    /// Sends to this partition instead of letting the partitioner choose.
    #[must_use]
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the create time (ms since the Unix epoch).
    #[must_use]
    pub fn timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Delays delivery to queue groups until `deliver_at` (ms since the Unix epoch); see the
    /// field of the same name.
    #[must_use]
    pub fn deliver_at(mut self, deliver_at: i64) -> Self {
        self.deliver_at = Some(deliver_at);
        self
    }

    /// Delays delivery to queue groups by `delay` from now (the time is computed here, at the
    /// call); see the `deliver_at` field.
    #[must_use]
    pub fn deliver_after(self, delay: Duration) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let at = now.saturating_add(delay).as_millis();
        self.deliver_at(i64::try_from(at).unwrap_or(i64::MAX))
    }
}

/// Where an acknowledged record was written.
///
/// ```
/// # async fn run() -> Result<(), strom_client::Error> {
/// # let producer = strom_client::Producer::connect(Default::default()).await?;
/// let delivery = producer.send("orders", Some(b"order-1"), Some(b"placed"), &[]).await?;
/// let meta: strom_client::RecordMetadata = delivery.await?;
/// println!("{}-{} @ {}", meta.topic, meta.partition, meta.offset);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// The record's offset; -1 when the broker does not say (`Acks::None`, or a duplicate the
    /// broker recognised without reporting its offset).
    pub offset: i64,
    /// The record's create time (ms since the Unix epoch).
    pub timestamp: i64,
}

/// One record read by a [`crate::Consumer`]: key, value and headers are slices of the fetched
/// bytes (no copy).
///
/// ```no_run
/// # async fn run(consumer: &mut strom_client::Consumer) -> Result<(), strom_client::Error> {
/// for record in consumer.poll(std::time::Duration::from_secs(1)).await? {
///     let value = record.value().map(|v| String::from_utf8_lossy(v).into_owned());
///     println!("{}-{}@{}: {:?}", record.topic(), record.partition(), record.offset(), value);
///     for header in record.headers() {
///         println!("  {} = {:?}", header.key, header.value);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    topic: Arc<str>,
    partition: i32,
    record: Record,
}

impl ConsumerRecord {
    pub(crate) fn new(topic: Arc<str>, partition: i32, record: Record) -> Self {
        Self {
            topic,
            partition,
            record,
        }
    }

    /// Topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Topic, shared.
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// Partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Offset.
    pub fn offset(&self) -> i64 {
        self.record.offset
    }

    /// Timestamp (ms since the Unix epoch).
    pub fn timestamp(&self) -> i64 {
        self.record.timestamp
    }

    /// Key; `None` for a null key.
    pub fn key(&self) -> Option<&Bytes> {
        self.record.key.as_ref()
    }

    /// Value; `None` for a null value.
    pub fn value(&self) -> Option<&Bytes> {
        self.record.value.as_ref()
    }

    /// Headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderRef<'_>> + '_ {
        self.record.headers()
    }

    /// The decoded record, as `strom_protocol` sees it.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The partition as a [`TopicPartition`].
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }
}
