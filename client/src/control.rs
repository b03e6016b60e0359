//! The control channel: one lazily opened, reconnecting connection for requests that are not
//! on a client's data path (metadata, InitProducerId, ListOffsets, admin calls).
//!
//! It is kept apart from the producer's and the consumer's data connections on purpose: the
//! broker makes a Metadata or ListOffsets request wait for the produces started before it on
//! the same connection, and answers in request order, so a metadata lookup behind a long-poll
//! fetch or five in-flight produces would wait for them.

use std::sync::Arc;

use strom_protocol::ErrorCode;
use strom_protocol::messages::{MetadataRequest, MetadataResponse, request, response};

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{Error, Result};

/// A reconnecting connection for control requests; see the module docs.
#[derive(Debug)]
pub(crate) struct Control {
    config: ClientConfig,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Control {
    pub(crate) fn new(config: ClientConfig) -> Self {
        Self {
            config,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The live connection, opening a new one when there is none or it broke.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && c.is_alive()
        {
            return Ok(c.clone());
        }
        let c = Connection::connect_any(&self.config).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The connection opened last, if any (alive or not), without waiting for a request that
    /// is opening one.
    pub(crate) fn current(&self) -> Option<Arc<Connection>> {
        self.conn.try_lock().ok().and_then(|c| c.clone())
    }

    /// Sends one request and returns its body. A connection found dead before the request was
    /// written is replaced once; a failure after that is returned (the request may have taken
    /// effect).
    pub(crate) async fn request(&self, body: impl Into<request::Body>) -> Result<response::Body> {
        let body = body.into();
        let conn = self.connection().await?;
        match conn.request(body.clone()).await {
            Err(Error::Disconnected { .. }) if !conn.is_alive() => {
                // Possibly a stale connection the broker closed while idle: one fresh try.
                let conn = self.connection().await?;
                conn.request(body).await
            }
            other => other,
        }
    }

    /// Metadata for `topics` (every topic when empty).
    pub(crate) async fn metadata(
        &self,
        topics: &[&str],
        allow_auto_topic_creation: bool,
    ) -> Result<MetadataResponse> {
        let req = MetadataRequest {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            all_topics: topics.is_empty(),
            allow_auto_topic_creation,
        };
        match self.request(req).await? {
            response::Body::Metadata(m) => Ok(m),
            _ => Err(Error::Protocol {
                addr: String::new(),
                reason: "Metadata answered with another API's body".into(),
            }),
        }
    }

    /// `topic`'s partition count, or `None` when the broker does not know the topic.
    ///
    /// # Errors
    /// As [`Control::request`]; [`Error::Broker`] with `INVALID_TOPIC_NAME` and other
    /// topic-level errors.
    pub(crate) async fn partition_count(
        &self,
        topic: &str,
        allow_auto_topic_creation: bool,
    ) -> Result<Option<i32>> {
        let m = self.metadata(&[topic], allow_auto_topic_creation).await?;
        let Some(t) = m.topics.into_iter().find(|t| t.name == topic) else {
            return Ok(None);
        };
        match t.error_code() {
            ErrorCode::None if !t.partitions.is_empty() => {
                Ok(Some(i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)))
            }
            ErrorCode::None | ErrorCode::UnknownTopicOrPartition => Ok(None),
            code => Err(Error::Broker {
                code,
                message: Some(format!("topic {topic}")),
            }),
        }
    }
}
