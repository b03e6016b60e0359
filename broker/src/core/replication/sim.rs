//! One replicated partition as a whole, without I/O: three brokers' logs, the controller's
//! image with its elections ([`strom_meta::election::reconcile`]) and ISR checks
//! ([`strom_meta::isr::check_alter_partition`]), the leader's [`LeaderView`], and followers that
//! fetch and truncate by leader epochs ([`super::divergence`]), driven by proptest through
//! random orders of produces, fetches, ISR changes, crashes, restarts and time (issue 17: "the
//! replication and controller logic is also tested without I/O as state machines").
//!
//! The parts are the broker's and the controller's own; what stands in for I/O is a log as a
//! vector of (leader epoch, record id) per offset and a metadata image every broker sees at
//! once. A crash is a process crash: the log stays (the page cache survives; power cuts are
//! `tests/power_cut.rs`'s), the high watermark known is lost.
//!
//! After every step:
//! - a record once below a leader's high watermark (so acknowledged at `acks=all`, or read by
//!   a consumer) is at its offset in the log of every ISR member, and no offset ever held two
//!   such records;
//! - a leader's high watermark never goes back within its epoch.
//!
//! At the end every broker comes back and fetches until the ISR is full: every log is then the
//! same, and holds every such record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use strom_meta::election::{BrokerStatus, reconcile};
use strom_meta::image::MetadataImage;
use strom_meta::isr::{AlterPartition, check_alter_partition};
use strom_meta::topic_config::MIN_INSYNC_REPLICAS;
use strom_meta::types::{BrokerId, Endpoints, MetaCommand, MetaResponse, TopicId};

use super::divergence::{EpochEnd, check_follower, truncation_for};
use super::leader::{IsrRequest, LeaderView, Leadership};

const BROKERS: [BrokerId; 3] = [1, 2, 3];
const LAG_MAX: Duration = Duration::from_millis(100);

/// One broker: its log and what it knows.
#[derive(Debug)]
struct Broker {
    up: bool,
    incarnation: u128,
    /// Per offset: the leader epoch that wrote it and the record's id.
    log: Vec<(i32, u64)>,
    /// The high watermark it knows (lost in a crash).
    hw: i64,
    /// Its view while it leads, with the leader epoch it leads in.
    view: Option<LeaderView>,
}

impl Broker {
    fn end(&self) -> i64 {
        self.log.len() as i64
    }

    fn last_epoch(&self) -> i32 {
        self.log.last().map_or(-1, |(e, _)| *e)
    }

    /// The log's `end_offset_for_epoch`: the largest epoch at or below `epoch` it holds and
    /// where that one ends.
    fn epoch_end(&self, epoch: i32) -> EpochEnd {
        let Some(held) = self
            .log
            .iter()
            .map(|(e, _)| *e)
            .filter(|e| *e <= epoch)
            .max()
        else {
            return EpochEnd {
                epoch: -1,
                end_offset: -1,
            };
        };
        let end = self
            .log
            .iter()
            .position(|(e, _)| *e > held)
            .unwrap_or(self.log.len());
        EpochEnd {
            epoch: held,
            end_offset: end as i64,
        }
    }
}

/// What a step does.
#[derive(Debug, Clone)]
enum Step {
    /// The leader appends this many records (an `acks=all` produce; refused under min ISR).
    Produce(u8),
    /// A follower fetches (at most this many records).
    Fetch { follower: usize, max: u8 },
    /// Every leader asks for the ISR change its view calls for.
    Isr,
    /// Time passes.
    Tick(u16),
    /// A broker's process dies.
    Crash(usize),
    /// A dead broker starts again.
    Restart(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..4).prop_map(Step::Produce),
        6 => (0usize..3, 1u8..6).prop_map(|(follower, max)| Step::Fetch { follower, max }),
        3 => Just(Step::Isr),
        2 => (1u16..150).prop_map(Step::Tick),
        1 => (0usize..3).prop_map(Step::Crash),
        1 => (0usize..3).prop_map(Step::Restart),
    ]
}

struct Sim {
    image: MetadataImage,
    index: u64,
    brokers: Vec<Broker>,
    start: Instant,
    now_ms: u64,
    next_id: u64,
    /// Produces waiting: (leader, leader epoch, offset, record id).
    waiting: Vec<(BrokerId, i32, i64, u64)>,
    /// Every record ever below a leader's HW, by offset.
    committed: BTreeMap<i64, u64>,
    /// Records acknowledged to their producer.
    acked: usize,
}

impl Sim {
    fn new() -> Self {
        let mut image = MetadataImage::default();
        for (i, b) in BROKERS.iter().enumerate() {
            image.apply(
                i as u64 + 1,
                &MetaCommand::RegisterBroker {
                    broker: *b,
                    incarnation: 1,
                    endpoints: Endpoints::default(),
                    rack: None,
                },
            );
        }
        let created = image.apply(
            10,
            &MetaCommand::CreateTopic {
                name: "t".into(),
                id: TopicId(7),
                configs: BTreeMap::from([(MIN_INSYNC_REPLICAS.to_string(), "2".to_string())]),
                assignments: vec![BROKERS.to_vec()],
            },
        );
        assert_eq!(created, MetaResponse::Done);
        let brokers = BROKERS
            .iter()
            .map(|_| Broker {
                up: true,
                incarnation: 1,
                log: Vec::new(),
                hw: 0,
                view: None,
            })
            .collect();
        let mut sim = Sim {
            image,
            index: 100,
            brokers,
            start: Instant::now(),
            now_ms: 0,
            next_id: 1,
            waiting: Vec::new(),
            committed: BTreeMap::new(),
            acked: 0,
        };
        sim.settle();
        sim
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.now_ms)
    }

    fn status(&self) -> impl Fn(BrokerId) -> BrokerStatus + '_ {
        |b| {
            if self.brokers[(b - 1) as usize].up {
                BrokerStatus::Alive
            } else {
                BrokerStatus::Fenced
            }
        }
    }

    fn partition(&self) -> &strom_meta::image::PartitionImage {
        // ok: test-only module; the image is made with this partition in `Sim::new`.
        self.image.partition("t", 0).expect("the partition")
    }

    fn apply(&mut self, command: &MetaCommand) {
        self.index += 1;
        let applied = self.image.apply(self.index, command);
        assert!(
            !matches!(applied, MetaResponse::Rejected(_)),
            "{command:?}: {applied:?}"
        );
    }

    /// The controller reconciles, and every broker follows the image.
    fn settle(&mut self) {
        let changes = reconcile(&self.image, self.status());
        for change in &changes {
            self.apply(change);
        }
        self.follow();
    }

    /// Every live broker takes up the role the image gives it, as `Core::follow_image` does.
    fn follow(&mut self) {
        let p = self.partition().clone();
        let now = self.now();
        for (i, id) in BROKERS.iter().enumerate() {
            let b = &mut self.brokers[i];
            if !b.up || p.leader != Some(*id) {
                b.view = None;
                continue;
            }
            let lead = Leadership {
                me: *id,
                leader_epoch: p.leader_epoch as i32,
                partition_epoch: p.partition_epoch,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                min_isr: 2,
                durable: false,
            };
            let (end, hw) = (b.end(), b.hw);
            match &mut b.view {
                Some(view) if view.leadership().leader_epoch == lead.leader_epoch => {
                    if lead.partition_epoch > view.leadership().partition_epoch {
                        view.isr_committed(lead.isr, lead.partition_epoch);
                    }
                }
                view => {
                    // The writer takes the view up with the log as it is now.
                    *view = Some(LeaderView::new(lead, end, end, hw, now));
                }
            }
        }
        // Produces waiting on a leadership that ended fail (NOT_LEADER_OR_FOLLOWER).
        let leading: Vec<Option<i32>> = self
            .brokers
            .iter()
            .map(|b| b.view.as_ref().map(|v| v.leadership().leader_epoch))
            .collect();
        self.waiting
            .retain(|(b, epoch, ..)| leading[(b - 1) as usize] == Some(*epoch));
    }

    fn leader(&self) -> Option<usize> {
        self.brokers.iter().position(|b| b.view.is_some())
    }

    fn produce(&mut self, n: u8) {
        let Some(l) = self.leader() else { return };
        let b = &mut self.brokers[l];
        let Some(lead) = b.view.as_ref().map(|v| v.leadership().clone()) else {
            return;
        };
        if lead.isr.len() < lead.min_isr {
            return; // NOT_ENOUGH_REPLICAS, before appending
        }
        let epoch = lead.leader_epoch;
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            self.waiting
                .push((BROKERS[l], epoch, b.log.len() as i64, id));
            b.log.push((epoch, id));
        }
        let end = b.end();
        if let Some(view) = b.view.as_mut() {
            view.on_leader_progress(end, end);
        }
    }

    fn fetch(&mut self, f: usize, max: u8) {
        if !self.brokers[f].up {
            return;
        }
        let Some(l) = self.leader() else { return };
        if l == f {
            return;
        }
        let now = self.now();
        let (fetch_offset, last) = (self.brokers[f].end(), self.brokers[f].last_epoch());
        let leader = &self.brokers[l];
        let leader_end = leader.end();
        let lookup = leader.epoch_end(last);
        if let Some(diverging) = check_follower(fetch_offset, last, lookup) {
            // The follower truncates where its log parts from the leader's (follower.rs).
            let follower = &mut self.brokers[f];
            let mine = follower.epoch_end(diverging.epoch);
            let cut = if diverging.epoch < 0 || diverging.end_offset < 0 {
                0
            } else {
                truncation_for(diverging, mine, 0, fetch_offset).offset
            };
            follower
                .log
                .truncate(usize::try_from(cut.max(0)).unwrap_or(0));
            return;
        }
        if fetch_offset > leader_end {
            // OFFSET_OUT_OF_RANGE: the follower cuts to the leader's end.
            self.brokers[f].log.truncate(leader_end as usize);
            return;
        }
        let batch: Vec<(i32, u64)> = leader.log[fetch_offset as usize..]
            .iter()
            .take(max as usize)
            .copied()
            .collect();
        let follower_id = BROKERS[f];
        // ok: test-only module; `leader()` is the broker holding a view.
        let view = self.brokers[l].view.as_mut().expect("the leader's view");
        view.on_follower_fetch(follower_id, fetch_offset, fetch_offset, now);
        let hw = view.hw();
        let follower = &mut self.brokers[f];
        follower.log.extend(batch);
        follower.hw = follower.hw.max(hw.min(follower.end()));
    }

    /// Every leader asks the controller for the ISR change due; what it commits, every broker
    /// follows.
    fn isr(&mut self) {
        let Some(l) = self.leader() else { return };
        let now = self.now();
        let Some(view) = self.brokers[l].view.as_mut() else {
            return;
        };
        let Some(request) = view.isr_change_due(now, LAG_MAX) else {
            return;
        };
        view.isr_requested(request.clone());
        let lead = view.leadership().clone();
        let isr = match &request {
            IsrRequest::Shrink(isr) | IsrRequest::Expand(isr) => isr.clone(),
        };
        let broker_epoch = self.image.brokers[&lead.me].epoch;
        let alter = AlterPartition {
            broker: lead.me,
            broker_epoch,
            topic: "t",
            partition: 0,
            leader_epoch: lead.leader_epoch as u32,
            partition_epoch: lead.partition_epoch,
            isr: &isr,
            replica_epochs: &[],
        };
        match check_alter_partition(&self.image, &alter, self.status()) {
            Ok(Some(change)) => {
                self.apply(&change);
                self.follow();
                if let Some(view) = self.brokers[l].view.as_mut() {
                    view.isr_settled();
                }
            }
            Ok(None) | Err(_) => {
                if let Some(view) = self.brokers[l].view.as_mut() {
                    view.isr_settled();
                }
            }
        }
    }

    fn crash(&mut self, b: usize) {
        let broker = &mut self.brokers[b];
        if !broker.up {
            return;
        }
        broker.up = false;
        broker.view = None;
        broker.hw = 0;
        self.settle();
    }

    fn restart(&mut self, b: usize) {
        if self.brokers[b].up {
            return;
        }
        let broker = &mut self.brokers[b];
        broker.up = true;
        broker.incarnation += 1;
        let incarnation = broker.incarnation;
        self.apply(&MetaCommand::RegisterBroker {
            broker: BROKERS[b],
            incarnation,
            endpoints: Endpoints::default(),
            rack: None,
        });
        self.settle();
    }

    /// Answers produces the leader's HW passed, and records what is below it.
    fn acknowledge(&mut self) -> Result<(), TestCaseError> {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let hw = self.brokers[l].view.as_ref().map_or(0, LeaderView::hw);
        let b = &mut self.brokers[l];
        prop_assert!(
            hw >= b.hw || b.hw > b.end(),
            "HW went back: {} -> {hw}",
            b.hw
        );
        b.hw = b.hw.max(hw);
        for (offset, (_, id)) in b.log.iter().enumerate().take(hw as usize) {
            let was = self.committed.insert(offset as i64, *id);
            prop_assert!(
                was.is_none_or(|w| w == *id),
                "offset {offset} held {was:?} below a HW, now {id}"
            );
        }
        let before = self.waiting.len();
        self.waiting.retain(|(_, _, offset, _)| *offset >= hw);
        self.acked += before - self.waiting.len();
        Ok(())
    }

    /// Every record once below a HW is at its offset on every ISR member.
    fn check(&self) -> Result<(), TestCaseError> {
        for member in &self.partition().isr {
            let log = &self.brokers[(member - 1) as usize].log;
            for (offset, id) in &self.committed {
                prop_assert_eq!(
                    log.get(*offset as usize).map(|(_, i)| *i),
                    Some(*id),
                    "ISR member {} lost offset {}",
                    member,
                    offset
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn acknowledged_records_survive_any_order_of_fetches_crashes_and_isr_changes(
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut sim = Sim::new();
        for step in steps {
            match step {
                Step::Produce(n) => sim.produce(n),
                Step::Fetch { follower, max } => sim.fetch(follower, max),
                Step::Isr => sim.isr(),
                Step::Tick(ms) => sim.now_ms += u64::from(ms),
                Step::Crash(b) => sim.crash(b),
                Step::Restart(b) => sim.restart(b),
            }
            sim.acknowledge()?;
            sim.check()?;
        }
        // Heal: everyone back, fetching until the ISR is full and nothing moves.
        for b in 0..3 {
            sim.restart(b);
        }
        for _ in 0..200 {
            for f in 0..3 {
                sim.fetch(f, 50);
            }
            sim.isr();
            sim.acknowledge()?;
            sim.check()?;
        }
        prop_assert_eq!(sim.partition().isr.len(), 3, "the ISR is full again");
        let first = &sim.brokers[0].log;
        for b in &sim.brokers[1..] {
            prop_assert_eq!(&b.log, first, "every log the same");
        }
        for (offset, id) in &sim.committed {
            prop_assert_eq!(first.get(*offset as usize).map(|(_, i)| *i), Some(*id));
        }
    }
}
