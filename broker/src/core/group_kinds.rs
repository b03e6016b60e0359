//! One id, one kind of group, across brokers.
//!
//! A consumer group and a queue group of one id would mix two ways of handing records out; the
//! second kind is refused with INCONSISTENT_GROUP_PROTOCOL. On one broker each coordinator
//! asks the other directly (`Coordinator::check_not_taken`, `Queues::contains`). In a cluster
//! the two kinds of one id are coordinated by the leaders of their own partitions of
//! `__consumer_offsets` and `__queue_state`, which may be different brokers: before a
//! coordinator starts a group that does not exist here, it asks the other kind's coordinator
//! through strom's own client (a describe of that id). Only a group's start pays for it: a
//! group that exists here is answered at once. The check gives way when the other coordinator
//! cannot answer within [`ASK_TIMEOUT`] (logged): a coordinator that is down must not stop
//! groups of the other kind from starting. Two groups of both kinds started at the same moment
//! on two brokers can both pass; docs/cluster.md states it.

use std::time::Duration;

use strom_client::Error as ClientError;
use strom_protocol::ErrorCode;

use super::groups::OFFSETS_TOPIC;
use super::queues::STATE_TOPIC;
use super::{Core, Failure};

/// How long a start waits for the other kind's coordinator.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the other kind's coordinator said.
enum Other {
    Exists,
    Absent,
    Unknown(String),
}

impl Core {
    /// Before a consumer group `group_id` starts here: INCONSISTENT_GROUP_PROTOCOL if a queue
    /// group of that id exists on its coordinator.
    pub(crate) async fn consumer_group_may_start(&self, group_id: &str) -> Result<(), Failure> {
        if self.groups.exists(group_id) {
            return Ok(());
        }
        // On this broker the coordinator's own check answers (`check_not_taken`); without
        // `__queue_state` no queue group exists (and asking would create it).
        if self.cluster.is_alone() || !self.image().topics.contains_key(STATE_TOPIC) {
            return Ok(());
        }
        let asked = self
            .ask_other(async |admin: &strom_client::Admin| {
                admin.describe_queue_groups(&[group_id]).await.map(drop)
            })
            .await;
        self.verdict(group_id, asked, "a queue group", "a consumer group")
    }

    /// Before a queue group `group` starts here: INCONSISTENT_GROUP_PROTOCOL if a consumer
    /// group of that id exists on its coordinator.
    pub(crate) async fn queue_group_may_start(&self, group: &str) -> Result<(), Failure> {
        if self.queues.contains(group)
            || self.cluster.is_alone()
            || !self.image().topics.contains_key(OFFSETS_TOPIC)
        {
            return Ok(());
        }
        let asked = self
            .ask_other(async |admin: &strom_client::Admin| {
                admin.describe_group(group).await.map(drop)
            })
            .await;
        self.verdict(group, asked, "a consumer group", "a queue group")
    }

    async fn ask_other(
        &self,
        ask: impl AsyncFnOnce(&strom_client::Admin) -> Result<(), ClientError>,
    ) -> Other {
        let admin = match self.forward.admin().await {
            Ok(a) => a,
            Err(e) => return Other::Unknown(e),
        };
        match tokio::time::timeout(ASK_TIMEOUT, ask(&admin)).await {
            Ok(Ok(())) => Other::Exists,
            Ok(Err(ClientError::GroupNotFound { .. })) => Other::Absent,
            Ok(Err(e)) if e.error_code() == Some(ErrorCode::GroupIdNotFound) => Other::Absent,
            Ok(Err(e)) => Other::Unknown(e.to_string()),
            Err(_) => Other::Unknown(format!("no answer within {ASK_TIMEOUT:?}")),
        }
    }

    fn verdict(&self, id: &str, other: Other, is: &str, not: &str) -> Result<(), Failure> {
        match other {
            Other::Exists => Err((
                ErrorCode::InconsistentGroupProtocol,
                format!("{id} is {is}, not {not}"),
            )),
            Other::Absent => Ok(()),
            Other::Unknown(why) => {
                tracing::debug!(group = id, error = %why, "could not ask whether the id is another kind of group's; starting the group");
                Ok(())
            }
        }
    }
}
