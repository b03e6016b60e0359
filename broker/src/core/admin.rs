//! Administration through the core: topic creation with defaults, topic settings as a described
//! list, offsets by position or time, and producer id allocation. Deletion and alteration are
//! [`super::topics::Topics`] calls the front-ends make directly.

use std::collections::BTreeMap;

use strom_protocol::ErrorCode;

use super::{Core, Failure};
use crate::error::storage_code;

/// Where a topic setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigSource {
    /// Set on the topic.
    Topic,
    /// The broker's configured default for topics.
    Broker,
    /// strom's built-in default.
    Default,
}

/// One topic setting, by its Kafka name.
#[derive(Debug, Clone)]
pub(crate) struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
}

/// Which offset a list-offsets query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetQuery {
    /// The log start offset.
    Earliest,
    /// The log end offset.
    Latest,
    /// The first offset whose record timestamp is at or after this time (ms).
    Time(i64),
    /// The first offset carrying the largest record timestamp in the partition.
    MaxTimestamp,
}

impl Core {
    /// Creates a topic (`partitions` `None`: `default_partitions`) and returns its partition
    /// count; with `validate_only` only checks that it could.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: Option<i64>,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<i32, Failure> {
        let partitions = partitions.unwrap_or(i64::from(self.config.default_partitions));
        if validate_only {
            self.topics.check_create(name, partitions, &overrides)?;
        } else {
            self.topics.create(name, partitions, overrides).await?;
        }
        // `check_create` bounds the count by `max_partitions`, an i32-sized setting.
        Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
    }

    /// Creates the named topics that do not exist yet, when `auto_create_topics` allows it
    /// (Metadata with auto-creation). Failures are logged: the metadata answer reports the
    /// topic as unknown.
    pub async fn auto_create(&self, names: &[String]) {
        if !self.config.auto_create_topics {
            return;
        }
        for name in names {
            if self.topics.get(name).is_none()
                && strom_protocol::topic::validate_topic_name(name).is_ok()
                && let Err((code, msg)) = self
                    .topics
                    .get_or_create(name, self.config.default_partitions)
                    .await
            {
                tracing::warn!(topic = %name, ?code, %msg, "auto-creation from metadata failed");
            }
        }
    }

    /// A topic's settings, all of them or those in `names`, with where each value comes from.
    pub fn describe_configs(
        &self,
        topic: &str,
        names: &[String],
    ) -> Result<Vec<ConfigEntry>, Failure> {
        let t = self.topics.get(topic).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {topic}"),
            )
        })?;
        let defaults = strom_storage::LogConfig::default().pairs();
        let broker = self.topics.defaults().pairs();
        let overrides = t.overrides();
        Ok(t.config()
            .pairs()
            .into_iter()
            .zip(defaults.iter().zip(&broker))
            .filter(|((k, _), _)| names.is_empty() || names.iter().any(|n| n == k))
            .map(|((k, v), ((_, dv), (_, bv)))| {
                let source = if overrides.contains_key(k) {
                    ConfigSource::Topic
                } else if bv != dv {
                    ConfigSource::Broker
                } else {
                    ConfigSource::Default
                };
                ConfigEntry {
                    name: k,
                    value: v,
                    source,
                }
            })
            .collect())
    }

    /// An offset of one partition: (offset, timestamp); -1 for both when a time query finds no
    /// record at or after the time.
    pub fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        query: OffsetQuery,
    ) -> Result<(i64, i64), Failure> {
        let part = self
            .topics
            .get(topic)
            .and_then(|t| t.partition(partition).cloned())
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownTopicOrPartition,
                    format!("no partition {partition} of topic {topic}"),
                )
            })?;
        let r = part.reader();
        match query {
            OffsetQuery::Earliest => Ok((r.start_offset(), -1)),
            OffsetQuery::Latest => Ok((r.end_offset(), -1)),
            OffsetQuery::Time(ts) => match r.record_for_time(ts) {
                Ok(Some((o, found))) => Ok((o, found)),
                Ok(None) => Ok((-1, -1)),
                Err(e) => Err((storage_code(&e), e.to_string())),
            },
            OffsetQuery::MaxTimestamp => match r.max_timestamp() {
                Ok(Some((o, ts))) => Ok((o, ts)),
                Ok(None) => Ok((-1, -1)),
                Err(e) => Err((storage_code(&e), e.to_string())),
            },
        }
    }

    /// Gives a producer its id and epoch. A producer that has an id asks for the next epoch
    /// (fencing its older self); one that has none, or whose epoch cannot grow, gets a new id.
    pub fn init_producer_id(
        &self,
        transactional: bool,
        producer_id: i64,
        producer_epoch: i32,
    ) -> Result<(i64, i32), Failure> {
        if transactional {
            return Err((
                ErrorCode::InvalidRequest,
                "transactions are not supported yet".into(),
            ));
        }
        if producer_id >= 0 && (0..i32::from(i16::MAX)).contains(&producer_epoch) {
            return Ok((producer_id, producer_epoch + 1));
        }
        match self.producer_ids.next() {
            Ok(id) => Ok((id, 0)),
            Err(e) => Err((ErrorCode::StorageError, e.to_string())),
        }
    }
}
