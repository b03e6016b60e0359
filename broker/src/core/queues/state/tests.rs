//! The queue-partition state machine against a plain model that keeps one state per offset, under
//! random fetches, acks, nacks, rejects, extends, releases, lease expiries, members leaving or
//! dying, dead-letter writes, snapshots, crash-and-reopen (a rebuild from the encoded state
//! log) and delayed delivery (records produced with a delivery time, skipped while it is ahead
//! and taken in when it comes, through a real [`DelayIndex`] with a small per-step limit). After
//! every step: the same state per offset as the model, no record lost or held by two members,
//! none handed out before its delivery time, attempts never going down and never past
//! `max_attempts`, every record dead-lettered at most once.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::core::delays::{Delay, DelayIndex};
use crate::core::queues::codec::{DELTA, SNAPSHOT, decode_state, encode_state};
use crate::core::queues::policy::Backoff;

#[derive(Debug, Clone, PartialEq, Eq)]
enum M {
    Fresh,
    Available,
    Held {
        member: usize,
        until: Millis,
    },
    Delayed {
        until: Millis,
    },
    Acked,
    Dlqing(Reason),
    Dlqed,
    /// Looked at while its delivery time was ahead: not in the queue until it comes.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    st: M,
    attempts: u32,
    failures: u32,
    error: Option<Arc<str>>,
    /// The record's key hash (used with `ordering=key`).
    key: Option<u64>,
}

impl Rec {
    fn fresh(offset: usize) -> Self {
        Rec {
            st: M::Fresh,
            attempts: 0,
            failures: 0,
            error: None,
            key: key_of(offset),
        }
    }
    fn is_final(&self) -> bool {
        matches!(self.st, M::Acked | M::Dlqed)
    }
    fn finish(&mut self, st: M) {
        *self = Rec {
            st,
            attempts: 0,
            failures: 0,
            error: None,
            key: self.key,
        };
    }
}

/// Three keys and some records without one, interleaved.
fn key_of(offset: usize) -> Option<u64> {
    (offset % 4 != 3).then(|| ((offset * 7 + offset / 5) % 3) as u64)
}

/// Records as the tests hand them over: every run whole, keys from the model, delays from the
/// index.
struct Src<'a>(&'a [Rec], &'a DelayIndex);

impl RecordSource for Src<'_> {
    fn cover(&mut self, _first: Offset, last: Offset) -> Offset {
        last
    }
    fn key(&mut self, offset: Offset) -> Option<u64> {
        self.0.get(offset as usize).and_then(|r| r.key)
    }
    fn delayed(&mut self, first: Offset, last: Offset, fired: Fired) -> Option<(Offset, Offset)> {
        self.1.delayed_in(first, last, fired)
    }
}

/// Delayed records taken in per tick, at most: small, so the mark often stops inside a time and
/// inside a run.
const FIRE_LIMIT: u64 = 7;

/// Records that can only go `n` at a time.
struct Limit(i64);

impl RecordSource for Limit {
    fn cover(&mut self, first: Offset, last: Offset) -> Offset {
        last.min(first + self.0 - 1)
    }
    fn key(&mut self, _offset: Offset) -> Option<u64> {
        None
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Records, delayed by some milliseconds or not.
    Produce(u8, Option<u16>),
    Fetch {
        member: usize,
        max: u8,
    },
    Settle {
        member: usize,
        pick: u16,
        len: u8,
        wrong_attempt: bool,
        outcome: u8,
        delay: Option<u16>,
    },
    Tick(u16),
    Gone {
        member: usize,
        clean: bool,
    },
    DlqWrite,
    Snapshot,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..40, prop::option::weighted(0.4, 1u16..5000)).prop_map(|(n, d)| Op::Produce(n, d)),
        4 => (0usize..3, 1u8..30).prop_map(|(member, max)| Op::Fetch { member, max }),
        8 => (0usize..3, any::<u16>(), 1u8..6, prop::bool::weighted(0.1), 0u8..5, prop::option::of(0u16..3000))
            .prop_map(|(member, pick, len, wrong_attempt, outcome, delay)| Op::Settle {
                member, pick, len, wrong_attempt, outcome, delay,
            }),
        3 => (0u16..4000).prop_map(Op::Tick),
        1 => (0usize..3, any::<bool>()).prop_map(|(member, clean)| Op::Gone { member, clean }),
        2 => Just(Op::DlqWrite),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Reopen),
    ]
}

fn member(i: usize) -> MemberId {
    Arc::from(format!("m{i}").as_str())
}

struct Harness {
    policy: Policy,
    qp: QueuePartition,
    log: Vec<Vec<u8>>,
    model: Vec<Rec>,
    now: Millis,
    max_attempts_seen: Vec<u32>,
    dlq_writes: Vec<u32>,
    /// Records acked so far.
    acks: u64,
    /// Per record, its delivery time.
    deliver: Vec<Option<Millis>>,
    index: DelayIndex,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        let qp = QueuePartition::new(0);
        let log = vec![encode_state(SNAPSHOT, &qp.snapshot())];
        Self {
            policy,
            qp,
            log,
            model: Vec::new(),
            now: 1_000_000,
            max_attempts_seen: Vec::new(),
            dlq_writes: Vec::new(),
            acks: 0,
            deliver: Vec::new(),
            index: DelayIndex::default(),
        }
    }

    /// Whether record `i`'s delivery time is one the queue-partition has not taken in.
    fn pending(&self, i: usize) -> bool {
        self.deliver[i].is_some_and(|at| {
            let o = i as i64;
            self.qp
                .fired()
                .pending(Delay {
                    first: o,
                    last: o,
                    at,
                })
                .is_some()
        })
    }

    /// Takes in what came due, as the broker does on its ticks.
    fn fire(&mut self) {
        let (due, upto) = self
            .index
            .due(self.qp.fired(), self.now, self.qp.next(), FIRE_LIMIT);
        let delta = self
            .qp
            .fire(&due, upto, &self.policy, &mut |o| key_of(o as usize));
        let Some(d) = delta else {
            assert!(due.is_empty());
            return;
        };
        self.commit(d);
        for i in 0..self.model.len() {
            if self.model[i].st == M::Skipped && !self.pending(i) {
                self.model[i].st = M::Available;
            }
        }
    }

    fn commit(&mut self, delta: Delta) {
        self.log.push(encode_state(DELTA, &delta));
        self.qp.apply(&delta);
    }

    /// The model's version of a failed attempt.
    fn failed(&self, r: &mut Rec, delay: Option<u64>, reason: Reason) {
        if r.attempts >= self.policy.max_attempts {
            r.st = M::Dlqing(reason);
            return;
        }
        let d = delay.unwrap_or_else(|| self.policy.backoff.delay_ms(r.failures, self.now));
        r.st = if d == 0 {
            M::Available
        } else {
            M::Delayed {
                until: self.now + d as i64,
            }
        };
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Produce(n, delay) => {
                let first = self.model.len() as i64;
                let at = delay.map(|d| self.now + i64::from(d));
                for _ in 0..n {
                    self.model.push(Rec::fresh(self.model.len()));
                    self.max_attempts_seen.push(0);
                    self.dlq_writes.push(0);
                    self.deliver.push(at);
                }
                if let Some(at) = at {
                    let last = self.model.len() as i64 - 1;
                    self.index.insert(Delay { first, last, at });
                }
            }
            Op::Fetch { member: m, max } => self.fetch(m, u64::from(max)),
            Op::Settle {
                member: m,
                pick,
                len,
                wrong_attempt,
                outcome,
                delay,
            } => self.settle(m, pick, len, wrong_attempt, outcome, delay),
            Op::Tick(ms) => {
                self.now += i64::from(ms);
                self.expire();
                self.fire();
            }
            Op::Gone { member: m, clean } => {
                let delta = self
                    .qp
                    .member_gone(&member(m), clean, self.now, &self.policy);
                for i in 0..self.model.len() {
                    let mut r = self.model[i].clone();
                    if matches!(r.st, M::Held { member, .. } if member == m) {
                        if clean {
                            r.st = if r.attempts >= self.policy.max_attempts {
                                M::Dlqing(Reason::Exhausted)
                            } else {
                                M::Available
                            };
                        } else {
                            r.failures += 1;
                            self.failed(&mut r, None, Reason::LeaseExpired);
                        }
                        self.model[i] = r;
                    }
                }
                if let Some(d) = delta {
                    self.commit(d);
                }
            }
            Op::DlqWrite => {
                let first = self.qp.dead_lettering().next().map(|s| (s.first, s.last));
                if let Some((first, last)) = first {
                    // First the intent (the dead-letter partition's end before the write), then
                    // the write; a crash between them leaves the intent.
                    let d = self.qp.dead_letter_intent(first, last, 77).expect("intent");
                    self.commit(d);
                    self.check();
                    let d = self
                        .qp
                        .dead_lettered(first, last)
                        .expect("dead-lettering span");
                    for o in first..=last {
                        let r = &mut self.model[o as usize];
                        assert!(
                            matches!(r.st, M::Dlqing(_)),
                            "offset {o} written to the DLQ from {:?}",
                            r.st
                        );
                        r.finish(M::Dlqed);
                        self.dlq_writes[o as usize] += 1;
                    }
                    self.commit(d);
                }
            }
            Op::Snapshot => self.log = vec![encode_state(SNAPSHOT, &self.qp.snapshot())],
            Op::Reopen => {
                let mut rebuilt: Option<QueuePartition> = None;
                for rec in &self.log {
                    let (kind, delta) = decode_state(rec).expect("own records decode");
                    match (kind, rebuilt.as_mut()) {
                        (SNAPSHOT, _) => rebuilt = Some(QueuePartition::restore(&delta)),
                        (_, Some(qp)) => qp.apply(&delta),
                        (_, None) => panic!("a delta before any snapshot"),
                    }
                }
                let rebuilt = rebuilt.expect("a snapshot");
                assert_eq!(
                    rebuilt.snapshot(),
                    self.qp.snapshot(),
                    "state after reopening"
                );
                assert_eq!(rebuilt.in_flight(), self.qp.in_flight());
                let mut a: Vec<_> = rebuilt.holders().map(|(m, n)| (m.to_string(), n)).collect();
                let mut b: Vec<_> = self.qp.holders().map(|(m, n)| (m.to_string(), n)).collect();
                a.sort();
                b.sort();
                assert_eq!(a, b);
                assert_eq!(rebuilt.next_deadline(), self.qp.next_deadline());
                self.qp = rebuilt;
            }
        }
        self.check();
    }

    fn fetch(&mut self, m: usize, max: u64) {
        if self.policy.ordering == Ordering::Key {
            return self.fetch_by_key(m, max);
        }
        let end = self.model.len() as i64;
        let (runs, delta) = self.qp.acquire(
            &member(m),
            max,
            end,
            self.now,
            &self.policy,
            &mut Src(&self.model, &self.index),
        );
        // The model's choice.
        let cap = match self.policy.ordering {
            Ordering::None | Ordering::Key => u64::from(self.policy.max_in_flight_partition),
            Ordering::Partition => 1,
        };
        let held = self
            .model
            .iter()
            .filter(|r| matches!(r.st, M::Held { .. }))
            .count() as u64;
        let mut budget = max.min(cap.saturating_sub(held));
        if self.policy.ordering == Ordering::Partition {
            match self
                .model
                .iter()
                .find(|r| !r.is_final() && r.st != M::Skipped)
            {
                Some(r) if !matches!(r.st, M::Available | M::Fresh) => budget = 0,
                _ => budget = budget.min(1),
            }
        }
        let mut want = Vec::new();
        let mut skipped = Vec::new();
        let ready: Vec<usize> = (0..self.model.len())
            .filter(|&i| self.model[i].st == M::Available)
            .collect();
        if let Some(&first) = ready.first()
            && self.model[first].failures >= SUSPECT_FAILURES
        {
            if budget > 0 {
                want.push(first);
            }
        } else {
            for &i in &ready {
                if (want.len() as u64) < budget && self.model[i].failures < SUSPECT_FAILURES {
                    want.push(i);
                }
            }
            for i in 0..self.model.len() {
                if self.model[i].st != M::Fresh {
                    continue;
                }
                if want.len() as u64 >= budget {
                    break;
                }
                if self.pending(i) {
                    skipped.push(i);
                } else {
                    want.push(i);
                }
            }
        }
        assert_eq!(delta.is_some(), !runs.is_empty() || !skipped.is_empty());
        for &i in &skipped {
            self.model[i].st = M::Skipped;
        }
        self.handed_out(m, &runs, want, delta);
    }

    /// Checks the runs the queue-partition handed to member `m` against the model's `want`,
    /// then applies the fetch to both.
    fn handed_out(
        &mut self,
        m: usize,
        runs: &[Acquired],
        mut want: Vec<usize>,
        delta: Option<Delta>,
    ) {
        let until = self.now + self.policy.lease_ms as i64;
        let mut got = Vec::new();
        for r in runs {
            for o in r.first..=r.last {
                if let Some(at) = self.deliver[o as usize] {
                    assert!(
                        at <= self.now,
                        "{o} handed out at {} before its time {at}",
                        self.now
                    );
                }
                got.push(o as usize);
                assert_eq!(
                    r.attempt,
                    self.model[o as usize].attempts + 1,
                    "attempt of {o}"
                );
            }
        }
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "records handed to m{m}");
        for i in want {
            let r = &mut self.model[i];
            r.attempts += 1;
            r.st = M::Held { member: m, until };
        }
        if let Some(d) = delta {
            self.commit(d);
        }
    }

    /// The model of a fetch with `ordering=key`: a record may go only while no lower record
    /// of its key is unfinished; new records held back by one wait as available.
    fn fetch_by_key(&mut self, m: usize, max: u64) {
        let end = self.model.len() as i64;
        let (runs, delta) = self.qp.acquire(
            &member(m),
            max,
            end,
            self.now,
            &self.policy,
            &mut Src(&self.model, &self.index),
        );
        let held = self
            .model
            .iter()
            .filter(|r| matches!(r.st, M::Held { .. }))
            .count() as u64;
        let mut budget =
            max.min(u64::from(self.policy.max_in_flight_partition).saturating_sub(held));
        // A record goes while no lower record of its key is in the queue unfinished and none
        // of its key is held (a record taken in late can be below one handed out).
        let lowest_of_key = |model: &[Rec], i: usize| {
            model[i].key.is_none_or(|k| {
                !model[..i]
                    .iter()
                    .any(|r| r.key == Some(k) && !r.is_final() && r.st != M::Skipped)
                    && !model
                        .iter()
                        .any(|r| r.key == Some(k) && matches!(r.st, M::Held { .. }))
            })
        };
        let mut want = Vec::new();
        let ready: Vec<usize> = (0..self.model.len())
            .filter(|&i| self.model[i].st == M::Available)
            .collect();
        for (n, &i) in ready.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if !lowest_of_key(&self.model, i) {
                continue;
            }
            if self.model[i].failures >= SUSPECT_FAILURES {
                if n > 0 {
                    continue;
                }
                want.push(i);
                budget = 0;
                break;
            }
            want.push(i);
            budget -= 1;
        }
        let mut waiting = Vec::new();
        let mut skipped = Vec::new();
        let fresh_from = self
            .model
            .iter()
            .position(|r| r.st == M::Fresh)
            .unwrap_or(self.model.len());
        if budget > 0 {
            for i in fresh_from..self.model.len() {
                if self.pending(i) {
                    skipped.push(i);
                    continue;
                }
                let lower_busy = self.model[i].key.is_some_and(|k| {
                    self.model[..i].iter().enumerate().any(|(j, r)| {
                        r.key == Some(k)
                            && (!r.is_final()
                                && r.st != M::Skipped
                                && (j < fresh_from || want.contains(&j) || waiting.contains(&j)))
                    })
                });
                if !lower_busy {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                    want.push(i);
                } else {
                    waiting.push(i);
                }
            }
        }
        for &i in &waiting {
            self.model[i].st = M::Available;
        }
        for &i in &skipped {
            self.model[i].st = M::Skipped;
        }
        self.handed_out(m, &runs, want, delta);
    }

    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        m: usize,
        pick: u16,
        len: u8,
        wrong: bool,
        outcome: u8,
        delay: Option<u16>,
    ) {
        let held: Vec<usize> = (0..self.model.len())
            .filter(|&i| matches!(self.model[i].st, M::Held { member, .. } if member == m))
            .collect();
        // Mostly a run the member holds; sometimes someone else's or a finished one.
        let first = if held.is_empty() || pick.is_multiple_of(7) {
            if self.model.is_empty() {
                return;
            }
            usize::from(pick) % self.model.len()
        } else {
            held[usize::from(pick) % held.len()]
        };
        let last = (first + usize::from(len) - 1).min(self.model.len().max(1) - 1);
        let attempt = self.model[first].attempts.max(1) + u32::from(wrong);
        let error: Option<Arc<str>> = Some(Arc::from(format!("e{pick}").as_str()));
        let outcome = match outcome {
            0 => Outcome::Ack,
            1 => Outcome::Nack {
                delay_ms: delay.map(u64::from),
                error: error.clone(),
            },
            2 => Outcome::Reject {
                error: error.clone(),
            },
            3 => Outcome::Extend {
                ms: delay.map_or(0, u64::from),
            },
            _ => Outcome::Release,
        };
        let run = Acquired {
            first: first as i64,
            last: last as i64,
            attempt,
        };
        let result = self
            .qp
            .settle(&member(m), run, &outcome, self.now, &self.policy);
        let valid = (first..=last).all(|i| {
            matches!(self.model[i].st, M::Held { member, .. } if member == m)
                && self.model[i].attempts == attempt
        });
        assert_eq!(
            result.is_ok(),
            valid,
            "settle {first}..={last} at {attempt} by m{m}: {result:?}"
        );
        let Ok(delta) = result else { return };
        for i in first..=last {
            let mut r = self.model[i].clone();
            match &outcome {
                Outcome::Ack => {
                    r.finish(M::Acked);
                    self.acks += 1;
                }
                Outcome::Extend { ms } => {
                    let ms = if *ms == 0 { self.policy.lease_ms } else { *ms };
                    let ms = ms.min(self.policy.max_lease_ms);
                    r.st = M::Held {
                        member: m,
                        until: self.now + ms as i64,
                    };
                }
                Outcome::Release => {
                    r.st = if r.attempts >= self.policy.max_attempts {
                        M::Dlqing(Reason::Exhausted)
                    } else {
                        M::Available
                    };
                }
                Outcome::Reject { error } => {
                    r.failures += 1;
                    r.error = error.clone();
                    r.st = M::Dlqing(Reason::Rejected);
                }
                Outcome::Nack { delay_ms, error } => {
                    r.failures += 1;
                    r.error = error.clone();
                    self.failed(&mut r, *delay_ms, Reason::Exhausted);
                }
            }
            self.model[i] = r;
        }
        self.commit(delta);
    }

    fn expire(&mut self) {
        let delta = self.qp.expire(self.now, &self.policy);
        let mut changed = false;
        for i in 0..self.model.len() {
            let mut r = self.model[i].clone();
            match r.st {
                M::Held { until, .. } if until <= self.now => {
                    r.failures += 1;
                    self.failed(&mut r, None, Reason::LeaseExpired);
                }
                M::Delayed { until } if until <= self.now => r.st = M::Available,
                _ => continue,
            }
            changed = true;
            self.model[i] = r;
        }
        assert_eq!(delta.is_some(), changed);
        if let Some(d) = delta {
            self.commit(d);
        }
    }

    /// The queue-partition, offset by offset, against the model.
    fn check(&mut self) {
        let start = self.qp.start() as usize;
        let next = self.qp.next() as usize;
        assert!(start <= next && next <= self.model.len().max(next));
        for (i, r) in self.model.iter().enumerate() {
            if i < start {
                assert!(
                    r.is_final() || r.st == M::Skipped,
                    "offset {i} below start {start} is {:?}",
                    r.st
                );
            } else if i >= next {
                assert_eq!(r.st, M::Fresh, "offset {i} from next {next}");
            }
        }
        // start is the first unfinished offset in the queue, next the first fresh one.
        let model_start = self
            .model
            .iter()
            .position(|r| !r.is_final() && r.st != M::Skipped)
            .unwrap_or(self.model.len());
        assert_eq!(start, model_start.min(next), "start");
        let mut in_span = vec![false; next];
        let mut floor = -1i64;
        for s in self.qp.spans() {
            assert!(s.first > floor, "spans overlap");
            assert!(s.first as usize >= start, "a span below start");
            assert!((s.last as usize) < next, "a span from next on");
            floor = s.last;
            for o in s.first..=s.last {
                in_span[o as usize] = true;
                let r = &self.model[o as usize];
                let st = match &s.state {
                    State::Available => M::Available,
                    State::Acquired { member, until } => M::Held {
                        member: member[1..].parse().expect("member index"),
                        until: *until,
                    },
                    State::Delayed { until } => M::Delayed { until: *until },
                    State::Acked => M::Acked,
                    State::DeadLettering { reason, .. } => M::Dlqing(*reason),
                    State::DeadLettered => M::Dlqed,
                };
                assert_eq!(st, r.st, "state of {o}");
                let key = (self.policy.ordering == Ordering::Key && !r.is_final())
                    .then_some(r.key)
                    .flatten();
                assert_eq!(s.key, key, "key of {o}");
                assert_eq!(
                    (s.attempts, s.failures, &s.error),
                    (r.attempts, r.failures, &r.error),
                    "counts of {o}"
                );
            }
        }
        // Offsets in no span: records skipped for their delivery time, or finished ones (below
        // start, or above it once a record taken in late moved start back).
        for (o, covered) in in_span.iter().enumerate() {
            let r = &self.model[o];
            if !covered {
                assert!(
                    r.st == M::Skipped || r.is_final(),
                    "offset {o} in no span is {:?}",
                    r.st
                );
            }
            if r.st == M::Skipped {
                assert!(!covered, "skipped {o} is in a span");
                assert!(
                    self.pending(o),
                    "{o} still skipped after its time was taken in"
                );
            }
        }
        for (i, r) in self.model.iter().enumerate() {
            assert!(r.attempts <= self.policy.max_attempts, "attempts of {i}");
            if !r.is_final() {
                assert!(
                    r.attempts >= self.max_attempts_seen[i],
                    "attempts of {i} went down"
                );
                self.max_attempts_seen[i] = r.attempts;
            }
            assert!(self.dlq_writes[i] <= 1, "{i} dead-lettered twice");
        }
        // Key order: one record of a key held at most; and, records delayed aside, a record
        // is held only while every lower record of its key is done.
        if self.policy.ordering == Ordering::Key {
            let mut held_keys = std::collections::HashSet::new();
            for (i, r) in self.model.iter().enumerate() {
                if let (M::Held { .. }, Some(k)) = (&r.st, r.key) {
                    assert!(held_keys.insert(k), "two records of key {k} held");
                    assert!(
                        self.model[..i]
                            .iter()
                            .enumerate()
                            .all(|(j, x)| x.key != Some(k)
                                || x.is_final()
                                || self.deliver[j].is_some()),
                        "{i} (key {k}) is held while a lower record of its key is unfinished"
                    );
                }
            }
        }
        let f = self.qp.finished();
        assert_eq!(f.acked, self.acks, "acked total");
        assert_eq!(
            f.dead_lettered,
            self.dlq_writes.iter().map(|n| u64::from(*n)).sum::<u64>(),
            "dead-lettered total"
        );
        let in_flight = self
            .model
            .iter()
            .filter(|r| matches!(r.st, M::Held { .. }))
            .count() as u64;
        assert_eq!(self.qp.in_flight(), in_flight);
        assert!(in_flight <= u64::from(self.policy.max_in_flight_partition));
    }
}

fn policy(ordering: Ordering, list: bool) -> Policy {
    Policy {
        lease_ms: 2_000,
        max_lease_ms: 5_000,
        max_attempts: 4,
        backoff: if list {
            Backoff::List(vec![0, 500, 1_500])
        } else {
            Backoff::Exponential {
                base_ms: 100,
                max_ms: 3_000,
                jitter_pct: 20,
            }
        },
        max_in_flight_member: 1_000,
        max_in_flight_partition: 40,
        ordering,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_model(ops in prop::collection::vec(op(), 1..200), list in any::<bool>()) {
        let mut h = Harness::new(policy(Ordering::None, list));
        for op in &ops {
            h.step(op);
        }
    }

    #[test]
    fn matches_the_model_in_key_order(ops in prop::collection::vec(op(), 1..200), list in any::<bool>()) {
        let mut h = Harness::new(policy(Ordering::Key, list));
        for op in &ops {
            h.step(op);
        }
    }

    #[test]
    fn matches_the_model_in_partition_order(ops in prop::collection::vec(op(), 1..200), list in any::<bool>()) {
        let mut h = Harness::new(policy(Ordering::Partition, list));
        for op in &ops {
            h.step(op);
        }
    }
}

#[test]
fn every_record_ends_acked_or_dead_lettered_once() {
    for ordering in [Ordering::None, Ordering::Key, Ordering::Partition] {
        fail_everything(ordering);
    }
}

/// Members that fail everything: each record (a third of them delayed far, a third a little) is
/// handed out exactly max_attempts times and then dead-lettered once.
fn fail_everything(ordering: Ordering) {
    let mut h = Harness::new(policy(ordering, true));
    h.step(&Op::Produce(10, Some(30_000)));
    h.step(&Op::Produce(10, None));
    h.step(&Op::Produce(10, Some(100)));
    for round in 0..200u16 {
        h.step(&Op::Fetch {
            member: usize::from(round % 3),
            max: 25,
        });
        for _ in 0..30 {
            h.step(&Op::Settle {
                member: usize::from(round % 3),
                pick: round,
                len: 5,
                wrong_attempt: false,
                outcome: 1,
                delay: None,
            });
        }
        h.step(&Op::Tick(2_000));
        for _ in 0..5 {
            h.step(&Op::DlqWrite);
        }
    }
    assert!(
        h.model.iter().all(|r| r.st == M::Dlqed),
        "{ordering:?}: {:?}",
        h.model
    );
    assert!(h.dlq_writes.iter().all(|&n| n == 1));
    assert_eq!(h.qp.start(), 30);
}

#[test]
fn backoff_grows_to_its_cap_with_jitter_below_it() {
    let b = Backoff::Exponential {
        base_ms: 100,
        max_ms: 1_000,
        jitter_pct: 20,
    };
    for now in 0..50 {
        let d: Vec<u64> = (1..=6).map(|f| b.delay_ms(f, now)).collect();
        for (f, full) in [100u64, 200, 400, 800, 1_000, 1_000].iter().enumerate() {
            assert!(
                d[f] <= *full && d[f] >= full - full / 5,
                "failure {}: {}",
                f + 1,
                d[f]
            );
        }
    }
    let l = Backoff::List(vec![1, 5, 30]);
    assert_eq!(
        (1..=5).map(|f| l.delay_ms(f, 0)).collect::<Vec<_>>(),
        [1, 5, 30, 30, 30]
    );
}

fn run(first: Offset, last: Offset) -> Acquired {
    Acquired {
        first,
        last,
        attempt: 1,
    }
}

#[test]
fn absurd_ranges_and_numbers_are_refused_not_panics() {
    let p = policy(Ordering::None, false);
    let mut qp = QueuePartition::new(0);
    let m = member(0);
    let (_, d) = qp.acquire(
        &m,
        u64::MAX,
        i64::MAX,
        i64::MAX,
        &p,
        &mut Src(&[], &DelayIndex::default()),
    );
    qp.apply(&d.expect("acquired"));
    for (first, last) in [
        (i64::MIN, i64::MAX),
        (i64::MAX, i64::MAX),
        (i64::MIN, i64::MIN),
        (-5, -1),
        (5, 1),
        (0, i64::MAX),
    ] {
        for outcome in [
            Outcome::Ack,
            Outcome::Extend { ms: u64::MAX },
            Outcome::Nack {
                delay_ms: Some(u64::MAX),
                error: None,
            },
        ] {
            assert!(
                qp.settle(&m, run(first, last), &outcome, i64::MAX, &p)
                    .is_err()
            );
        }
    }
    // Extreme clocks and delays saturate.
    let d = qp
        .settle(
            &m,
            run(0, 0),
            &Outcome::Extend { ms: u64::MAX },
            i64::MAX,
            &p,
        )
        .expect("held");
    qp.apply(&d);
    let d = qp
        .settle(
            &m,
            run(1, 1),
            &Outcome::Nack {
                delay_ms: Some(u64::MAX),
                error: None,
            },
            i64::MAX,
            &p,
        )
        .expect("held");
    qp.apply(&d);
    assert!(qp.expire(i64::MIN, &p).is_none());
}

#[test]
fn a_run_goes_out_only_as_far_as_its_records_can() {
    let p = policy(Ordering::None, false);
    let mut qp = QueuePartition::new(0);
    let (a, b) = (member(0), member(1));
    // Fresh records: the caller can only hand over 0..=3 of 0..=9.
    let (runs, d) = qp.acquire(&a, 10, 10, 0, &p, &mut Limit(4));
    assert_eq!(
        runs,
        [Acquired {
            first: 0,
            last: 3,
            attempt: 1
        }]
    );
    qp.apply(&d.expect("acquired"));
    assert_eq!(qp.next(), 4);
    // Released, then taken again where only 2 records fit: the rest stays available.
    let d = qp
        .settle(&a, run(0, 3), &Outcome::Release, 0, &p)
        .expect("held");
    qp.apply(&d);
    let (runs, d) = qp.acquire(&b, 100, 4, 0, &p, &mut Limit(2));
    assert_eq!(
        runs,
        [Acquired {
            first: 0,
            last: 1,
            attempt: 2
        }]
    );
    qp.apply(&d.expect("acquired"));
    assert_eq!(qp.counts().available, 2);
    // Nothing can be handed over: nothing is taken.
    let (runs, d) = qp.acquire(&b, 100, 10, 0, &p, &mut Limit(0));
    assert!(runs.is_empty() && d.is_none());
}
