//! The metadata quorum end to end, in process: controllers on loopback ports with their own data
//! directories, talking the real controller protocol. Every wait is on the metadata image or
//! Raft's metrics, bounded by a timeout; nothing sleeps to synchronise.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_meta::controller::{Controller, ControllerConfig, Timing};
use strom_meta::image::MetadataImage;
use strom_meta::rpc::{ControllerRequest, ControllerResponse, ReplicaEpoch};
use strom_meta::types::{BrokerId, Endpoints, Ineligible, Rejection};
use tempfile::TempDir;
use tokio::net::TcpListener;

const PATIENCE: Duration = Duration::from_secs(10);

fn timing() -> Timing {
    Timing {
        snapshot_every: 20,
        keep_after_snapshot: 2,
        ..Timing::default()
    }
}

struct Node {
    id: BrokerId,
    dir: TempDir,
    addr: String,
    controller: Option<Controller>,
}

struct Cluster {
    voters: BTreeMap<BrokerId, String>,
    nodes: Vec<Node>,
    timing: Timing,
}

/// A loopback address of one cluster's own (all of 127.0.0.0/8 is loopback on Linux). A
/// restarted node binds the port it had again; on 127.0.0.1 another test's connection could
/// hold that port as its local one meanwhile (seen once: "Address already in use"), while
/// connections leave from 127.0.0.1, never from this address.
fn cluster_ip() -> std::net::Ipv4Addr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    std::net::Ipv4Addr::new(
        127,
        20 + (pid % 200) as u8,
        (n / 250 % 256) as u8,
        (n % 250 + 2) as u8,
    )
}

impl Cluster {
    /// `voters` voters and `learners` more brokers, all started.
    async fn start(voters: u64, learners: u64) -> Cluster {
        Self::start_with(voters, learners, timing()).await
    }

    /// [`Cluster::start`] with other timing.
    async fn start_with(voters: u64, learners: u64, timing: Timing) -> Cluster {
        let ip = cluster_ip();
        let mut listeners = Vec::new();
        for id in 1..=voters + learners {
            let listener = TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            listeners.push((id, listener, addr));
        }
        let voter_map: BTreeMap<BrokerId, String> = listeners
            .iter()
            .filter(|(id, _, _)| *id <= voters)
            .map(|(id, _, addr)| (*id, addr.clone()))
            .collect();
        let mut cluster = Cluster {
            voters: voter_map,
            nodes: Vec::new(),
            timing,
        };
        for (id, listener, addr) in listeners {
            let node = Node {
                id,
                dir: tempfile::tempdir().unwrap(),
                addr,
                controller: None,
            };
            cluster.nodes.push(node);
            cluster.boot(id, Some(listener)).await;
        }
        cluster
    }

    async fn boot(&mut self, id: BrokerId, listener: Option<TcpListener>) {
        let voters = self.voters.clone();
        let timing = self.timing.clone();
        let node = self.node_mut(id);
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(&node.addr).await.unwrap(),
        };
        let controller = Controller::start(ControllerConfig {
            node_id: id,
            dir: node.dir.path().join("quorum"),
            listener,
            advertised: node.addr.clone(),
            voters,
            timing,
        })
        .await
        .unwrap();
        controller.start_broker_session(
            Endpoints {
                native: Some(format!("127.0.0.1:{}", 9000 + id)),
                ..Endpoints::default()
            },
            None,
            tokio::sync::watch::channel(false).1,
        );
        node.controller = Some(controller);
    }

    fn node_mut(&mut self, id: BrokerId) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    fn controller(&self, id: BrokerId) -> &Controller {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap()
            .controller
            .as_ref()
            .unwrap()
    }

    async fn stop(&mut self, id: BrokerId) {
        if let Some(controller) = self.node_mut(id).controller.take() {
            controller.shutdown().await;
        }
    }

    fn running(&self) -> impl Iterator<Item = &Controller> {
        self.nodes.iter().filter_map(|n| n.controller.as_ref())
    }

    /// The active controller agreed by every running member.
    async fn leader(&self) -> BrokerId {
        let started = Instant::now();
        loop {
            let leaders: BTreeSet<Option<BrokerId>> = self.running().map(|c| c.leader()).collect();
            if let [Some(leader)] = leaders.iter().copied().collect::<Vec<_>>()[..]
                && self.running().any(|c| c.id() == leader)
            {
                return leader;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "no agreed leader: {leaders:?}"
            );
            let mut metrics = self.running().next().unwrap().metrics();
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
    }

    /// Waits until the active controller counts `n` brokers alive (registered and heartbeating).
    async fn alive(&self, n: usize) {
        let started = Instant::now();
        loop {
            let via = self.running().next().unwrap();
            if let Ok(ControllerResponse::Status(status)) =
                via.call(ControllerRequest::Status, PATIENCE).await
                && status.brokers.iter().filter(|b| b.alive).count() == n
            {
                return;
            }
            assert!(started.elapsed() < PATIENCE, "{n} brokers never alive");
            let mut metrics = via.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
    }

    /// The active controller's answer to `request`, asked through `via`.
    async fn ask(&self, via: BrokerId, request: ControllerRequest) -> ControllerResponse {
        self.controller(via).call(request, PATIENCE).await.unwrap()
    }

    async fn create(&self, via: BrokerId, name: &str, partitions: u32) -> ControllerResponse {
        let request = ControllerRequest::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: BTreeMap::new(),
        };
        self.controller(via).call(request, PATIENCE).await.unwrap()
    }
}

/// Waits until `controller`'s image satisfies `ready`.
async fn image_where(
    controller: &Controller,
    ready: impl Fn(&MetadataImage) -> bool,
) -> Arc<MetadataImage> {
    let mut image = controller.image();
    let found = tokio::time::timeout(PATIENCE, image.wait_for(|image| ready(image)))
        .await
        .unwrap_or_else(|_| panic!("broker {}'s image never got there", controller.id()))
        .unwrap();
    Arc::clone(&found)
}

fn all_registered(n: usize) -> impl Fn(&MetadataImage) -> bool {
    move |image| image.brokers.len() == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_forms_its_own_quorum_and_keeps_it_across_restarts() {
    let mut cluster = Cluster::start(1, 0).await;
    assert_eq!(cluster.leader().await, 1);
    image_where(cluster.controller(1), all_registered(1)).await;
    assert!(matches!(
        cluster.create(1, "orders", 4).await,
        ControllerResponse::Committed { .. }
    ));
    assert_eq!(
        cluster.create(1, "orders", 4).await,
        ControllerResponse::Rejected(Rejection::TopicExists {
            name: "orders".into()
        })
    );
    cluster.stop(1).await;
    cluster.boot(1, None).await;
    let image = image_where(cluster.controller(1), |image| {
        image.topics.contains_key("orders")
    })
    .await;
    assert_eq!(image.topics["orders"].partitions.len(), 4);
    assert_eq!(cluster.leader().await, 1);
    assert!(matches!(
        cluster.create(1, "payments", 2).await,
        ControllerResponse::Committed { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_agree_spread_partitions_and_fail_over() {
    let mut cluster = Cluster::start(3, 0).await;
    let leader = cluster.leader().await;
    cluster.alive(3).await;
    // Created through a broker that is not the active controller: forwarded.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    assert!(matches!(
        cluster.create(follower, "orders", 6).await,
        ControllerResponse::Committed { .. }
    ));
    for controller in cluster.running() {
        let image = image_where(controller, |image| image.topics.contains_key("orders")).await;
        let leaders = image.leader_counts();
        assert_eq!(
            leaders.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2],
            "{leaders:?}"
        );
    }

    // The active controller dies: another is elected, and topics can be created again.
    let started = Instant::now();
    cluster.stop(leader).await;
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    assert!(matches!(
        cluster.create(survivor, "payments", 3).await,
        ControllerResponse::Committed { .. }
    ));
    eprintln!(
        "controller failover to a committed topic: {:?}",
        started.elapsed()
    );

    // The dead broker's partitions go offline once its session runs out (nothing replicates
    // them yet), and come back when it does.
    let image = image_where(cluster.controller(next), |image| {
        image.topics["orders"]
            .partitions
            .iter()
            .filter(|p| p.leader.is_none())
            .count()
            == 2
    })
    .await;
    assert!(
        image.topics["orders"]
            .partitions
            .iter()
            .all(|p| p.leader != Some(leader))
    );
    // Every member applied the same change (it reached the followers over the wire).
    for controller in cluster.running() {
        image_where(controller, |other| *other == *image).await;
    }
    cluster.boot(leader, None).await;
    image_where(cluster.controller(next), |image| {
        image.topics["orders"]
            .partitions
            .iter()
            .all(|p| p.leader.is_some())
    })
    .await;
}

/// A broker whose process stops closes its heartbeat connection, and the active controller
/// fences it at once rather than a session later: with a 60 s session the broker is out well
/// within this test's patience (10 s) only because of that. It comes back when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_heartbeat_connection_closes_is_fenced_before_its_session_ends() {
    let timing = Timing {
        session: Duration::from_secs(60),
        ..timing()
    };
    // Three voters and a learner (broker 4, never the active controller).
    let mut cluster = Cluster::start_with(3, 1, timing).await;
    cluster.leader().await;
    cluster.alive(4).await;
    cluster.stop(4).await;
    cluster.alive(3).await;
    cluster.boot(4, None).await;
    cluster.alive(4).await;
}

/// The active controller's process stops: the member elected in its place starts every
/// broker's session afresh, but its connections to the dead one's controller listener are
/// refused, so it fences that broker at once rather than a (here 60 s) session later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_controllers_broker_is_fenced_by_the_next_controller_at_once() {
    let timing = Timing {
        session: Duration::from_secs(60),
        ..timing()
    };
    let mut cluster = Cluster::start_with(3, 0, timing).await;
    let leader = cluster.leader().await;
    cluster.alive(3).await;
    cluster.stop(leader).await;
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    cluster.alive(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_change_metadata() {
    let mut cluster = Cluster::start(3, 0).await;
    let leader = cluster.leader().await;
    let others: Vec<BrokerId> = (1..=3).filter(|id| *id != leader).collect();
    for id in &others {
        cluster.stop(*id).await;
    }
    let request = ControllerRequest::CreateTopic {
        name: "split".into(),
        partitions: 1,
        replication_factor: 1,
        configs: BTreeMap::new(),
    };
    let answer = cluster
        .controller(leader)
        .call(request, Duration::from_secs(2))
        .await;
    assert!(
        !matches!(answer, Ok(ControllerResponse::Committed { .. })),
        "a lone voter of three committed: {answer:?}"
    );
    assert!(
        !cluster
            .controller(leader)
            .image()
            .borrow()
            .topics
            .contains_key("split")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_few_large_entries_is_snapshotted_and_purged_by_size() {
    // Far from the entry count, past the byte limit: the log is snapshotted and purged anyway,
    // and a restart rebuilds the image from the snapshot and the entries after it.
    let mut cluster = Cluster::start_with(
        3,
        0,
        Timing {
            snapshot_every: 100_000,
            keep_after_snapshot: 20_000,
            snapshot_bytes: 16 << 10,
            ..Timing::default()
        },
    )
    .await;
    let leader = cluster.leader().await;
    image_where(cluster.controller(leader), all_registered(3)).await;
    for i in 0..40 {
        assert!(matches!(
            cluster.create(leader, &format!("wide{i}"), 200).await,
            ControllerResponse::Committed { .. }
        ));
    }
    for id in 1..=3 {
        let mut metrics = cluster.controller(id).metrics();
        tokio::time::timeout(
            PATIENCE,
            metrics.wait_for(|m| m.snapshot.is_some() && m.purged.is_some()),
        )
        .await
        .unwrap_or_else(|_| panic!("broker {id} never snapshotted and purged its log by size"))
        .unwrap();
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.stop(follower).await;
    cluster.boot(follower, None).await;
    let image = image_where(cluster.controller(follower), |image| {
        image.topics.len() == 40
    })
    .await;
    assert_eq!(image.topics["wide39"].partitions.len(), 200);
    assert!(
        cluster
            .controller(follower)
            .metrics()
            .borrow()
            .snapshot
            .is_some(),
        "restarted from its snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_follows_and_an_empty_member_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(3, 1).await;
    cluster.leader().await;
    let learner = cluster.controller(4);
    image_where(learner, all_registered(4)).await;
    assert!(
        learner
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .any(|id| id == 4)
    );
    for i in 0..60 {
        assert!(matches!(
            cluster.create(4, &format!("t{i}"), 1).await,
            ControllerResponse::Committed { .. }
        ));
    }
    image_where(cluster.controller(4), |image| image.topics.len() == 60).await;

    // The learner loses its disk and comes back empty: the log it missed has been purged behind
    // a snapshot, so it must be sent the snapshot.
    cluster.stop(4).await;
    let node = cluster.node_mut(4);
    node.dir = tempfile::tempdir().unwrap();
    cluster.boot(4, None).await;
    let learner = cluster.controller(4);
    let image = image_where(learner, |image| image.topics.len() == 60).await;
    let leader = cluster.leader().await;
    assert_eq!(*image, **cluster.controller(leader).image().borrow());
    assert!(
        learner.metrics().borrow().snapshot.is_some(),
        "caught up without a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_whose_log_is_gone_is_refused_and_the_others_go_on() {
    let mut cluster = Cluster::start(3, 0).await;
    let leader = cluster.leader().await;
    let victim = if leader == 3 { 2 } else { 3 };
    cluster.stop(victim).await;
    let node = cluster.node_mut(victim);
    let log = node.dir.path().join("quorum");
    assert!(node.dir.path().join("quorum.voter").exists());
    std::fs::remove_dir_all(&log).unwrap();
    let voters = cluster.voters.clone();
    let node = cluster.node_mut(victim);
    let listener = TcpListener::bind(&node.addr).await.unwrap();
    let refused = Controller::start(ControllerConfig {
        node_id: victim,
        dir: log.clone(),
        listener,
        advertised: node.addr.clone(),
        voters,
        timing: timing(),
    })
    .await;
    match refused {
        Err(strom_meta::error::Error::WipedVoter { node, dir, .. }) => {
            assert_eq!((node, dir), (victim, log));
        }
        other => panic!("a wiped voter started: {:?}", other.map(|c| c.id())),
    }
    // The two others still make a quorum.
    let other = (1..=3).find(|id| *id != victim).unwrap();
    // Retriable answers (a busy machine may cost the quorum an election) are retried, as a
    // broker's admin path does; so is a placement refused for want of live brokers: a
    // controller just elected knows a broker is alive only from its next heartbeat.
    let started = Instant::now();
    let created = loop {
        let created = cluster.create(other, "after", 1).await;
        match created {
            ControllerResponse::Unavailable { .. } | ControllerResponse::NotController { .. }
                if started.elapsed() < PATIENCE * 3 => {}
            ControllerResponse::Invalid { ref message }
                if message.contains("live brokers") && started.elapsed() < PATIENCE * 3 =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ControllerResponse::Rejected(Rejection::TopicExists { .. }) => {
                break ControllerResponse::Committed { index: 0 };
            }
            other => break other,
        }
    };
    assert!(
        matches!(created, ControllerResponse::Committed { .. }),
        "{created:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_may_lose_its_log() {
    // Alone, there is no one to double-vote against: the broker rebuilds from its data.
    let mut cluster = Cluster::start(1, 0).await;
    cluster.leader().await;
    cluster.stop(1).await;
    let node = cluster.node_mut(1);
    std::fs::remove_dir_all(node.dir.path().join("quorum")).unwrap();
    assert!(!node.dir.path().join("quorum.voter").exists());
    cluster.boot(1, None).await;
    assert_eq!(cluster.leader().await, 1);
}

/// An AlterPartition from `broker` for partition `partition` of `replicated`.
fn alter(
    image: &MetadataImage,
    broker: BrokerId,
    partition: u32,
    partition_epoch: u32,
    isr: Vec<BrokerId>,
) -> ControllerRequest {
    ControllerRequest::AlterPartition {
        broker,
        broker_epoch: image.brokers[&broker].epoch,
        topic: "replicated".into(),
        partition,
        leader_epoch: image
            .partition("replicated", partition)
            .unwrap()
            .leader_epoch,
        partition_epoch,
        isr,
        replica_epochs: Vec::new(),
    }
}

/// Waits until every running member's image equals the active controller's.
async fn all_agree(cluster: &Cluster) -> Arc<MetadataImage> {
    let leader = cluster.leader().await;
    let image = Arc::clone(&cluster.controller(leader).image().borrow());
    for controller in cluster.running() {
        image_where(controller, |other| *other == *image).await;
    }
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_change_their_isr_and_a_broker_shutting_down_hands_over() {
    let mut cluster = Cluster::start(3, 0).await;
    let active = cluster.leader().await;
    cluster.alive(3).await;
    let create = |min_isr: &str| ControllerRequest::CreateTopic {
        name: "replicated".into(),
        partitions: 3,
        replication_factor: 3,
        configs: BTreeMap::from([("min.insync.replicas".into(), min_isr.into())]),
    };
    assert!(matches!(
        cluster.ask(active, create("0")).await,
        ControllerResponse::Rejected(Rejection::InvalidConfig { .. })
    ));
    assert!(matches!(
        cluster.ask(active, create("2")).await,
        ControllerResponse::Committed { .. }
    ));
    let image = image_where(cluster.controller(active), |image| {
        image.topics.contains_key("replicated")
    })
    .await;
    let topic = &image.topics["replicated"];
    assert_eq!(topic.min_insync_replicas(), 2);
    for p in &topic.partitions {
        assert_eq!(p.isr, p.replicas, "every replica starts in sync");
        assert_eq!(p.leader, p.replicas.first().copied());
    }
    // The partition led by a broker other than the active controller: that broker shuts down
    // and restarts below without a controller election.
    let (number, p) = topic
        .partitions
        .iter()
        .enumerate()
        .find(|(_, p)| p.leader != Some(active))
        .unwrap();
    let number = number as u32;
    let (lead, second, third) = (p.replicas[0], p.replicas[1], p.replicas[2]);
    let not_lead = if active == lead { second } else { active };

    // The leader shrinks its ISR (asked through another broker: forwarded).
    let shrunk = cluster
        .ask(not_lead, alter(&image, lead, number, 0, vec![lead, second]))
        .await;
    assert_eq!(
        shrunk,
        ControllerResponse::PartitionState {
            leader: Some(lead),
            leader_epoch: 0,
            partition_epoch: 1,
            isr: vec![lead, second],
        }
    );
    // Computed from the old state: the compare-and-set refuses it.
    assert_eq!(
        cluster
            .ask(active, alter(&image, lead, number, 0, vec![lead]))
            .await,
        ControllerResponse::Rejected(Rejection::StalePartitionEpoch {
            topic: "replicated".into(),
            partition: number,
            expected: 0,
            current: 1,
        })
    );
    // Only the leader changes its ISR.
    assert_eq!(
        cluster
            .ask(active, alter(&image, second, number, 1, vec![second]))
            .await,
        ControllerResponse::Rejected(Rejection::NotLeader {
            topic: "replicated".into(),
            partition: number,
            broker: second,
            leader: Some(lead),
        })
    );
    // It expands again (in any order; recorded in the replicas' order).
    let expanded = cluster
        .ask(
            active,
            alter(&image, lead, number, 1, vec![third, lead, second]),
        )
        .await;
    assert_eq!(
        expanded,
        ControllerResponse::PartitionState {
            leader: Some(lead),
            leader_epoch: 0,
            partition_epoch: 2,
            isr: vec![lead, second, third],
        }
    );
    all_agree(&cluster).await;

    // Controlled shutdown: every leadership moves, and the broker leaves every ISR.
    let led: Vec<usize> = topic
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.leader == Some(lead))
        .map(|(i, _)| i)
        .collect();
    let shutdown = ControllerRequest::ControlledShutdown {
        broker: lead,
        broker_epoch: image.brokers[&lead].epoch,
    };
    assert_eq!(
        cluster.ask(lead, shutdown).await,
        ControllerResponse::ShuttingDown { leading: 0 }
    );
    let after = all_agree(&cluster).await;
    for (i, (p, before)) in after.topics["replicated"]
        .partitions
        .iter()
        .zip(&topic.partitions)
        .enumerate()
    {
        assert!(!p.isr.contains(&lead), "{i}: {p:?}");
        assert!(p.leader.is_some() && p.leader != Some(lead), "{i}: {p:?}");
        if led.contains(&i) {
            assert_eq!(p.leader_epoch, before.leader_epoch + 1, "{i}: {p:?}");
        }
    }
    let p = after.partition("replicated", number).unwrap().clone();
    assert_eq!(p.leader, Some(second), "the next in preferred order");
    // It may not come back into an ISR while shutting down.
    let back = alter(
        &after,
        second,
        number,
        p.partition_epoch,
        p.replicas.clone(),
    );
    assert!(matches!(
        cluster.ask(active, back).await,
        ControllerResponse::Rejected(Rejection::IneligibleReplica {
            why: Ineligible::ShuttingDown,
            ..
        })
    ));

    // It restarts: a new registration clears its shutdown. Its new leader adds it back once it
    // heartbeats (not for the fetches of its previous process, KIP-903), and leadership returns
    // to it, its preferred replica.
    let old_epoch = after.brokers[&lead].epoch;
    cluster.stop(lead).await;
    cluster.boot(lead, None).await;
    let restarted = image_where(cluster.controller(active), |image| {
        image.brokers[&lead].epoch != old_epoch
    })
    .await;
    let new_epoch = restarted.brokers[&lead].epoch;
    let rejoin = |epoch: u64| {
        let image = cluster.controller(active).image().borrow().clone();
        let p = image.partition("replicated", number).unwrap().clone();
        let mut request = alter(
            &image,
            second,
            number,
            p.partition_epoch,
            p.replicas.clone(),
        );
        if let ControllerRequest::AlterPartition { replica_epochs, .. } = &mut request {
            replica_epochs.push(ReplicaEpoch {
                broker: lead,
                epoch,
            });
        }
        request
    };
    assert!(matches!(
        cluster.ask(active, rejoin(old_epoch)).await,
        ControllerResponse::Rejected(Rejection::IneligibleReplica {
            why: Ineligible::StaleBrokerEpoch { .. },
            ..
        })
    ));
    let started = Instant::now();
    loop {
        match cluster.ask(active, rejoin(new_epoch)).await {
            ControllerResponse::PartitionState { isr, .. } => {
                assert_eq!(isr, p.replicas);
                break;
            }
            // Not heartbeating yet.
            ControllerResponse::Rejected(Rejection::IneligibleReplica {
                why: Ineligible::Fenced,
                ..
            }) if started.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    image_where(cluster.controller(active), |image| {
        image.partition("replicated", number).unwrap().leader == Some(lead)
    })
    .await;
    all_agree(&cluster).await;
}
