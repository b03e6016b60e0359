//! Administration through the core: topic creation, deletion, settings and growth (through the
//! metadata quorum, [`super::cluster`]), topic settings as a described list, offsets by position
//! or time, and producer ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use strom_meta::rpc::ControllerRequest;
use strom_protocol::ErrorCode;
use strom_protocol::topic::is_internal_topic;

use super::topics::Topic;
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
    /// Creates a topic (`partitions` `None`: `default_partitions`; `replication_factor` `None`
    /// or -1: 1) and returns its partition count; with `validate_only` only checks that it
    /// could. The topic is proposed to the metadata quorum and this answers once the broker has
    /// opened it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: Option<i64>,
        replication_factor: Option<i32>,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<i32, Failure> {
        let partitions = partitions.unwrap_or(i64::from(self.config.default_partitions));
        self.topics.check_create(name, partitions, &overrides)?;
        let factor = self.check_replication_factor(replication_factor)?;
        if is_internal_topic(name) {
            return Err((
                ErrorCode::InvalidTopicName,
                format!("{name}: names starting with __ are the broker's own"),
            ));
        }
        if !validate_only {
            let request = ControllerRequest::CreateTopic {
                name: name.to_string(),
                // `check_create` bounds the count by `max_partitions`, a u32 setting.
                partitions: u32::try_from(partitions).unwrap_or(u32::MAX),
                replication_factor: factor,
                configs: overrides,
            };
            let index = self.cluster.call(request).await?;
            self.cluster.settled(index, name).await?;
        }
        Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
    }

    /// The replication factor to ask the controller for: `replication_factor`, or for `None` and
    /// -1 `default_replication_factor` (0: the controller's default, three or every live broker
    /// when fewer); INVALID_REPLICATION_FACTOR unless it is at least 1 and at most the
    /// registered brokers. (The controller gives a factor of 3 or more `min.insync.replicas` 2
    /// unless the topic's settings name it.)
    fn check_replication_factor(&self, replication_factor: Option<i32>) -> Result<u32, Failure> {
        let brokers = self.image().brokers.len();
        let factor = match replication_factor {
            None | Some(-1) => match self.config.default_replication_factor {
                // The controller picks it, from the brokers alive now.
                0 => return Ok(0),
                n => i32::try_from(n).unwrap_or(i32::MAX),
            },
            Some(f) => f,
        };
        let refuse = |why: String| Err((ErrorCode::InvalidReplicationFactor, why));
        if factor < 1 {
            return refuse(format!(
                "replication factor {factor}: it must be at least 1 (or -1 for the default)"
            ));
        }
        if factor as usize > brokers {
            return refuse(format!(
                "replication factor {factor} is larger than the {brokers} registered brokers"
            ));
        }
        Ok(factor.unsigned_abs())
    }

    /// The topic, created with `partitions` partitions if it does not exist.
    pub async fn get_or_create_topic(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<Arc<Topic>, Failure> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic);
        }
        match self
            .create_topic(
                name,
                Some(i64::from(partitions)),
                None,
                BTreeMap::new(),
                false,
            )
            .await
        {
            // Created by someone else meanwhile.
            Ok(_) | Err((ErrorCode::TopicAlreadyExists, _)) => self.topics.get(name).ok_or((
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Deletes a topic through the metadata quorum; answers once its logs are gone here.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Failure> {
        if is_internal_topic(name) {
            return Err((
                ErrorCode::PolicyViolation,
                format!("{name} is internal and cannot be deleted"),
            ));
        }
        if self.topics.get(name).is_none() {
            return Err((
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name}"),
            ));
        }
        let index = self
            .cluster
            .call(ControllerRequest::DeleteTopic {
                name: name.to_string(),
            })
            .await?;
        self.cluster.settled(index, name).await
    }

    /// Changes a topic's settings (`set` adds or replaces, `reset` removes); with
    /// `validate_only` only checks that it could.
    pub async fn alter_topic(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        reset: &[String],
        validate_only: bool,
    ) -> Result<(), Failure> {
        self.topics.check_alter(name, set, reset)?;
        if validate_only {
            return Ok(());
        }
        if is_internal_topic(name) {
            return self
                .topics
                .set_overrides(name, self.topics.check_alter(name, set, reset)?)
                .await;
        }
        let configs = set
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .chain(reset.iter().map(|k| (k.clone(), None)))
            .collect();
        let request = ControllerRequest::AlterTopicConfigs {
            name: name.to_string(),
            configs,
        };
        let index = self.cluster.call(request).await?;
        self.cluster.settled(index, name).await
    }

    /// Grows a topic to `count` partitions (Kafka's CreatePartitions); with `validate_only`
    /// only checks that it could.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i64,
        validate_only: bool,
    ) -> Result<(), Failure> {
        self.topics.check_add_partitions(name, count)?;
        if validate_only {
            return Ok(());
        }
        let request = ControllerRequest::CreatePartitions {
            name: name.to_string(),
            // `check_add_partitions` bounds the count by `max_partitions`.
            total: u32::try_from(count).unwrap_or(u32::MAX),
        };
        let index = self.cluster.call(request).await?;
        self.cluster.settled(index, name).await
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
                    .get_or_create_topic(name, self.config.default_partitions)
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

    /// An offset of one partition this broker leads: (offset, timestamp); -1 for both when a
    /// time query finds no record at or after the time.
    pub fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        query: OffsetQuery,
    ) -> Result<(i64, i64), Failure> {
        let local = self.topics.get(topic);
        let part = self.leader_partition(&self.image(), local.as_ref(), topic, partition)?;
        let r = part.reader();
        match query {
            OffsetQuery::Earliest => Ok((r.start_offset(), -1)),
            // Kafka's latest for a read-uncommitted consumer: the high watermark.
            OffsetQuery::Latest => Ok((part.replica().latest_offset()?, -1)),
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
    /// (fencing its older self); one that has none, or whose epoch cannot grow, gets a new id,
    /// unique in the cluster.
    pub async fn init_producer_id(
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
        Ok((self.cluster.next_producer_id().await?, 0))
    }
}
