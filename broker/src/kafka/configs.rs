//! Topic settings over the Kafka protocol: DescribeConfigs, AlterConfigs (replaces a topic's
//! overrides) and IncrementalAlterConfigs (sets and deletes single settings). strom's topic
//! settings already carry Kafka's names (`retention.ms`, `cleanup.policy`, ...); a name strom
//! does not know is `INVALID_CONFIG`. Broker resources describe as empty and cannot be altered.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use strom_protocol::ErrorCode;

use super::{Kafka, KafkaResponse, Req, kafka_code};
use crate::core::Failure;
use crate::core::admin::ConfigSource;

/// Kafka's resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Kafka's config sources (DescribeConfigs v1+).
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// strom writes "no limit" as `none`; Kafka as the largest long.
fn kafka_value(v: String) -> String {
    if v == "none" { i64::MAX.to_string() } else { v }
}

fn message(msg: String) -> Option<StrBytes> {
    Some(StrBytes::from_string(msg))
}

impl Kafka {
    pub(super) fn describe_configs(
        &self,
        req: &Req,
        m: DescribeConfigsRequest,
    ) -> Result<KafkaResponse, String> {
        let results = m
            .resources
            .into_iter()
            .map(|r| {
                let out = DescribeConfigsResult::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone());
                if r.resource_type == BROKER {
                    return out;
                }
                if r.resource_type != TOPIC {
                    return out
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(message(format!(
                            "resource type {} is not a topic or a broker",
                            r.resource_type
                        )));
                }
                let names: Vec<String> = r
                    .configuration_keys
                    .unwrap_or_default()
                    .iter()
                    .map(|k| k.to_string())
                    .collect();
                match self.core.describe_configs(&r.resource_name, &names) {
                    Err((code, msg)) => out
                        .with_error_code(kafka_code(code))
                        .with_error_message(message(msg)),
                    Ok(entries) => out.with_configs(
                        entries
                            .into_iter()
                            .map(|e| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(StrBytes::from_static_str(e.name))
                                    .with_value(Some(StrBytes::from_string(kafka_value(e.value))))
                                    .with_config_source(match e.source {
                                        ConfigSource::Topic => SOURCE_TOPIC,
                                        ConfigSource::Broker => SOURCE_STATIC_BROKER,
                                        ConfigSource::Default => SOURCE_DEFAULT,
                                    })
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        req.respond(&DescribeConfigsResponse::default().with_results(results))
    }

    /// AlterConfigs: the given settings become the topic's whole set of overrides.
    pub(super) async fn alter_configs(
        &self,
        req: &Req,
        m: AlterConfigsRequest,
    ) -> Result<KafkaResponse, String> {
        use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as R;
        let mut out = Vec::with_capacity(m.resources.len());
        for r in m.resources {
            let result = if r.resource_type == TOPIC {
                let mut set = BTreeMap::new();
                let mut missing = None;
                for c in &r.configs {
                    match &c.value {
                        Some(v) => {
                            set.insert(c.name.to_string(), v.to_string());
                        }
                        None => missing = Some(c.name.to_string()),
                    }
                }
                match missing {
                    Some(k) => Err((ErrorCode::InvalidConfig, format!("{k} has no value"))),
                    None => {
                        self.replace_overrides(&r.resource_name, set, m.validate_only)
                            .await
                    }
                }
            } else {
                Err(not_a_topic(r.resource_type))
            };
            let (code, msg) = split(result);
            out.push(
                R::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name)
                    .with_error_code(code)
                    .with_error_message(msg),
            );
        }
        req.respond(&AlterConfigsResponse::default().with_responses(out))
    }

    async fn replace_overrides(
        &self,
        topic: &str,
        set: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), Failure> {
        let current = self
            .core
            .topics
            .get(topic)
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownTopicOrPartition,
                    format!("no topic {topic}"),
                )
            })?
            .overrides();
        let reset: Vec<String> = current
            .into_keys()
            .filter(|k| !set.contains_key(k))
            .collect();
        self.core
            .alter_topic(topic, &set, &reset, validate_only)
            .await
    }

    pub(super) async fn incremental_alter_configs(
        &self,
        req: &Req,
        m: IncrementalAlterConfigsRequest,
    ) -> Result<KafkaResponse, String> {
        use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as R;
        let mut out = Vec::with_capacity(m.resources.len());
        for r in m.resources {
            let result = if r.resource_type == TOPIC {
                let mut set = BTreeMap::new();
                let mut reset = Vec::new();
                let mut bad = None;
                for c in &r.configs {
                    match (c.config_operation, &c.value) {
                        (OP_SET, Some(v)) => {
                            set.insert(c.name.to_string(), v.to_string());
                        }
                        (OP_SET, None) => {
                            bad = Some((
                                ErrorCode::InvalidConfig,
                                format!("{} has no value", c.name),
                            ));
                        }
                        (OP_DELETE, _) => reset.push(c.name.to_string()),
                        (op, _) => {
                            bad = Some((
                                ErrorCode::InvalidConfig,
                                format!(
                                    "operation {op} on {}: strom's topic settings are not lists; use SET or DELETE",
                                    c.name
                                ),
                            ));
                        }
                    }
                }
                match bad {
                    Some(e) => Err(e),
                    None => {
                        self.core
                            .alter_topic(&r.resource_name, &set, &reset, m.validate_only)
                            .await
                    }
                }
            } else {
                Err(not_a_topic(r.resource_type))
            };
            let (code, msg) = split(result);
            out.push(
                R::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name)
                    .with_error_code(code)
                    .with_error_message(msg),
            );
        }
        req.respond(&IncrementalAlterConfigsResponse::default().with_responses(out))
    }
}

fn not_a_topic(resource_type: i8) -> Failure {
    (
        ErrorCode::InvalidRequest,
        format!("only topic settings can be altered; resource type {resource_type} is not a topic"),
    )
}

fn split(r: Result<(), Failure>) -> (i16, Option<StrBytes>) {
    match r {
        Ok(()) => (0, None),
        Err((code, msg)) => (kafka_code(code), message(msg)),
    }
}
