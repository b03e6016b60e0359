//! The control channel: lazily opened, reconnecting connections for requests that are not on a
//! client's data path (metadata, InitProducerId, ListOffsets, group and admin calls), and what
//! the client knows of the cluster ([`Routes`]).
//!
//! Most control requests go to any broker (the first that answers, of those the last metadata
//! named, then the bootstrap addresses): every
//! broker serves Metadata and forwards admin requests to the active controller. ListOffsets
//! goes to the partition's leader ([`Control::leader`]) and group requests to the group's
//! coordinator ([`Control::coordinator`]); those connections are kept per address.
//!
//! It is kept apart from the producer's and the consumer's data connections on purpose: the
//! broker makes a Metadata or ListOffsets request wait for the produces started before it on
//! the same connection, and answers in request order, so a metadata lookup behind a long-poll
//! fetch or five in-flight produces would wait for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strom_protocol::ErrorCode;
use strom_protocol::messages::{
    CoordinatorType, FindCoordinatorRequest, MetadataRequest, MetadataResponse, request, response,
};

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::routes::{NodeId, Routes};

/// Reconnecting connections for control requests; see the module docs.
#[derive(Debug)]
pub(crate) struct Control {
    config: ClientConfig,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Connections to particular brokers (leaders, coordinators), by address.
    pool: tokio::sync::Mutex<HashMap<String, Arc<Connection>>>,
    routes: Arc<Routes>,
    /// Each key's coordinator address, once found, by what the key names.
    coordinators: Mutex<HashMap<(CoordinatorType, String), String>>,
}

impl Control {
    pub(crate) fn new(config: ClientConfig) -> Self {
        Self {
            config,
            conn: tokio::sync::Mutex::new(None),
            pool: tokio::sync::Mutex::new(HashMap::new()),
            routes: Arc::new(Routes::default()),
            coordinators: Mutex::new(HashMap::new()),
        }
    }

    /// What the client knows of the cluster.
    pub(crate) fn routes(&self) -> &Arc<Routes> {
        &self.routes
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
        // The brokers the cluster named in its last metadata first, then the bootstrap list:
        // brokers may all have moved since the client started (a rolling restart onto new
        // addresses), while the bootstrap list stays a way back in if none of those answers.
        let mut addrs = self.routes.broker_addresses();
        for a in self.config.addresses() {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let c = Connection::connect_first(&addrs, &self.config).await?;
        *slot = Some(c.clone());
        Ok(c)
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

    /// A live connection to `addr`, opened when there is none.
    pub(crate) async fn connection_at(&self, addr: &str) -> Result<Arc<Connection>> {
        let mut pool = self.pool.lock().await;
        if let Some(c) = pool.get(addr)
            && c.is_alive()
        {
            return Ok(c.clone());
        }
        let c = Connection::connect(addr, &self.config).await?;
        pool.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Sends one request to the broker at `addr`, replacing a connection found dead before the
    /// request was written once (as [`Control::request`]).
    pub(crate) async fn request_at(
        &self,
        addr: &str,
        body: impl Into<request::Body>,
    ) -> Result<response::Body> {
        let body = body.into();
        let conn = self.connection_at(addr).await?;
        match conn.request(body.clone()).await {
            Err(Error::Disconnected { .. }) if !conn.is_alive() => {
                let conn = self.connection_at(addr).await?;
                conn.request(body).await
            }
            other => other,
        }
    }

    /// Metadata for `topics` (every topic when empty); the answer updates [`Control::routes`].
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
        let conn = self.connection().await?;
        let body = match conn.request(req.clone()).await {
            Err(Error::Disconnected { .. }) if !conn.is_alive() => {
                self.connection().await?.request(req).await?
            }
            other => other?,
        };
        match body {
            response::Body::Metadata(m) => {
                self.routes.learn(&m, conn.addr());
                Ok(m)
            }
            _ => Err(Error::Protocol {
                addr: conn.addr().to_string(),
                reason: "Metadata answered with another API's body".into(),
            }),
        }
    }

    /// The leader of `topic`/`partition` and its address, asking for metadata when the
    /// client does not know it.
    ///
    /// # Errors
    /// `LEADER_NOT_AVAILABLE` (retriable) when the cluster names no leader; as
    /// [`Control::metadata`].
    pub(crate) async fn leader(&self, topic: &str, partition: i32) -> Result<(NodeId, String)> {
        if let Some(found) = self.routes.leader(topic, partition) {
            return Ok(found);
        }
        self.metadata(&[topic], false).await?;
        self.routes
            .leader(topic, partition)
            .ok_or_else(|| Error::Broker {
                code: ErrorCode::LeaderNotAvailable,
                message: Some(format!("no leader known for {topic}-{partition}")),
            })
    }

    /// The address of the coordinator of `key` as `kind` names it (a consumer group; a queue
    /// group or a redrive's dead-letter topic), found with FindCoordinator when not known.
    async fn coordinator_for(&self, kind: CoordinatorType, key: &str) -> Result<String> {
        let cached = (kind, key.to_string());
        if let Some(addr) = self.coordinators_lock().get(&cached) {
            return Ok(addr.clone());
        }
        let conn = self.connection().await?;
        let body = conn
            .request(FindCoordinatorRequest {
                key: key.to_string(),
                key_type: kind.into(),
            })
            .await?;
        let response::Body::FindCoordinator(r) = body else {
            return Err(Error::Protocol {
                addr: conn.addr().to_string(),
                reason: "FindCoordinator answered with another API's body".into(),
            });
        };
        if r.error_code() != ErrorCode::None {
            return Err(Error::Broker {
                code: r.error_code(),
                message: r.error_message,
            });
        }
        let addr = match (
            r.host.parse::<std::net::IpAddr>(),
            conn.addr().rsplit_once(':'),
        ) {
            (Ok(ip), Some((via, _))) if ip.is_unspecified() => format!("{via}:{}", r.port),
            (Ok(std::net::IpAddr::V6(_)), _) => format!("[{}]:{}", r.host, r.port),
            _ => format!("{}:{}", r.host, r.port),
        };
        self.coordinators_lock().insert(cached, addr.clone());
        Ok(addr)
    }

    /// Forgets `group`'s coordinator: it moved, or cannot be reached.
    pub(crate) fn forget_coordinator(&self, group: &str) {
        self.coordinators_lock()
            .remove(&(CoordinatorType::Group, group.to_string()));
    }

    /// Notes the error code a group request was answered with: one that says the coordinator
    /// is elsewhere (or not ready) makes the next request look it up again.
    pub(crate) fn group_answered(&self, group: &str, code: ErrorCode) {
        if is_coordinator_error(code) {
            self.forget_coordinator(group);
        }
    }

    /// The connection to `group`'s coordinator, if one is open (without waiting for one).
    pub(crate) fn coordinator_connection(&self, group: &str) -> Option<Arc<Connection>> {
        let addr = self
            .coordinators_lock()
            .get(&(CoordinatorType::Group, group.to_string()))
            .cloned()?;
        self.pool.try_lock().ok()?.get(&addr).cloned()
    }

    /// Sends a request to `group`'s coordinator. A connection failure forgets the coordinator,
    /// so the next call looks it up again; so should a caller that reads
    /// [`is_coordinator_error`] in the answer.
    pub(crate) async fn group_request(
        &self,
        group: &str,
        body: impl Into<request::Body>,
    ) -> Result<response::Body> {
        self.coordinated_request(CoordinatorType::Group, group, body)
            .await
    }

    /// Sends a request to the queue coordinator of `key` (a queue group, or a redrive's
    /// dead-letter topic); as [`Control::group_request`].
    pub(crate) async fn queue_request(
        &self,
        key: &str,
        body: impl Into<request::Body>,
    ) -> Result<response::Body> {
        self.coordinated_request(CoordinatorType::Queue, key, body)
            .await
    }

    /// The connection to the queue coordinator of `key`, opened if needed.
    pub(crate) async fn queue_connection(&self, key: &str) -> Result<Arc<Connection>> {
        let addr = self.coordinator_for(CoordinatorType::Queue, key).await?;
        match self.connection_at(&addr).await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                self.forget_queue_coordinator(key);
                Err(e)
            }
        }
    }

    /// Forgets the queue coordinator of `key`: it moved, or cannot be reached.
    pub(crate) fn forget_queue_coordinator(&self, key: &str) {
        self.coordinators_lock()
            .remove(&(CoordinatorType::Queue, key.to_string()));
    }

    async fn coordinated_request(
        &self,
        kind: CoordinatorType,
        key: &str,
        body: impl Into<request::Body>,
    ) -> Result<response::Body> {
        let addr = self.coordinator_for(kind, key).await?;
        let result = self.request_at(&addr, body).await;
        let forget = match &result {
            Err(e) if e.is_retriable() => true,
            Err(Error::Broker { code, .. }) => is_coordinator_error(*code),
            _ => false,
        };
        if forget {
            self.coordinators_lock().remove(&(kind, key.to_string()));
        }
        result
    }

    fn coordinators_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(CoordinatorType, String), String>> {
        // Plain inserts and removes: a poisoned map is still consistent.
        self.coordinators.lock().unwrap_or_else(|e| e.into_inner())
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

/// Whether `code` says a group request went to a broker that is not (or not yet) the group's
/// coordinator: look the coordinator up again and retry.
pub(crate) fn is_coordinator_error(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorNotAvailable
            | ErrorCode::CoordinatorLoadInProgress
    )
}
